"""Training throughput of a small GPT-like stack: dense vs structured at equal FLOPs per token.

A pre-LN transformer stack (attention with q/k/v/o projections and heads of 64, causal SDPA;
MLP w -> 4w -> w with GELU), fed random activations and trained on a squared-output loss with
AdamW. The dense model has width ``w``; each structured model gets the width (a multiple of 64)
whose FLOPs per token (every linear layer, plus the attention matmuls) come closest to the
dense model's. Steps of all models run round-robin in one process; tokens/s are medians.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from common import interleaved, median, paired_ratio, progress, wait_for_quiet
from torch import nn

from einsearch import EinsumLinear, Theta
from einsearch.plan import make_plan


def _linear(d_in: int, d_out: int, theta: Theta | None, fast: bool) -> nn.Module:
    if theta is None:
        return nn.Linear(d_in, d_out, bias=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EinsumLinear(d_in, d_out, theta, bias=False, fast=fast)


class Block(nn.Module):
    def __init__(self, w: int, theta: Theta | None, fast: bool) -> None:
        super().__init__()
        self.heads = max(1, w // 64)
        self.ln1, self.ln2 = nn.LayerNorm(w), nn.LayerNorm(w)
        self.q, self.k, self.v, self.o = (_linear(w, w, theta, fast) for _ in range(4))
        self.fc, self.proj = _linear(w, 4 * w, theta, fast), _linear(4 * w, w, theta, fast)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, W = h.shape
        u = self.ln1(h)
        q, k, v = (m(u).view(B, T, self.heads, W // self.heads).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.o(a.transpose(1, 2).reshape(B, T, W))
        return h + self.proj(F.gelu(self.fc(self.ln2(h))))


class Stack(nn.Module):
    def __init__(self, w: int, depth: int, theta: Theta | None, fast: bool = True) -> None:
        super().__init__()
        self.width = w
        self.blocks = nn.ModuleList(Block(w, theta, fast) for _ in range(depth))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            h = blk(h)
        return h


def flops_per_token(w: int, depth: int, seq: int, theta: Theta | None) -> int:
    """Forward FLOPs per token: linear layers (their real plans) + attention matmuls."""
    def lin(d_in, d_out):
        return 2 * d_in * d_out if theta is None else make_plan(theta, d_in, d_out).flops
    per_block = 4 * lin(w, w) + lin(w, 4 * w) + lin(4 * w, w) + 2 * 2 * seq * w  # QK^T and AV
    return depth * per_block


def matched_width(w_dense: int, depth: int, seq: int, theta: Theta) -> int:
    target = flops_per_token(w_dense, depth, seq, None)
    cands = range(64, 16 * w_dense + 1, 64)
    return min(cands, key=lambda w: abs(math.log(flops_per_token(w, depth, seq, theta) / target)))


def run(quick: bool = False, structures: dict[str, Theta] | None = None) -> dict:
    w, depth, seq, batch = (128, 1, 64, 4) if quick else (512, 2, 256, 8)
    rounds = 3 if quick else 8
    if structures is None:
        structures = {"monarch": Theta.monarch(), "btt_rank4": Theta.btt(math.log(4) / math.log(1024))}
    tokens = batch * seq
    torch.manual_seed(0)
    models = {"dense": Stack(w, depth, None)}
    widths = {"dense": w}
    for name, theta in structures.items():
        ws = matched_width(w, depth, seq, theta)
        widths[name] = ws
        models[f"{name}/fast"] = Stack(ws, depth, theta, fast=True)
        models[f"{name}/ref"] = Stack(ws, depth, theta, fast=False)
        with torch.no_grad():
            for p, q in zip(models[f"{name}/ref"].parameters(), models[f"{name}/fast"].parameters()):
                p.copy_(q)
    steps = {}
    for key, model in models.items():
        x = torch.randn(batch, seq, model.width)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, x=x, opt=opt):
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()
        steps[key] = step
    wait_for_quiet(max_wait_s=0 if quick else 120)
    progress(f"  training throughput: {len(steps)} models, {tokens} tokens/step, {rounds} rounds")
    times = interleaved(steps, repeats=rounds, warmup=1)
    out = {"dense_width": w, "depth": depth, "seq": seq, "batch": batch, "tokens_per_step": tokens,
           "rounds": rounds, "models": {}}
    for key in steps:
        name = key.split("/")[0]
        theta = structures.get(name)
        out["models"][key] = {
            "width": widths[name],
            "flops_per_token": flops_per_token(widths[name], depth, seq, theta),
            "step_ms": 1e3 * median(times[key]),
            "tokens_per_s": tokens / median(times[key]),
            "throughput_vs_dense": paired_ratio(times["dense"], times[key]),
        }
    return out


def print_result(res: dict) -> None:
    print(f"\nTraining throughput (fwd + bwd + AdamW), GPT-like stack depth {res['depth']}, seq {res['seq']}, "
          f"{res['tokens_per_step']} tokens/step, equal FLOPs per token (median of {res['rounds']} rounds):")
    print(f"  {'model':22s} {'width':>6s} {'MFLOP/token':>12s} {'step ms':>9s} {'tokens/s':>10s} {'vs dense':>9s}")
    for key, m in res["models"].items():
        print(f"  {key:22s} {m['width']:6d} {m['flops_per_token'] / 1e6:12.2f} {m['step_ms']:9.1f} "
              f"{m['tokens_per_s']:10.0f} {m['throughput_vs_dense']:8.2f}x")
