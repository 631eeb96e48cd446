"""BTT-MoE and the FFN-MoE baseline against their contract (docs/design.md section 5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from einsearch import EinsumLinear, Theta, param_groups, structurize
from einsearch.moe import BTTMoELinear, MoEFFN, aux_loss, moeify, router_aux_loss
from einsearch.search.models.gpt import GPT

pytestmark = pytest.mark.usefixtures("float64")  # every test here runs in float64


def _random_router(layer: nn.Module, std: float = 1.0) -> None:
    with torch.no_grad():
        layer.router.weight.normal_(0.0, std)


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ------------------------------------------------------------------ BTTMoELinear
@pytest.mark.parametrize("router_gate", ["topk", "switch"])
@pytest.mark.parametrize("d_in,d_out,num_experts,top_k", [
    (64, 64, 8, 2), (16, 64, 4, 1), (64, 16, 4, 4), (17, 13, 3, 2), (96, 96, 8, 3), (1, 5, 2, 1),
])
def test_forward_equals_dense_reference(d_in, d_out, num_experts, top_k, router_gate):
    layer = BTTMoELinear(d_in, d_out, num_experts, top_k, router_gate=router_gate)
    _random_router(layer)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(3, 11, d_in)
    y = layer(x)
    assert y.shape == (3, 11, d_out)
    torch.testing.assert_close(y, layer.dense_reference(x), rtol=1e-10, atol=1e-10)


def test_reference_is_the_gated_sum_of_rank_slices():
    """dense_reference itself, checked token by token against materialized rank-1 slices."""
    layer = BTTMoELinear(16, 16, 4, 2, bias=False)
    _random_router(layer)
    x = torch.randn(5, 16)
    s = layer.sizes
    a, b = layer.core_a, layer.core_b
    for n in range(5):
        logits = layer.router.weight @ x[n]
        top = torch.topk(logits, 2)
        gates = torch.softmax(top.values, dim=0)
        y = torch.zeros(16)
        for gate, e in zip(gates, top.indices):
            w = torch.einsum("agdf,bgef->defabg", a[..., e], b[..., e]).reshape(16, 16)
            y += gate * (w @ x[n])
        torch.testing.assert_close(layer.dense_reference(x[n : n + 1])[0], y)
    assert s.rho == 4 and layer.core_a.shape[-1] == 4 and layer.core_b.shape[-1] == 4


def test_top_all_experts_is_a_full_btt_with_softmax_gates():
    """top_k = E: every rank slice is active; equal logits give gate 1/E on each."""
    layer = BTTMoELinear(16, 32, 4, 4, bias=False)
    x = torch.randn(7, 16)
    w = layer.expert_matrices().sum(0) / 4  # zero router: all logits equal
    torch.testing.assert_close(layer(x), x @ w.T)


def test_einsum_norm_and_zero_init():
    layer = BTTMoELinear(16, 16, 4, 2, einsum_norm=True)
    _random_router(layer)
    with torch.no_grad():
        layer.core_a.mul_(5.0)  # above the init scale: the norm brings it back
    x = torch.randn(9, 16)
    torch.testing.assert_close(layer(x), layer.dense_reference(x))
    a, _ = layer.effective_cores()
    assert a.pow(2).mean().sqrt().item() == pytest.approx(layer.init_std("core_a"), rel=1e-9)
    zero = BTTMoELinear(16, 16, 4, 2, zero_init=True, einsum_norm=True)
    assert torch.count_nonzero(zero(x)) == 0
    zero(x).sum().backward()
    assert torch.isfinite(zero.core_a.grad).all() and torch.isfinite(zero.core_b.grad).all()


def test_gradients_reach_router_and_cores():
    layer = BTTMoELinear(32, 32, 8, 2)
    assert torch.count_nonzero(layer.router.weight) == 0  # zero init
    x = torch.randn(64, 32)
    target = torch.randn(64, 32)
    loss = (layer(x) - target).pow(2).mean()  # task loss only: the gates carry the gradient
    loss.backward()
    assert layer.router.weight.grad.abs().sum() > 0
    assert layer.core_a.grad.abs().sum() > 0 and layer.core_b.grad.abs().sum() > 0
    # the aux loss alone also trains the router
    layer.zero_grad()
    layer(x)
    layer.aux_loss.backward()
    assert layer.router.weight.grad.abs().sum() > 0


def test_gradcheck_with_fixed_routing():
    layer = BTTMoELinear(8, 12, 3, 2)
    _random_router(layer)
    x = torch.randn(6, 8, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp), (x,))


def test_flops_follow_active_experts():
    n, d, E = 64, 64, 8
    x = torch.randn(n, d)
    counted = {}
    for k in (2, 8):
        layer = BTTMoELinear(d, d, E, k)
        _random_router(layer)
        counted[k] = _counted(lambda layer=layer: layer(x))
        assert counted[k] == n * layer.flops_per_token()  # FlopCounterMode agrees exactly
        router = 2 * d * E
        assert layer.flops_per_token() == router + k * layer.expert_flops()
        assert layer.expert_flops() == make_monarch_flops(d)
    router_total = n * 2 * d * E
    ratio = (counted[2] - router_total) / (counted[8] - router_total)
    assert ratio == pytest.approx(0.25)
    assert counted[2] / counted[8] == pytest.approx((0.25 * 8 * make_monarch_flops(d) + 2 * d * E)
                                                    / (8 * make_monarch_flops(d) + 2 * d * E))
    # backward follows the same active set
    layer = BTTMoELinear(d, d, E, 2)
    _random_router(layer)
    x.requires_grad_(True)
    fwd_bwd = _counted(lambda: layer(x).sum().backward())
    assert fwd_bwd == pytest.approx(3 * counted[2], rel=0.05)


def make_monarch_flops(d: int) -> int:
    return EinsumLinear(d, d, Theta.monarch()).cost().flops


def test_padded_dims_flops_and_repr():
    layer = BTTMoELinear(17, 13, 3, 2)
    _random_router(layer)
    assert _counted(lambda: layer(torch.randn(10, 17))) == 10 * layer.flops_per_token()
    text = repr(layer)
    for part in ("d_in=17", "d_out=13", "num_experts=3", "top_k=2", "rho=3", "padded=(18->14)"):
        assert part in text


def test_aux_loss_matches_hand_computation():
    layer = BTTMoELinear(2, 2, 3, 2, bias=False)
    with torch.no_grad():
        layer.router.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]])
    layer(x)
    # logits per token: [2, 0, -2], [0, 3, -3], [-1, 0, 1], [1, 1, -2]
    logits = [[2, 0, -2], [0, 3, -3], [-1, 0, 1], [1, 1, -2]]
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits]
    mean_prob = [sum(p[e] for p in probs) / 4 for e in range(3)]
    # top-2 per token: {0,1}, {1,0}, {2,1}, {0,1} -> counts 3, 4, 1 of 8 assignments
    fraction = [3 / 8, 4 / 8, 1 / 8]
    balance = 3 * sum(p * f for p, f in zip(mean_prob, fraction))
    z = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits) / 4
    assert layer.aux_loss.item() == pytest.approx(balance + 0.1 * z, rel=1e-12)
    # balanced uniform router: balance term is exactly 1, z-loss (ln E)^2
    uniform = router_aux_loss(torch.zeros(4, 4), torch.tensor([[0, 1], [2, 3], [0, 2], [1, 3]]), 4)
    assert uniform.item() == pytest.approx(1 + 0.1 * math.log(4) ** 2)


def test_model_aux_loss_is_the_mean_over_moe_layers():
    model = nn.Sequential(BTTMoELinear(8, 8, 4, 2), nn.ReLU(), BTTMoELinear(8, 8, 4, 1))
    for layer in (model[0], model[2]):
        _random_router(layer)
    model(torch.randn(10, 8))
    expected = (model[0].aux_loss + model[2].aux_loss) / 2
    torch.testing.assert_close(aux_loss(model), expected)
    none = aux_loss(nn.Linear(3, 3))
    assert none.shape == () and none.item() == 0.0


def test_short_training_lowers_loss_and_spreads_over_experts():
    torch.manual_seed(0)
    d, E, k = 16, 4, 2
    teachers = torch.randn(E, d, d) / d**0.5
    centers = torch.randn(E, d)

    def target(x):  # a true mixture: each region of input space has its own linear map
        return torch.einsum("noi,ni->no", teachers[(x @ centers.T).argmax(-1)], x)

    layer = BTTMoELinear(d, d, E, k, bias=False)
    opt = torch.optim.Adam(param_groups(layer, 1e-2), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    x_eval = torch.randn(512, d, generator=gen)
    with torch.no_grad():
        start = (layer(x_eval) - target(x_eval)).pow(2).mean().item()
    for _ in range(150):
        x = torch.randn(256, d, generator=gen)
        loss = (layer(x) - target(x)).pow(2).mean() + 0.01 * layer.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = (layer(x_eval) - target(x_eval)).pow(2).mean().item()
        used = torch.bincount(layer.router(x_eval).expert.flatten(), minlength=E)
    assert end < 0.7 * start
    assert int((used > 0).sum()) > k  # routing moved beyond the zero-init router's tie
    assert int(used.max()) < 0.5 * used.sum()  # and it is not collapsed onto one expert


def test_mup_lr_multipliers_and_init_scale():
    layer = BTTMoELinear(64, 64, 8, 2)
    s = layer.sizes
    assert layer.fans("core_a") == (s.alpha, s.delta * s.phi)
    assert layer.fans("core_b") == (s.beta * s.gamma, s.epsilon)  # n_rho = 1: one expert
    monarch = EinsumLinear(64, 64, Theta.monarch())
    assert layer.init_std("core_a") == pytest.approx(monarch.init_std("core_a"))
    assert layer.init_std("core_b") == pytest.approx(monarch.init_std("core_b"))
    groups = {n: g["lr"] for g in param_groups(layer, 1.0, base_width=32, width=64) for n in g["names"]}
    assert groups["core_a"] == pytest.approx(monarch.lr_multiplier("core_a") * 0.5)
    assert groups["core_b"] == pytest.approx(monarch.lr_multiplier("core_b") * 0.5)
    assert groups["router.weight"] == 0.5 and groups["bias"] == 1.0  # the router follows muP too
    plain = BTTMoELinear(64, 64, 8, 2, router_lr="plain")
    groups = {n: g["lr"] for g in param_groups(plain, 1.0, base_width=32, width=64) for n in g["names"]}
    assert groups["router.weight"] == 1.0
    # every expert alone has the output scale of a Monarch layer; so does the gated mix
    x = torch.randn(4096, 64)
    rms = layer(x).pow(2).mean().sqrt()
    ref = monarch(x).pow(2).mean().sqrt()
    assert 0.5 < (rms / ref).item() < 2.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(d_in=8, d_out=8, num_experts=0), "num_experts"),
    (dict(d_in=8, d_out=8, num_experts=2.0), "num_experts"),
    (dict(d_in=8, d_out=8, num_experts=4, top_k=0), "top_k"),
    (dict(d_in=8, d_out=8, num_experts=4, top_k=5), "top_k"),
    (dict(d_in=0, d_out=8, num_experts=4), "d_in"),
    (dict(d_in=8, d_out="8", num_experts=4), "d_out"),
])
def test_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BTTMoELinear(**kwargs)


def test_value_errors_elsewhere():
    with pytest.raises(ValueError, match="d_in=8"):
        BTTMoELinear(8, 8, 4)(torch.randn(3, 7))
    with pytest.raises(ValueError, match="top_k"):
        MoEFFN(8, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="width"):
        MoEFFN(0)
    with pytest.raises(ValueError, match="num_experts"):
        structurize(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)), "btt_moe")
    with pytest.raises(ValueError, match="no feed-forward blocks"):
        moeify(nn.Sequential(nn.Linear(8, 8)), 4, 2)
    for make in (lambda: BTTMoELinear(8, 8, 4, router_gate="sparse"), lambda: MoEFFN(8, router_gate="sparse"),
                 lambda: moeify(GPT(64, vocab_size=96, block_size=16, depth=1), 4, 2, router_gate="sparse"),
                 lambda: structurize(nn.Sequential(nn.Linear(8, 8)), "btt_moe(num_experts=4, router_gate=sparse)")):
        with pytest.raises(ValueError, match="router_gate must be one of .*got 'sparse'"):
            make()


@pytest.mark.parametrize("make", [lambda gate: BTTMoELinear(32, 32, 8, 1, router_gate=gate),
                                  lambda gate: MoEFFN(32, 8, 1, router_gate=gate)], ids=["btt_moe", "ffn_moe"])
def test_top1_router_learns_from_the_task_only_with_the_switch_gate(make):
    """With k = 1 the softmax over the one kept logit is identically 1: the task loss gives the
    router no gradient at all; the Switch gate (that expert's probability over all E) gives one."""
    x, target = torch.randn(64, 32), torch.randn(64, 32)
    grads = {}
    for gate in ("topk", "switch"):
        torch.manual_seed(0)
        layer = make(gate)
        _random_router(layer, 0.3)
        (layer(x) - target).pow(2).mean().backward()  # the task loss alone, no aux loss
        grads[gate] = layer.router.weight.grad
    assert grads["topk"] is None or torch.count_nonzero(grads["topk"]) == 0
    assert grads["switch"] is not None and grads["switch"].abs().sum() > 0


def test_switch_gates_are_the_kept_probabilities_over_all_experts():
    layer = BTTMoELinear(16, 16, 4, 2, router_gate="switch")
    x = torch.randn(7, 16)
    _random_router(layer)
    routing = layer.router(x)
    probs = torch.softmax(x @ layer.router.weight.T, dim=-1)
    torch.testing.assert_close(routing.gate, probs.gather(1, routing.expert))
    assert (routing.gate.sum(-1) < 1).all()
    with torch.no_grad():  # a zero router: every kept gate is 1/E, the layer's output k/E of topk's
        layer.router.weight.zero_()
    topk = BTTMoELinear(16, 16, 4, 2)
    topk.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x), topk(x) * 2 / 4 + layer.bias * (1 - 2 / 4))


# ------------------------------------------------------------------------ MoEFFN
@pytest.mark.parametrize("router_gate", ["topk", "switch"])
def test_moe_ffn_equals_hand_written_reference(router_gate):
    ffn = MoEFFN(16, num_experts=4, top_k=2, hidden_mult=4, router_gate=router_gate)
    _random_router(ffn)
    x = torch.randn(2, 5, 16)
    y = ffn(x)
    ref = torch.zeros(10, 16)
    for n, token in enumerate(x.reshape(10, 16)):
        logits = ffn.router.weight @ token
        top = torch.topk(logits, 2)
        gates = torch.softmax(logits, 0)[top.indices] if router_gate == "switch" else torch.softmax(top.values, 0)
        for gate, e in zip(gates, top.indices):
            ref[n] += gate * (F.gelu(token @ ffn.w_fc[e]) @ ffn.w_proj[e])
    torch.testing.assert_close(y, ref.reshape(2, 5, 16))
    assert ffn.aux_loss is not None
    counted = _counted(lambda: ffn(x))
    assert counted == 10 * ffn.flops_per_token() == 10 * (2 * 16 * 4 + 2 * 4 * 16 * 64)


def test_moeify_gpt():
    model = GPT(64, vocab_size=96, block_size=16, depth=2)
    summary = moeify(model, num_experts=4, top_k=2)
    assert [r.name for r in summary.layers] == ["blocks.0.mlp", "blocks.1.mlp"]
    assert all(isinstance(b.mlp, MoEFFN) and b.mlp.zero_init for b in model.blocks)
    assert summary.flops_after == 2 * (2 * 64 * 4 + 2 * 16 * 64 * 64)
    assert summary.params_after == 2 * (4 * 2 * 64 * 256 + 4 * 64)
    idx = torch.randint(0, 96, (2, 16))
    logits = model(idx)
    assert logits.shape == (2, 16, 96)
    assert aux_loss(model).item() > 0
    names = {n for g in param_groups(model, 1e-3, base_width=64) for n in g["names"]}
    assert "blocks.0.mlp.router.weight" in names
    # only the attention projections and the readout are left as linear layers for structurize
    linear = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert linear == {"q", "k", "v", "o", "readout"}


# -------------------------------------------------------------------- structurize
def test_structurize_btt_moe_on_a_small_model():
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 3))
    nn.init.zeros_(model[2].weight)
    summary = structurize(model, "btt_moe", num_experts=4, top_k=2, einsum_norm=True)
    assert summary.structure == "btt_moe(num_experts=4, top_k=2, router_lr=mup, router_init=zero)"
    assert [r.name for r in summary.layers] == ["0", "2"] and summary.skipped == ["4"]
    first, second = model[0], model[2]
    assert isinstance(first, BTTMoELinear) and isinstance(second, BTTMoELinear)
    assert second.zero_init and first.einsum_norm and first.bias is not None
    assert first.core_a.dtype == torch.float64
    assert summary.flops_after == first.flops_per_token() + second.flops_per_token()
    assert summary.params_after == sum(m.cost().core_params for m in (first, second))
    x = torch.randn(8, 16)
    counted = _counted(lambda: model(x))
    assert counted == 8 * (summary.flops_after + 2 * 64 * 3)
    loss = model(x).pow(2).mean() + aux_loss(model)
    loss.backward()
    assert first.router.weight.grad is not None
    assert "btt_moe" in str(summary)
    # the router is not a linear layer: structurizing again leaves the MoE layers alone
    again = structurize(model, "monarch", select="*")
    assert [r.name for r in again.layers] == ["4"]


def test_deepcopy_and_pickle_after_forward():
    import copy
    import io

    model = nn.Sequential(BTTMoELinear(8, 8, 4, 2), MoEFFN(8, 4, 2))
    _random_router(model[0])
    x = torch.randn(3, 8)
    y = model(x)
    clone = copy.deepcopy(model)  # aux_loss holds a graph; copies drop it
    assert clone[0].aux_loss is None and model[0].aux_loss is not None
    torch.testing.assert_close(clone(x), y)
    torch.save(model, io.BytesIO())


# --------------------------------------------------------------------------- train
def _tiny(structure: str, **kw):
    from einsearch.search.train import TrainConfig

    return TrainConfig(task="charlm", structure=structure, width=64, depth=1, steps=3, batch_size=2,
                       block_size=32, warmup_steps=1, log_every=3, eval_batches=1, **kw)


@pytest.mark.parametrize("structure", ["btt_moe", "moe"])
def test_train_runs_moe_structures(structure):
    from einsearch.search.train import train

    result = train(_tiny(structure, num_experts=4, top_k=2))
    assert result.status == "finished" and len(result.points) == 2
    assert all(math.isfinite(p.train_loss) for p in result.points)


def test_train_flop_ledger_counts_active_experts_only():
    from einsearch.search.train import build_model, count_forward_flops

    per_token = {}
    for k in (1, 2):
        task, model = build_model(_tiny("btt_moe", num_experts=4, top_k=k))
        idx = task.batch(0, 2, torch.Generator().manual_seed(0))[0]
        per_token[k] = count_forward_flops(model, idx) / idx.numel()
        layers = [m for m in model.modules() if isinstance(m, BTTMoELinear)]
        assert len(layers) == 6  # q, k, v, o, fc, proj
    assert per_token[2] - per_token[1] == sum(m.expert_flops() for m in layers)


@pytest.mark.parametrize("make", [lambda w, lr: BTTMoELinear(w, w, 8, 2, router_lr=lr),
                                  lambda w, lr: MoEFFN(w, 8, 2, router_lr=lr)], ids=["btt_moe", "ffn_moe"])
def test_router_update_is_width_independent_under_mup(make):
    """One AdamW step moves the router's logits on the input it learned from by the same amount at
    width 64 and 256 with muP rates (lr x 64 / d_in): Adam's update is coherent with that input,
    so it moves the logits by lr x d_in. With the plain rate the move grows with the width (4x)."""
    def logit_move(width: int, router_lr: str) -> float:
        torch.manual_seed(0)
        layer = make(width, router_lr)
        with torch.no_grad():
            layer.router.weight.normal_(0.0, width ** -0.5)
        x = torch.randn(1, width).expand(64, width).contiguous()
        opt = torch.optim.AdamW(param_groups(layer, 1e-3, base_width=64, width=width), lr=1e-3)
        before = layer.router(x).logits.detach()
        (layer(x).square().mean() + aux_loss(layer)).backward()
        opt.step()
        return float((layer.router(x).logits.detach() - before).std())

    mup = logit_move(256, "mup") / logit_move(64, "mup")
    plain = logit_move(256, "plain") / logit_move(64, "plain")
    assert 0.7 < mup < 1.4, mup
    assert plain > 2.5, plain


def test_ffn_moe_starts_with_tokens_spread_over_experts():
    torch.manual_seed(0)
    ffn = MoEFFN(64, num_experts=8, top_k=2)  # router N(0, 1/d): the authors' init
    used = torch.bincount(ffn.router(torch.randn(1024, 64)).expert.flatten(), minlength=8)
    assert (used > 0).all() and used.max() < 3 * used.float().mean()
    zero = MoEFFN(64, num_experts=8, top_k=2, router_init="zero")
    assert len(torch.unique(zero.router(torch.randn(64, 64)).expert)) == 2  # every token on the same two


def test_expert_stats_are_kept_in_training_only():
    from einsearch.moe import expert_stats

    torch.manual_seed(0)
    model = nn.Sequential(BTTMoELinear(32, 32, 4, 2, router_init="normal"))
    model.eval()
    model(torch.randn(16, 32))
    assert expert_stats(model) == {}
    model.train()
    model(torch.randn(64, 32))
    stats = expert_stats(model)
    assert set(stats) == {"0/load", "0/top_share", "0/entropy", "0/aux"}
    assert stats["0/load"].shape == (4,) and float(stats["0/load"].sum()) == pytest.approx(1.0)
    assert 0.25 <= float(stats["0/top_share"]) <= 1.0
    assert 0 < float(stats["0/entropy"]) <= math.log(4) + 1e-6
