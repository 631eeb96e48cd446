"""Structured models leave the process: safetensors state dicts, save_structured /
load_structured onto a fresh dense model, Hugging Face's save_pretrained."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_model_families import FAMILIES, _build
from torch import nn

from einsearch import BTTMoELinear, EinsumLinear, MoEFFN, load_structured, save_structured, structurize
from einsearch.attention import StructuredMultiheadAttention
from einsearch.serialize import CONFIG_NAME, FORMAT_VERSION


def _perturb(model: nn.Module) -> None:
    """Move every parameter away from its init (zero-init cores and routers included)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("make", [
    lambda: EinsumLinear(48, 40, "btt(0.25)", einsum_norm=True),
    lambda: BTTMoELinear(64, 64, num_experts=4, top_k=2),
    lambda: MoEFFN(32, num_experts=4, top_k=2),
    lambda: StructuredMultiheadAttention.from_mha(nn.MultiheadAttention(32, 4, batch_first=True)),
], ids=["einsum_linear", "btt_moe", "moe_ffn", "attention"])
def test_safetensors_saves_and_reloads_every_structured_module(make, tmp_path):
    torch.manual_seed(0)
    module = make()
    _perturb(module)
    save_file(module.state_dict(), str(tmp_path / "m.safetensors"))
    twin = make()
    twin.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    x = torch.randn(2, 7, 32 if isinstance(module, (MoEFFN, StructuredMultiheadAttention)) else module.d_in)
    args = (x, x, x) if isinstance(module, StructuredMultiheadAttention) else (x,)
    out, ref = twin(*args), module(*args)
    out, ref = (out[0], ref[0]) if isinstance(out, tuple) else (out, ref)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama", "torch_encoder_batch_first"])
@pytest.mark.parametrize("structure", ["monarch", "btt_moe"])
def test_save_structured_round_trips_onto_a_fresh_dense_model(family, structure, tmp_path):
    fam = _build(family)
    dense_twin = copy.deepcopy(fam.model)  # the architecture, before any structure
    summary = structurize(fam.model, structure, **({"num_experts": 4} if structure == "btt_moe" else {}))
    _perturb(fam.model)
    fam.model.eval()
    expected = fam.output(fam.model, fam.inputs)
    save_structured(fam.model, tmp_path, summary)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["format_version"] == FORMAT_VERSION and len(config["modules"]) >= len(summary.layers)
    assert all(d["reason"] for d in config["dense"])
    torch.manual_seed(123)  # the fresh model's own init must not matter
    fresh = load_structured(_fresh(dense_twin), tmp_path)
    fresh.eval()
    torch.testing.assert_close(fam.output(fresh, fam.inputs), expected, atol=1e-5, rtol=1e-5)
    if hasattr(fam.model, "save_pretrained"):  # Hugging Face's own saving works on the structured model
        fam.model.save_pretrained(tmp_path / "hf")
        assert any((tmp_path / "hf").glob("*.safetensors"))


def test_the_router_gate_survives_saving(tmp_path):
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 16))
    model = copy.deepcopy(dense)
    summary = structurize(model, "btt_moe(num_experts=4, top_k=1, router_gate=switch)")
    _perturb(model)
    save_structured(model, tmp_path, summary)
    fresh = load_structured(_fresh(dense), tmp_path)
    assert [m.router.gate for m in fresh.modules() if isinstance(m, BTTMoELinear)] == ["switch", "switch"]
    x = torch.randn(5, 16)
    torch.testing.assert_close(fresh(x), model(x))


def _fresh(dense: nn.Module) -> nn.Module:
    """A new instance of the dense architecture with its own random init."""
    fresh = copy.deepcopy(dense)
    with torch.no_grad():
        for p in fresh.parameters():
            p.normal_(0, 0.02)
    return fresh


def test_hugging_face_folder_holds_both(tmp_path):
    import transformers

    fam = _build("gpt2")
    structurize(fam.model, "monarch")
    fam.model.save_pretrained(tmp_path)
    save_structured(fam.model, tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path, local_files_only=True)
    fresh = load_structured(transformers.AutoModelForCausalLM.from_config(config), tmp_path)
    fam.model.eval()
    fresh.eval()
    torch.testing.assert_close(fam.output(fresh, fam.inputs), fam.output(fam.model, fam.inputs), atol=1e-5, rtol=1e-5)


def test_mismatches_are_clear_errors(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.Linear(32, 4))
    structurize(model, "monarch", select=["0", "2"])
    save_structured(model, tmp_path)
    with pytest.raises(ValueError, match="has no module '2'"):
        load_structured(nn.Sequential(nn.Linear(32, 64), nn.GELU()), tmp_path)
    with pytest.raises(ValueError, match="32 -> 64, this model's is 32 -> 128"):
        load_structured(nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 32), nn.Linear(32, 4)), tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["modules"][0]["kind"] = "hyperbolic"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown structured module kind 'hyperbolic'"):
        load_structured(nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.Linear(32, 4)), tmp_path)
    config["format_version"] = FORMAT_VERSION + 1
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="newer than this einsearch reads"):
        load_structured(nn.Sequential(nn.Linear(32, 64)), tmp_path)
    with pytest.raises(ValueError, match="no structured module"):
        save_structured(nn.Linear(4, 4), tmp_path / "dense")
    assert set(FAMILIES) >= {"gpt2", "bert", "llama"}
