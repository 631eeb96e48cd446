"""The cost model against what the trainer's FLOP counter counts on real models."""

from __future__ import annotations

import pytest

from einsearch.search.config import TrainConfig
from einsearch.search.costmodel import _example_input, flops_per_token
from einsearch.search.train import build_model, count_forward_flops

GPT = {"depth": 2, "block_size": 32}


@pytest.mark.parametrize("task, structure, width", [
    ("charlm", "btt_moe", 64),
    ("charlm", "btt_moe(num_experts=4, top_k=1)", 48),
    ("charlm", "btt_moe(num_experts=16, top_k=2, router_gate=switch)", 128),
    ("charlm", "moe", 32),
    ("charlm", "moe(num_experts=4, top_k=1)", 64),
    ("regression", "btt_moe(num_experts=4, top_k=2)", 40),
])
def test_moe_flops_without_weights_equal_a_real_forward(task, structure, width):
    """MoE models are counted on the meta device plus each MoE module's active FLOPs per token;
    a real model, routed on real tokens, must count the same."""
    train = GPT if task == "charlm" else {}
    cfg = TrainConfig(task=task, structure=structure, width=width, **train)
    built, model = build_model(cfg)
    real = 3.0 * count_forward_flops(model, _example_input(built, "cpu")) / built.tokens_per_example
    assert flops_per_token(task, structure, width, train) == real
