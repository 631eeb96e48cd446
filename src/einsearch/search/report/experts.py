"""What the experts of the mixture-of-experts runs did: load balance over training, router
entropy, the balancing loss, and collapse warnings (from the store's per-point metrics, which
``ExpertStatsCallback`` records at every log point of an MoE run).

A layer of a run *collapsed* when one expert held more than twice its fair share (1/E of the
n x top_k assignments) for more than half of the run's training steps, each logged share standing
for the steps up to the next log point. Log points are log-spaced, so counting points instead
would call a layer that balanced after the first few percent of training collapsed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from einsearch.structures import structure_options

from ..config import DEFAULT_NUM_EXPERTS
from ..store import ResultStore, RunRow

__all__ = ["expert_summary", "fraction_of_steps", "plot_expert_load", "COLLAPSE_FACTOR", "COLLAPSE_FRACTION",
           "PLOT_NAME"]

#: an expert above this x its fair share ...
COLLAPSE_FACTOR = 2.0
#: ... for more than this fraction of a run's training steps: collapsed
COLLAPSE_FRACTION = 0.5
PLOT_NAME = "expert_load.png"


def _layers(metrics: dict[int, dict[str, float | None]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{layer: {stat: [(step, value), ...]}} from a run's ``moe/<layer>/<stat>`` metrics."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for step, values in sorted(metrics.items()):
        for name, value in values.items():
            if not name.startswith("moe/") or value is None or "/load/" in name:
                continue
            layer, stat = name[4:].rsplit("/", 1)
            out.setdefault(layer, {}).setdefault(stat, []).append((step, float(value)))
    return out


def fraction_of_steps(steps: Sequence[int], above: Sequence[bool]) -> float:
    """Fraction of the steps from the first log point to the last at which ``above`` held, each
    logged value holding until the next log point (a single point: its own value)."""
    if len(steps) != len(above) or not steps:
        raise ValueError(f"steps and above: expected two sequences of one length, got {len(steps)} and {len(above)}")
    spans = np.diff(np.asarray(steps, dtype=float))
    if len(spans) == 0 or spans.sum() <= 0:
        return float(above[-1])
    return float(np.sum(spans * np.asarray(above[:-1], dtype=float)) / spans.sum())


def _experts(run: RunRow) -> int:
    """E of a run: the structure text's ``num_experts`` wins over the config field (as in
    ``TrainConfig.structure_config``), then the default."""
    written = structure_options(run.structure).get("num_experts")
    return int(written or run.config.get("num_experts") or DEFAULT_NUM_EXPERTS)


def expert_summary(store: ResultStore, runs: Sequence[RunRow]) -> dict[str, Any]:
    """Per MoE structure: experts E, the top expert's share x E (1: balanced, E: one expert takes
    all) at the first and last logged point, the router entropy / ln E at the last, the mean
    auxiliary loss at the last, the curve of top share x E per width (mean over layers and
    seeds) and the collapsed (run, layer) pairs. Empty when no run recorded expert metrics."""
    out: dict[str, Any] = {}
    all_metrics = store.metrics()
    for r in runs:
        m = all_metrics.get(r.run_id)
        if r.status != "finished" or not m:
            continue
        layers = _layers(m)
        if not layers:
            continue
        experts = _experts(r)
        s = out.setdefault(r.structure, {"experts": experts, "runs": 0, "first": [], "last": [], "entropy": [],
                                          "aux": [], "collapsed": [], "_curves": {}})
        s["runs"] += 1
        for layer, stats in layers.items():
            top = stats.get("top_share", [])
            if not top:
                continue
            shares = np.asarray([v for _, v in top])
            s["first"].append(shares[0] * experts)
            s["last"].append(shares[-1] * experts)
            if stats.get("entropy"):
                s["entropy"].append(stats["entropy"][-1][1] / math.log(experts))
            if stats.get("aux"):
                s["aux"].append(stats["aux"][-1][1])
            above = fraction_of_steps([st for st, _ in top], list(shares > COLLAPSE_FACTOR / experts))
            if above > COLLAPSE_FRACTION:
                s["collapsed"].append({"width": r.width, "seed": r.seed, "layer": layer,
                                       "fraction_of_steps": above, "last_top_share": float(shares[-1])})
            s["_curves"].setdefault(int(r.width or 0), []).append((np.asarray([st for st, _ in top]), shares * experts))
    for s in out.values():
        curves = s.pop("_curves")
        s["top_share_x_E"] = {}
        for width, items in sorted(curves.items()):
            steps = sorted(set.intersection(*(set(st.tolist()) for st, _ in items)))
            mean = [float(np.mean([v[list(st).index(k)] for st, v in items])) for k in steps]
            s["top_share_x_E"][str(width)] = {"steps": steps, "mean": mean}
        for key in ("first", "last", "entropy", "aux"):
            s[key] = float(np.mean(s[key])) if s[key] else None
        s["layers_collapsed"] = len(s["collapsed"])
    return out


def plot_expert_load(experts: dict[str, Any], task: str) -> bytes:
    """One panel per MoE structure: the top expert's share x E over training, per width."""
    import io

    import matplotlib.pyplot as plt

    names = sorted(experts)
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        s = experts[name]
        for width, curve in s["top_share_x_E"].items():
            steps = np.asarray(curve["steps"], dtype=float)
            keep = steps > 0
            ax.plot(steps[keep], np.asarray(curve["mean"])[keep], marker="o", ms=2.5, lw=1.3, label=f"width {width}")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.axhline(COLLAPSE_FACTOR, color="red", lw=0.9, ls="--", label=f"{COLLAPSE_FACTOR:g}x fair share")
        ax.set_xscale("log")
        ax.set_ylim(0.8, max(COLLAPSE_FACTOR * 1.2, s["experts"] * 0.5))
        ax.set_xlabel("step")
        ax.set_ylabel("top expert's share x E (1: balanced)")
        ax.set_title(f"{name}: {s['experts']} experts, {s['layers_collapsed']} collapsed layer(s)", fontsize=9)
        ax.grid(True, which="both", alpha=0.25, lw=0.5)
        ax.legend(fontsize=7)
    fig.suptitle(f"{task}: load balance of the experts over training (mean over layers and seeds)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
