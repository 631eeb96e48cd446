"""Command-line interface: ``einsearch info|search|explore|report|tokenize|compress|tune``."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from einsearch import make_plan, resolve_structure, structure_names, taxonomy
from einsearch._checks import check_int

from .analysis import DEFAULT_TRANSIENT_FRACTION
from .config import DEFAULT_CHECKPOINT_EVERY_S, RunOptions
from .device import PRECISIONS
from .executors import EXECUTORS
from .explore.spec import OBJECTIVES
from .report.summary import DEFAULT_BOOTSTRAP, LOSSES
from .trackers import TRACKERS, check_trackers, make_trackers

#: where mid-run checkpoints live under a search's output folder
CHECKPOINT_FOLDER = "checkpoints"
#: timing seconds per plan of ``einsearch tune`` (more than the planner's first-use budget: tuning ahead can)
TUNE_BUDGET_S = 5.0


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers >= ``minimum`` (``what`` names them in errors)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        try:
            return check_int(value, "value", minimum=minimum, expected=f"a {what} integer")
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


_positive_int = _int_at_least(1, "positive")
_non_negative_int = _int_at_least(0, "non-negative")


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _fraction(text: str) -> float:
    """``--transient``: a fraction in [0, 1)."""
    value = _float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {value:g}")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value:g}")
    return value


def _positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value:g}")
    return value


def _setting(text: str) -> tuple[str, Any]:
    """``--set FIELD=VALUE``: a TrainConfig field (not a sweep axis) and its value read as YAML
    (``0.1``, ``true``, ``normal``), so every run of the sweep gets it."""
    import yaml

    from .spec import sweep_axes, train_fields

    key, sep, raw = text.partition("=")
    key = key.strip().removeprefix("train.")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    if key in sweep_axes():
        raise argparse.ArgumentTypeError(f"{key!r} is a sweep axis: set {sweep_axes()[key]!r} in the spec "
                                         "(or --structures / --widths / --seeds)")
    if key not in train_fields():
        raise argparse.ArgumentTypeError(f"unknown field {key!r}; TrainConfig fields are "
                                         f"{', '.join(sorted(train_fields() - set(sweep_axes())))}")
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"{key}: cannot read {raw!r} as a value: {err}") from None


def _offset(text: str) -> str | float | None:
    """``--offset``: ``none``, ``shared`` or a fixed E >= 0."""
    if text.strip().lower() == "none":
        return None
    if text.strip().lower() == "shared":
        return "shared"
    try:
        value = _float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected none, shared or a number E >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected none, shared or a number E >= 0, got {value:g}")
    return value


def info_table(structure: str, d_in: int, d_out: int) -> str:
    """The text ``einsearch info`` prints for one structure."""
    theta = resolve_structure(structure)
    canon = theta.canonical()
    plan = make_plan(theta, d_in, d_out)
    tax = taxonomy(theta)
    s = plan.sizes
    rows = [
        ("structure", structure),
        ("theta", str(theta)),
        ("canonical theta", str(canon) + ("" if canon == theta else "  (cores swapped)")),
        ("degenerate", "yes: rho > min(alpha, epsilon) adds cost, no expressivity" if theta.is_degenerate else "no"),
        ("d_in x d_out", f"{d_in} x {d_out}"
         + (f"  (padded to {plan.d_in_padded} x {plan.d_out_padded})" if plan.is_padded else "")),
        ("sizes in (alpha, beta, gamma)", f"{s.alpha} x {s.beta} x {s.gamma}"),
        ("sizes out (delta, epsilon, phi)", f"{s.delta} x {s.epsilon} x {s.phi}"),
        ("rank axis (rho)", f"{s.rho}"),
        ("core A (alpha,gamma,delta,phi,rho)",
         "x".join(map(str, plan.shape_a)) + ("  (constant 1)" if plan.trivial_a else "")),
        ("core B (beta,gamma,epsilon,phi,rho)",
         "x".join(map(str, plan.shape_b)) + ("  (constant 1)" if plan.trivial_b else "")),
        ("contraction order", f"{plan.contraction_order}: {plan.eq_first} ; {plan.eq_second}"),
        ("params", f"{plan.params:,}"),
        ("FLOPs / token (forward)", f"{plan.flops:,}"),
        ("matrix rank (generic)", f"{plan.rank:,}"),
        ("omega (parameter sharing)", f"{tax.omega:g}"),
        ("psi (rank exponent)", f"{tax.psi:g}"),
        ("nu (compute exponent)", f"{tax.nu:g}"),
        ("params / dense", f"{plan.params / (d_in * d_out):.4g}"),
        ("FLOPs / dense", f"{plan.flops / plan.dense_flops:.4g}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _cmd_info(args: argparse.Namespace) -> int:
    d_out = args.d_out if args.d_out is not None else args.d_in
    blocks = [info_table(s, args.d_in, d_out) for s in args.structure]
    print("\n\n".join(blocks))
    return 0


@dataclass
class _Placement:
    """Where and how ``search`` / ``explore`` run: options for every run, the precision (part of
    the runs' identity) and the GPUs the executor places workers on (empty: the CPU)."""

    options: RunOptions
    precision: str
    gpus: list[str]

    def check_memory(self, spec: Any, args: argparse.Namespace) -> None:
        """Every planned run fits its device: a GPU's memory shared by ``--runs-per-gpu`` runs,
        or the machine's RAM shared by ``--jobs`` runs (raises before anything is written)."""
        from .device import device_memory
        from .runplan import check_memory

        device = self.gpus[0] if self.gpus else "cpu"
        if args.executor == "ray":
            return  # the cluster's machines are not this one
        per_device = args.runs_per_gpu if self.gpus else (args.jobs or 1)
        check_memory(spec, min(device_memory(d) for d in (self.gpus or ["cpu"])), device, per_device)

    def executor(self, args: argparse.Namespace) -> Any:
        from .executors import get_executor

        ex = get_executor(args.executor, args.jobs, args.address, devices=self.gpus or None,
                          runs_per_gpu=args.runs_per_gpu)
        if self.gpus and hasattr(ex, "check_resources"):
            ex.check_resources()  # a Ray cluster without GPUs fails here, before anything is written
        return ex


def _placement(args: argparse.Namespace, out: str) -> _Placement:
    """Checked before anything is written: ``--device cuda`` without CUDA, an unknown GPU, or a
    precision the device cannot run raise here. On Ray, ``cuda`` means each task's own GPU
    (the driver itself needs none)."""
    from .device import check_precision, placement

    on_ray_gpus = args.executor == "ray" and str(args.device).strip().lower().startswith("cuda")
    gpus = ["cuda:0"] if on_ray_gpus else [d for d in placement(args.device) if d != "cpu"]
    device = gpus[0] if gpus else "cpu"
    precision = args.precision if on_ray_gpus else check_precision(args.precision, device)
    if args.compile and not gpus:
        raise ValueError("--compile is for GPUs: on this project's CPU (torch 2.13, inductor) it made a 150-step "
                         "dense charlm run 3.4x slower (compile time) and crashed a structured one with heap "
                         "corruption in the compiled backward; train on the CPU without it")
    if args.jobs is not None and gpus and not on_ray_gpus:
        raise ValueError(f"--jobs {args.jobs}: on GPUs each device runs --runs-per-gpu workers "
                         f"({len(gpus)} device(s): {', '.join(gpus)}); drop --jobs")
    folder = None if args.checkpoint_every == 0 else str(Path(out) / CHECKPOINT_FOLDER)
    options = RunOptions(device=device, compile=args.compile, checkpoint_dir=folder,
                         checkpoint_every=args.checkpoint_every)
    return _Placement(options, precision, gpus)


def _cmd_search(args: argparse.Namespace) -> int:
    from .runplan import format_lr_check, format_run_table, lr_check
    from .spec import load_spec
    from .sweep import format_outcome, run_sweep

    out = args.out or f"runs/{args.preset}"
    where = _placement(args, out)
    options = where.options
    check_trackers(args.track)  # a backend that is not installed fails before anything is written
    spec = load_spec(args.preset, task=args.task, structures=args.structures, widths=args.widths,
                     steps=args.steps, data=args.data, seeds=args.seeds, train=dict(args.set or []),
                     precision=None if where.precision == "fp32" else where.precision)
    spec.check_buildable()  # every (structure, width) builds, before anything is written
    where.check_memory(spec, args)  # and fits on its device
    if args.dry_run:
        print(format_run_table(spec))
        return 0
    # a bad executor name or an unreachable Ray address fails here, before anything is written
    with where.executor(args) as executor:
        if args.lr_check:
            print(f"einsearch search --lr-check: preset {args.preset!r} on {executor.describe()} -> "
                  f"{out}/lr_check", flush=True)
            result = lr_check(spec, out, executor, options=options, show_progress=not args.quiet)
            print(format_lr_check(result))
            return 0 if result["failed"] == 0 else 1
        print(f"einsearch search: preset {args.preset!r}, task {spec.task} on {executor.describe()}, device "
              f"{options.device}, {spec.train.get('precision', 'fp32')} -> {out}", flush=True)
        outcome = run_sweep(spec, out, executor, options=options, show_progress=not args.quiet,
                            sinks=make_trackers(args.track, out, Path(out).name))
    print(format_outcome(outcome))
    return 0 if outcome.ok else 1


def _cmd_explore(args: argparse.Namespace) -> int:
    from .explore import explore

    name = args.preset
    out = args.out or f"runs/explore_{name.removeprefix('explore_')}"
    print(f"einsearch explore: preset {name!r}, {args.trials} trials, objective {args.objective} "
          f"-> {out}", flush=True)
    where = _placement(args, out)
    trackers = make_trackers(args.track, out, Path(out).name)
    with where.executor(args) as executor:
        outcome = explore(name, out, trials=args.trials, executor=executor, storage=args.storage, sinks=trackers,
                          timeout=args.timeout, objective=args.objective, show_progress=not args.quiet,
                          options=where.options, precision=None if where.precision == "fp32" else where.precision)
    cmp_ = (outcome.summary or {}).get("comparison")
    print(f"{outcome.trials_run} trials this run ({outcome.trials_total} in study "
          f"{outcome.study_name!r}), {outcome.runs_trained} runs trained, {outcome.runs_failed} "
          f"failed, stopped by {outcome.stopped_by} ({outcome.wall_time_s:.0f} s)")
    if cmp_:
        print(f"best novel {cmp_['best_novel']} x{cmp_['best_novel_multiplier']:.3g} vs best named "
              f"{cmp_['best_named']} x{cmp_['best_named_multiplier']:.3g}: "
              f"{cmp_['novel_beats_named']}")
    print(f"report: {out}/explore.md, trials: {out}/explore.json")
    return 0 if outcome.runs_failed == 0 else 1


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help="where runs train (default auto: CUDA when present, else the CPU)")
    p.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0],
                   help="fp32, or mixed precision with torch autocast (bf16; fp16 with a gradient "
                   "scaler, GPU only); part of each run's identity")
    p.add_argument("--compile", action="store_true",
                   help="train each model through torch.compile (GPUs only: on the CPU it was measured slower, and "
                   "unsafe with torch 2.13)")
    p.add_argument("--checkpoint-every", type=_non_negative_float, default=DEFAULT_CHECKPOINT_EVERY_S,
                   metavar="SECONDS", help="save a mid-run checkpoint under OUT/checkpoints this often "
                   f"(default {DEFAULT_CHECKPOINT_EVERY_S:g}; 0: no checkpoints); a rerun resumes "
                   "unfinished runs from them")
    p.add_argument("--runs-per-gpu", type=_positive_int, default=1, metavar="N",
                   help="on GPUs: N runs share each device (one worker each); default 1")


def _add_track_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--track", action="append", choices=tuple(TRACKERS), default=None, metavar="BACKEND",
                   help=f"log every run's curve (and the report) to {', '.join(TRACKERS)}, offline under --out; "
                   "repeatable; each is an optional extra (pip install 'einsearch[tensorboard]')")


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=EXECUTORS, default=EXECUTORS[0],
                   help="where runs train: local worker processes (default) or Ray tasks")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (HOST:PORT, ray://HOST:PORT or auto); default: start "
                   "a local Ray cluster on 127.0.0.1")


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    summary = write_report(args.dir, task=args.task, loss=args.loss, n_bootstrap=args.bootstrap,
                           transient=args.transient, offset=args.offset,
                           reference_loss=args.reference_loss, time_from_bench=args.time_from_bench)
    print(f"wrote {args.dir}/report.md, summary.json and plots for task {summary['task']!r} "
          f"({len(summary['structures'])} structures)")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    import torch

    from einsearch import fast

    torch.set_num_threads(args.threads)
    planner = fast.configure(mode=args.mode, budget_s=args.budget)
    names = args.structure or ["monarch", "btt(0.2)", "low_rank(0.75)", "kronecker"]
    thetas = {name: resolve_structure(name) for name in names}
    where = planner.cache.path if planner.cache is not None else "(memory only)"
    print(f"einsearch tune: mode {args.mode}, {args.threads} threads, {args.dtype}, "
          f"{'forward only' if args.inference else 'forward + backward'}; cache {where}", flush=True)
    records = fast.tune(thetas, args.sizes, args.tokens, args.dtype, train=not args.inference, force=args.force)
    print(fast.format_records(records))
    print(f"cache: {where}")
    return 0


def _cmd_tokenize(args: argparse.Namespace) -> int:
    from .tasks import write_token_files

    files = write_token_files(args.text, args.out, tokenizer=args.tokenizer, val_fraction=args.val_fraction)
    print(f"wrote {files!r}; train with: einsearch search --task tokens --data {args.out}")
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from .compress import CompressConfig, compress, format_compress

    config = CompressConfig(model=args.model, structure=args.structure, out=args.out, data=args.data,
                            calibrate=args.calibrate, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                            block_size=args.block_size)
    print(f"einsearch compress: {args.model} -> {args.structure} -> {args.out}", flush=True)
    print(format_compress(compress(config)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="einsearch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="sizes, cost and taxonomy of a structure",
                          description="Known names: " + ", ".join(structure_names())
                          + "; calls like 'btt(0.25)'; or theta text '(a|b|g|d|e|f|r)'.")
    info.add_argument("structure", nargs="+", help="structure name or theta text")
    info.add_argument("--d-in", type=_positive_int, default=1024)
    info.add_argument("--d-out", type=_positive_int, default=None, help="default: same as --d-in")
    info.set_defaults(func=_cmd_info)

    search = sub.add_parser("search", help="train structures x widths, fit scaling laws, write a report",
                            description="Runs a sweep (resumable: finished runs in --out are skipped) "
                            "and writes summary.json, plots and report.md into --out.")
    search.add_argument("--task", default=None, help="regression or charlm (default: the preset's)")
    search.add_argument("--preset", default="demo", help="preset name or path to a .yaml/.toml spec")
    search.add_argument("--out", default=None, help="output directory (default: runs/PRESET)")
    search.add_argument("--structures", nargs="+", default=None, help="override the preset's structures")
    search.add_argument("--widths", nargs="+", type=_positive_int, default=None)
    search.add_argument("--steps", type=_positive_int, default=None, help="training steps per run")
    search.add_argument("--seeds", nargs="+", type=_non_negative_int, default=None,
                        help="override the preset's seeds (e.g. to re-run it with other seeds)")
    search.add_argument("--data", default=None, help="text file or directory for charlm")
    search.add_argument("--set", action="append", type=_setting, default=None, metavar="FIELD=VALUE",
                        help="set a training field for every run, over the preset's train: "
                        "(repeatable; e.g. --set aux_loss_weight=0.1 --set dense_norm=false)")
    search.add_argument("--jobs", type=_positive_int, default=None,
                        help="parallel worker processes on the CPU (default 1; on GPUs see --runs-per-gpu)")
    search.add_argument("--quiet", action="store_true", help="no progress bar")
    search.add_argument("--dry-run", action="store_true",
                        help="print the run table (structure, width, FLOPs/token, steps, seeds, "
                        "lrs) and exit without training")
    search.add_argument("--lr-check", action="store_true",
                        help="train each structure at 1/3, 1 and 3 x the transferred lr at its "
                        "middle width for 1/4 of the steps; flag any whose best lr is not the "
                        "transferred one (results in OUT/lr_check/)")
    _add_run_options(search)
    _add_executor_options(search)
    _add_track_option(search)
    search.set_defaults(func=_cmd_search)

    explore = sub.add_parser("explore", help="search the whole theta space with Optuna",
                             description="Optuna search over theta (resumable: rerun the same "
                             "command to continue; finished runs are never retrained). Writes "
                             "explore.json, explore.md and plots into --out.")
    explore.add_argument("--preset", default="tiny",
                         help="explore preset (tiny, regression, charlm) or a .yaml/.toml file")
    explore.add_argument("--trials", type=_positive_int, required=True,
                         help="total finished trials the study should hold")
    explore.add_argument("--out", default=None, help="output directory (default: runs/explore_PRESET)")
    explore.add_argument("--jobs", type=_positive_int, default=None,
                         help="parallel runs (local worker processes / Ray CPUs)")
    _add_run_options(explore)
    _add_executor_options(explore)
    _add_track_option(explore)
    explore.add_argument("--storage", default=None,
                         help="Optuna storage URL shared by several drivers (default: "
                         "sqlite:///OUT/explore.db)")
    explore.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                         help="start no new trial after this many seconds")
    explore.add_argument("--objective", choices=OBJECTIVES, default=OBJECTIVES[0],
                         help="multiplier+params: Pareto front with params/dense (no pruning)")
    explore.add_argument("--quiet", action="store_true", help="no progress lines")
    explore.set_defaults(func=_cmd_explore)

    report = sub.add_parser("report", help="regenerate the report of a search from its results store")
    report.add_argument("dir", help="the --out directory of a search")
    report.add_argument("--task", default=None, help="which task, when the store holds several")
    report.add_argument("--loss", choices=LOSSES, default=LOSSES[0],
                        help="frontiers from the held-out loss (default) or the window-mean training loss")
    report.add_argument("--bootstrap", type=_non_negative_int, default=DEFAULT_BOOTSTRAP, metavar="N",
                        help="seed-bootstrap replicates for the multiplier intervals (0: no intervals)")
    report.add_argument("--transient", type=_fraction, default=DEFAULT_TRANSIENT_FRACTION, metavar="F",
                        help="fraction of each run's steps left out as the optimisation transient "
                        f"(default {DEFAULT_TRANSIENT_FRACTION:g})")
    report.add_argument("--offset", type=_offset, default=None, metavar="none|shared|E",
                        help="law L = a C^-b (none, default), L = E + a C^-b with one E shared by "
                        "all structures and adopted only if it lowers AIC by > 10 (shared), or a "
                        "fixed E")
    report.add_argument("--reference-loss", type=_positive_float, default=None, metavar="L",
                        help="loss of the headline multiplier (default: per structure, the lowest "
                        "loss both it and dense reach)")
    report.add_argument("--time-from-bench", action="store_true",
                        help="time multiplier from each (structure, width) model's training speed measured "
                        "now, side by side in one process, instead of the runs' recorded times (for "
                        "sweeps whose runs shared the machine)")
    report.set_defaults(func=_cmd_report)

    tokenize = sub.add_parser("tokenize", help="turn a text file into token files for --task tokens",
                              description="Writes OUT/train.bin, OUT/val.bin (nanoGPT's format) and OUT/meta.json "
                              "from a text file: bytes (vocabulary 256), or a local Hugging Face tokenizers "
                              "file; nothing is downloaded.")
    tokenize.add_argument("text", help="the text file")
    tokenize.add_argument("out", help="the folder to write")
    tokenize.add_argument("--tokenizer", default=None, metavar="FILE",
                          help="a tokenizers file (tokenizer.json); default: bytes")
    tokenize.add_argument("--val-fraction", type=_fraction, default=0.1, metavar="F",
                          help="the last F of the ids are the validation split (default 0.1)")
    tokenize.set_defaults(func=_cmd_tokenize)

    comp = sub.add_parser("compress", help="structurize a trained model with projection, fine-tune, save",
                          description="Loads a Hugging Face folder or a torch.save'd nn.Module, replaces its linear "
                          "layers with the nearest structured ones (closed-form projection, data-aware with "
                          "--calibrate), optionally fine-tunes, reports params, FLOPs and loss before and after, "
                          "and saves with save_structured.")
    comp.add_argument("model", help="a Hugging Face model folder or a file holding a whole nn.Module")
    comp.add_argument("--structure", required=True, help="structure name or theta text (monarch, btt(0.25), ...)")
    comp.add_argument("--out", required=True, help="the folder to save the structured model in")
    comp.add_argument("--data", default=None, help="token folder (train.bin/val.bin) for the loss, calibration "
                      "and fine-tuning")
    comp.add_argument("--calibrate", action="store_true", help="data-aware projection on train windows")
    comp.add_argument("--steps", type=_non_negative_int, default=0, help="fine-tuning steps (default 0)")
    comp.add_argument("--lr", type=_positive_float, default=1e-4, help="fine-tuning learning rate (AdamW)")
    comp.add_argument("--batch-size", type=_positive_int, default=8)
    comp.add_argument("--block-size", type=_positive_int, default=128, help="tokens per window")
    comp.set_defaults(func=_cmd_compress)

    tune = sub.add_parser("tune", help="plan ahead: time the fast path's candidate programs, cache the choices",
                          description="Times every candidate program of each structure (d x d) per token "
                          "bucket and caches the fastest per machine (EINSEARCH_CACHE_DIR, else "
                          "~/.cache/einsearch), so training skips the timing on first use.")
    tune.add_argument("structure", nargs="*", help="structures (default: monarch btt(0.2) low_rank(0.75) kronecker)")
    tune.add_argument("--sizes", nargs="+", type=_positive_int, default=[1024])
    tune.add_argument("--tokens", nargs="+", type=_positive_int, default=[2048])
    tune.add_argument("--dtype", choices=("float32", "float64", "bfloat16", "float16"), default="float32")
    tune.add_argument("--threads", type=_positive_int, default=2, help="torch threads (choices are per count)")
    tune.add_argument("--mode", choices=("measure", "patient"), default="measure",
                      help="patient adds torch.compile variants (tens of seconds each)")
    tune.add_argument("--budget", type=_positive_float, default=TUNE_BUDGET_S,
                      help=f"timing seconds per plan (default {TUNE_BUDGET_S:g})")
    tune.add_argument("--inference", action="store_true", help="plan forward-only (no_grad) use")
    tune.add_argument("--force", action="store_true", help="measure again even when a choice is cached")
    tune.set_defaults(func=_cmd_tune)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"einsearch: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
