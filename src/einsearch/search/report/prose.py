"""The report's words: a reading that claims only what the intervals support, and report.md."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..analysis import MIN_SEEDS_FOR_INTERVAL, VARIES_FACTOR
from .fmt import ci_text, fmt, fmt_params, md
from .summary import Report, StructureInfo

__all__ = ["markdown", "STORE_NAME"]

STORE_NAME = "results.sqlite"
#: collapsed layers listed in report.md per structure (all are in summary.json)
SHOWN_COLLAPSED = 10


# ------------------------------------------------------------------------------------------
# the reading


def _no_interval_reason(rep: Report, i: StructureInfo) -> str:
    a = i.analysis
    few = [x for x in (i, rep.dense) if x.analysis is not None and x.analysis.seeds_per_width
           and min(x.analysis.seeds_per_width.values()) < MIN_SEEDS_FOR_INTERVAL]
    if few:
        return f"no interval (fewer than {MIN_SEEDS_FOR_INTERVAL} seeds)"
    if rep.n_bootstrap == 0:
        return "no interval (bootstrap turned off)"
    if a is not None and a.bootstrap_failed:
        return "no interval (too many bootstrap replicates could not be fitted)"
    return "no interval"


def _verdict(m: float, ci: Sequence[float | None] | None, ref: str, no_ci: str) -> str:
    """What the interval supports about m against ``ref`` (a clause after a colon)."""
    lo, hi = ci if ci is not None else (None, None)
    if lo is None or hi is None:
        return f"{no_ci}, so no claim against {ref}"
    if lo > 1:
        return f"better than {ref} (the interval excludes 1)"
    if hi < 1:
        return f"worse than {ref}, needing more compute (the interval lies below 1)"
    return f"not distinguishable from {ref} (the interval includes 1)"


def _m_sentence(name: str, s: dict[str, Any], ref: str, no_ci: str) -> str:
    """One structure's m: m(L) first where it varies, then the headline and the verdict."""
    m, ci, lref = s["compute_multiplier"], s["compute_multiplier_ci"], s["reference_loss"]
    lv = s["multiplier_by_loss"]
    parts = []
    if s.get("varies") and lv:
        hi_l, lo_l = lv[-1], lv[0]   # levels run from the lowest loss to the highest
        parts.append(f"**{name}**: m depends on the loss level: it ranges from "
                     f"{fmt(hi_l['multiplier'])}× at loss {fmt(hi_l['loss'])} to "
                     f"{fmt(lo_l['multiplier'])}× at loss {fmt(lo_l['loss'])} "
                     f"(b − b_{ref} = {fmt(s['exponent_delta'], 2)})")
        apart = [x for x in lv if x["ci"] is not None and None not in x["ci"]
                 and (x["ci"][0] > 1 or x["ci"][1] < 1)]
        if apart:
            parts.append("; its interval excludes 1 at " + ", ".join(
                f"loss {fmt(x['loss'])} ({fmt(x['multiplier'])}× {ci_text(x['ci'])}, "
                f"{'better' if x['ci'][0] > 1 else 'worse'})" for x in apart))
        if m is not None:
            parts.append(f"; at the reference loss {fmt(lref)}, m = {fmt(m)}× {ci_text(ci)}".rstrip()
                         + f": {_verdict(m, ci, ref, no_ci)}")
        return "".join(parts) + "."
    if m is None:
        return ""
    return (f"**{name}**: m = {fmt(m)}× {ci_text(ci)}".rstrip() + f" at loss {fmt(lref)}: "
            f"{_verdict(m, ci, ref, no_ci)}.")


def _taxonomy_sentence(rep: Report, summ: dict[str, dict[str, Any]]) -> str:
    """The taxonomy's prediction (omega = 0 and psi = 1 scale best) checked with intervals."""
    rows = [(i, summ[i.name]) for i in rep.infos if not i.is_dense and not i.is_moe
            and i.omega is not None and i.psi is not None
            and summ[i.name]["compute_multiplier"] is not None]
    good = [(i, s) for i, s in rows if (i.omega or 0.0) <= 1e-9 and (i.psi or 0.0) >= 1 - 1e-9]
    rest = [(i, s) for i, s in rows if all(i is not g for g, _ in good)]
    if not good or not rest:
        return ""
    names = lambda xs: ", ".join(i.name for i, _ in xs)  # noqa: E731
    head = (f"The taxonomy predicts that structures without parameter sharing and at full rank "
            f"(ω = 0, ψ = 1: {names(good)}) scale better than the others ({names(rest)}). ")
    refs = {s["reference_loss"] for _, s in rows}
    caveat = ("" if len(refs) == 1 else
              " (The headlines are at different reference losses; `--reference-loss` gives a "
              "common one.)")
    if any(s["compute_multiplier_ci"] is None for _, s in rows):
        return head + ("The data cannot separate them: some of these structures have no interval."
                       + caveat)
    g_lo = min(s["compute_multiplier_ci"][0] for _, s in good)
    g_hi = max(s["compute_multiplier_ci"][1] for _, s in good)
    r_lo = min(s["compute_multiplier_ci"][0] for _, s in rest)
    r_hi = max(s["compute_multiplier_ci"][1] for _, s in rest)
    if g_lo > r_hi:
        return head + ("As the taxonomy predicts, every one of them has a higher multiplier "
                       "than every other structure, with non-overlapping intervals." + caveat)
    if g_hi < r_lo:
        return head + ("Unlike what the taxonomy predicts, every one of them has a lower "
                       "multiplier than every other structure, with non-overlapping intervals."
                       + caveat)
    return head + ("The data cannot separate the two groups: their intervals overlap." + caveat)


def _reading(rep: Report, summary: dict[str, Any]) -> str:
    total = sum(i.runs for i in rep.infos)
    diverged = sum(i.diverged_runs for i in rep.infos)
    summ = {r["name"]: r for r in summary["structures"]}
    d = rep.dense
    if rep.result is None or summ[d.name]["compute_multiplier"] is None:
        why = ("all dense runs diverged" if d.runs and d.runs == d.diverged_runs
               else "; ".join(summ[d.name]["diagnostics"]["notes"]) or "dense has no usable frontier")
        return (f"No compute multipliers could be estimated for task `{rep.task}`: {why}, so "
                f"there is no dense scaling law to compare against ({total} runs recorded, "
                f"{diverged} diverged). Lower the learning rate or add widths, steps or seeds "
                f"and rerun.")
    paras = [f"On task `{rep.task}` ({len(rep.infos)} structures, {total} runs"
             + (f", {diverged} diverged" if diverged else "") + f"; {rep.settings['loss_description']}), "
             "the compute multiplier m(L) = C_dense(L) / C_S(L) says how many times less "
             "training compute a structure needs than dense to reach loss L (> 1: cheaper than "
             "dense), read off laws fitted in a common compute window after each run's first "
             f"{rep.settings['transient_fraction']:.0%} of steps."]
    others = [i for i in rep.infos if not i.is_dense]
    varying = [i for i in others if summ[i.name].get("varies")]
    lines = []
    if varying:
        paras.append(f"m varies more than {VARIES_FACTOR:g}× over the common loss range for "
                     + ", ".join(f"**{i.name}**" for i in varying)
                     + ": for these, read m(L) (multiplier_vs_loss.png), not one number.")
        for i in varying:
            lines.append(_m_sentence(i.name, summ[i.name], d.name, _no_interval_reason(rep, i)))
    for i in others:
        if i in varying:
            continue
        text = _m_sentence(i.name, summ[i.name], d.name, _no_interval_reason(rep, i))
        if text:
            lines.append(text)
        else:
            why = "; ".join(n for n in summ[i.name]["diagnostics"]["notes"]) or "no estimate"
            lines.append(f"**{i.name}**: no multiplier ({why}).")
    if lines:
        paras.append("\n".join(f"- {x}" for x in lines))
    ranked = [i for i in others if summ[i.name]["compute_multiplier"] is not None]
    if len(ranked) >= 2:
        a, b = summ[ranked[0].name], summ[ranked[1].name]
        sep = (a["compute_multiplier_ci"] is not None and b["compute_multiplier_ci"] is not None
               and a["compute_multiplier_ci"][0] > b["compute_multiplier_ci"][1])
        paras.append(f"The largest headline multiplier is {ranked[0].name}'s; "
                     + (f"its interval lies above that of the next, {ranked[1].name}."
                        if sep else f"the data cannot separate it from the next, "
                        f"{ranked[1].name} (intervals overlap or are missing)."))
    tax = _taxonomy_sentence(rep, summ)
    if tax:
        paras.append(tax)
    for h in rep.head_to_head:
        ref = h["reference"]
        if h["compute_multiplier"] is None and not h.get("varies"):
            paras.append(f"Head to head, {h['name']} against {ref}: no estimate ("
                         + "; ".join(h["notes"]) + ").")
            continue
        no_ci = (f"no interval (fewer than {MIN_SEEDS_FOR_INTERVAL} seeds)" if not h.get("enough_seeds")
                 else "no interval")
        paras.append(f"Head to head (same estimator, {ref} in dense's place) — "
                     + _m_sentence(h["name"], h, ref, no_ci))
    return "\n\n".join(paras)


# ------------------------------------------------------------------------------------------
# report.md


def markdown(rep: Report, summary: dict[str, Any]) -> str:
    s = rep.settings
    lines = [f"# einsearch report: `{rep.task}`", "",
             f"Generated {summary['generated_at']} from `{STORE_NAME}`.", "",
             "## Reading", "", _reading(rep, summary), "",
             "## Compute multipliers", "",
             "| structure | θ | ω | ψ | ν | params | exponent b | b − b_dense | m at L_ref [95% CI] "
             "| L_ref | m at 3 losses (low → high) | runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, i in zip(summary["structures"], rep.infos):
        if i.is_dense and r["compute_multiplier"] is not None:
            mult = "1 (reference)"
        elif r["compute_multiplier"] is not None:
            mult = f"{fmt(r['compute_multiplier'])} {ci_text(r['compute_multiplier_ci']) or '(no interval)'}"
        else:
            mult = "n/a"
        levels = ", ".join(f"{fmt(x['multiplier'])}@{fmt(x['loss'])}" for x in r["multiplier_by_loss"])
        runs = f"{i.runs}" + (f" ({i.diverged_runs} diverged)" if i.diverged_runs else "")
        theta = f"`{md(i.theta)}`" if i.theta else "n/a"
        lines.append(f"| {md(i.name)} | {theta} | {fmt(i.omega, 2)} | {fmt(i.psi, 2)} | "
                     f"{fmt(i.nu, 2)} | {fmt_params(i.params)} | {fmt(r['exponent'])} | "
                     f"{'—' if i.is_dense else fmt(r['exponent_delta'], 2)} | {mult} | "
                     f"{fmt(r['reference_loss'])} | {levels or 'n/a'} | {runs} |")
    lines += ["", "m > 1: the structure reaches the loss with 1/m of dense's training compute. "
              "The headline is at L_ref (by default the lowest loss both frontiers reach); m at "
              "3 losses runs from the lowest loss both reach to the highest. Interval: "
              f"{summary['estimator']['compute_multiplier_ci']}.", ""]
    if rep.head_to_head:
        lines += ["## Head to head", "",
                  "| structure | against | m at L_ref [95% CI] | L_ref | b − b_ref | m at 3 losses |",
                  "|---|---|---|---|---|---|"]
        for h in rep.head_to_head:
            levels = ", ".join(f"{fmt(x['multiplier'])}@{fmt(x['loss'])}" for x in h["multiplier_by_loss"])
            ci = ci_text(h["compute_multiplier_ci"]) or "(no interval)"
            lines.append(f"| {md(h['name'])} | {md(h['reference'])} | "
                         f"{fmt(h['compute_multiplier'])} {ci} | {fmt(h['reference_loss'])} | "
                         f"{fmt(h['exponent_delta'], 2)} | {levels or 'n/a'} |")
        lines += ["", "Same estimator as against dense, with the reference in dense's place "
                  "(> 1: the first needs less compute for the same loss).", ""]
    lines += _time_section(rep, summary)
    lines += _experts_section(rep)
    lines += ["## Figures", "",
              "### Loss vs compute", "",
              "Faint: seed-averaged runs; dots: frontier points (hollow: outside the window); "
              "solid: the fitted law inside the shaded window; dashed black: dense's law in the "
              "same window.", "", "![loss vs compute](loss_vs_compute.png)", "",
              "### m(L)", "", "m(L) with its 95% band (seed-bootstrap standard error, Student-t quantile); "
              "the marker is the headline at the "
              "reference loss. Loss decreases to the right.", "",
              "![multiplier vs loss](multiplier_vs_loss.png)", "",
              "### Headline multipliers", "", "![compute multipliers](multipliers.png)", "",
              *(["### Loss vs training time", "", "The same estimator with training seconds on the x axis "
                 "(evaluation and checkpoints excluded).", "", "![loss vs time](loss_vs_time.png)", ""]
                if rep.time.get("available") else []),
              "### Taxonomy", "",
              "![m against omega](taxonomy_omega.png)", "",
              "![m against psi](taxonomy_psi.png)", "",
              "![m against nu](taxonomy_nu.png)", ""]
    lines += ["## Diagnostics", "",
              "| structure | window (FLOPs) | R² (S / dense) | frontier points per width | "
              "from first half of runs | lr per width | seeds per width |",
              "|---|---|---|---|---|---|---|"]
    warn_lines = []
    for r in summary["structures"]:
        dg = r["diagnostics"]
        win = dg.get("window")
        win_t = f"{fmt(win[0])}–{fmt(win[1])}" if win else "n/a"
        pts = ", ".join(f"{w}: {n}" for w, n in (dg.get("frontier_points_per_width") or {}).items())
        first = (f"{dg['frontier_points_first_half']} of {dg['frontier_points']}"
                 if dg.get("frontier_points") else "n/a")
        lrs = ", ".join(f"{w}: {fmt(lr)}" for w, lr in (dg.get("lr_by_width") or {}).items())
        seeds = ", ".join(f"{w}: {n}" for w, n in (dg.get("seeds_per_width") or {}).items())
        lines.append(f"| {md(r['name'])} | {win_t} | {fmt(dg.get('r2'))} / {fmt(dg.get('dense_r2'))} "
                     f"| {pts or 'n/a'} | {first} | {lrs or 'n/a'} | {seeds or 'n/a'} |")
        for w in dg.get("warnings", []):
            warn_lines.append(f"- **{r['name']}** (warning): {w}")
        for n in dg.get("notes", []):
            warn_lines.append(f"- **{r['name']}**: {n}")
    lines.append("")
    if warn_lines or rep.notes:
        lines += ["Warnings and notes:", "", *[f"- {n}" for n in rep.notes], *warn_lines, ""]
    else:
        lines += ["No warnings: no width makes up more than half of any frontier.", ""]
    lines += ["## Settings", "",
              f"- trained: {_execution_text(rep.execution)}",
              f"- recipe: {_recipe_text(rep.recipe)}",
              f"- loss: {s['loss_description']}",
              f"- transient left out: the first {s['transient_fraction']:.0%} of each run's steps "
              "(and its warmup)",
              f"- seeds averaged per (structure, width, step): {s.get('seed_average', 'n/a')}",
              f"- law: {s['law_form']}" + (f", E = {fmt(s.get('E'))}" if s.get("E") else ""),
              f"- window: {s['window_rule']}",
              f"- reference loss: {s.get('reference_loss_rule', 'n/a')}",
              f"- interval: {s.get('interval', 'n/a')}, {s['n_bootstrap']} replicates, "
              f"level {s.get('ci_level', 0.95):g}, bootstrap seed {s['bootstrap_seed']}; "
              f"run seeds {s['run_seeds']}", ""]
    return "\n".join(lines)


def _execution_text(ex: dict[str, Any]) -> str:
    """Where the runs trained, in one line: precision, devices, threads, executors."""
    if not ex or not ex.get("precisions"):
        return "no finished runs"

    def join(values: Sequence[Any]) -> str:
        return ", ".join(str(v) for v in values) or "unknown"

    text = (f"precision {join(ex['precisions'])} on {join(ex['devices'])} ({join(ex['device_names'])}), "
            f"{join(ex['threads'])} torch thread(s) per run, {join(ex['executors'])}")
    if ex.get("runs_without_record"):
        text += f"; {ex['runs_without_record']} run(s) recorded before devices were stored (fp32, device unknown)"
    return text


def _time_section(rep: Report, summary: dict[str, Any]) -> list[str]:
    """Compute and time multipliers side by side, and what they say together."""
    t = rep.time
    lines = ["## Time", ""]
    if not t.get("available"):
        return lines + [f"No time multiplier: {t.get('why', 'no training times recorded')}.", ""]
    where = (f"measured on {', '.join(map(str, t['device_names'] or [])) or 'an unknown device'}, "
             f"{', '.join(map(str, t['threads'] or [])) or '?'} torch thread(s) per run, "
             f"{', '.join(map(str, t['executors'] or [])) or 'unknown executor'}")
    if t.get("indicative"):
        where += f". Indicative only: runs shared the machine ({t['why']})"
    else:
        where += f", assuming {t['assumes']}"
    lines += [f"t(L) = T_dense(L) / T_S(L): how many times less training time than dense S needs to reach "
              f"loss L, {where}. The compute multiplier m counts FLOPs, t counts seconds: t / m below 1 means "
              "the structure's FLOPs run slower than dense's on this machine. t comes from the same estimator on "
              "training seconds, each law fitted on its own frontier over the losses both reach (their seconds "
              "need not overlap); a side whose interval holds 1 reads \"may\".", "",
              "| structure | m (compute) [95% CI] | t (time) [95% CI] | t / m | reading |", "|---|---|---|---|---|"]
    for r in summary["structures"]:
        if r["is_dense"]:
            continue
        m, tm = r["compute_multiplier"], r["time_multiplier"]
        cm = f"{fmt(m)} {ci_text(r['compute_multiplier_ci']) or '(no interval)'}" if m is not None else "n/a"
        ct = f"{fmt(tm)} {ci_text(r['time_multiplier_ci']) or '(no interval)'}" if tm is not None else "n/a"
        ratio = fmt(tm / m) if m and tm else "n/a"
        reading = _time_reading(m, tm, r["compute_multiplier_ci"], r["time_multiplier_ci"])
        lines.append(f"| {md(r['name'])} | {cm} | {ct} | {ratio} | {reading} |")
    return lines + [""]


def _time_reading(m: float | None, t: float | None, m_ci: Any = None, t_ci: Any = None) -> str:
    """What m and t say together; a side whose interval holds 1 is "may", not settled."""
    if m is None or t is None:
        return "no estimate"

    def verdict(x: float, ci: Any) -> tuple[bool, str]:
        settled = ci is None or not (ci[0] <= 1.0 <= ci[1])
        verb = ("saves" if x > 1 else "costs") if settled else ("may save" if x > 1 else "may cost")
        return x > 1, verb

    saves_c, verb_c = verdict(m, m_ci)
    saves_t, verb_t = verdict(t, t_ci)
    if saves_c != saves_t:
        return f"{verb_c} compute but {verb_t} time here"
    return f"{verb_c} compute and time" if verb_c == verb_t else f"{verb_c} compute, {verb_t} time"


def _recipe_text(recipe: dict[str, Any]) -> str:
    """The recipe settings, one value each where all runs agree; dense's einsum norm said plainly."""
    if not recipe:
        return "n/a"
    parts = [f"{k} {'/'.join(str(v) for v in vals)}" for k, vals in recipe.items() if vals]
    norm = recipe.get("dense_norm") or []
    said = ("dense layers carry the einsum norm" if norm == [True] else
            "dense layers are plain (no einsum norm)" if norm == [False] else
            "dense's einsum norm differs between runs")
    return f"{said}; " + ", ".join(parts)


def _experts_section(rep: Report) -> list[str]:
    """Load balance of the mixtures of experts (report.experts)."""
    if not rep.experts:
        return []
    lines = ["## Experts", "",
             "Routing of the last training step at each logged point, averaged over the MoE layers and runs. "
             "top share x E: the busiest expert's share of the assignments times the number of experts (1: "
             "balanced; E: one expert takes everything); entropy / ln E: 1 when the router spreads its "
             "probability evenly. A layer collapsed when its top expert held more than twice its fair share for "
             "more than half of the run's training steps (each logged share standing for the steps up to the next "
             "log point).", "",
             "| structure | experts | runs | top share x E (first → last) | entropy / ln E (last) | aux loss (last) "
             "| collapsed layers |", "|---|---|---|---|---|---|---|"]
    for name, e in sorted(rep.experts.items()):
        lines.append(f"| {md(name)} | {e['experts']} | {e['runs']} | {fmt(e['first'])} → {fmt(e['last'])} | "
                     f"{fmt(e['entropy'])} | {fmt(e['aux'])} | {e['layers_collapsed']} |")
    for name, e in sorted(rep.experts.items()):
        for c in e["collapsed"][:SHOWN_COLLAPSED]:
            lines.append(f"- **{name}** width {c['width']} seed {c['seed']}, layer `{c['layer']}`: top expert above "
                         f"2x its fair share for {c['fraction_of_steps']:.0%} of the training steps (last share "
                         f"{c['last_top_share']:.2f})")
        if len(e["collapsed"]) > SHOWN_COLLAPSED:
            lines.append(f"- **{name}**: {len(e['collapsed']) - SHOWN_COLLAPSED} more collapsed layer(s) in "
                         "summary.json (`experts`)")
    return lines + ["", "![expert load](expert_load.png)", ""]

