"""muP: learning-rate groups and the coordinate check."""

import math

import pytest
import torch
from conftest import NAMED_STRUCTURES
from torch import nn

from einsearch import EinsumLinear, param_groups, structurize
from einsearch.mup import lr_multipliers


class ResidualMLP(nn.Module):
    """Input Linear(8 -> w) + GELU + LayerNorm, pre-LN residual blocks, zero-init readout."""

    def __init__(self, width: int, depth: int = 2):
        super().__init__()
        self.width = width
        self.inp = nn.Linear(8, width)
        self.norm = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
            for _ in range(depth)
        )
        for block in self.blocks:
            nn.init.zeros_(block[-1].weight)
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)

    def features(self, x):
        h = self.norm(nn.functional.gelu(self.inp(x)))
        for block in self.blocks:
            h = h + block(h)
        return h

    def forward(self, x):
        return self.out(self.features(x))


def _structured(width, theta, seed=0):
    torch.manual_seed(seed)
    model = ResidualMLP(width)
    structurize(model, theta, select="blocks.*")
    return model


def test_every_parameter_in_exactly_one_group(named_theta):
    model = _structured(64, named_theta)
    groups = param_groups(model, 1e-3, base_width=32)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters() if p.requires_grad)
    assert all(len(g["params"]) == len(g["names"]) for g in groups)


def test_groups_work_with_any_optimizer():
    model = _structured(32, "monarch")
    for opt_cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
        opt = opt_cls(param_groups(model, 1e-3, base_width=32), lr=1e-3)
        model(torch.randn(4, 8)).sum().backward()
        opt.step()


def test_dense_at_base_width_equals_standard_parameterization():
    """At base width, muP learning rates equal the plain lr and init is N(0, 1/fan_in)."""
    model = _structured(64, "dense")
    for g in param_groups(model, 1e-3, base_width=64):
        assert g["lr"] == pytest.approx(1e-3)
    layer = model.blocks[0][1]
    assert isinstance(layer, EinsumLinear)
    assert layer.init_std("core_a") == pytest.approx(1 / math.sqrt(64))
    assert layer.core_a.std().item() == pytest.approx(1 / 8, rel=0.05)


def test_structured_at_base_width_equals_no_width_scaling(named_theta):
    model = _structured(64, named_theta)
    assert lr_multipliers(model, base_width=64) == lr_multipliers(model)


def test_width_multiplier_applies_to_hidden_and_readout_only():
    model = _structured(256, "dense")
    mult = lr_multipliers(model, base_width=64)
    assert mult["inp.weight"] == 1.0  # fan-in 8 does not grow with width
    assert mult["out.weight"] == pytest.approx(0.25)
    assert mult["blocks.0.1.core_a"] == pytest.approx(0.25)
    assert mult["blocks.0.3.core_a"] == pytest.approx(0.25)
    assert mult["blocks.0.1.bias"] == 1.0 and mult["norm.weight"] == 1.0


def test_core_multiplier_formula():
    model = _structured(64, "monarch")
    layer = model.blocks[0][1]
    p = layer.plan
    mult = lr_multipliers(model, base_width=32)
    assert mult["blocks.0.1.core_a"] == pytest.approx((64 / p.fan_in_a) / 2 * 0.5)
    assert mult["blocks.0.1.core_b"] == pytest.approx((64 / p.fan_in_b) / 2 * 0.5)


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": 0.0}, "lr must be a positive finite number"),
    ({"lr": 1e-3, "base_width": 0}, "base_width must be a positive integer"),
    ({"lr": 1e-3, "base_width": 16, "width": -4}, "width must be a positive integer"),
])
def test_param_group_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        param_groups(_structured(16, "dense"), **kwargs)


def test_missing_width_is_a_clear_error():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="width"):
        param_groups(model, 1e-3, base_width=4)


def _activation_update(width, theta, mup, steps=5, seed=0):
    """RMS of the change of the residual stream after ``steps`` Adam steps (a coordinate check)."""
    model = _structured(width, theta, seed=seed)
    g = torch.Generator().manual_seed(123)
    x = torch.randn(256, 8, generator=g)
    y = torch.sin(x.sum(-1, keepdim=True))
    groups = param_groups(model, 1e-2, base_width=64 if mup else None)
    opt = torch.optim.Adam(groups, lr=1e-2)
    with torch.no_grad():
        h0 = model.features(x)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        return (model.features(x) - h0).pow(2).mean().sqrt().item()


def _slope(values: dict[int, float]) -> float:
    ws = sorted(values)
    return math.log(values[ws[-1]] / values[ws[0]]) / math.log(ws[-1] / ws[0])


@pytest.mark.parametrize("name", sorted(NAMED_STRUCTURES))
def test_coordinate_check_activation_updates_flat_across_widths(name):
    widths = (64, 128, 256, 512)
    mup = {w: _activation_update(w, NAMED_STRUCTURES[name], mup=True) for w in widths}
    assert abs(_slope(mup)) < 0.3, mup


def test_coordinate_check_has_teeth_standard_parameterization_grows():
    widths = (64, 512)
    sp = {w: _activation_update(w, "dense", mup=False) for w in widths}
    mup = {w: _activation_update(w, "dense", mup=True) for w in widths}
    assert _slope(sp) > _slope(mup) + 0.3, (sp, mup)
