"""The accelerator section of ``make bench DEVICE=cuda``: do structured layers turn FLOP savings
into wall-clock on a GPU, in bf16 and fp32?

1. Layers: forward + backward of ``nn.Linear(d, d)`` against ``EinsumLinear`` (Monarch, BTT rank 4)
   at d = 1024, 4096, 8192, under bf16 autocast and in fp32, reporting the same efficiency as the
   CPU table: (t_dense / t_struct) / (FLOPs_dense / FLOPs_struct). The planner times its
   candidates on the device (synchronised) before the timing starts. Targets: Monarch and BTT
   rank 4 at d = 4096 in bf16 at efficiency >= 0.5.
2. Training: a GPT-like stack (throughput.py's) trained with AdamW under bf16 autocast, dense at
   width w against each structure (a) at the same width: speedup over dense against its FLOP
   saving (target: speedup >= half the saving) and (b) at the width with equal FLOPs per token:
   tokens/s relative to dense.

Every timed call is bracketed by ``torch.cuda.synchronize``; candidates run round-robin and the
reported figures are medians of per-round ratios. On the CPU (``--device cpu``) the same code
runs at small sizes, which is how the tests exercise it without a GPU; the figures then say
nothing about a GPU.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import torch
from common import median, paired_ratio, progress
from throughput import Stack, flops_per_token, matched_width
from torch import nn

from einsearch import EinsumLinear, Theta, fast
from einsearch.plan import make_plan

#: efficiency targets at d = 4096 in bf16 (issue: Monarch and BTT rank 4 at >= 0.5)
LAYER_TARGET, TARGET_D = 0.5, 4096
#: end to end: the structured GPT's speedup over dense must reach this fraction of its FLOP saving
SPEEDUP_FRACTION_TARGET = 0.5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved(fns: dict[str, Callable[[], object]], rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of every function, round-robin, each call synchronised."""
    for fn in fns.values():  # warm-up (planning, autotuning, allocator)
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def _fwd_bwd(m: nn.Module, x: torch.Tensor, dy: torch.Tensor, device: torch.device,
             dtype: torch.dtype) -> Callable[[], None]:
    params = list(m.parameters())

    def run() -> None:
        with _autocast(device, dtype):
            y = m(x)
        torch.autograd.grad(y, [x, *params], dy.to(y.dtype))
    return run


def layers(device: torch.device, sizes: list[int], tokens: int, dtypes: list[torch.dtype], rounds: int) -> list[dict]:
    """Section 1: one row per (d, dtype, structure)."""
    rows = []
    for d in sizes:
        rank4 = math.log(4) / math.log(d)
        structures = {"monarch": Theta.monarch(), "btt_rank4": Theta.btt(rank4)}
        for dtype in dtypes:
            torch.manual_seed(0)
            x = torch.randn(tokens, d, device=device, requires_grad=True)
            dy = torch.randn(tokens, d, device=device)
            mods: dict[str, nn.Module] = {"dense": nn.Linear(d, d, bias=False, device=device)}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for name, theta in structures.items():
                    mods[name] = EinsumLinear(d, d, theta, bias=False, device=device)

            times = _interleaved({k: _fwd_bwd(m, x, dy, device, dtype) for k, m in mods.items()}, rounds, device)
            for name, theta in structures.items():
                plan = make_plan(theta, d, d)
                ratio = (2 * d * d) / plan.flops
                speed = paired_ratio(times["dense"], times[name])
                eff = speed / ratio
                row = {"d": d, "dtype": str(dtype).replace("torch.", ""), "structure": name, "tokens": tokens,
                       "dense_ms": 1e3 * median(times["dense"]), "struct_ms": 1e3 * median(times[name]),
                       "flops_ratio": ratio, "speedup": speed, "efficiency": eff}
                if d == TARGET_D and dtype == torch.bfloat16:
                    row["target"] = LAYER_TARGET
                    row["met"] = eff >= LAYER_TARGET
                rows.append(row)
    return rows


def training(device: torch.device, width: int, depth: int, seq: int, batch: int, rounds: int) -> dict:
    """Section 2: dense vs structured GPT stacks, same width and equal FLOPs, bf16 autocast."""
    low = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    structures = {"monarch": Theta.monarch(), "btt_rank4": Theta.btt(math.log(4) / math.log(width))}
    models: dict[str, tuple[nn.Module, int, Theta | None]] = {"dense": (Stack(width, depth, None), width, None)}
    for name, theta in structures.items():
        models[f"{name}@same_width"] = (Stack(width, depth, theta), width, theta)
        w = matched_width(width, depth, seq, theta)
        models[f"{name}@equal_flops"] = (Stack(w, depth, theta), w, theta)
    steps = {}
    for key, (model, w, _) in models.items():
        model.to(device)
        x = torch.randn(batch, seq, w, device=device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model: nn.Module = model, x: torch.Tensor = x, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=low):
                loss = model(x).float().square().mean()
            loss.backward()
            opt.step()
        steps[key] = step
    times = _interleaved(steps, rounds, device)
    tokens = batch * seq
    out: dict = {"width": width, "depth": depth, "seq": seq, "batch": batch, "dtype": str(low), "models": {}}
    dense_flops = flops_per_token(width, depth, seq, None)
    for key, (_, w, theta) in models.items():
        f = flops_per_token(w, depth, seq, theta)
        m = {"width": w, "flops_per_token": f, "step_ms": 1e3 * median(times[key]),
             "tokens_per_s": tokens / median(times[key]), "speedup_vs_dense": paired_ratio(times["dense"], times[key]),
             "flop_saving": dense_flops / f}
        if key.endswith("@same_width"):
            m["target"] = SPEEDUP_FRACTION_TARGET * m["flop_saving"]
            m["met"] = m["speedup_vs_dense"] >= m["target"]
        out["models"][key] = m
    return out


def run(device: str, quick: bool = False) -> dict:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: CUDA is not available on this machine")
    fast.configure(budget_s=1.0 if quick else 4.0)
    if quick:
        sizes, tokens, rounds, gpt = [256, 1024], 256, 3, (128, 1, 64, 4)
    elif dev.type == "cuda":
        sizes, tokens, rounds, gpt = [1024, 4096, 8192], 8192, 20, (1024, 4, 512, 16)
    else:
        sizes, tokens, rounds, gpt = [1024], 2048, 5, (256, 2, 128, 8)
    dtypes = [torch.bfloat16, torch.float32]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    progress(f"  device {device} ({name}), sizes {sizes}, {tokens} tokens, {rounds} rounds, bf16 and fp32")
    rows = layers(dev, sizes, tokens, dtypes, rounds)
    train = training(dev, *gpt, rounds=rounds)
    return {"device": device, "device_name": name, "layers": rows, "training": train,
            "planner": [r for r in fast.planner_report() if dev.type in r.get("entry", "")]}


def print_result(res: dict) -> None:
    print(f"\nLayers on {res['device']} ({res['device_name']}), forward + backward; efficiency = speedup / FLOP ratio:")
    print(f"  {'d':>5s} {'dtype':9s} {'structure':10s} {'dense ms':>9s} {'struct ms':>10s} {'FLOPs x':>8s} "
          f"{'speedup':>8s} {'efficiency':>10s}  target")
    for r in res["layers"]:
        target = "" if "target" not in r else f">= {r['target']:.2f} {'MET' if r['met'] else 'SHORT'}"
        print(f"  {r['d']:5d} {r['dtype']:9s} {r['structure']:10s} {r['dense_ms']:9.3f} {r['struct_ms']:10.3f} "
              f"{r['flops_ratio']:8.1f} {r['speedup']:8.2f} {r['efficiency']:10.2f}  {target}")
    t = res["training"]
    print(f"\nTraining a GPT-like stack on {res['device']} ({t['dtype']} autocast), dense width {t['width']}, "
          f"depth {t['depth']}, seq {t['seq']} x batch {t['batch']}:")
    print(f"  {'model':24s} {'width':>6s} {'MFLOP/tok':>10s} {'tokens/s':>11s} {'speedup':>8s} {'FLOP saving':>12s}")
    for key, m in t["models"].items():
        target = "" if "target" not in m else f"  target >= {m['target']:.2f}: {'MET' if m['met'] else 'SHORT'}"
        print(f"  {key:24s} {m['width']:6d} {m['flops_per_token'] / 1e6:10.2f} {m['tokens_per_s']:11.0f} "
              f"{m['speedup_vs_dense']:7.2f}x {m['flop_saving']:11.2f}x{target}")
