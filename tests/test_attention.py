"""StructuredMultiheadAttention computes what nn.MultiheadAttention computes, in every mode."""

import copy
import itertools

import pytest
import torch
from torch import nn

from einsearch import EinsumLinear
from einsearch.attention import StructuredMultiheadAttention

pytestmark = pytest.mark.usefixtures("float64")

E, H, L, S, N = 16, 4, 5, 7, 3


def _inputs(batch_first: bool, kdim: int, vdim: int, batched: bool = True, self_attn: bool = False):
    g = torch.Generator().manual_seed(1)

    def make(length, width):
        if not batched:
            return torch.randn(length, width, generator=g)
        shape = (N, length, width) if batch_first else (length, N, width)
        return torch.randn(*shape, generator=g)

    if self_attn:
        x = make(L, E)
        return x, x, x
    return make(L, E), make(S, kdim), make(S, vdim)


def _masks(kind: str, src_len: int, batched: bool = True):
    """(attn_mask, key_padding_mask, is_causal) for one named combination."""
    g = torch.Generator().manual_seed(2)
    nb = N if batched else 1
    kpm_bool = torch.zeros(nb, src_len, dtype=torch.bool)
    kpm_bool[0, -2:] = True  # pad the last two keys of the first sequence
    if not batched:
        kpm_bool = kpm_bool[0]
    causal = torch.ones(L, src_len, dtype=torch.bool).triu(1)
    noise = torch.randn(L, src_len, generator=g)
    return {
        "none": (None, None, False),
        "kpm_bool": (None, kpm_bool, False),
        "kpm_float": (None, torch.zeros(kpm_bool.shape).masked_fill(kpm_bool, -1e4), False),
        "attn_bool_2d": (causal, None, False),
        "attn_float_2d": (noise, None, False),
        "attn_bool_3d": (torch.rand(nb * H, L, src_len, generator=g) < 0.3, None, False),
        "attn_float_3d": (torch.randn(nb * H, L, src_len, generator=g), None, False),
        "both": (causal, kpm_bool, False),
        "causal_hint": (causal, None, True),
        "causal_hint_kpm": (causal, kpm_bool, True),
    }[kind]


def _pair(**kwargs):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, **kwargs)
    with torch.no_grad():  # nonzero biases, so a dropped bias would show
        for name, p in mha.named_parameters():
            if "bias" in name:
                p.normal_()
    return mha, StructuredMultiheadAttention.from_mha(mha)


MASKS = ["none", "kpm_bool", "kpm_float", "attn_bool_2d", "attn_float_2d", "attn_bool_3d", "attn_float_3d",
         "both", "causal_hint", "causal_hint_kpm"]


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("need_weights, average", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_equals_torch_mha(mask_kind, batch_first, need_weights, average, mode):
    mha, ours = _pair(batch_first=batch_first)
    mha.train(mode == "train")
    ours.train(mode == "train")
    q, k, v = _inputs(batch_first, E, E)
    attn_mask, kpm, is_causal = _masks(mask_kind, S if mask_kind not in ("causal_hint",) else S)
    if is_causal:  # the causal hint needs a square mask: self-attention
        q, k, v = _inputs(batch_first, E, E, self_attn=True)
        attn_mask, kpm, _ = _masks(mask_kind, L)
    kwargs = dict(key_padding_mask=kpm, attn_mask=attn_mask, need_weights=need_weights,
                  average_attn_weights=average, is_causal=is_causal)
    want_out, want_w = mha(q, k, v, **kwargs)
    got_out, got_w = ours(q, k, v, **kwargs)
    torch.testing.assert_close(got_out, want_out, atol=1e-12, rtol=1e-12)
    if need_weights:
        torch.testing.assert_close(got_w, want_w, atol=1e-12, rtol=1e-12)
    else:
        assert got_w is None and want_w is None


@pytest.mark.parametrize("flags", [
    dict(kdim=6, vdim=10), dict(bias=False), dict(add_bias_kv=True), dict(add_zero_attn=True),
    dict(add_bias_kv=True, add_zero_attn=True, kdim=6, vdim=10, batch_first=True),
], ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_equals_torch_mha_with_construction_flags(flags, need_weights, masked):
    mha, ours = _pair(**flags)
    kdim, vdim = flags.get("kdim", E), flags.get("vdim", E)
    q, k, v = _inputs(flags.get("batch_first", False), kdim, vdim)
    attn_mask, kpm, _ = _masks("both" if masked else "none", S)
    kwargs = dict(key_padding_mask=kpm, attn_mask=attn_mask, need_weights=need_weights)
    want_out, want_w = mha(q, k, v, **kwargs)
    got_out, got_w = ours(q, k, v, **kwargs)
    torch.testing.assert_close(got_out, want_out, atol=1e-12, rtol=1e-12)
    if need_weights:
        torch.testing.assert_close(got_w, want_w, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("mask_kind", ["none", "kpm_bool", "attn_bool_3d", "both"])
@pytest.mark.parametrize("need_weights", [False, True])
def test_unbatched_inputs(mask_kind, need_weights):
    mha, ours = _pair()
    q, k, v = _inputs(False, E, E, batched=False)
    attn_mask, kpm, _ = _masks(mask_kind, S, batched=False)
    kwargs = dict(key_padding_mask=kpm, attn_mask=attn_mask, need_weights=need_weights)
    want_out, want_w = mha(q, k, v, **kwargs)
    got_out, got_w = ours(q, k, v, **kwargs)
    assert got_out.shape == (L, E)
    torch.testing.assert_close(got_out, want_out, atol=1e-12, rtol=1e-12)
    if need_weights:
        torch.testing.assert_close(got_w, want_w, atol=1e-12, rtol=1e-12)


def test_gradients_match():
    mha, ours = _pair(batch_first=True)
    q, k, v = (x.requires_grad_() for x in _inputs(True, E, E))
    mask = _masks("both", S)[:2]
    out_a = mha(q, k, v, attn_mask=mask[0], key_padding_mask=mask[1], need_weights=False)[0]
    (ga,) = torch.autograd.grad(out_a.square().sum(), q)
    out_b = ours(q, k, v, attn_mask=mask[0], key_padding_mask=mask[1], need_weights=False)[0]
    (gb,) = torch.autograd.grad(out_b.square().sum(), q)
    torch.testing.assert_close(gb, ga, atol=1e-12, rtol=1e-12)
    ours(q, k, v)[0].sum().backward()
    assert all(p.grad is not None for p in ours.parameters())


def test_dropout_is_applied_in_training_only():
    _, ours = _pair(dropout=0.5, batch_first=True)
    q, k, v = _inputs(True, E, E)
    ours.eval()
    ref = ours(q, k, v, need_weights=False)[0]
    torch.testing.assert_close(ours(q, k, v, need_weights=True)[0], ref, atol=1e-12, rtol=1e-12)
    ours.train()
    for need_weights in (False, True):
        assert not torch.allclose(ours(q, k, v, need_weights=need_weights)[0], ref)


def test_is_causal_without_mask_means_the_causal_mask():
    _, ours = _pair(batch_first=True)
    x = _inputs(True, E, E, self_attn=True)[0]
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)
    want = ours(x, x, x, attn_mask=causal, need_weights=False)[0]
    for need_weights in (False, True):
        got = ours(x, x, x, is_causal=True, need_weights=need_weights)[0]
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_roundtrip_to_mha_and_structured_projections():
    mha, ours = _pair(kdim=6, vdim=10, add_bias_kv=True)
    back = ours.to_mha()
    q, k, v = _inputs(False, 6, 10)
    torch.testing.assert_close(back(q, k, v)[0], mha(q, k, v)[0], atol=1e-12, rtol=1e-12)
    # any module can be a projection; to_mha materialises EinsumLinear weights
    structured = copy.deepcopy(ours)
    structured.q_proj = EinsumLinear(E, E, "monarch")
    out = structured(q, k, v, need_weights=False)[0]
    torch.testing.assert_close(structured.to_mha()(q, k, v, need_weights=False)[0], out, atol=1e-12, rtol=1e-12)


def test_torch_encoder_layer_takes_the_slow_path_and_matches():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=32, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    ours = copy.deepcopy(encoder)
    for mod in ours.layers:
        mod.self_attn = StructuredMultiheadAttention.from_mha(mod.self_attn)
    x = _inputs(True, E, E, self_attn=True)[0]
    kpm = torch.zeros(N, L, dtype=torch.bool)
    kpm[0, -2:] = True
    for mode, grad in itertools.product(("train", "eval"), (True, False)):
        encoder.train(mode == "train")
        ours.train(mode == "train")
        with torch.set_grad_enabled(grad):
            want = encoder(x, src_key_padding_mask=kpm)
            got = ours(x, src_key_padding_mask=kpm)
        if mode == "eval" and not grad:
            # torch's fused path outputs 0 at padded positions; compare the real ones
            keep = ~kpm
            torch.testing.assert_close(got[keep], want[keep], atol=1e-10, rtol=1e-10)
        else:
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_errors():
    with pytest.raises(ValueError, match="embed_dim=10 must be divisible by num_heads=4"):
        StructuredMultiheadAttention(10, 4)
    with pytest.raises(ValueError, match="q_proj must map 16 -> 16"):
        StructuredMultiheadAttention(16, 4, q_proj=nn.Linear(8, 16))
    with pytest.raises(TypeError, match="mha must be an nn.MultiheadAttention"):
        StructuredMultiheadAttention.from_mha(nn.Linear(4, 4))

    class Custom(nn.MultiheadAttention):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    with pytest.raises(TypeError, match="overrides nn.MultiheadAttention.forward"):
        StructuredMultiheadAttention.from_mha(Custom(8, 2))
    ours = StructuredMultiheadAttention(E, H)
    x = torch.randn(L, N, E)
    with pytest.raises(ValueError, match="attn_mask must have shape"):
        ours(x, x, x, attn_mask=torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        ours(x, x, x, key_padding_mask=torch.zeros(L, N, dtype=torch.bool))
    with pytest.raises(ValueError, match="query must have width 16"):
        ours(torch.randn(L, N, 8), x, x)
    with pytest.raises(TypeError, match="attn_mask must be a bool or floating-point"):
        ours(x, x, x, attn_mask=torch.zeros(L, L, dtype=torch.long))
    ours.q_proj = nn.Identity()
    with pytest.raises(ValueError, match="q_proj .Identity. has no dense weight"):
        ours.to_mha()
