"""BTT-MoE: does wall-clock follow active FLOPs?

Times forward + backward of ``BTTMoELinear`` with top-2 of 8 experts against top-8 of 8 (every
expert active) at d = 1024, 2048 tokens, float32, side by side in one process, and reports the
time ratio next to the counted FLOP ratio (``torch.utils.flop_counter.FlopCounterMode``).
The router is given random weights so that tokens spread over the experts as they do after
training (a zero-init router sends every token to the same k experts).

    python benchmarks/moe.py            # full measurement
    python benchmarks/moe.py --quick    # a few repeats, smaller batch (smoke check)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from einsearch.moe import BTTMoELinear

D = 1024
TOKENS = 2048
NUM_EXPERTS = 8


def _layer(top_k: int, d: int) -> BTTMoELinear:
    torch.manual_seed(0)
    layer = BTTMoELinear(d, d, NUM_EXPERTS, top_k)
    with torch.no_grad():
        layer.router.weight.normal_(0.0, d ** -0.5)
    return layer


def _step(layer: BTTMoELinear, x: torch.Tensor) -> None:
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    (y.square().mean() + layer.aux_loss).backward()


def _counted_flops(layer: BTTMoELinear, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        _step(layer, x)
    return counter.get_total_flops()


def run(quick: bool = False) -> dict:
    """Time top-2-of-8 vs top-8-of-8; return both timings and the time and FLOP ratios."""
    d, tokens = (D, 512) if quick else (D, TOKENS)
    repeats, warmup = (3, 1) if quick else (15, 3)
    x = torch.randn(tokens, d, generator=torch.Generator().manual_seed(1))
    layers = {k: _layer(k, d) for k in (2, NUM_EXPERTS)}
    flops = {k: _counted_flops(layer, x) for k, layer in layers.items()}
    for _ in range(warmup):
        for layer in layers.values():
            _step(layer, x)
    times: dict[int, list[float]] = {k: [] for k in layers}
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        for k, layer in layers.items():
            t0 = time.perf_counter()
            _step(layer, x)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "moe",
        "d": d, "tokens": tokens, "num_experts": NUM_EXPERTS, "dtype": "float32",
        "threads": torch.get_num_threads(), "repeats": repeats,
        "top2_ms": 1e3 * med[2], f"top{NUM_EXPERTS}_ms": 1e3 * med[NUM_EXPERTS],
        "top2_flops_fwd_bwd": flops[2], f"top{NUM_EXPERTS}_flops_fwd_bwd": flops[NUM_EXPERTS],
        "time_ratio": med[2] / med[NUM_EXPERTS],
        "flop_ratio": flops[2] / flops[NUM_EXPERTS],
        "flops_per_token": {f"top{k}": layer.flops_per_token() for k, layer in layers.items()},
    }
    print(f"BTTMoELinear d={d}, {tokens} tokens, {NUM_EXPERTS} experts, fwd+bwd float32, "
          f"{result['threads']} threads (median of {repeats}):")
    print(f"  top-2 of 8: {result['top2_ms']:8.2f} ms   {flops[2] / 1e9:7.3f} GFLOP")
    print(f"  top-8 of 8: {result['top8_ms']:8.2f} ms   {flops[NUM_EXPERTS] / 1e9:7.3f} GFLOP")
    print(f"  ratio top-2 / top-8: time {result['time_ratio']:.3f}, FLOPs {result['flop_ratio']:.3f}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
