"""structurize on plain PyTorch models and on Hugging Face GPT-2 (Conv1D)."""

import pytest
import torch
from torch import nn

from einsearch import EinsumLinear, Theta, param_groups, structurize


def _mlp():
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))


def test_default_replaces_all_but_the_readout():
    model = _mlp()
    summary = structurize(model, "monarch")
    assert [r.name for r in summary.layers] == ["0", "2"]
    assert summary.skipped == ["4"]
    assert isinstance(model[0], EinsumLinear) and isinstance(model[2], EinsumLinear)
    assert type(model[4]) is nn.Linear
    assert model(torch.randn(5, 16)).shape == (5, 3)


def test_summary_counts_params_and_flops():
    model = _mlp()
    summary = structurize(model, "low_rank(0.5)")
    assert summary.params_before == 16 * 64 + 64 * 64
    assert summary.params_after == model[0].cost().core_params + model[2].cost().core_params
    assert summary.flops_after == model[0].cost().flops + model[2].cost().flops
    assert summary.flops_before == 2 * summary.params_before
    text = str(summary)
    assert "total" in text and "low_rank" not in text and "(1|0|0|0|1|0|0.5)" in text


def test_select_patterns_and_predicates():
    model = _mlp()
    structurize(model, Theta.kronecker(), select=["2"])
    assert type(model[0]) is nn.Linear and isinstance(model[2], EinsumLinear)
    model = _mlp()
    structurize(model, "btt", select=lambda name, m: m.out_features == 64)
    assert isinstance(model[0], EinsumLinear) and isinstance(model[2], EinsumLinear)
    assert type(model[4]) is nn.Linear


def test_per_layer_structure_callable():
    model = _mlp()
    structurize(model, lambda name, m: "monarch" if name == "0" else "dense")
    assert model[0].theta == Theta.monarch() and model[2].theta == Theta.dense()


def test_keeps_bias_dtype_and_zero_init():
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8)).double()
    nn.init.zeros_(model[1].weight)
    structurize(model, "monarch", select="*")
    assert model[0].bias is None and model[1].bias is not None
    assert model[0].core_a.dtype == torch.float64
    assert model[1].config.zero_init and torch.count_nonzero(model[1].to_dense()) == 0


def test_layer_kwargs_pass_through():
    model = _mlp()
    structurize(model, "monarch", einsum_norm=True)
    assert model[0].config.einsum_norm


def test_errors():
    with pytest.raises(ValueError, match="unknown structure"):
        structurize(_mlp(), "nope")
    with pytest.raises(TypeError, match="nn.Module"):
        structurize("model", "dense")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="select"):
        structurize(_mlp(), "dense", select=[3])  # type: ignore[list-item]


def test_gpt2_conv1d_structurized_and_trained():
    import transformers  # a dev dependency: this test must run, not skip

    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    model.train()
    summary = structurize(model, "monarch", select=lambda name, m: name.startswith("transformer."))
    from transformers.pytorch_utils import Conv1D

    assert not any(isinstance(m, Conv1D) for m in model.modules())
    assert len(summary.layers) == 2 * 4  # c_attn, c_proj (attn), c_fc, c_proj (mlp) per block
    assert summary.params_after < summary.params_before
    model.width = 64
    opt = torch.optim.AdamW(param_groups(model, 3e-3, base_width=64), lr=3e-3)
    tokens = torch.randint(0, 64, (8, 32), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = model(tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
