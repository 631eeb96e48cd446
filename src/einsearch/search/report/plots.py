"""The report's figures, rendered to PNG bytes in memory (``render_plots``)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analysis import seed_averaged_curves
from .experts import PLOT_NAME as EXPERTS_PLOT
from .experts import plot_expert_load
from .fmt import ci_text, fmt
from .summary import Report

__all__ = ["render_plots", "PLOT_NAMES", "TIME_PLOT"]

PLOT_NAMES = ("loss_vs_compute.png", "multiplier_vs_loss.png", "multipliers.png",
              "taxonomy_omega.png", "taxonomy_psi.png", "taxonomy_nu.png")
#: loss against training seconds, written when every run recorded its training time
TIME_PLOT = "loss_vs_time.png"
_TAX_LABELS = {
    "omega": ("ω", "parameter sharing ω = log_d(FLOPs / params)"),
    "psi": ("ψ", "rank exponent ψ (rank ~ d^ψ)"),
    "nu": ("ν", "compute exponent ν (FLOPs ~ d^(1+ν))"),
}


# ------------------------------------------------------------------------------------------
# plots


def _colors(rep: Report) -> dict[str, Any]:
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


@dataclass(frozen=True)
class _Axis:
    """What the loss curves are plotted against: training FLOPs (m) or training seconds (t)."""

    name: str          # "compute" or "time"
    label: str         # the x label
    symbol: str        # the multiplier's letter
    key: str           # its summary key

    def curves(self, rep: Report) -> list:
        return rep.curves if self.name == "compute" else rep.time_curves

    def analysis(self, i: Any) -> Any:
        return i.analysis if self.name == "compute" else i.time_analysis


COMPUTE = _Axis("compute", "training FLOPs", "m", "compute_multiplier")
TIME = _Axis("time", "training seconds", "t", "time_multiplier")


def _panel_title(name: str, s: dict[str, Any], dense: bool, axis: _Axis = COMPUTE,
                 exponent: float | None = None) -> str:
    b = s["exponent"] if axis is COMPUTE else exponent
    if dense:
        return f"{name} (reference), b = {fmt(b, 2)}"
    if s[axis.key] is None:
        return f"{name}: no multiplier"
    ci = ci_text(s[axis.key + "_ci"]) or "(no interval)"
    ref = s["reference_loss"] if axis is COMPUTE else s["time_reference_loss"]
    return (f"{name}: {axis.symbol} = {fmt(s[axis.key], 2)}× {ci}\n"
            f"at L = {fmt(ref)}, b = {fmt(b, 2)}")


def _plot_loss_vs_compute(rep: Report, summ: dict[str, dict[str, Any]], axis: _Axis = COMPUTE) -> bytes:
    """One panel per structure (seed-averaged runs, frontier, law in its window against
    dense's) and one of all laws, against training FLOPs or (``axis=TIME``) seconds."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    colors = _colors(rep)
    mean = seed_averaged_curves(axis.curves(rep))
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
            a = axis.analysis(i)
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
        a = axis.analysis(i)
        if a is not None and a.frontier is not None and len(a.frontier):
            f = a.frontier
            inside = f.in_window(a.window)
            ax.plot(f.compute[inside], f.loss[inside], "o", color=col, ms=3.4)
            ax.plot(f.compute[~inside], f.loss[~inside], "o", mfc="none", mec=col, ms=3.4, mew=0.8)
        if a is not None and a.window is not None:
            ax.axvspan(a.window[0], a.window[1], color=col if not i.is_dense else "grey", alpha=0.08)
            if a.dense_law is not None and not i.is_dense:
                c, lo = _law_line(a.dense_law, a.dense_window or a.window)
                ax.plot(c, lo, "--", color="black", lw=1.4)
            if a.law is not None:
                c, lo = _law_line(a.law, a.window)
                ax.plot(c, lo, color=col, lw=2.2, ls="--" if i.is_dense else "-")
        _loglog(ax)
        ax.set_title(_panel_title(i.name, summ[i.name], i.is_dense, axis,
                                  None if a is None or a.law is None else a.law.b), fontsize=8.5)
    for ax in flat[n:]:
        ax.set_visible(False)
    # the transient is shown but does not own the y range: frontiers get most of the height
    fl = [axis.analysis(i).frontier.loss for i in items if axis.analysis(i) is not None
          and axis.analysis(i).frontier is not None and len(axis.analysis(i).frontier)]
    if fl and flat[0].get_yscale() == "log":
        lo_y, hi_y = min(float(x.min()) for x in fl), max(float(x.max()) for x in fl)
        top = min(flat[0].get_ylim()[1], hi_y * 2.5)
        flat[0].set_ylim(lo_y * 0.85, top)
        _plain_log_ticks(flat[0].yaxis)
    _bottom_labels(flat, n, ncol, axis.label)
    for ax in axes[:, 0]:
        ax.set_ylabel(rep.loss + " loss", fontsize=9)
    on_loss = any(getattr(axis.analysis(i), "matched_on", "x") == "loss" for i in items)
    handles = [Line2D([], [], color="grey", alpha=0.5, lw=0.9, label="seed-averaged run (one per width)"),
               Line2D([], [], marker="o", ls="none", color="grey", ms=4, label="frontier point in window"),
               Line2D([], [], marker="o", ls="none", mfc="none", mec="grey", ms=4, label="frontier point outside"),
               Line2D([], [], color="grey", lw=2.2, label="fitted law (inside window)"),
               Line2D([], [], color="black", lw=1.4, ls="--",
                      label="dense's law, same loss range" if on_loss else "dense's law, same window"),
               Patch(color="grey", alpha=0.15, label=f"{axis.name} range of the common loss range" if on_loss
                     else f"common {axis.name} window")]
    fig.suptitle(f"{rep.task}: loss vs {axis.label}" + (
        "" if axis is COMPUTE else f" ({_time_conditions(rep)})"), fontsize=11)
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


def _plot_multiplier_vs_loss(rep: Report, summ: dict[str, dict[str, Any]]) -> bytes:
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


def _tax_color(rep: Report, key: str) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    vals = [getattr(i, key) for i in rep.infos if getattr(i, key) is not None]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    return Normalize(lo, hi), plt.get_cmap("viridis")


def _plot_multipliers(rep: Report, summ: dict[str, dict[str, Any]]) -> bytes:
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
        text = f"{fmt(m)}× " + (ci_text(ci) if ci is not None else "(no interval)")
        text += f"  at L={fmt(s['reference_loss'])}"
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


def _plot_taxonomy(rep: Report, summ: dict[str, dict[str, Any]], key: str) -> bytes:
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


def _time_conditions(rep: Report) -> str:
    t = rep.time
    names = ", ".join(str(x) for x in t.get("device_names") or []) or "device unknown"
    return names + (", indicative: runs shared the machine" if t.get("indicative") else "")


def render_plots(rep: Report, summary: dict[str, Any]) -> dict[str, bytes]:
    summ = {r["name"]: r for r in summary["structures"]}
    out = {"loss_vs_compute.png": _plot_loss_vs_compute(rep, summ),
           "multiplier_vs_loss.png": _plot_multiplier_vs_loss(rep, summ),
           "multipliers.png": _plot_multipliers(rep, summ)}
    for key in ("omega", "psi", "nu"):
        out[f"taxonomy_{key}.png"] = _plot_taxonomy(rep, summ, key)
    if rep.time.get("available"):
        out[TIME_PLOT] = _plot_loss_vs_compute(rep, summ, TIME)
    if rep.experts:
        out[EXPERTS_PLOT] = plot_expert_load(rep.experts, rep.task)
    return out
