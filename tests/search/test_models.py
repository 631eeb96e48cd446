"""Models: residual MLP student and character GPT (shapes, zero init, causality, heads)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import einsearch
from einsearch.search.models import GPT, ResidualMLP, gpt_heads


def _randomize_(model: nn.Module) -> nn.Module:
    """Make every parameter non-zero so zero-init layers do not hide anything."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return model


def test_mlp_shapes_init_and_zero_output():
    m = ResidualMLP(32)
    assert m.width == 32 and len(m.blocks) == 3
    assert m.input.weight.shape == (32, 8)
    assert m.blocks[0].fc.weight.shape == (128, 32) and m.blocks[0].proj.weight.shape == (32, 128)
    assert m.readout.weight.shape == (1, 32)
    x = torch.randn(5, 8)
    assert torch.equal(m(x), torch.zeros(5, 1))  # readout is zero at init
    for block in m.blocks:
        assert torch.count_nonzero(block.proj.weight) == 0
        assert block.fc.weight.std().item() == pytest.approx(math.sqrt(32) / 32, rel=0.1)  # spectral
    assert ResidualMLP(16, depth=5).depth == 5
    with pytest.raises(ValueError, match="width must be a positive integer, got 0"):
        ResidualMLP(0)


def test_gpt_heads():
    assert gpt_heads(32) == 1 and gpt_heads(64) == 1 and gpt_heads(256) == 4
    with pytest.raises(ValueError, match="multiple of the head size 64"):
        gpt_heads(96)
    with pytest.raises(ValueError, match="positive integer"):
        gpt_heads(0)


def test_gpt_shapes_zero_logits_and_no_biases():
    m = GPT(128, block_size=16, depth=2)
    assert (m.width, m.n_head, len(m.blocks)) == (128, 2, 2)
    idx = torch.randint(0, 96, (3, 10))
    logits = m(idx)
    assert logits.shape == (3, 10, 96)
    assert torch.equal(logits, torch.zeros_like(logits))
    assert not any(n.endswith("bias") for n, _ in m.named_parameters())
    linears = [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)]
    assert sorted(linears) == sorted([f"blocks.{i}.{k}" for i in range(2)
                                      for k in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj")]
                                     + ["readout"])
    with pytest.raises(ValueError, match="exceeds block_size=16"):
        m(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("structure", ["dense", "monarch"])
def test_gpt_is_causal(structure):
    torch.manual_seed(0)
    m = GPT(64 if structure == "dense" else 128, block_size=12, depth=2).double()
    if structure != "dense":
        einsearch.structurize(m, structure, select=GPT.is_structured_linear)
    _randomize_(m)
    idx = torch.randint(0, 96, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 96
    a, b = m(idx), m(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-12)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-6


def test_gpt_single_head_below_64():
    m = GPT(32, block_size=8, depth=1)
    assert m.n_head == 1 and m.blocks[0].attn.d_head == 32
    assert m(torch.randint(0, 96, (2, 8))).shape == (2, 8, 96)
