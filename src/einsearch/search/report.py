"""Report of a sweep: summary.json, plots and report.md, from the results store alone.

``write_report(out_dir)`` reads ``out_dir/results.sqlite`` (nothing else), measures every
structure's compute multiplier over dense with :func:`einsearch.search.analysis.analyze`
(seed-averaged frontiers without the transient, laws fitted in a common compute window,
m(L) = C_dense(L) / C_S(L) without extrapolation, seed-bootstrap intervals; docs/design.md
section 6) and writes:

* ``summary.json``           settings, notes and per structure: ``compute_multiplier`` at
  ``reference_loss`` with ``compute_multiplier_ci`` (null: no interval), ``multiplier_by_loss``,
  ``exponent``, ``exponent_delta``, ``varies``, ``omega``/``psi``/``nu`` (null for MoE kinds),
  ``diagnostics``; ``head_to_head`` for structures with a ``baseline`` (BTT-MoE vs FFN-MoE)
* ``loss_vs_compute.png``    seed-averaged curves (faint), frontier points, fitted laws inside
  their window (solid), the window (shaded), dense's law in the same window (dashed)
* ``multiplier_vs_loss.png`` m(L) per structure with its 95% band (seed bootstrap, t quantile)
* ``multipliers.png``        headline m at the reference loss with its interval, coloured by psi
* ``taxonomy_{omega,psi,nu}.png``: headline m against each taxonomy value
* ``report.md``              a reading that claims only what the intervals support, tables,
  diagnostics and the figures

Everything is computed and rendered in memory first; only then is each file written
atomically (temporary file, then ``os.replace``), so an error leaves the previous report (or
none), never a half-written one.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from einsearch._checks import check_positive_float

from ._io import atomic_write_bytes, finite_or_none, utc_now_iso
from .analysis import (
    DEFAULT_TRANSIENT_FRACTION,
    MIN_SEEDS_FOR_INTERVAL,
    VARIES_FACTOR,
    AnalysisResult,
    Curve,
    StructureAnalysis,
    analyze,
    curves_from_store,
    select_lrs,
)
from .store import ResultStore, RunRow

__all__ = ["write_report", "build_report", "StructureInfo", "STORE_NAME", "PLOT_NAMES", "LOSSES"]

logger = logging.getLogger(__name__)

STORE_NAME = "results.sqlite"
PLOT_NAMES = ("loss_vs_compute.png", "multiplier_vs_loss.png", "multipliers.png",
              "taxonomy_omega.png", "taxonomy_psi.png", "taxonomy_nu.png")
LOSSES = ("eval", "train")
_DENSE_THETA = "(1|0|0|1|0|0|0)"
_TAX_LABELS = {
    "omega": ("ω", "parameter sharing ω = log_d(FLOPs / params)"),
    "psi": ("ψ", "rank exponent ψ (rank ~ d^ψ)"),
    "nu": ("ν", "compute exponent ν (FLOPs ~ d^(1+ν))"),
}
_LOSS_TEXT = {"eval": "held-out (eval) loss at each logged step",
              "train": "training loss averaged over each logging window"}


# ------------------------------------------------------------------------------------------
# what the store says about each structure


@dataclass
class StructureInfo:
    """One structure as recorded in the store, with its config's identity and taxonomy."""

    name: str
    theta: str | None
    omega: float | None
    psi: float | None
    nu: float | None
    is_dense: bool
    is_moe: bool
    baseline: str | None            # the store name of its head-to-head reference, if present
    widths: list[int]
    params: list[int]
    seeds: list[int]
    runs: int
    diverged_runs: int
    failed_runs: int
    analysis: StructureAnalysis | None = None
    notes: list[str] = field(default_factory=list)


def _config(name: str) -> Any:
    """``einsearch.parse_structure(name)``, or None for a name the library cannot parse."""
    from einsearch import parse_structure

    try:
        return parse_structure(name)
    except (ValueError, TypeError, KeyError):
        return None


def _infos(runs: Sequence[RunRow]) -> list[StructureInfo]:
    by_name: dict[str, list[RunRow]] = {}
    for r in runs:
        by_name.setdefault(r.structure, []).append(r)
    configs = {name: _config(name) for name in by_name}
    # head-to-head references by the configs' identity (their canonical name), not by text
    canon = {name: (c.name if c is not None else name) for name, c in configs.items()}
    out = []
    for name, rs in by_name.items():
        cfg = configs[name]
        first = next((r for r in rs if r.theta), rs[0])
        if cfg is not None:
            theta = str(cfg.theta) if cfg.theta is not None else None
            tax = cfg.taxonomy()
            omega, psi, nu = (tax.omega, tax.psi, tax.nu) if tax is not None else (None, None, None)
            is_moe = bool(cfg.is_moe)
            base_cfg = _config(cfg.baseline) if cfg.baseline else None
            base_name = base_cfg.name if base_cfg is not None else cfg.baseline
            baseline = next((n for n, c in canon.items() if base_name and c == base_name and n != name), None)
        else:  # a kind this library does not know: what the sweep recorded
            theta, omega, psi, nu = first.theta, first.omega, first.psi, first.nu
            is_moe, baseline = theta is None, None
        if is_moe:
            omega = psi = nu = None
        per_width: dict[int, int] = {}
        for r in rs:
            if r.width is not None and r.params is not None:
                per_width.setdefault(int(r.width), int(r.params))
        out.append(StructureInfo(
            name=name, theta=theta, omega=omega, psi=psi, nu=nu,
            is_dense=(theta == _DENSE_THETA and not is_moe), is_moe=is_moe, baseline=baseline,
            widths=sorted({int(r.width) for r in rs if r.width is not None}),
            params=[per_width[w] for w in sorted(per_width)],
            seeds=sorted({int(r.seed) for r in rs if r.seed is not None}),
            runs=sum(r.status in ("finished", "diverged") for r in rs),
            diverged_runs=sum(r.status == "diverged" for r in rs),
            failed_runs=sum(r.status == "failed" for r in rs)))
    return out


# ------------------------------------------------------------------------------------------
# analysis


@dataclass
class _Report:
    task: str
    loss: str
    infos: list[StructureInfo]          # dense first, then by headline multiplier
    dense: StructureInfo
    result: AnalysisResult | None
    curves: list[Curve]
    settings: dict[str, Any]
    notes: list[str]
    head_to_head: list[dict[str, Any]]
    n_bootstrap: int

    def by_name(self, name: str) -> StructureInfo:
        return next(i for i in self.infos if i.name == name)


def _check_options(loss: Any, n_bootstrap: Any, transient: Any, offset: Any,
                   reference_loss: Any) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}")
    if isinstance(transient, bool) or not isinstance(transient, (int, float)) or not 0 <= transient < 1:
        raise ValueError(f"transient must be a fraction of each run's steps in [0, 1), got {transient!r}")
    if offset is not None and offset != "shared" and (
            isinstance(offset, bool) or not isinstance(offset, (int, float))
            or not math.isfinite(offset) or offset < 0):
        raise ValueError(f"offset must be None, 'shared' or a fixed E >= 0, got {offset!r}")
    if reference_loss is not None:
        check_positive_float(reference_loss, "reference_loss")


def build_report(store: ResultStore, task: str | None = None, *, loss: str = "eval",
                 n_bootstrap: int = 200, seed: int = 0,
                 transient: float = DEFAULT_TRANSIENT_FRACTION,
                 offset: None | str | float = None,
                 reference_loss: float | None = None) -> _Report:
    """Analyse ``task`` in ``store`` (nothing written). Raises ``ValueError`` when the store is
    empty, holds several tasks and none was chosen, or has no dense run."""
    _check_options(loss, n_bootstrap, transient, offset, reference_loss)
    task = store.resolve_task(task)
    infos = _infos(store.runs(task=task))
    dense_rows = [i for i in infos if i.is_dense]
    if not dense_rows:
        raise ValueError(
            f"no dense runs for task {task!r} in {store.path}: the compute multiplier is measured "
            f"against dense, so a sweep must include the structure 'dense' (found: "
            f"{sorted(i.name for i in infos)})")
    dense = max(dense_rows, key=lambda i: (i.name == "dense", i.runs))
    for i in dense_rows:
        if i is not dense:
            i.is_dense = False
            i.notes.append(f"also dense (θ = {_DENSE_THETA}); measured against {dense.name!r} like any structure")
    curves = curves_from_store(store, task=task, loss=loss)
    present = {c.structure for c in curves}
    for i in infos:
        if i.name not in present:
            i.notes.append("no finished run" + (" (all diverged)" if i.diverged_runs else "")
                           + (f" with {loss} loss points" if i.runs > i.diverged_runs else ""))

    opts: dict[str, Any] = dict(transient_fraction=float(transient), reference_loss=reference_loss, offset=offset,
                n_bootstrap=int(n_bootstrap), seed=int(seed))
    result = None
    notes: list[str] = []
    settings: dict[str, Any] = {}
    if dense.name in present:
        result = analyze(curves, dense=dense.name, **opts)
        settings = dict(result.settings)
        notes.extend(result.notes)
        for i in infos:
            i.analysis = result.structures.get(i.name)
    else:
        notes.append(f"dense ({dense.name!r}) has no finished run with {loss} loss points, so "
                     "there are no multipliers")
    settings.update({
        "loss": loss, "loss_description": _LOSS_TEXT[loss],
        "transient_fraction": float(transient),
        "law_form": settings.get("law", "power") + (
            ": log(L - E) = log a - b log C, L(C) = E + a C^-b" if settings.get("E") else
            ": log L = log a - b log C"),
        "offset_requested": offset if offset is None or isinstance(offset, str) else float(offset),
        "window_rule": ("common compute window of S against dense: the intersection of the compute spans of the two "
                        "frontiers; usable only if inside it each frontier has >= 3 points from "
                        ">= 2 widths; both laws are fitted inside it (dense's own record: its "
                        "whole span)"),
        "reference_loss_requested": reference_loss,
        "n_bootstrap": int(n_bootstrap), "bootstrap_seed": int(seed),
        "run_seeds": sorted({s for i in infos for s in i.seeds}),
        "min_seeds_for_interval": MIN_SEEDS_FOR_INTERVAL, "varies_factor": VARIES_FACTOR,
    })

    h2h = []
    for i in infos:
        if i.baseline is None or i.name not in present:
            continue
        entry: dict[str, Any] = {"name": i.name, "reference": i.baseline}
        if i.baseline not in present:
            entry.update(_empty_summary(), notes=[f"{i.baseline!r} has no finished run"])
        else:
            sub = [c for c in curves if c.structure in (i.name, i.baseline)]
            try:
                rec = analyze(sub, dense=i.baseline, **opts)[i.name]
                row = rec.to_summary()
                diag = row.pop("diagnostics")
                entry.update(row, notes=diag["warnings"] + diag["notes"],
                             enough_seeds=_enough_seeds(sub))
            except ValueError as err:
                entry.update(_empty_summary(), notes=[f"no estimate: {err}"])
        h2h.append(entry)

    def key(i: StructureInfo) -> tuple:
        m = i.analysis.compute_multiplier if i.analysis is not None else None
        return (i is not dense, m is None, -(m or 0.0), i.name)

    infos.sort(key=key)
    return _Report(task=task, loss=loss, infos=infos, dense=dense, result=result, curves=curves,
                   settings=settings, notes=notes, head_to_head=h2h, n_bootstrap=int(n_bootstrap))


def _enough_seeds(sub: Sequence[Curve]) -> bool:
    """Whether every (structure, width) of ``sub`` has enough seeds for an interval."""
    counts: dict[tuple[str, int], set] = {}
    for c in sub:
        counts.setdefault((c.structure, c.width), set()).add(c.seed)
    return all(len(v) >= MIN_SEEDS_FOR_INTERVAL for v in counts.values())


def _empty_summary() -> dict[str, Any]:
    return {"compute_multiplier": None, "compute_multiplier_ci": None, "reference_loss": None,
            "multiplier_by_loss": [], "exponent": None, "exponent_delta": None, "varies": None}


# ------------------------------------------------------------------------------------------
# summary.json


def _summary(rep: _Report) -> dict[str, Any]:
    rows = []
    for i in rep.infos:
        row: dict[str, Any] = {
            "name": i.name, "theta": i.theta, "omega": finite_or_none(i.omega), "psi": finite_or_none(i.psi),
            "nu": finite_or_none(i.nu), "is_dense": i.is_dense, "is_moe": i.is_moe,
            "widths": i.widths, "params": i.params, "seeds": i.seeds, "runs": i.runs,
            "diverged_runs": i.diverged_runs, "failed_runs": i.failed_runs,
        }
        if i.analysis is not None:
            s = i.analysis.to_summary()
        else:
            s = _empty_summary()
            s["diagnostics"] = {"warnings": [], "notes": []}
        s["diagnostics"]["notes"] = list(i.notes) + list(s["diagnostics"].get("notes", []))
        row.update(s)
        rows.append(row)
    return {
        "task": rep.task,
        "generated_at": utc_now_iso(),
        "dense": rep.dense.name,
        "settings": rep.settings,
        "estimator": {
            "loss": rep.settings["loss_description"],
            "compute_multiplier": ("m(L) = C_dense(L) / C_S(L) from the two laws fitted in the "
                                   "pair's common compute window, at reference_loss; > 1: S needs "
                                   "less training compute than dense for loss L"),
            "compute_multiplier_ci": ("m x exp(-/+ t se): se = sd of log m over a bootstrap "
                                      "that redraws seeds (one draw for every run when all ran "
                                      "the same seeds), t = Student-t quantile with (seeds - 1) "
                                      "degrees of freedom; null with fewer than "
                                      f"{MIN_SEEDS_FOR_INTERVAL} seeds at a width"),
            "multiplier_by_loss": "m at the lowest, geometric-middle and highest loss both reach",
            "exponent": "b of L = E + a C^-b on the structure's frontier inside the window",
            "exponent_delta": "b_S - b_dense, dense fitted in the same window",
            "varies": f"max m / min m over the common loss range > {VARIES_FACTOR:g}",
            "diverged_runs": "recorded, counted, excluded from frontiers",
        },
        "notes": rep.notes,
        "structures": rows,
        "head_to_head": rep.head_to_head,
    }


# ------------------------------------------------------------------------------------------
# formatting helpers


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}"


def _fmt_params(params: list[int]) -> str:
    def one(p: int) -> str:
        for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if p >= div:
                return f"{p / div:.3g}{suf}"
        return str(p)

    if not params:
        return "n/a"
    return one(params[0]) if len(params) == 1 else f"{one(params[0])}–{one(params[-1])}"


def _md(text: object) -> str:
    """Text safe inside a Markdown table cell (theta text contains '|')."""
    return str(text).replace("|", "\\|")


def _ci_text(ci: Sequence[float | None] | None) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci is not None and None not in ci else ""


# ------------------------------------------------------------------------------------------
# the reading


def _no_interval_reason(rep: _Report, i: StructureInfo) -> str:
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
                     f"{_fmt(hi_l['multiplier'])}× at loss {_fmt(hi_l['loss'])} to "
                     f"{_fmt(lo_l['multiplier'])}× at loss {_fmt(lo_l['loss'])} "
                     f"(b − b_{ref} = {_fmt(s['exponent_delta'], 2)})")
        apart = [x for x in lv if x["ci"] is not None and None not in x["ci"]
                 and (x["ci"][0] > 1 or x["ci"][1] < 1)]
        if apart:
            parts.append("; its interval excludes 1 at " + ", ".join(
                f"loss {_fmt(x['loss'])} ({_fmt(x['multiplier'])}× {_ci_text(x['ci'])}, "
                f"{'better' if x['ci'][0] > 1 else 'worse'})" for x in apart))
        if m is not None:
            parts.append(f"; at the reference loss {_fmt(lref)}, m = {_fmt(m)}× {_ci_text(ci)}".rstrip()
                         + f": {_verdict(m, ci, ref, no_ci)}")
        return "".join(parts) + "."
    if m is None:
        return ""
    return (f"**{name}**: m = {_fmt(m)}× {_ci_text(ci)}".rstrip() + f" at loss {_fmt(lref)}: "
            f"{_verdict(m, ci, ref, no_ci)}.")


def _taxonomy_sentence(rep: _Report, summ: dict[str, dict[str, Any]]) -> str:
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


def _reading(rep: _Report, summary: dict[str, Any]) -> str:
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


def _markdown(rep: _Report, summary: dict[str, Any]) -> str:
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
            mult = f"{_fmt(r['compute_multiplier'])} {_ci_text(r['compute_multiplier_ci']) or '(no interval)'}"
        else:
            mult = "n/a"
        levels = ", ".join(f"{_fmt(x['multiplier'])}@{_fmt(x['loss'])}" for x in r["multiplier_by_loss"])
        runs = f"{i.runs}" + (f" ({i.diverged_runs} diverged)" if i.diverged_runs else "")
        theta = f"`{_md(i.theta)}`" if i.theta else "n/a"
        lines.append(f"| {_md(i.name)} | {theta} | {_fmt(i.omega, 2)} | {_fmt(i.psi, 2)} | "
                     f"{_fmt(i.nu, 2)} | {_fmt_params(i.params)} | {_fmt(r['exponent'])} | "
                     f"{'—' if i.is_dense else _fmt(r['exponent_delta'], 2)} | {mult} | "
                     f"{_fmt(r['reference_loss'])} | {levels or 'n/a'} | {runs} |")
    lines += ["", "m > 1: the structure reaches the loss with 1/m of dense's training compute. "
              "The headline is at L_ref (by default the lowest loss both frontiers reach); m at "
              "3 losses runs from the lowest loss both reach to the highest. Interval: "
              f"{summary['estimator']['compute_multiplier_ci']}.", ""]
    if rep.head_to_head:
        lines += ["## Head to head", "",
                  "| structure | against | m at L_ref [95% CI] | L_ref | b − b_ref | m at 3 losses |",
                  "|---|---|---|---|---|---|"]
        for h in rep.head_to_head:
            levels = ", ".join(f"{_fmt(x['multiplier'])}@{_fmt(x['loss'])}" for x in h["multiplier_by_loss"])
            ci = _ci_text(h["compute_multiplier_ci"]) or "(no interval)"
            lines.append(f"| {_md(h['name'])} | {_md(h['reference'])} | "
                         f"{_fmt(h['compute_multiplier'])} {ci} | {_fmt(h['reference_loss'])} | "
                         f"{_fmt(h['exponent_delta'], 2)} | {levels or 'n/a'} |")
        lines += ["", "Same estimator as against dense, with the reference in dense's place "
                  "(> 1: the first needs less compute for the same loss).", ""]
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
        win_t = f"{_fmt(win[0])}–{_fmt(win[1])}" if win else "n/a"
        pts = ", ".join(f"{w}: {n}" for w, n in (dg.get("frontier_points_per_width") or {}).items())
        first = (f"{dg['frontier_points_first_half']} of {dg['frontier_points']}"
                 if dg.get("frontier_points") else "n/a")
        lrs = ", ".join(f"{w}: {_fmt(lr)}" for w, lr in (dg.get("lr_by_width") or {}).items())
        seeds = ", ".join(f"{w}: {n}" for w, n in (dg.get("seeds_per_width") or {}).items())
        lines.append(f"| {_md(r['name'])} | {win_t} | {_fmt(dg.get('r2'))} / {_fmt(dg.get('dense_r2'))} "
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
              f"- loss: {s['loss_description']}",
              f"- transient left out: the first {s['transient_fraction']:.0%} of each run's steps "
              "(and its warmup)",
              f"- seeds averaged per (structure, width, step): {s.get('seed_average', 'n/a')}",
              f"- law: {s['law_form']}" + (f", E = {_fmt(s.get('E'))}" if s.get("E") else ""),
              f"- window: {s['window_rule']}",
              f"- reference loss: {s.get('reference_loss_rule', 'n/a')}",
              f"- interval: {s.get('interval', 'n/a')}, {s['n_bootstrap']} replicates, "
              f"level {s.get('ci_level', 0.95):g}, bootstrap seed {s['bootstrap_seed']}; "
              f"run seeds {s['run_seeds']}", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# plots


def _colors(rep: _Report) -> dict[str, Any]:
    import matplotlib

    others = [i.name for i in rep.infos if not i.is_dense]
    cmap = matplotlib.colormaps["tab10" if len(others) <= 10 else "tab20"]
    out: dict[str, Any] = {name: cmap(k % cmap.N) for k, name in enumerate(sorted(others))}
    out[rep.dense.name] = "black"
    return out


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _mean_curves(rep: _Report) -> dict[str, list[tuple[int, np.ndarray, np.ndarray]]]:
    """Per structure: (width, compute, loss) of the seed-averaged curve at the chosen lr,
    every logged step (transient included: the plot shows what was left out)."""
    chosen, _ = select_lrs(rep.curves) if rep.curves else ({}, {})
    groups: dict[tuple[str, int], list[Curve]] = {}
    for c in rep.curves:
        if c.lr == chosen.get((c.structure, int(c.width))):
            groups.setdefault((c.structure, int(c.width)), []).append(c)
    out: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for (name, w), cs in sorted(groups.items()):
        steps = set(cs[0].step.tolist())
        for c in cs[1:]:
            steps &= set(c.step.tolist())
        st = np.asarray(sorted(steps), dtype=np.int64)
        if st.size == 0:
            continue
        comp = np.mean([c.compute[np.searchsorted(c.step, st)] for c in cs], axis=0)
        loss = np.exp(np.mean([np.log(c.loss[np.searchsorted(c.step, st)]) for c in cs], axis=0))
        out.setdefault(name, []).append((w, comp, loss))
    return out


def _loglog(ax: Any, small: bool = True) -> None:
    lim = ax.dataLim.get_points()
    if np.all(np.isfinite(lim)) and np.all(lim[0] > 0) and ax.has_data():
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no finished runs to plot", ha="center", va="center",
                transform=ax.transAxes, color="grey")
    ax.grid(True, which="major", alpha=0.3, lw=0.5)
    if ax.get_xscale() == "log":  # few minor ticks: each costs a draw on every render
        from matplotlib.ticker import LogLocator

        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
    if small:
        ax.tick_params(labelsize=7)


def _law_line(law: Any, window: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    c = np.geomspace(window[0], window[1], 48)
    return c, np.asarray(law.loss(c), dtype=float)


def _bottom_labels(flat: Sequence[Any], n: int, ncol: int, label: str) -> None:
    """x tick labels and label on every visible panel with no visible panel below it
    (shared x axes hide them on all but the last row, even above an empty slot)."""
    for k in range(n):
        if k + ncol >= n:
            flat[k].xaxis.set_tick_params(labelbottom=True)
            flat[k].set_xlabel(label, fontsize=9)


def _panel_title(name: str, s: dict[str, Any], dense: bool) -> str:
    if dense:
        return f"{name} (reference), b = {_fmt(s['exponent'], 2)}"
    if s["compute_multiplier"] is None:
        return f"{name}: no multiplier"
    ci = _ci_text(s["compute_multiplier_ci"]) or "(no interval)"
    return (f"{name}: m = {_fmt(s['compute_multiplier'], 2)}× {ci}\n"
            f"at L = {_fmt(s['reference_loss'])}, b = {_fmt(s['exponent'], 2)}")


def _plot_loss_vs_compute(rep: _Report, summ: dict[str, dict[str, Any]]) -> bytes:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    colors = _colors(rep)
    mean = _mean_curves(rep)
    items = [rep.dense] + [i for i in rep.infos if not i.is_dense]
    n = len(items) + (1 if len(items) > 1 else 0)
    ncol = 2 if n == 4 else min(3, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.7 * nrow), sharex=True,
                             sharey=True, squeeze=False)
    flat = list(axes.ravel())
    panels = flat
    if len(items) > 1:
        ax0, panels = flat[0], flat[1:]
        for i in items:
            a = i.analysis
            if a is None or a.law is None or a.window is None:
                continue
            c, lo = _law_line(a.law, a.window)
            ax0.plot(c, lo, color=colors[i.name], lw=2.4 if i.is_dense else 1.6,
                     ls="--" if i.is_dense else "-", label=i.name)
        _loglog(ax0)
        ax0.set_title("fitted laws inside their windows", fontsize=9)
        if ax0.get_legend_handles_labels()[0]:
            ax0.legend(fontsize=7, ncol=1 if len(items) < 7 else 2, loc="upper right", framealpha=0.85)
    for ax, i in zip(panels, items):
        col = colors[i.name]
        for _w, c, lo in mean.get(i.name, []):
            ax.plot(c, lo, color=col if not i.is_dense else "grey", alpha=0.35, lw=0.9)
        a = i.analysis
        if a is not None and a.frontier is not None and len(a.frontier):
            f = a.frontier
            inside = (np.zeros(len(f), bool) if a.window is None else
                      (f.compute >= a.window[0] * (1 - 1e-9)) & (f.compute <= a.window[1] * (1 + 1e-9)))
            ax.plot(f.compute[inside], f.loss[inside], "o", color=col, ms=3.4)
            ax.plot(f.compute[~inside], f.loss[~inside], "o", mfc="none", mec=col, ms=3.4, mew=0.8)
        if a is not None and a.window is not None:
            ax.axvspan(a.window[0], a.window[1], color=col if not i.is_dense else "grey", alpha=0.08)
            if a.dense_law is not None and not i.is_dense:
                c, lo = _law_line(a.dense_law, a.window)
                ax.plot(c, lo, "--", color="black", lw=1.4)
            if a.law is not None:
                c, lo = _law_line(a.law, a.window)
                ax.plot(c, lo, color=col, lw=2.2, ls="--" if i.is_dense else "-")
        _loglog(ax)
        ax.set_title(_panel_title(i.name, summ[i.name], i.is_dense), fontsize=8.5)
    for ax in flat[n:]:
        ax.set_visible(False)
    # the transient is shown but does not own the y range: frontiers get most of the height
    fl = [i.analysis.frontier.loss for i in items if i.analysis is not None
          and i.analysis.frontier is not None and len(i.analysis.frontier)]
    if fl and flat[0].get_yscale() == "log":
        lo_y, hi_y = min(float(x.min()) for x in fl), max(float(x.max()) for x in fl)
        top = min(flat[0].get_ylim()[1], hi_y * 2.5)
        flat[0].set_ylim(lo_y * 0.85, top)
        _plain_log_ticks(flat[0].yaxis)
    _bottom_labels(flat, n, ncol, "training FLOPs")
    for ax in axes[:, 0]:
        ax.set_ylabel(rep.loss + " loss", fontsize=9)
    handles = [Line2D([], [], color="grey", alpha=0.5, lw=0.9, label="seed-averaged run (one per width)"),
               Line2D([], [], marker="o", ls="none", color="grey", ms=4, label="frontier point in window"),
               Line2D([], [], marker="o", ls="none", mfc="none", mec="grey", ms=4, label="frontier point outside"),
               Line2D([], [], color="grey", lw=2.2, label="fitted law (inside window)"),
               Line2D([], [], color="black", lw=1.4, ls="--", label="dense's law, same window"),
               Patch(color="grey", alpha=0.15, label="common compute window")]
    fig.suptitle(f"{rep.task}: loss vs training compute", fontsize=11)
    fig.tight_layout(rect=(0, 0.06 if nrow > 1 else 0.1, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    return _png(fig)


def _plain_log_ticks(axis: Any) -> None:
    """Log axis ticks as plain numbers (0.6, 0.8, 1) rather than 6 x 10^-1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _x_loss_axis(ax: Any) -> None:
    ax.set_xscale("log")
    ax.invert_xaxis()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=tuple(np.arange(1.0, 10.0))))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _times_axis(ax: Any, axis: str = "y") -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    target.set_minor_formatter(NullFormatter())


def _plot_multiplier_vs_loss(rep: _Report, summ: dict[str, dict[str, Any]]) -> bytes:
    import matplotlib.pyplot as plt

    colors = _colors(rep)
    bands = {i.name: i.analysis.band for i in rep.infos if not i.is_dense
             and i.analysis is not None and i.analysis.band is not None}
    items = [i for i in rep.infos if i.name in bands]
    many = len(items) > 4
    if many:
        ncol = min(3, len(items))
        nrow = math.ceil(len(items) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.3 * nrow), sharex=True,
                                 sharey=True, squeeze=False)
        flat = list(axes.ravel())
    else:
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        flat = [ax] * max(len(items), 1)
        axes = np.asarray([[ax]])
    for k, i in enumerate(items):
        ax = flat[k]
        b, s, col = bands[i.name], summ[i.name], colors[i.name]
        if many:  # the others, faint, for context
            for j in items:
                if j is not i:
                    ax.plot(bands[j.name].loss, bands[j.name].multiplier, color="grey",
                            lw=0.8, alpha=0.35)
        ok = np.isfinite(b.lo) & np.isfinite(b.hi)
        if ok.any():
            ax.fill_between(b.loss[ok], b.lo[ok], b.hi[ok], color=col, alpha=0.2, lw=0)
        label = i.name + ("" if ok.any() else " (no interval)")
        ax.plot(b.loss, b.multiplier, color=col, lw=2.0, label=label)
        if s["compute_multiplier"] is not None:
            ci = s["compute_multiplier_ci"]
            m = s["compute_multiplier"]
            yerr = None if ci is None else [[max(m - ci[0], 0)], [max(ci[1] - m, 0)]]
            ax.errorbar([s["reference_loss"]], [m], yerr=yerr, fmt="D", color=col, ms=5,
                        capsize=3, lw=1.1, mec="black", mew=0.6)
        if many:
            ax.set_title(label, fontsize=9)
    if not items:
        ax = flat[0]
        ax.text(0.5, 0.5, "no structure has a multiplier to plot", ha="center", va="center",
                transform=ax.transAxes, color="grey")
        ax.set_xlim(1, 2)
    for ax in set(flat):
        ax.axhline(1.0, color="black", lw=1.0, ls="--")
        ax.grid(True, which="both", alpha=0.25, lw=0.5)
        if items:
            ax.set_yscale("log")
            _times_axis(ax)
    if items:
        _x_loss_axis(flat[0])   # shared x: inverting once inverts all
    _bottom_labels(flat if many else flat[:1], max(len(items), 1) if many else 1,
                   ncol if many else 1, f"{rep.loss} loss (log, decreasing to the right →)")
    for ax in axes[:, 0]:
        ax.set_ylabel("m(L) = C_dense(L) / C_S(L)", fontsize=9)
    if not many and items:
        flat[0].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ttl = (f"{rep.task}: compute multiplier over dense vs loss, 95% band (seed bootstrap, t)\n"
           "(◆: headline at the reference loss; > 1: cheaper than dense)")
    if many:
        fig.suptitle(ttl, fontsize=10)
        fig.tight_layout()
        for ax in flat[len(items):]:
            ax.set_visible(False)
    else:
        flat[0].set_title(ttl, fontsize=9)
    return _png(fig)


def _tax_color(rep: _Report, key: str) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    vals = [getattr(i, key) for i in rep.infos if getattr(i, key) is not None]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    return Normalize(lo, hi), plt.get_cmap("viridis")


def _plot_multipliers(rep: _Report, summ: dict[str, dict[str, Any]]) -> bytes:
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable

    items = [i for i in rep.infos if not i.is_dense]
    items.sort(key=lambda i: (summ[i.name]["compute_multiplier"] is not None,
                              summ[i.name]["compute_multiplier"] or 0.0))
    norm, cmap = _tax_color(rep, "psi")
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * max(len(items), 2) + 1.7))
    ys = np.arange(len(items))
    vals = [v for i in items for v in [summ[i.name]["compute_multiplier"],
                                       *(summ[i.name]["compute_multiplier_ci"] or [])] if v]
    span = max([abs(math.log10(v)) for v in vals if v > 0] + [0.3]) * 1.35
    for y, i in zip(ys, items):
        s = summ[i.name]
        m, ci = s["compute_multiplier"], s["compute_multiplier_ci"]
        if m is None:
            ax.text(1.0, float(y), "  n/a (no multiplier)", va="center", fontsize=8, color="grey")
            continue
        col = cmap(norm(i.psi)) if i.psi is not None else "lightgrey"
        if ci is not None:
            ax.errorbar(m, y, xerr=[[max(m - ci[0], 0)], [max(ci[1] - m, 0)]], fmt="none",
                        ecolor="black", capsize=3, lw=1.1, zorder=2)
        ax.plot(m, y, "o", color=col, ms=9, mec="black", mew=0.7, zorder=3)
        text = f"{_fmt(m)}× " + (_ci_text(ci) if ci is not None else "(no interval)")
        text += f"  at L={_fmt(s['reference_loss'])}"
        ax.annotate(text, (max(m, ci[1] if ci else m), y), xytext=(7, 0),
                    textcoords="offset points", va="center", fontsize=7.5)
    ax.axvline(1.0, color="black", lw=1.1, ls="--", zorder=1)
    ax.set_xscale("log")
    ax.set_xlim(10 ** -span, 10 ** (span * 1.5))
    _times_axis(ax, "x")
    ax.set_yticks(ys, [i.name + (" (MoE)" if i.is_moe else "") for i in items], fontsize=8.5)
    ax.set_ylim(-0.7, max(len(items), 1) - 0.3)
    ax.set_xlabel("compute multiplier over dense at the reference loss (log; > 1: less compute)")
    ax.set_title(f"{rep.task}: headline compute multipliers with 95% intervals", fontsize=10)
    ax.grid(True, axis="x", which="both", alpha=0.25, lw=0.5)
    if any(i.psi is not None for i in items):
        sm = ScalarMappable(norm=norm, cmap=cmap)
        sm.set_array([])
        cb = fig.colorbar(sm, ax=ax, pad=0.02)
        cb.set_label("ψ (rank exponent)" + ("; grey: MoE, no ψ" if any(i.is_moe for i in items) else ""),
                     fontsize=8)
    return _png(fig)


def _plot_taxonomy(rep: _Report, summ: dict[str, dict[str, Any]], key: str) -> bytes:
    import matplotlib.pyplot as plt

    symbol, meaning = _TAX_LABELS[key]
    colors = _colors(rep)
    pts = [(i, getattr(i, key), summ[i.name]) for i in rep.infos
           if getattr(i, key) is not None and summ[i.name]["compute_multiplier"] is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    # spread structures sharing one taxonomy value a little, so their markers do not overlap
    by_x: dict[float, list] = {}
    for p in sorted(pts, key=lambda p: p[2]["compute_multiplier"]):
        by_x.setdefault(round(p[1], 6), []).append(p)
    xs = [p[1] for p in pts] or [0.0, 1.0]
    step = 0.02 * max(max(xs) - min(xs), 0.5)
    for group in by_x.values():
        for k, (i, v, s) in enumerate(group):
            xj = v + (k - (len(group) - 1) / 2) * step
            m, ci = s["compute_multiplier"], s["compute_multiplier_ci"]
            yerr = None if ci is None else [[max(m - ci[0], 0)], [max(ci[1] - m, 0)]]
            ax.errorbar([xj], [m], yerr=yerr, fmt="o", color=colors[i.name], ms=7, capsize=3,
                        mec="black", mew=0.6, lw=1.1, label=i.name + ("" if ci or i.is_dense else " (no interval)"))
    ax.axhline(1.0, color="black", lw=1.0, ls="--")
    moe = [i.name for i in rep.infos if i.is_moe]
    if not any(not i.is_dense for i, _, _ in pts):
        ax.cla()
        ax.text(0.5, 0.5, f"no structure other than dense has both a multiplier and a {symbol}"
                + ("\n(MoE kinds are not points of the θ space)" if moe else ""),
                ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set_yscale("log")
        _times_axis(ax)
        ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xlim(min(xs) - 0.15, max(xs) + 0.15)
    ax.set_xlabel(meaning, fontsize=9)
    ax.set_ylabel("m at the reference loss (× dense)", fontsize=9)
    ax.grid(True, which="both", alpha=0.25, lw=0.5)
    ax.set_title(f"{rep.task}: compute multiplier against {symbol}"
                 + (f" (MoE kinds have no {symbol}: {', '.join(moe)} not shown)" if moe else ""),
                 fontsize=9.5)
    return _png(fig)


def _render_plots(rep: _Report, summary: dict[str, Any]) -> dict[str, bytes]:
    summ = {r["name"]: r for r in summary["structures"]}
    out = {"loss_vs_compute.png": _plot_loss_vs_compute(rep, summ),
           "multiplier_vs_loss.png": _plot_multiplier_vs_loss(rep, summ),
           "multipliers.png": _plot_multipliers(rep, summ)}
    for key in ("omega", "psi", "nu"):
        out[f"taxonomy_{key}.png"] = _plot_taxonomy(rep, summ, key)
    return out


# ------------------------------------------------------------------------------------------
# writing


def write_report(out_dir: str | os.PathLike[str], *, task: str | None = None,
                 loss: str = "eval", n_bootstrap: int = 200, seed: int = 0,
                 transient: float = DEFAULT_TRANSIENT_FRACTION,
                 offset: None | str | float = None,
                 reference_loss: float | None = None) -> dict[str, Any]:
    """Analyse ``out_dir/results.sqlite`` and write the report files into ``out_dir``.

    ``loss``: the curve frontiers are built from, ``"eval"`` (held-out, default) or
    ``"train"``; ``transient``: fraction of each run's steps left out; ``offset``: None
    (L = a C^-b), ``"shared"`` (one E for all, adopted by an AIC criterion) or a fixed E;
    ``reference_loss``: the headline's loss (default: per structure, the lowest loss both it
    and dense reach). Returns the summary dict (as written to summary.json). Raises
    ``FileNotFoundError`` if the store is missing and ``ValueError`` on bad options, an empty
    store or no dense runs; nothing is written then.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    _check_options(loss, n_bootstrap, transient, offset, reference_loss)
    out = Path(out_dir)
    db = out / STORE_NAME
    if not db.is_file():
        raise FileNotFoundError(f"no results store at {db}; run `einsearch search --out {out}` first")
    with ResultStore(db) as store:
        rep = build_report(store, task, loss=loss, n_bootstrap=n_bootstrap, seed=seed,
                           transient=transient, offset=offset, reference_loss=reference_loss)
    summary = _summary(rep)
    files = _render_plots(rep, summary)           # everything in memory first ...
    files["report.md"] = _markdown(rep, summary).encode()
    files["summary.json"] = (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode()
    for name, data in files.items():              # ... then each file atomically
        atomic_write_bytes(out / name, data)
    return summary
