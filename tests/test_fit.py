"""fit_to_dense / from_linear / structurize(fit=True): keep a trained layer's function."""

import copy
import math

import pytest
import torch
from torch import nn

from einsearch import EinsumLinear, fit_to_dense, from_linear, project, structurize

pytestmark = pytest.mark.usefixtures("float64")  # every test here runs in float64


def test_fit_recovers_a_weight_the_structure_can_express(named_theta):
    torch.manual_seed(0)
    target = EinsumLinear(64, 48, named_theta, bias=False)
    with torch.no_grad():  # not the init the fit starts from
        for name in target.core_names():
            getattr(target, name).mul_(1.7).add_(0.01)
    layer = EinsumLinear(64, 48, named_theta, bias=False)
    before = torch.linalg.norm(layer.to_dense() - target.to_dense()) / torch.linalg.norm(target.to_dense())
    err = fit_to_dense(layer, target.to_dense().detach())
    assert err < 0.02 and err < 0.05 * before.item()
    measured = torch.linalg.norm(layer.to_dense() - target.to_dense()) / torch.linalg.norm(target.to_dense())
    assert err == pytest.approx(measured.item(), rel=1e-9)


def test_low_rank_fit_reaches_the_truncated_svd():
    torch.manual_seed(1)
    w = torch.randn(64, 64) / 8
    layer = EinsumLinear(64, 64, "low_rank(0.5)", bias=False)
    err = fit_to_dense(layer, w, steps=2000)
    r = layer.plan.sizes.rho
    s = torch.linalg.svdvals(w)
    optimum = math.sqrt((s[r:] ** 2).sum() / (s ** 2).sum())  # Eckart-Young
    assert err == pytest.approx(optimum, rel=1e-3)


def test_from_linear_copies_bias_and_matches_outputs():
    torch.manual_seed(2)
    linear = nn.Linear(32, 32)
    layer, err = from_linear(linear, "dense")
    assert err < 1e-4 and layer.bias is not None
    x = torch.randn(5, 32)
    torch.testing.assert_close(layer(x), linear(x), atol=1e-4, rtol=1e-4)
    again = EinsumLinear.from_linear(linear, "monarch")
    assert isinstance(again, EinsumLinear) and again.d_in == 32 and again.d_out == 32


def test_structurize_fit_keeps_the_function_better_than_a_fresh_init():
    torch.manual_seed(3)
    base = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    # a trained-looking middle layer the structure can express: low rank 8
    with torch.no_grad():
        base[2].weight.copy_(torch.randn(64, 8) @ torch.randn(8, 64) / 16)
    x = torch.randn(200, 16)
    reference = base(x)
    fitted, fresh = copy.deepcopy(base), copy.deepcopy(base)
    summary = structurize(fitted, "low_rank(0.5)", select="2", fit=True)
    structurize(fresh, "low_rank(0.5)", select="2")
    (row,) = summary.layers
    assert row.fit_error is not None and row.fit_error < 1e-3 and "fit error" in str(summary)
    err_fit = (fitted(x) - reference).norm() / reference.norm()
    err_fresh = (fresh(x) - reference).norm() / reference.norm()
    assert err_fit < 1e-3 < err_fresh


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(weight_shape=(3, 4)), ValueError, r"shape \(d_out, d_in\) = \(8, 16\)"),
    (dict(steps=-1), ValueError, "steps must be a non-negative integer"),
    (dict(lr=0.0), ValueError, "lr must be a positive finite number"),
    (dict(bias=torch.zeros(3)), ValueError, r"bias must be a tensor of shape \(d_out,\) = \(8,\)"),
])
def test_fit_errors(kwargs, error, match):
    layer = EinsumLinear(16, 8, "monarch", bias="bias" in kwargs)
    w = torch.randn(*kwargs.pop("weight_shape", (8, 16)))
    with pytest.raises(error, match=match):
        fit_to_dense(layer, w, **kwargs)


def test_fit_error_paths_for_modules():
    with pytest.raises(ValueError, match="bias given but the layer was built with bias=False"):
        fit_to_dense(EinsumLinear(4, 4, "monarch", bias=False), torch.zeros(4, 4), torch.zeros(4))
    with pytest.raises(TypeError, match="layer must be an EinsumLinear"):
        fit_to_dense(nn.Linear(4, 4), torch.zeros(4, 4))
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        from_linear(nn.ReLU(), "monarch")
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="fit=True"):
        structurize(model, "btt_moe", num_experts=4, fit=True)
    with pytest.raises(TypeError, match="fit must be True or False"):
        structurize(model, "monarch", fit="yes")


def test_zero_weight_fits_to_zero():
    layer = EinsumLinear(16, 16, "btt(0.25)", bias=False)
    assert fit_to_dense(layer, torch.zeros(16, 16)) == 0.0
    assert not layer.to_dense().any()


def test_project_is_exact_for_a_representable_weight_and_copies_bias(named_theta):
    torch.manual_seed(5)
    target = EinsumLinear(48, 40, named_theta)
    w = target.to_dense().detach()
    b = torch.randn(40)
    layer = project(w, named_theta, b)
    assert layer.theta == named_theta and layer.bias is not None
    assert torch.linalg.norm(layer.to_dense() - w) <= 1e-10 * torch.linalg.norm(w)
    x = torch.randn(7, 48)
    torch.testing.assert_close(layer(x), x @ w.T + b, atol=1e-10, rtol=1e-10)


def test_from_linear_projects_by_default_and_adam_on_request():
    torch.manual_seed(6)
    linear = nn.Linear(64, 64)
    layer, err = from_linear(linear, "low_rank(0.5)")
    s = torch.linalg.svdvals(linear.weight.detach())
    r = layer.plan.sizes.rho
    assert err == pytest.approx(math.sqrt((s[r:] ** 2).sum() / (s ** 2).sum()), rel=1e-9)  # Eckart-Young
    _, adam_err = from_linear(linear, "low_rank(0.5)", method="adam", steps=50)
    assert adam_err >= err - 1e-12
    with pytest.raises(ValueError, match="method"):
        from_linear(linear, "monarch", method="sgd")
    with pytest.raises(ValueError, match="weight"):
        project(torch.randn(4, 4, 4), "monarch")


def test_structurize_fit_with_calibration_lowers_the_output_error():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    mix = torch.randn(32, 32) * torch.logspace(0, -2, 32)  # strongly correlated inputs
    x = torch.randn(512, 32) @ mix
    with torch.no_grad():
        hidden = model[1](model[0](x))
        want = model[2](hidden)
    plain, aware = copy.deepcopy(model), copy.deepcopy(model)
    structurize(plain, "low_rank(0.5)", select="2", fit=True)
    summary = structurize(aware, "low_rank(0.5)", select="2", fit=True, calibration=x)
    with torch.no_grad():  # the reported error is ||(W_hat - W) X^T|| / ||W X^T|| (bias left out)
        scale = (hidden @ model[2].weight.T).norm()
        err_plain = (plain[2](hidden) - want).norm() / scale
        err_aware = (aware[2](hidden) - want).norm() / scale
    assert err_aware < err_plain
    assert summary.layers[0].fit_error == pytest.approx(err_aware.item(), rel=1e-6, abs=1e-9)
    with pytest.raises(ValueError, match="fit=True"):
        structurize(copy.deepcopy(model), "monarch", calibration=x)
