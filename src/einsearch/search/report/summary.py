"""The report's numbers: each structure as recorded in the store, the analysis of the task
(:func:`einsearch.search.analysis.analyze`) and the summary dict written to ``summary.json``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from einsearch import Theta
from einsearch._checks import check_positive_float

from .._io import finite_or_none, utc_now_iso
from ..analysis import (
    DEFAULT_TRANSIENT_FRACTION,
    MIN_SEEDS_FOR_INTERVAL,
    VARIES_FACTOR,
    AnalysisResult,
    Curve,
    StructureAnalysis,
    analyze,
    curves_from_store,
)
from ..store import ResultStore, RunRow
from .experts import COLLAPSE_FACTOR, expert_summary

__all__ = ["StructureInfo", "Report", "build_report", "summary_dict", "check_options", "execution_summary", "LOSSES",
           "DEFAULT_BOOTSTRAP"]

LOSSES = ("eval", "train")
#: seed-bootstrap replicates of the multiplier intervals (``einsearch report --bootstrap``)
DEFAULT_BOOTSTRAP = 200
_DENSE_THETA = str(Theta.dense())
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
    time_analysis: StructureAnalysis | None = None   # the same estimator on training seconds
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
            is_dense=bool(cfg is not None and cfg.is_dense), is_moe=is_moe, baseline=baseline,
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
class Report:
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
    execution: dict[str, Any] = field(default_factory=dict)
    time: dict[str, Any] = field(default_factory=dict)   # availability and conditions of t(L)
    experts: dict[str, Any] = field(default_factory=dict)  # MoE load balance (report.experts)
    recipe: dict[str, Any] = field(default_factory=dict)   # the training recipe the runs used
    time_curves: list[Curve] = field(default_factory=list)

    def by_name(self, name: str) -> StructureInfo:
        return next(i for i in self.infos if i.name == name)


def check_options(loss: Any, n_bootstrap: Any, transient: Any, offset: Any,
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
                 n_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                 transient: float = DEFAULT_TRANSIENT_FRACTION,
                 offset: None | str | float = None,
                 reference_loss: float | None = None, time_from_bench: bool = False,
                 run_ids: Iterable[str] | None = None) -> Report:
    """Analyse ``task`` in ``store`` (nothing written). Raises ``ValueError`` when the store is
    empty, holds several tasks and none was chosen, or has no dense run. ``time_from_bench``:
    the time multiplier from the compute curves and each model's speed measured now, side by
    side in this process (:mod:`einsearch.search.timing`), instead of the recorded times.
    ``run_ids``: analyse only these runs (a sweep's own; None: every run of the task)."""
    check_options(loss, n_bootstrap, transient, offset, reference_loss)
    task = store.resolve_task(task)
    run_ids = None if run_ids is None else set(run_ids)
    runs = store.runs(task=task, run_ids=run_ids)
    infos = _infos(runs)
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
    curves = curves_from_store(store, task=task, loss=loss, run_ids=run_ids)
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
    execution = execution_summary(runs)
    if len(execution["precisions"]) > 1:
        notes.append(f"runs were trained in different precisions {execution['precisions']}: structures "
                     "compared across precisions are not compared on equal terms")
    bases = sorted({r.config["base_width"] for r in runs if r.config.get("base_width") is not None})
    if len(bases) > 1:
        notes.append(f"runs have different muP base widths {bases}: their inits and learning rates scale from "
                     "different reference widths, so their curves are not one parametrization (a sweep that adds "
                     "widths to another's store should give the other's base_width: --set base_width=...)")
    if time_from_bench:
        time_curves, time = _bench_times(runs, curves)
    else:
        time_curves = curves_from_store(store, task=task, loss=loss, axis="time", run_ids=run_ids)
        time = time_conditions(runs, execution, timed=len(time_curves), total=len(curves))
    if time["available"] and dense.name in present:
        time_result = analyze(time_curves, dense=dense.name, axis="time", **opts)
        for i in infos:
            i.time_analysis = time_result.structures.get(i.name)
    elif not time["available"]:
        notes.append(time["why"])
    experts = expert_summary(store, runs)
    for name, e in experts.items():
        if e["layers_collapsed"]:
            notes.append(f"{name}: experts collapsed in {e['layers_collapsed']} layer(s) of its runs (one expert "
                         f"above {COLLAPSE_FACTOR:g}x its fair share for most of the training steps; see ## Experts)")
    return Report(execution=execution, task=task, loss=loss, infos=infos, dense=dense, result=result, curves=curves,
                  settings=settings, notes=notes, head_to_head=h2h, n_bootstrap=int(n_bootstrap), time=time,
                  time_curves=time_curves, experts=experts, recipe=recipe_summary(runs))


#: TrainConfig fields of the training recipe the report states (docs/design.md section 5)
RECIPE_FIELDS = ("einsum_norm", "dense_norm", "beta1", "beta2", "grad_clip", "warmup_steps", "weight_decay",
                 "schedule", "router_lr", "router_init", "router_gate", "aux_loss_weight", "depth_mup", "qk_norm")


def recipe_summary(runs: Sequence[RunRow]) -> dict[str, list[Any]]:
    """The distinct values of each recipe setting over the finished runs (defaults of the
    recording release filled in for runs recorded before a setting existed)."""
    from ..config import FIELDS_SINCE_V1, TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    old = {**defaults, **FIELDS_SINCE_V1}
    out: dict[str, list[Any]] = {}
    for name in RECIPE_FIELDS:
        values = {r.config.get(name, old.get(name)) for r in runs if r.status in ("finished", "diverged")}
        out[name] = sorted(values, key=str)
    return out


def _bench_times(runs: Sequence[RunRow], curves: Sequence[Curve]) -> tuple[list[Curve], dict[str, Any]]:
    import os

    import torch

    from ..device import device_description
    from ..timing import BENCH_ROUNDS, seconds_per_flop, time_curves

    speed = seconds_per_flop(runs)
    return time_curves(curves, speed), {
        "available": True, "source": "bench", "indicative": False, "why": "",
        "devices": ["cpu"], "device_names": [device_description("cpu")], "threads": [torch.get_num_threads()],
        "executors": [f"this process, every model timed round-robin ({BENCH_ROUNDS} rounds, medians)"],
        "cpus": [os.cpu_count()], "seconds_per_gflop": {f"{s} w={w}": 1e9 * v for (s, w), v in sorted(speed.items())},
        "assumes": "nothing else ran on the machine while the models were timed (round-robin timing "
                   "makes load hit them alike)"}


def time_conditions(runs: Sequence[RunRow], execution: dict[str, Any], *, timed: int, total: int) -> dict[str, Any]:
    """Whether a time multiplier exists (every finished run recorded its training seconds) and
    under which conditions its times were measured; ``indicative`` when runs shared the
    machine (more runs x threads than cores, or several runs per GPU) or the conditions are
    unknown."""
    if total == 0 or timed < total:
        why = ("no time multiplier: " + (f"{total - timed} of {total} finished runs were recorded without training "
                                          "times (stores written before einsearch recorded them)" if total else
                                          "no finished runs"))
        return {"available": False, "why": why}
    ex = [r.execution or {} for r in runs if r.status in ("finished", "diverged")]
    shared, reasons = False, []
    for e in ex:
        cpus, threads, jobs = e.get("cpus"), e.get("threads"), e.get("concurrency")
        if cpus is None or threads is None or jobs is None:
            shared = True
            reasons.append("the number of cores, threads or concurrent runs was not recorded")
        elif str(e.get("device", "cpu")).startswith("cuda"):
            if (e.get("runs_per_device") or 1) > 1:
                shared = True
                reasons.append(f"{e['runs_per_device']} runs shared each GPU")
        elif jobs * threads > cpus:
            shared = True
            reasons.append(f"{jobs} concurrent runs x {threads} thread(s) on {cpus} cores")
    return {"available": True, "indicative": shared, "why": "; ".join(dict.fromkeys(reasons)),
            "devices": execution.get("devices"), "device_names": execution.get("device_names"),
            "threads": execution.get("threads"), "executors": execution.get("executors"),
            "cpus": sorted({e["cpus"] for e in ex if e.get("cpus")}),
            "assumes": "nothing else ran on the machine while the runs trained"}


def execution_summary(runs: Sequence[RunRow]) -> dict[str, Any]:
    """Where and how the finished runs trained: precisions, devices (and their names), torch
    threads, executors (with their concurrency), sorted lists of the distinct values; runs
    recorded before these were stored count as precision fp32 on an unknown device."""
    done = [r for r in runs if r.status in ("finished", "diverged")]

    def distinct(values: Any) -> list[Any]:
        return sorted({v for v in values if v is not None}, key=str)

    ex = [r.execution or {} for r in done]
    return {"precisions": distinct(r.run_precision for r in done),
            "devices": distinct(r.device for r in done),
            "device_names": distinct(e.get("device_name") for e in ex),
            "threads": distinct(e.get("threads") for e in ex),
            "executors": distinct(e.get("executor") for e in ex),
            "runs_without_record": sum(r.execution is None for r in done)}


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


def summary_dict(rep: Report) -> dict[str, Any]:
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
        t = i.time_analysis.to_summary() if i.time_analysis is not None else _empty_summary()
        row.update({"time_multiplier": t["compute_multiplier"], "time_multiplier_ci": t["compute_multiplier_ci"],
                    "time_reference_loss": t["reference_loss"], "time_multiplier_by_loss": t["multiplier_by_loss"]})
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
            "time_multiplier": ("t(L) = T_dense(L) / T_S(L): the same estimator (windows, seed average, "
                                "intervals) with training seconds on the x axis instead of FLOPs; > 1: S "
                                "reaches loss L in less training time than dense on the machine in 'time'"),
            "diverged_runs": "recorded, counted, excluded from frontiers",
        },
        "execution": rep.execution,
        "time": rep.time,
        "experts": rep.experts,
        "recipe": rep.recipe,
        "notes": rep.notes,
        "structures": rows,
        "head_to_head": rep.head_to_head,
    }
