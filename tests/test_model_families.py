"""structurize on model families nobody here wrote, built locally from configs (no downloads).

Each family: structurize (default selection: every linear layer but the declared readout),
run forward, train a few steps; and with fit=True keep the function of a model whose weights
the structure can express. timm is not covered: it does not install beside torch 2.13.0
(it pulls another torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch import EinsumLinear, structurize
from einsearch.attention import StructuredMultiheadAttention
from einsearch.convert import densify

VOCAB, SEQ, BATCH, D = 100, 12, 4, 64


@dataclass
class Family:
    model: nn.Module
    inputs: dict
    loss: Callable[[nn.Module, dict], Tensor]  # training loss
    output: Callable[[nn.Module, dict], Tensor]  # what "the same function" compares
    linears: int  # linear layers structurize should replace by default


def _tokens(seed: int = 0) -> Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))


class TorchEncoderLM(nn.Module):
    """nn.TransformerEncoder with an embedding and a declared readout."""

    readout_name = "head"

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(VOCAB, D)
        layer = nn.TransformerEncoderLayer(D, 4, dim_feedforward=2 * D, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=batch_first)
        self.head = nn.Linear(D, VOCAB)

    def forward(self, tokens: Tensor, padding: Tensor) -> Tensor:
        x = self.embed(tokens)
        causal = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).triu(1)
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = self.encoder(x, mask=causal, src_key_padding_mask=padding, is_causal=True)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return self.head(x)


class TorchDecoderLM(nn.Module):
    """nn.TransformerDecoder over an encoded memory, masks on both sides."""

    readout_name = "head"

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(VOCAB, D)
        layer = nn.TransformerDecoderLayer(D, 4, dim_feedforward=2 * D, dropout=0.0, batch_first=batch_first)
        self.decoder = nn.TransformerDecoder(layer, num_layers=2)
        self.head = nn.Linear(D, VOCAB)

    def forward(self, tokens: Tensor, padding: Tensor) -> Tensor:
        x = self.embed(tokens)
        memory = self.embed(tokens.flip(1))
        causal = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).triu(1)
        if not self.batch_first:
            x, memory = x.transpose(0, 1), memory.transpose(0, 1)
        x = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=padding)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return self.head(x)


def _lm_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def _torch_family(cls: type, batch_first: bool) -> Family:
    model = cls(batch_first)
    padding = torch.zeros(BATCH, SEQ, dtype=torch.bool)
    padding[0, -3:] = True  # the first sequence is padded at the end
    inputs = {"tokens": _tokens(), "padding": padding}
    per_layer = 6 if cls is TorchEncoderLM else 10  # q, k, v, out (x2 for the decoder) + 2 FFN
    return Family(model, inputs, lambda m, b: _lm_loss(m(**b), b["tokens"]), lambda m, b: m(**b), 2 * per_layer)


def _hf_family(name: str) -> Family:
    transformers = pytest.importorskip("transformers")  # a dev dependency
    if name == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=D, n_head=4, vocab_size=VOCAB, n_positions=64,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model, linears = transformers.GPT2LMHeadModel(config), 2 * 4
    elif name == "bert":
        config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=2 * D, max_position_embeddings=64,
                                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model, linears = transformers.BertForMaskedLM(config), 2 * 6 + 1  # + the MLM head's transform
    else:
        config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=2 * D,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=64)
        model, linears = transformers.LlamaForCausalLM(config), 2 * 7
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[0, -3:] = 0
    tokens = _tokens()
    inputs = {"input_ids": tokens, "attention_mask": mask, "labels": tokens}
    return Family(model, inputs, lambda m, b: m(**b).loss, lambda m, b: m(**b).logits, linears)


FAMILIES: dict[str, Callable[[], Family]] = {
    "torch_encoder_batch_first": lambda: _torch_family(TorchEncoderLM, True),
    "torch_encoder_seq_first": lambda: _torch_family(TorchEncoderLM, False),
    "torch_decoder_batch_first": lambda: _torch_family(TorchDecoderLM, True),
    "torch_decoder_seq_first": lambda: _torch_family(TorchDecoderLM, False),
    "gpt2": lambda: _hf_family("gpt2"),
    "bert": lambda: _hf_family("bert"),
    "llama": lambda: _hf_family("llama"),
}


def _build(name: str) -> Family:
    torch.manual_seed(0)
    return FAMILIES[name]()


@pytest.mark.parametrize("structure", ["monarch", "btt"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_structurize_forward_and_train(family, structure):
    fam = _build(family)
    model = fam.model
    summary = structurize(model, structure)
    assert len(summary.layers) == fam.linears, [r.name for r in summary.layers]
    assert summary.params_after < summary.params_before
    assert not any(type(m) is nn.MultiheadAttention for m in model.modules())
    model.eval()
    with torch.no_grad():  # eval + no grad is where torch's fused encoder path would read .weight
        out = fam.output(model, fam.inputs)
    assert torch.isfinite(out).all()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = fam.loss(model, fam.inputs)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses


def _make_representable(model: nn.Module, theta: str) -> None:
    """Give every linear layer structurize will pick a weight ``theta`` expresses exactly."""
    from einsearch.select import Selection

    selection = Selection(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention):
            module.in_proj_weight.data.copy_(torch.cat([_expressible(module.embed_dim, module.embed_dim, theta,
                                                                       module.in_proj_weight[:1]) for _ in range(3)]))
        is_conv1d = type(module).__name__ == "Conv1D"
        if not (isinstance(module, nn.Linear) or is_conv1d) or not selection(name, module):
            continue
        w = module.weight.t() if is_conv1d else module.weight
        new = _expressible(w.shape[1], w.shape[0], theta, w)
        module.weight.data.copy_(new.t() if is_conv1d else new)


def _expressible(d_in: int, d_out: int, theta: str, like: Tensor) -> Tensor:
    """A (d_out, d_in) weight of structure ``theta`` with the usual 1/sqrt(d_in) scale."""
    w = EinsumLinear(d_in, d_out, theta, bias=False, dtype=like.dtype).to_dense().detach()
    return w / w.pow(2).mean().sqrt() / math.sqrt(d_in)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fit_keeps_the_function_of_an_expressible_model(family, float64):
    fam = _build(family)
    model = fam.model.double().eval()
    _make_representable(model, "monarch")
    with torch.no_grad():
        want = fam.output(model, fam.inputs)
    summary = structurize(model, "monarch", fit=True)
    assert len(summary.layers) == fam.linears
    worst = max(r.fit_error for r in summary.layers)
    with torch.no_grad():
        got = fam.output(model, fam.inputs)
    err = ((got - want).norm() / want.norm()).item()
    # Each layer is projected (closed form) onto a weight it expresses exactly, so every layer and
    # the whole model come back to float64 rounding.
    assert worst < 1e-10 and err < 1e-10, (worst, err)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fit_dense_round_trip_is_exact(family, float64):
    fam = _build(family)
    model = fam.model.double().eval()
    with torch.no_grad():
        want = fam.output(model, fam.inputs)
    structurize(model, "dense", fit=True)
    with torch.no_grad():
        got = fam.output(model, fam.inputs)
    assert ((got - want).norm() / want.norm()).item() < 1e-10


@pytest.mark.parametrize("family", ["torch_encoder_batch_first", "torch_decoder_seq_first", "gpt2", "llama"])
def test_densify_exports_the_same_function(family, float64):
    fam = _build(family)
    model = fam.model.double().eval()
    structurize(model, "monarch")
    with torch.no_grad():
        want = fam.output(model, fam.inputs)
    summary = densify(model)
    assert len(summary.layers) >= 1 and not summary.skipped_reasons
    assert not any(isinstance(m, (EinsumLinear, StructuredMultiheadAttention)) for m in model.modules())
    if family.startswith("torch"):  # attention is torch's own module again
        assert any(type(m) is nn.MultiheadAttention for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(fam.output(model, fam.inputs), want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("structure", ["monarch", "btt_moe", "moe", "(0.5|0.25|0.25|0.25|0.5|0.25|0)"])
def test_a_structurized_model_is_sized_on_the_meta_device(structure):
    """Built, structurized and run on ``meta``: correctly shaped outputs, no memory, no timing."""
    from einsearch.search.models import GPT

    with torch.device("meta"):
        model = GPT(128, vocab_size=96, block_size=32, depth=2)
        structurize(model, structure, **({"num_experts": 4} if "moe" in structure else {}))
    out = model(torch.zeros(2, 32, dtype=torch.long, device="meta"))
    assert out.shape == (2, 32, 96) and out.is_meta
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_structurized_model_runs_under_vmap_and_functional_call():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64), torch.nn.GELU(),
                                torch.nn.Linear(64, 10))
    model.width = 64
    structurize(model, "monarch")
    x = torch.randn(5, 3, 64)
    out = torch.func.vmap(model)(x)  # the first forward of these plans happens inside vmap
    torch.testing.assert_close(out, torch.stack([model(xi) for xi in x]), atol=1e-5, rtol=1e-5)
    params = dict(model.named_parameters())
    grads = torch.func.grad(lambda p: torch.func.functional_call(model, p, (x[0],)).square().sum())(params)
    assert set(grads) == set(params) and all(torch.isfinite(g).all() for g in grads.values())
