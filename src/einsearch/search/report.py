"""Report of a sweep: summary.json, plots and report.md, from the results store alone.

``write_report(out_dir)`` reads ``out_dir/results.sqlite`` (nothing else) and writes, each file
atomically (temporary file, then ``os.replace``):

* ``summary.json``        per structure: theta, taxonomy, params, exponent, multiplier + CI
* ``loss_vs_compute.png`` every run's curve (faint), each structure's frontier and fit (bold)
* ``taxonomy_omega.png``, ``taxonomy_psi.png``, ``taxonomy_nu.png``: frontiers coloured by
  that taxonomy value
* ``multipliers.png``     compute multiplier over dense with 95 % bootstrap intervals
* ``report.md``           the plots, a paper-ready table and a short written reading

The estimators are those of :mod:`einsearch.scaling`.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .scaling import (DEFAULT_TOLERANCE, StructureFit, bootstrap_multiplier, compute_multiplier,
                      fit_structure)
from .store import PointRow, ResultStore, RunRow

__all__ = ["write_report", "analyze_store", "StructureSummary", "STORE_NAME", "PLOT_NAMES"]

STORE_NAME = "results.sqlite"
PLOT_NAMES = ("loss_vs_compute.png", "taxonomy_omega.png", "taxonomy_psi.png",
              "taxonomy_nu.png", "multipliers.png")
_DENSE_THETA = "(1|0|0|1|0|0|0)"
_TAX_LABELS = {
    "omega": ("ω", "parameter sharing ω = log_d(FLOPs / params)"),
    "psi": ("ψ", "rank exponent ψ (rank ~ d^ψ)"),
    "nu": ("ν", "compute exponent ν (FLOPs ~ d^(1+ν))"),
}


@dataclass
class StructureSummary:
    """One structure's row of the report, with the fit objects for plotting."""

    name: str
    theta: str | None
    omega: float | None
    psi: float | None
    nu: float | None
    is_dense: bool
    widths: list[int]
    params: list[int]
    curves: list[tuple[np.ndarray, np.ndarray]]    # finished runs: (compute, loss)
    runs: int
    diverged_runs: int
    failed_runs: int
    fit: StructureFit | None = None
    multiplier: float = math.nan
    spread: float = math.nan
    ci: tuple[float, float] = (math.nan, math.nan)
    at_matched_loss: float = math.nan
    matched_loss: float = math.nan
    fitted_ratio: float = math.nan
    notes: list[str] = field(default_factory=list)

    @property
    def exponent(self) -> float:
        return self.fit.exponent if self.fit is not None else math.nan


# ------------------------------------------------------------------------------------------
# analysis


LOSSES = ("train", "eval")
#: fraction of each run's steps (at least its warmup) left out of the frontier
DEFAULT_SKIP_FRACTION = 0.1


def _curve(run: RunRow, points: Sequence[PointRow], skip_warmup: bool,
           loss: str = "train", skip_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(compute, loss) of a run, without its warmup and its first ``skip_fraction`` of steps
    (the early transient right after warmup falls far faster than any power law and would
    otherwise sit on the frontier and tilt the fit).

    ``loss="train"``: the mean training loss over each logging window. On fresh data (every
    batch new, as in the regression task and single-epoch language modelling) it is an unbiased
    estimate of the held-out loss, and much less noisy than a snapshot evaluation of a model
    trained at a constant learning rate, which would let lucky snapshots set the frontier.
    ``loss="eval"``: the held-out loss at the points where it was logged (train loss for a run
    that logged none).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    warmup = int(run.config.get("warmup_steps", 0) or 0) if skip_warmup else 0
    steps = int(run.config.get("steps", 0) or 0)
    first = max(warmup, math.ceil(skip_fraction * steps))
    pts = [p for p in points if p.step >= first and p.compute > 0]
    use_eval = loss == "eval" and any(p.eval_loss is not None for p in pts)
    pairs = [(p.compute, p.eval_loss if use_eval else p.train_loss) for p in pts]
    pairs = [(c, lo) for c, lo in pairs if lo is not None and math.isfinite(lo)]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    c, lo = zip(*pairs)
    return np.asarray(c, dtype=float), np.asarray(lo, dtype=float)


def _is_dense(name: str, theta: str | None) -> bool:
    return name.strip().lower() == "dense" or theta == _DENSE_THETA


def analyze_store(store: ResultStore, task: str | None = None, *, n_bootstrap: int = 200,
                  seed: int = 0, tolerance: float = DEFAULT_TOLERANCE,
                  skip_warmup: bool = True, loss: str = "train",
                  skip_fraction: float = DEFAULT_SKIP_FRACTION
                  ) -> tuple[str, list[StructureSummary]]:
    """Fit every structure of ``task`` in ``store``; returns (task, summaries, dense first).

    Raises ``ValueError`` when the store is empty, holds several tasks and none was chosen,
    or has no dense run at all (the multiplier is relative to dense).
    """
    tasks = store.tasks()
    if not tasks:
        raise ValueError(f"{store.path} holds no runs yet; run a sweep first")
    if task is None:
        if len(tasks) > 1:
            raise ValueError(f"{store.path} holds several tasks {tasks}; choose one with task=")
        task = tasks[0]
    elif task not in tasks:
        raise ValueError(f"{store.path} has no runs of task {task!r}; it has {tasks}")
    points = store.all_points()
    by_name: dict[str, list[RunRow]] = {}
    for r in store.runs(task=task):
        by_name.setdefault(r.structure, []).append(r)

    summaries = []
    for name, runs in by_name.items():
        first = next((r for r in runs if r.theta), runs[0])
        finished = [r for r in runs if r.status == "finished"]
        per_width: dict[int, int] = {}
        for r in finished + [r for r in runs if r.status == "diverged"]:
            if r.width is not None and r.params is not None:
                per_width.setdefault(int(r.width), int(r.params))
        curves = [_curve(r, points.get(r.run_id, []), skip_warmup, loss, skip_fraction)
                  for r in finished]
        curves = [c for c in curves if c[0].size]
        summaries.append(StructureSummary(
            name=name, theta=first.theta, omega=first.omega, psi=first.psi, nu=first.nu,
            is_dense=_is_dense(name, first.theta), widths=sorted(per_width),
            params=[per_width[w] for w in sorted(per_width)], curves=curves,
            runs=sum(r.status in ("finished", "diverged") for r in runs),
            diverged_runs=sum(r.status == "diverged" for r in runs),
            failed_runs=sum(r.status == "failed" for r in runs)))

    dense_rows = [s for s in summaries if s.is_dense]
    if not dense_rows:
        raise ValueError(
            f"no dense runs for task {task!r} in {store.path}: the compute multiplier is "
            f"measured against dense, so a sweep must include the structure 'dense' "
            f"(found: {sorted(by_name)})")
    dense = max(dense_rows, key=lambda s: (s.name == "dense", len(s.curves)))

    for s in summaries:
        s.fit = fit_structure(s.curves, tolerance)
        s.notes.extend(s.fit.notes)
        if not s.curves:
            s.notes.append("no finished run" + (" (all diverged)" if s.diverged_runs else ""))
    dense_law = dense.fit.law
    for s in summaries:
        if s is dense:
            if dense_law is not None:
                s.multiplier, s.spread, s.ci = 1.0, 1.0, (1.0, 1.0)
                s.at_matched_loss = s.fitted_ratio = 1.0
                s.matched_loss = float(s.fit.frontier.loss.min())
            continue
        if dense_law is None or len(s.fit.frontier) == 0:
            if dense_law is None:
                s.notes.append("dense has no fitted law, so no multiplier")
            continue
        m = compute_multiplier(dense_law, s.fit.frontier.compute, s.fit.frontier.loss,
                               dense_frontier=dense.fit.frontier, struct_law=s.fit.law)
        s.multiplier, s.spread = m.mean, m.spread
        s.at_matched_loss, s.matched_loss, s.fitted_ratio = (
            m.at_matched_loss, m.matched_loss, m.fitted_ratio)
        if n_bootstrap > 0:
            boot = bootstrap_multiplier(s.curves, dense.curves, n=n_bootstrap, seed=seed,
                                        tolerance=tolerance)
            s.ci = (boot.lo, boot.hi)
            if boot.n_failed:
                s.notes.append(f"{boot.n_failed}/{n_bootstrap} bootstrap replicates unusable")
    # dense first, then by multiplier (best first), structures without one last
    order = sorted(summaries, key=lambda s: (
        s is not dense, not math.isfinite(s.multiplier),
        -s.multiplier if math.isfinite(s.multiplier) else 0.0, s.name))
    return task, order


# Pairs of structures also compared head to head when both are in a sweep: (name, reference).
HEAD_TO_HEAD = (("btt_moe", "moe"),)


def head_to_head(rows: list[StructureSummary], *, n_bootstrap: int = 200, seed: int = 0,
                 tolerance: float = DEFAULT_TOLERANCE) -> list[dict[str, Any]]:
    """Multiplier of each ``HEAD_TO_HEAD`` structure over its reference, where both are present.

    The same estimator as against dense, with the reference's fitted law in dense's place:
    the geometric mean over the structure's frontier points of C_ref(L_i) / C_i (> 1: the
    structure needs less compute than the reference for the same loss), with a bootstrap
    interval over both structures' runs.
    """
    by_name = {s.name: s for s in rows}
    out = []
    for name, ref_name in HEAD_TO_HEAD:
        s, ref = by_name.get(name), by_name.get(ref_name)
        if s is None or ref is None or ref.fit is None or ref.fit.law is None or not len(s.fit.frontier):
            continue
        m = compute_multiplier(ref.fit.law, s.fit.frontier.compute, s.fit.frontier.loss,
                               dense_frontier=ref.fit.frontier, struct_law=s.fit.law)
        lo = hi = math.nan
        if n_bootstrap > 0:
            boot = bootstrap_multiplier(s.curves, ref.curves, n=n_bootstrap, seed=seed,
                                        tolerance=tolerance)
            lo, hi = boot.lo, boot.hi
        out.append({"name": name, "reference": ref_name, "compute_multiplier": _num(m.mean),
                    "compute_multiplier_ci": [_num(lo), _num(hi)],
                    "multiplier_at_matched_loss": _num(m.at_matched_loss)})
    return out


# ------------------------------------------------------------------------------------------
# writing


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _num(x: Any) -> Any:
    """JSON-safe number: NaN/inf -> None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


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


def _summary_json(task: str, rows: list[StructureSummary], tolerance: float,
                  n_bootstrap: int, loss: str = "train",
                  skip_fraction: float = DEFAULT_SKIP_FRACTION) -> dict[str, Any]:
    which = ("training loss averaged over each logging window" if loss == "train"
             else "held-out (eval) loss where logged")
    return {
        "task": task,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "estimator": {
            "loss": which,
            "frontier": ("lower envelope in log-log of all logged (training FLOPs, loss) points "
                         f"of all finished runs of a structure ({which}; the warmup and the first "
                         f"{skip_fraction:.0%} of each run's steps skipped), "
                         f"Pareto points within {tolerance:.0%} of the lower convex hull"),
            "law": "least squares fit of log L = log a - b log C on the frontier; exponent = b",
            "compute_multiplier": ("geometric mean over the structure's frontier points of "
                                   "C_dense(L_i) / C_i, C_dense the inverted dense law; > 1 means "
                                   "less compute than dense for the same loss"),
            "compute_multiplier_ci": (f"95% percentile bootstrap over runs ({n_bootstrap} "
                                      "replicates, runs resampled with replacement)"),
            "multiplier_at_matched_loss": ("ratio of the two frontiers' computes, interpolated "
                                           "in log-log, at the lowest loss both reach"),
            "diverged_runs": "recorded, counted, excluded from frontiers",
        },
        "structures": [
            {
                "name": s.name, "theta": s.theta, "omega": _num(s.omega), "psi": _num(s.psi),
                "nu": _num(s.nu), "params": s.params, "widths": s.widths,
                "exponent": _num(s.exponent),
                "coefficient": _num(s.fit.law.a) if s.fit and s.fit.law else None,
                "compute_multiplier": _num(s.multiplier),
                "compute_multiplier_spread": _num(s.spread),
                "compute_multiplier_ci": [_num(s.ci[0]), _num(s.ci[1])],
                "multiplier_at_matched_loss": _num(s.at_matched_loss),
                "matched_loss": _num(s.matched_loss),
                "fitted_ratio_at_matched_loss": _num(s.fitted_ratio),
                "frontier_points": len(s.fit.frontier) if s.fit else 0,
                "best_loss": _num(float(s.fit.frontier.loss.min()))
                if s.fit and len(s.fit.frontier) else None,
                "runs": s.runs, "diverged_runs": s.diverged_runs, "failed_runs": s.failed_runs,
                "is_dense": s.is_dense, "notes": s.notes,
            }
            for s in rows
        ],
    }


def _colors(rows: list[StructureSummary]) -> dict[str, Any]:
    import matplotlib

    others = sorted(s.name for s in rows if not s.is_dense)
    cmap = matplotlib.colormaps["tab10" if len(others) <= 10 else "tab20"]
    out = {name: cmap(i % cmap.N) for i, name in enumerate(others)}
    for s in rows:
        if s.is_dense:
            out[s.name] = "black"
    return out


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    _atomic_write_bytes(path, buf.getvalue())


def _fit_line(s: StructureSummary, pad: float = 1.0):
    f = s.fit.frontier
    c = np.geomspace(f.compute.min() / pad, f.compute.max() * pad, 64)
    return c, s.fit.law.loss(c)


def _draw_structure(ax, s: StructureSummary, color, faint: bool = True, label: str | None = None,
                    lw: float = 2.2) -> None:
    if faint:
        for c, lo in s.curves:
            ax.plot(c, lo, color=color, alpha=0.3, lw=0.8)
    f = s.fit.frontier if s.fit else None
    if f is not None and len(f):
        ax.plot(f.compute, f.loss, "o", color=color, ms=3.2, alpha=0.9)
    if s.fit is not None and s.fit.law is not None:
        c, lo = _fit_line(s)
        ax.plot(c, lo, color=color, lw=lw, label=label, ls="--" if s.is_dense else "-")
    elif label is not None:
        ax.plot([], [], "o", color=color, label=label + " (no fit)")


def _label(s: StructureSummary) -> str:
    if s.is_dense:
        return f"{s.name} (b={_fmt(s.exponent, 2)})"
    return f"{s.name} ×{_fmt(s.multiplier, 2)} (b={_fmt(s.exponent, 2)})"


def _plot_loss_vs_compute(rows: list[StructureSummary], task: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    colors = _colors(rows)
    dense = next(s for s in rows if s.is_dense)
    others = [s for s in rows if not s.is_dense]
    if len(others) <= 3:
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for s in others + [dense]:
            _draw_structure(ax, s, colors[s.name], label=_label(s))
        _style(ax, f"{task}: loss vs training compute")
        ax.legend(fontsize=8, loc="upper right")
    else:
        n = len(others) + 1
        ncol = min(4, math.ceil(math.sqrt(n)))
        nrow = math.ceil(n / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow),
                                 sharex=True, sharey=True, squeeze=False)
        flat = list(axes.ravel())
        ax0 = flat[0]
        for s in others + [dense]:
            if s.fit is not None and s.fit.law is not None:
                c, lo = _fit_line(s)
                ax0.plot(c, lo, color=colors[s.name], lw=2.6 if s.is_dense else 1.6,
                         ls="--" if s.is_dense else "-", label=s.name)
        _style(ax0, "all fitted laws", small=True)
        ax0.legend(fontsize=6.5, ncol=1 if n < 8 else 2, loc="lower left")
        for ax, s in zip(flat[1:], others):
            _draw_structure(ax, dense, "black", faint=False, lw=1.4)
            _draw_structure(ax, s, colors[s.name])
            _style(ax, f"{s.name} ×{_fmt(s.multiplier, 2)}, b={_fmt(s.exponent, 2)}", small=True)
        for ax in flat[n:]:
            ax.set_visible(False)
        for ax in flat[:n]:
            ax.label_outer()
        fig.suptitle(f"{task}: loss vs training compute (faint: runs; dots: frontier; "
                     "line: fitted law; dashed black: dense)", fontsize=10)
        fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _style(ax, title: str, small: bool = False) -> None:
    lim = ax.dataLim.get_points()
    if np.all(np.isfinite(lim)) and np.all(lim[0] > 0):
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:  # nothing finished (e.g. every run diverged): say so instead of an empty log axis
        ax.text(0.5, 0.5, "no finished runs to plot", ha="center", va="center",
                transform=ax.transAxes, color="grey")
    ax.set_xlabel("training FLOPs", fontsize=8 if small else 10)
    ax.set_ylabel("loss", fontsize=8 if small else 10)
    ax.set_title(title, fontsize=9 if small else 11)
    ax.grid(True, which="both", alpha=0.25, lw=0.5)
    if small:
        ax.tick_params(labelsize=7)


def _plot_taxonomy(rows: list[StructureSummary], task: str, key: str, path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    symbol, meaning = _TAX_LABELS[key]
    vals = [getattr(s, key) for s in rows if getattr(s, key) is not None]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    norm = Normalize(lo, hi)
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(8, 5.5))
    dense = next(s for s in rows if s.is_dense)
    markers = "osv^DPX*<>ph"
    k = 0
    for s in rows:
        if s.is_dense or s.fit is None or len(s.fit.frontier) == 0:
            continue
        v = getattr(s, key)
        color = cmap(norm(v)) if v is not None else "grey"
        f = s.fit.frontier
        marker = markers[k % len(markers)]
        k += 1
        label = f"{s.name} ({symbol}={_fmt(v, 2)})"
        if s.fit.law is not None:
            c, lo = _fit_line(s)
            ax.plot(c, lo, "-", color=color, lw=2.0, alpha=0.95)
            ax.plot(f.compute, f.loss, marker, color=color, ms=4, alpha=0.7, mec="none",
                    label=label)
        else:
            ax.plot(f.compute, f.loss, marker, color=color, ms=5, label=label + ", no fit")
    if dense.fit is not None and len(dense.fit.frontier):
        f = dense.fit.frontier
        if dense.fit.law is not None:
            c, lo = _fit_line(dense)
            ax.plot(c, lo, "--", color="black", lw=2.2, label="dense (fit)")
        ax.plot(f.compute, f.loss, "o", color="black", ms=3, alpha=0.6,
                label=None if dense.fit.law is not None else "dense")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left", framealpha=0.85)
    sm = ScalarMappable(norm=norm, cmap=cmap)
    sm.set_array([])
    cb = fig.colorbar(sm, ax=ax)
    cb.set_label(meaning)
    _style(ax, f"{task}: compute-optimal frontiers coloured by {symbol}\n"
               "(markers: frontier points; lines: fitted power laws)")
    _save(fig, path)
    plt.close(fig)


def _plot_multipliers(rows: list[StructureSummary], task: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    colors = _colors(rows)
    items = [s for s in rows if not s.is_dense]
    items.sort(key=lambda s: s.multiplier if math.isfinite(s.multiplier) else -math.inf)
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(items), 2) + 1.6))
    ys = np.arange(len(items))
    finite = [s.multiplier for s in items if math.isfinite(s.multiplier)]
    finite += [v for s in items for v in s.ci if math.isfinite(v)]
    span = max([abs(math.log10(v)) for v in finite if v > 0] + [0.3]) * 1.25
    for y, s in zip(ys, items):
        m = s.multiplier
        if not math.isfinite(m):
            ax.text(1.0, y, "  n/a (no frontier to compare)", va="center", fontsize=8,
                    color="grey")
            continue
        ax.barh(y, m - 1.0, left=1.0, color=colors[s.name], height=0.6, alpha=0.85)
        lo, hi = s.ci
        text = f"{_fmt(m)}×"
        if math.isfinite(lo) and math.isfinite(hi):
            ax.errorbar(m, y, xerr=[[max(m - lo, 0)], [max(hi - m, 0)]], fmt="none",
                        ecolor="black", capsize=3, lw=1)
            text += f" [{_fmt(lo)}, {_fmt(hi)}]"
        ax.annotate(text, (max(m, 1.0, hi if math.isfinite(hi) else m), y), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=7)
    ax.axvline(1.0, color="black", lw=1.2, ls="--")
    ax.set_xscale("log")
    ax.set_xlim(10 ** -span, 10 ** span)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
             if 10 ** -span <= t <= 10 ** span]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(ys, [s.name for s in items], fontsize=8)
    ax.set_ylim(-0.7, max(len(items), 1) - 0.3)
    ax.set_xlabel("compute multiplier over dense (×, log scale; > 1 = less compute than dense)")
    ax.set_title(f"{task}: compute multiplier with 95% bootstrap interval")
    ax.grid(True, axis="x", which="both", alpha=0.25, lw=0.5)
    _save(fig, path)
    plt.close(fig)


def _reading(task: str, rows: list[StructureSummary]) -> str:
    total = sum(s.runs for s in rows)
    diverged = sum(s.diverged_runs for s in rows)
    dense = next(s for s in rows if s.is_dense)
    if dense.fit is None or dense.fit.law is None:
        why = ("all dense runs diverged" if dense.runs and dense.runs == dense.diverged_runs
               else "dense's frontier has fewer than 2 points")
        return (f"No compute multipliers could be estimated for task `{task}`: {why}, so there "
                f"is no dense scaling law to compare against ({total} runs recorded, "
                f"{diverged} diverged). Lower the learning rate or add widths and rerun.")
    others = [s for s in rows if not s.is_dense and math.isfinite(s.multiplier)]
    parts = [f"On task `{task}` ({len(rows)} structures, {total} runs"
             + (f", {diverged} diverged" if diverged else "") + "), "]
    if not others:
        return parts[0] + "no structure other than dense produced a frontier to compare."
    best = max(others, key=lambda s: s.multiplier)

    def verdict(s: StructureSummary) -> str:
        lo, hi = s.ci
        ci = _ci_prose(lo, hi)
        if math.isfinite(lo) and lo > 1:
            word = "beat dense"
        elif math.isfinite(hi) and hi < 1:
            word = "was less compute-efficient than dense"
        elif s.multiplier >= 1:
            word = "was ahead of dense but not clearly (its interval includes 1)"
        else:
            word = "was behind dense but not clearly (its interval includes 1)"
        return f"{word} with a compute multiplier of {_fmt(s.multiplier)}×{ci}"

    parts.append(f"the most compute-efficient structure was **{best.name}** "
                 f"(θ = {best.theta or 'n/a'}, ω = {_fmt(best.omega, 2)}, ψ = {_fmt(best.psi, 2)}, "
                 f"ν = {_fmt(best.nu, 2)}), which {verdict(best)}: it reaches dense's loss "
                 f"with about {_fmt(1 / best.multiplier, 2)} of dense's training FLOPs. ")
    btt = [s for s in others if _is_btt_family(s.theta)
           or (s.theta is None and s.name.lower().split("(")[0] == "btt")]
    for s in btt:
        if s is not best:
            parts.append(f"BTT (`{s.name}`) {verdict(s)}. ")
        else:
            rho = s.theta.strip("()").split("|")[-1] if s.theta else "?"
            parts.append(f"It is a BTT structure (θ = (0.5|0|0.5|0|0.5|0.5|ρ) with ρ = {rho}). ")
    if not btt and not any(s.name == "btt_moe" for s in others):
        parts.append("No BTT structure was in this sweep. ")
    crossing = [s for s in others if math.isfinite(s.at_matched_loss) and s.at_matched_loss > 0
                and abs(math.log(s.multiplier / s.at_matched_loss)) > math.log(2.0)]
    if crossing:
        parts.append(
            "Caution: for " + ", ".join(
                f"{s.name} ({_fmt(s.multiplier, 2)}× averaged over its frontier vs "
                f"{_fmt(s.at_matched_loss, 2)}× at the lowest loss both reach)" for s in crossing)
            + " the two estimates differ by more than 2×: the frontier is not parallel to "
            "dense's, so the advantage depends on the loss level (see the loss-vs-compute "
            "plot). ")
    good = [s for s in others if s.omega is not None and s.psi is not None
            and s.omega <= 1e-9 and s.psi >= 1 - 1e-9]
    rest = [s for s in others if s not in good]
    if good and rest:
        g = math.exp(np.mean([math.log(s.multiplier) for s in good]))
        r = math.exp(np.mean([math.log(s.multiplier) for s in rest]))
        parts.append(f"Structures with no parameter sharing and full rank (ω = 0, ψ = 1) had a "
                     f"geometric-mean multiplier of {_fmt(g)}× against {_fmt(r)}× for the rest"
                     + (", as the taxonomy predicts." if g > r else
                        ", unlike what the taxonomy predicts; more widths or steps may be "
                        "needed."))
    return "".join(parts).strip()


def _has_interval(lo: float | None, hi: float | None) -> bool:
    """Both ends known: not None (summary.json's null) and finite."""
    return all(v is not None and math.isfinite(v) for v in (lo, hi))


def _ci_prose(lo: float | None, hi: float | None) -> str:
    return f" (95% CI {_fmt(lo)}–{_fmt(hi)})" if _has_interval(lo, hi) else ""


def _ci_cell(lo: float | None, hi: float | None) -> str:
    return f" [{_fmt(lo)}, {_fmt(hi)}]" if _has_interval(lo, hi) else ""


def _head_to_head_sentence(summary: dict[str, Any]) -> str:
    parts = []
    for h in summary.get("head_to_head", []):
        lo, hi = h["compute_multiplier_ci"]
        ci = _ci_prose(lo, hi)
        parts.append(f" Head to head, {h['name']} needed {_fmt(1 / h['compute_multiplier'], 2)}× "
                     f"the compute of {h['reference']} for the same loss: a multiplier of "
                     f"{_fmt(h['compute_multiplier'])}×{ci}.")
    return "".join(parts)


def _is_btt_family(theta: str | None) -> bool:
    if not theta:
        return False
    try:
        v = [float(x) for x in theta.strip("()").split("|")]
    except ValueError:
        return False
    return len(v) == 7 and np.allclose(v[:6], [0.5, 0, 0.5, 0, 0.5, 0.5])


def _md(text: object) -> str:
    """Text safe inside a Markdown table cell (theta text contains '|')."""
    return str(text).replace("|", "\\|")


def _markdown(task: str, rows: list[StructureSummary], summary: dict[str, Any]) -> str:
    lines = [f"# einsearch report: `{task}`", "",
             f"Generated {summary['generated_at']} from `{STORE_NAME}`.", "",
             "## Reading", "", _reading(task, rows) + _head_to_head_sentence(summary), "",
             "## Compute multipliers", "",
             "| structure | θ | ω | ψ | ν | params | exponent b | multiplier [95% CI] | runs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        if s.is_dense and math.isfinite(s.multiplier):
            mult = "1 (reference)"
        elif math.isfinite(s.multiplier):
            lo, hi = s.ci
            ci = _ci_cell(lo, hi)
            mult = f"{_fmt(s.multiplier)}{ci}"
        else:
            mult = "n/a"
        runs = f"{s.runs}" + (f" ({s.diverged_runs} diverged)" if s.diverged_runs else "")
        theta = f"`{_md(s.theta)}`" if s.theta else "n/a"
        lines.append(f"| {_md(s.name)} | {theta} | {_fmt(s.omega, 2)} | {_fmt(s.psi, 2)} | "
                     f"{_fmt(s.nu, 2)} | {_fmt_params(s.params)} | {_fmt(s.exponent)} | "
                     f"{mult} | {runs} |")
    notes = [f"- **{s.name}**: {'; '.join(s.notes)}" for s in rows if s.notes]
    est = summary["estimator"]
    lines += ["", "Multiplier: " + est["compute_multiplier"] + ". Interval: "
              + est["compute_multiplier_ci"] + ". Frontier: " + est["frontier"]
              + ". Exponent b: L = a C^-b fitted on the frontier.", ""]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    if summary.get("head_to_head"):
        lines += ["## Head to head", "",
                  "| structure | against | multiplier [95% CI] | at the lowest loss both reach |",
                  "|---|---|---|---|"]
        for h in summary["head_to_head"]:
            lo, hi = h["compute_multiplier_ci"]
            ci = _ci_cell(lo, hi)
            lines.append(f"| {h['name']} | {h['reference']} | {_fmt(h['compute_multiplier'])}{ci} | "
                         f"{_fmt(h['multiplier_at_matched_loss'])} |")
        lines += ["", "Same estimator as against dense, with the second structure's law as the "
                  "reference (> 1: the first needs less compute for the same loss).", ""]
    lines += ["## Figures", "",
              "### Loss vs compute", "", "![loss vs compute](loss_vs_compute.png)", "",
              "### Compute multipliers", "", "![compute multipliers](multipliers.png)", "",
              "### Taxonomy", "",
              "![frontiers coloured by omega](taxonomy_omega.png)", "",
              "![frontiers coloured by psi](taxonomy_psi.png)", "",
              "![frontiers coloured by nu](taxonomy_nu.png)", ""]
    return "\n".join(lines)


def write_report(out_dir: str | os.PathLike[str], *, task: str | None = None,
                 n_bootstrap: int = 200, seed: int = 0,
                 tolerance: float = DEFAULT_TOLERANCE, loss: str = "train",
                 skip_fraction: float = DEFAULT_SKIP_FRACTION) -> dict[str, Any]:
    """Analyse ``out_dir/results.sqlite`` and write the report files into ``out_dir``.

    ``loss`` picks the curve the frontier is built from: ``"train"`` (default; see
    :func:`_curve` for why) or ``"eval"``. Returns the summary dict (as written to
    summary.json). Raises ``FileNotFoundError`` if the store is missing and ``ValueError`` if
    it has no runs or no dense runs.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    out = Path(out_dir)
    db = out / STORE_NAME
    if not db.is_file():
        raise FileNotFoundError(f"no results store at {db}; run `einsearch search --out {out}` first")
    with ResultStore(db) as store:
        task, rows = analyze_store(store, task, n_bootstrap=n_bootstrap, seed=seed,
                                   tolerance=tolerance, loss=loss, skip_fraction=skip_fraction)
    summary = _summary_json(task, rows, tolerance, n_bootstrap, loss, skip_fraction)
    summary["head_to_head"] = head_to_head(rows, n_bootstrap=n_bootstrap, seed=seed,
                                           tolerance=tolerance)
    _plot_loss_vs_compute(rows, task, out / "loss_vs_compute.png")
    for key in ("omega", "psi", "nu"):
        _plot_taxonomy(rows, task, key, out / f"taxonomy_{key}.png")
    _plot_multipliers(rows, task, out / "multipliers.png")
    _atomic_write_bytes(out / "report.md", _markdown(task, rows, summary).encode())
    _atomic_write_bytes(out / "summary.json",
                        (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode())
    return summary
