"""Structure kinds as typed configs: parsing, their attributes, and dispatch to their handlers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from einsearch import (
    BTTMoELinear,
    BTTMoEStructure,
    EinsumLinear,
    FFNMoEStructure,
    MoEFFN,
    StructureConfig,
    Theta,
    ThetaStructure,
    apply_structure,
    parse_structure,
    register_structure,
    structure_kinds,
    structurize,
    taxonomy,
)
from einsearch.base import plan_core
from einsearch.replace import StructurizeSummary


class _MLP(nn.Module):
    is_ffn = True

    def __init__(self, w: int) -> None:
        super().__init__()
        self.fc = nn.Linear(w, 4 * w, bias=False)
        self.proj = nn.Linear(4 * w, w, bias=False)

    def forward(self, x):
        return self.proj(torch.relu(self.fc(x)))


class _Block(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.attn = nn.Linear(w, w)
        self.mlp = _MLP(w)
        self.head = nn.Linear(w, 3)

    def forward(self, x):
        return self.head(self.mlp(self.attn(x)))


def test_theta_structures(named_theta):
    theta = named_theta
    config = parse_structure(str(theta))
    assert isinstance(config, ThetaStructure) and config.theta == theta
    assert config.name == config.label == str(theta)
    assert config.taxonomy() == taxonomy(theta) and not config.is_moe and config.baseline is None
    assert config.to_dict() == {"kind": "theta", "name": str(theta), "theta": str(theta)}
    assert parse_structure(theta) == config and parse_structure(config) is config


def test_a_named_structure_keeps_its_spelling_as_name():
    config = parse_structure(" monarch ")
    assert config.name == "monarch" and config.label == str(Theta.monarch())
    # the spelling is not part of equality: the same point of the space
    assert config == parse_structure("btt(0)") and hash(config) == hash(parse_structure("btt(0)"))


def test_moe_kinds():
    btt = parse_structure("BTT-MoE", num_experts=4, top_k=1)
    assert btt == BTTMoEStructure(4, 1) and btt.name == "btt_moe" and btt.is_moe
    assert btt.theta is None and btt.taxonomy() is None and btt.expert_theta == Theta.monarch()
    assert btt.baseline == "moe" and btt.label == "btt_moe(num_experts=4, top_k=1, router_lr=mup, router_init=zero)"
    assert btt.to_dict() == {"kind": "btt_moe", "name": "btt_moe", "num_experts": 4, "top_k": 1,
                             "router_lr": "mup", "router_init": "zero", "router_gate": "topk"}
    moe = parse_structure("moe")
    assert moe == FFNMoEStructure(8, 2) and moe.is_moe and moe.baseline is None and moe.theta is None
    assert moe != BTTMoEStructure(8, 2)
    assert {"btt_moe", "moe"} <= set(structure_kinds())
    # a config with options replaced
    assert parse_structure(btt, top_k=2) == BTTMoEStructure(4, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        btt.top_k = 3  # type: ignore[misc]


@pytest.mark.parametrize("spec, options, error, match", [
    ("btt_moe", {"num_experts": 0}, ValueError, "num_experts must be a positive integer, got 0"),
    ("moe", {"num_experts": 2, "top_k": 3}, ValueError, "top_k must be <= num_experts"),
    ("btt_moe", {"num_experts": 2.0}, TypeError, "num_experts"),
    ("monarch", {"num_experts": 4}, ValueError, "takes no options"),
    ("hyperbolic", {}, ValueError, "unknown structure"),
    (3, {}, TypeError, "structure must be a string, a Theta or a StructureConfig"),
])
def test_bad_specs(spec, options, error, match):
    with pytest.raises(error, match=match):
        parse_structure(spec, **options)


def test_apply_theta_structure_matches_structurize():
    torch.manual_seed(0)
    a = _Block(8)
    torch.manual_seed(0)
    b = _Block(8)
    torch.manual_seed(1)
    sa = apply_structure(a, parse_structure("monarch"))
    torch.manual_seed(1)
    sb = structurize(b, "monarch")
    assert sa.layers == sb.layers and sa.structure == sb.structure == str(Theta.monarch())
    assert isinstance(a.attn, EinsumLinear) and isinstance(a.head, nn.Linear)  # readout kept
    x = torch.randn(5, 8)
    torch.testing.assert_close(a(x), b(x))


def test_ffn_moe_structure_replaces_the_mlp_and_makes_the_rest_dense():
    torch.manual_seed(0)
    model = _Block(8)
    summary = structurize(model, "moe", num_experts=4, top_k=2, einsum_norm=True)
    assert summary.structure == "moe(num_experts=4, top_k=2, router_lr=mup, router_init=normal)"
    assert isinstance(model.mlp, MoEFFN) and model.mlp.num_experts == 4
    assert isinstance(model.attn, EinsumLinear) and model.attn.theta == Theta.dense()
    assert model.attn.config.einsum_norm and summary.skipped == ["head"]
    assert [r.name for r in summary.layers] == ["mlp", "attn"]
    assert model(torch.randn(3, 8)).shape == (3, 3)


def test_btt_moe_by_config_needs_no_keyword():
    model = _Block(8)
    summary = structurize(model, BTTMoEStructure(num_experts=2, top_k=1), select="attn")
    assert isinstance(model.attn, BTTMoELinear) and model.attn.top_k == 1
    assert summary.structure == "btt_moe(num_experts=2, top_k=1, router_lr=mup, router_init=zero)"


def test_moe_kinds_refuse_fit():
    with pytest.raises(ValueError, match="fit=True"):
        apply_structure(_Block(8), FFNMoEStructure(2, 1), fit=True)


def test_register_a_new_kind():
    @dataclasses.dataclass(frozen=True)
    class Identity(StructureConfig):
        @property
        def name(self) -> str:
            return "identity_test"

        def to_dict(self):
            return {"kind": "identity_test", "name": self.name}

    calls = []

    def handler(model, config, select=None, *, fit=False, **kwargs):
        calls.append((config, select, fit, kwargs))
        return StructurizeSummary(structure=config.name)

    register_structure("identity_test", Identity, handler)
    model = _Block(4)
    summary = structurize(model, "identity_test", select="attn", flag=1)
    assert summary.structure == "identity_test" and len(calls) == 1
    config, select, fit, kwargs = calls[0]
    assert config == Identity() and not fit and kwargs == {"flag": 1}
    pick = select if callable(select) else (lambda name, module: name == select)
    assert pick("attn", model.attn) and not pick("head", model.head)
    assert isinstance(model.attn, nn.Linear)  # the handler decides what happens


def test_plan_core_is_the_one_core_name_mapping():
    assert plan_core("core_a") == "A" and plan_core("core_b") == "B"
    for bad in ("a", "A", "core_c", None):
        with pytest.raises(ValueError, match="core must be one of"):
            plan_core(bad)


def test_moe_options_written_in_the_structure_text():
    from einsearch import structure_options

    config = parse_structure("btt_moe(num_experts=4, top_k=1)")
    assert (config.num_experts, config.top_k) == (4, 1) and config.is_moe
    assert parse_structure(config.label) == config  # the label is its own spec
    assert structure_options("moe(num_experts=16, router_init=zero)") == {"num_experts": 16, "router_init": "zero"}
    assert structure_options("btt(0.25)") == {} and structure_options("btt_moe") == {}
    with pytest.raises(ValueError, match="key=value"):
        parse_structure("btt_moe(4, 1)")
    with pytest.raises(ValueError, match="experts"):
        parse_structure("btt_moe(experts=4)")
