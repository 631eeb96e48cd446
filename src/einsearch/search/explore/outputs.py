"""What ``einsearch explore`` writes: ``explore.json`` (every trial, after every batch) and, at
the end, ``explore.md`` with ``explore_objective.png`` and ``explore_taxonomy.png``."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes
from .spec import ExploreSpec

__all__ = ["write_outputs", "JSON_NAME", "REPORT_NAME", "PLOT_NAMES", "redact"]

log = logging.getLogger(__name__)

JSON_NAME = "explore.json"
REPORT_NAME = "explore.md"
PLOT_NAMES = ("explore_objective.png", "explore_taxonomy.png")


def redact(url: str) -> str:
    """The URL without a password (it goes into logs and explore.json)."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def _trial_rows(study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        u = t.user_attrs
        row = {"number": t.number, "theta": u.get("theta"),
               "canonical_theta": u.get("canonical_theta"), "omega": u.get("omega"),
               "psi": u.get("psi"), "nu": u.get("nu"), "named": u.get("named"),
               "degenerate": u.get("degenerate"), "state": t.state.name}
        if len(study.directions) == 1:
            row["value"] = t.value if t.state.name == "COMPLETE" else None
        else:
            row["values"] = list(t.values) if t.values is not None else None
        row["ci"] = u.get("ci")
        row["intermediate"] = {str(k): v for k, v in sorted(t.intermediate_values.items())}
        for k in ("duplicate_of", "pruned_because", "retry_of", "structure"):
            if k in u:
                row[k] = u[k]
        rows.append(row)
    return rows


def _ratio_interval(a: tuple[float, tuple | None], b: tuple[float, tuple | None]):
    """m_a / m_b with a 95 % interval from the two intervals (log-normal approximation,
    independent estimates): None when either has no interval."""
    (ma, ca), (mb, cb) = a, b
    ratio = ma / mb
    if not ca or not cb or min(ca[0], cb[0]) <= 0:
        return ratio, None
    se = [(math.log(c[1]) - math.log(c[0])) / (2 * 1.96) for c in (ca, cb)]
    half = 1.96 * math.sqrt(se[0] ** 2 + se[1] ** 2)
    return ratio, (ratio * math.exp(-half), ratio * math.exp(half))


def _comparison(rows: list[dict]) -> dict[str, Any] | None:
    done = [r for r in rows if r.get("value") is not None and "duplicate_of" not in r]
    named = [r for r in done if r["named"] and r["named"] != "dense"]
    novel = [r for r in done if not r["named"]]
    if not named or not novel:
        return None
    bn = max(named, key=lambda r: r["value"])
    bv = max(novel, key=lambda r: r["value"])
    ratio, ci = _ratio_interval((bv["value"], bv["ci"]), (bn["value"], bn["ci"]))
    if ci is None:
        verdict = ("no interval (fewer than 3 seeds per width, or the estimator gave none): "
                   "the point estimates alone cannot say")
    elif ci[0] > 1:
        verdict = "yes: the interval of the ratio lies above 1"
    elif ci[1] < 1:
        verdict = "no: the best named structure is better (the interval lies below 1)"
    else:
        verdict = "undecided: the interval of the ratio contains 1"
    return {"best_novel": bv["canonical_theta"], "best_novel_trial": bv["number"],
            "best_novel_multiplier": bv["value"], "best_named": bn["named"],
            "best_named_trial": bn["number"], "best_named_multiplier": bn["value"],
            "ratio": ratio, "ratio_ci": list(ci) if ci else None, "novel_beats_named": verdict}


def write_outputs(study, spec: ExploreSpec, out: Path, objective: str, url: str | None,
                  final: bool) -> dict[str, Any]:
    """explore.json (always) and, when ``final``, explore.md and its two plots."""
    rows = _trial_rows(study)
    multi = len(study.directions) > 1
    summary: dict[str, Any] = {
        "study": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "objective": "compute multiplier over dense" + (" and params / dense" if multi else ""),
        "spec": spec.to_dict(),
        "trials": rows,
    }
    if url is not None:
        summary["storage"] = redact(url)
    if not multi:
        summary["comparison"] = _comparison(rows)
    else:
        summary["pareto_front"] = [t.number for t in study.best_trials]
    atomic_write_bytes(out / JSON_NAME, (json.dumps(summary, indent=2, default=str) + "\n").encode())
    if final:
        try:
            _plot_objective(rows, multi, out / PLOT_NAMES[0])
            _plot_taxonomy(rows, multi, out / PLOT_NAMES[1])
        except Exception as err:  # noqa: BLE001 - a plot must not lose the study's report
            log.error("plots failed: %s", err)
        atomic_write_bytes(out / REPORT_NAME, _markdown(summary, multi).encode())
    return summary


def _objective_value(r: dict, multi: bool) -> float | None:
    if multi:
        return r["values"][0] if r.get("values") else None
    return r.get("value")


def _plot_objective(rows: list[dict], multi: bool, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    done = [(r["number"], _objective_value(r, multi), r) for r in rows]
    ok = [(n, v) for n, v, r in done if v is not None]
    pruned = [n for n, v, r in done if v is None and r["state"] == "PRUNED"]
    named = [(n, v) for n, v, r in done if v is not None and r["named"]]
    if ok:
        ax.scatter([n for n, _ in ok], [v for _, v in ok], s=18, c="tab:blue", label="novel theta")
        best, xs, ys = -math.inf, [], []
        for n, v in sorted(ok):
            best = max(best, v)
            xs.append(n)
            ys.append(best)
        ax.step(xs, ys, where="post", c="k", lw=1, label="best so far")
    if named:
        ax.scatter([n for n, _ in named], [v for _, v in named], s=30, marker="s", c="tab:orange",
                   label="named structure")
    if pruned:
        lo = min((v for _, v in ok), default=1.0)
        ax.scatter(pruned, [lo * 0.9] * len(pruned), marker="x", c="0.6", s=14,
                   label="pruned (no value)")
    ax.axhline(1.0, c="0.5", ls="--", lw=0.8)
    ax.set_xlabel("trial")
    ax.set_ylabel("compute multiplier over dense")
    ax.set_yscale("log")
    ax.set_title("explore: objective by trial")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path.with_name(f".{path.name}.tmp.png"), dpi=110)
    os.replace(path.with_name(f".{path.name}.tmp.png"), path)
    plt.close(fig)


def _plot_taxonomy(rows: list[dict], multi: bool, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["omega"], r["psi"], r["nu"], v, r) for r in rows
           if (v := _objective_value(r, multi)) is not None and r.get("omega") is not None]
    from matplotlib.colors import TwoSlopeNorm

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained")
    pairs = (("omega", "psi", 0, 1), ("omega", "nu", 0, 2), ("psi", "nu", 1, 2))
    vals = [math.log2(p[3]) for p in pts]
    # diverging around m = 1 (log2 m = 0): blue cheaper than dense, red dearer
    span = max([abs(v) for v in vals] + [0.1])
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span)
    sc = None
    for ax, (xl, yl, i, j) in zip(axes, pairs):
        if pts:
            sc = ax.scatter([p[i] for p in pts], [p[j] for p in pts], c=vals, cmap="coolwarm_r", norm=norm,
                            s=[90 if p[4]["named"] else 45 for p in pts], marker="o", alpha=0.9,
                            edgecolors=["k" if p[4]["named"] else "none" for p in pts], linewidths=1.2)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.margins(0.12)
        ax.grid(alpha=0.3)
    if sc is not None:
        fig.colorbar(sc, ax=axes, label="log2 compute multiplier over dense\n(ringed: named structures)", shrink=0.9)
    fig.suptitle("explore: taxonomy of the scored thetas")
    fig.savefig(path.with_name(f".{path.name}.tmp.png"), dpi=110)
    os.replace(path.with_name(f".{path.name}.tmp.png"), path)
    plt.close(fig)


def _fmt(x: Any, d: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{d}g}"


def _ci(ci: Any) -> str:
    return "n/a" if not ci else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _markdown(summary: dict[str, Any], multi: bool) -> str:
    rows = summary["trials"]
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    spec = summary["spec"]
    lines = [f"# einsearch explore: {summary['study']}", "",
             f"Task `{spec['task']}`, dense widths {spec['widths']}"
             + (" (each theta at the widths whose FLOPs/token match them)"
                if spec.get("match_compute") else " (every theta at the same widths)")
             + f", seeds {spec['seeds']}, "
             f"lrs {spec['lrs']}, train {spec['train']}; exponents on a 1/{spec['grid']} grid; "
             f"degenerate thetas: {spec['degenerate']}.",
             f"Objective: {summary['objective']} ({', '.join(summary['directions'])}), scored "
             "by `einsearch.search.analysis` (headline multiplier at the lowest loss both "
             "frontiers reach; 95 % seed-bootstrap interval, none with fewer than 3 seeds).",
             f"Trials: {len(rows)} (" + ", ".join(f"{v} {k.lower()}" for k, v in
                                                  sorted(states.items())) + ").", ""]
    scored = [r for r in rows if _objective_value(r, multi) is not None
              and "duplicate_of" not in r]
    if multi:
        front = set(summary.get("pareto_front", []))
        best = sorted((r for r in scored if r["number"] in front),
                      key=lambda r: -r["values"][0])
        lines += ["## Pareto front (multiplier up, params / dense down)", "",
                  "Multi-objective studies cannot prune: every trial trained all widths.", ""]
    else:
        best = sorted(scored, key=lambda r: -r["value"])[:10]
        lines += ["## Best thetas", ""]
    lines += ["| trial | canonical theta | named | multiplier | 95 % CI | omega | psi | nu |"
              + (" params/dense |" if multi else ""),
              "|---|---|---|---|---|---|---|---|" + ("---|" if multi else "")]
    for r in best:
        v = _objective_value(r, multi)
        lines.append(f"| {r['number']} | `{r['canonical_theta']}` | {r['named'] or '-'} | "
                     f"{_fmt(v)} | {_ci(r['ci'])} | {_fmt(r['omega'])} | {_fmt(r['psi'])} | "
                     f"{_fmt(r['nu'])} |" + (f" {_fmt(r['values'][1])} |" if multi else ""))
    if best:
        b = best[0]
        lines += ["", f"The best theta `{b['canonical_theta']}` sits at omega = "
                      f"{_fmt(b['omega'])}, psi = {_fmt(b['psi'])}, nu = {_fmt(b['nu'])} "
                      "(omega: parameter sharing, psi: rank exponent, nu: compute exponent)."]
    cmp_ = summary.get("comparison")
    lines += ["", "## Does a theta that is none of the named structures beat every named one?",
              ""]
    if cmp_ is None:
        lines.append("Not answerable yet: it needs at least one scored named structure and one "
                     "scored novel theta" + (" (and a single objective)." if multi else "."))
    else:
        lines.append(f"Best novel theta `{cmp_['best_novel']}` (trial {cmp_['best_novel_trial']},"
                     f" multiplier {_fmt(cmp_['best_novel_multiplier'])}) against the best named "
                     f"structure {cmp_['best_named']} (trial {cmp_['best_named_trial']}, "
                     f"multiplier {_fmt(cmp_['best_named_multiplier'])}): ratio "
                     f"{_fmt(cmp_['ratio'])}, 95 % interval {_ci(cmp_['ratio_ci'])} (log-normal "
                     f"combination of the two bootstrap intervals). Verdict: "
                     f"{cmp_['novel_beats_named']}. The best of many trials is selected, so its "
                     "estimate is biased upwards; confirm it with a dedicated sweep.")
    lines += ["", "## Plots", "", f"![objective by trial]({PLOT_NAMES[0]})", "",
              f"![taxonomy]({PLOT_NAMES[1]})", ""]
    return "\n".join(lines)
