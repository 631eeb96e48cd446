"""Structured layers take part in autocast exactly like nn.Linear (docs/design.md section 11).

Under ``torch.autocast`` every structured layer computes its matrix products in the autocast
dtype and returns that dtype, its float32 parameters get float32 gradients, and its values stay
within the dtype's tolerance of the float32 computation. CPU bf16 autocast runs the same code a
GPU's does.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from einsearch import BTTMoELinear, EinsumLinear, MoEFFN

#: relative Frobenius error allowed for bf16 (8 bits of mantissa: 2^-8 = 0.4% per rounding,
#: compounded over two contractions and the input cast)
BF16_RTOL = 3e-2


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _check(layer: nn.Module, x: torch.Tensor) -> None:
    ref = layer(x)
    ref.float().square().sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    layer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16, f"{type(layer).__name__} returned {y.dtype} under bf16 autocast"
    assert _rel(y, ref) < BF16_RTOL
    y.float().square().sum().backward()
    grads = {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}
    assert set(grads) == set(ref_grads) and grads
    for name, g in grads.items():
        assert g.dtype == torch.float32, f"{name}: gradient {g.dtype}"
        if ref_grads[name].abs().max() > 0:
            assert _rel(g, ref_grads[name]) < 5 * BF16_RTOL, name
    assert all(p.dtype == torch.float32 for p in layer.parameters())


def test_nn_linear_is_the_behaviour_to_match():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert nn.Linear(8, 8)(torch.randn(2, 8)).dtype == torch.bfloat16


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("einsum_norm", [False, True], ids=["plain", "einsum_norm"])
def test_every_structure_under_bf16_autocast(named_theta, fast, einsum_norm):
    torch.manual_seed(0)
    layer = EinsumLinear(64, 48, named_theta, einsum_norm=einsum_norm, fast=fast)
    with torch.no_grad():  # away from init so the einsum norm is active and the bias matters
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    _check(layer, torch.randn(3, 5, 64))


def test_padded_structure_under_bf16_autocast():
    torch.manual_seed(0)
    _check(EinsumLinear(37, 53, "monarch"), torch.randn(16, 37))  # primes: padded on both sides


def test_btt_moe_under_bf16_autocast():
    torch.manual_seed(0)
    layer = BTTMoELinear(64, 64, num_experts=4, top_k=2)
    with torch.no_grad():
        layer.router.weight.normal_(0, 0.2)  # a router that spreads tokens (zero at init)
    x = torch.randn(32, 64)
    _check(layer, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    assert layer.aux_loss is not None and layer.aux_loss.dtype == torch.float32


def test_ffn_moe_under_bf16_autocast():
    torch.manual_seed(0)
    layer = MoEFFN(32, num_experts=4, top_k=2)
    with torch.no_grad():
        layer.router.weight.normal_(0, 0.2)
        layer.w_proj.normal_(0, 0.05)
    _check(layer, torch.randn(4, 8, 32))


def test_routing_is_decided_in_float32():
    """The router's logits are float32 under autocast, so top-k picks the same experts."""
    torch.manual_seed(0)
    layer = BTTMoELinear(64, 64, num_experts=8, top_k=2)
    with torch.no_grad():
        layer.router.weight.normal_(0, 0.2)
    x = torch.randn(64, 64)
    full = layer.router(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = layer.router(x.to(torch.bfloat16))
    assert low.logits.dtype == torch.float32
    agree = (full.expert.sort(-1).values == low.expert.sort(-1).values).all(-1).float().mean()
    assert agree > 0.9


def test_without_autocast_nothing_changes(named_theta):
    torch.manual_seed(0)
    layer = EinsumLinear(32, 32, named_theta)
    x = torch.randn(4, 32)
    assert layer(x).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert torch.equal(layer(x), layer(x))
