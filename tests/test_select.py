"""Selection (select/exclude patterns, readout), blocked layers, attention swap, densify."""

import logging

import pytest
import torch
from torch import nn

from einsearch.attention import StructuredMultiheadAttention, disable_fused_paths, swap_attention
from einsearch.select import Selection, blocked_reason, find_readout, name_matches, tied_parameters


class Block(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(self, x):
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.down(torch.relu(self.up(x)))


class Net(nn.Module):
    def __init__(self, d: int = 16, vocab: int = 11) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.Sequential(Block(d), Block(d))
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        return self.head(self.blocks(self.embed(tokens)))


@pytest.mark.parametrize("name, pattern, want", [
    ("blocks.0.up", "up", True),
    ("blocks.0.up", "blocks.*", True),
    ("blocks.0.up", "blocks.0.*", True),
    ("blocks.0.up", "blocks.1.*", False),
    ("blocks.0.up", "*.up", True),
    ("blocks.0.upper", "up", False),
    ("head", "*", True),
    ("blocks.0.attn.q_proj", "attn.*", True),
    ("blocks.0.attn.q_proj", "[qk]_proj", True),
    ("blocks.0.attn.v_proj", "[qk]_proj", False),
])
def test_name_matches_whole_names_and_dotted_suffixes(name, pattern, want):
    assert name_matches(name, pattern) is want


def test_readout_declarations_in_order(caplog):
    model = Net()
    with caplog.at_level(logging.WARNING, logger="einsearch.select"):
        readout = find_readout(model)
    assert readout.names == ("head",) and readout.heuristic and "last linear layer" in caplog.text
    model.readout_name = "blocks.1.down"
    assert find_readout(model).names == ("blocks.1.down",) and not find_readout(model).heuristic
    model.blocks[0].up.is_readout = True  # a flag on the module wins over the model attribute
    assert find_readout(model).names == ("blocks.0.up",)
    model.readout_name = "nope"
    del model.blocks[0].up.is_readout
    with pytest.raises(ValueError, match="readout_name = 'nope'.*no submodule 'nope'"):
        find_readout(model)


def test_readout_of_a_hugging_face_model_is_its_output_embedding():
    import transformers

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    readout = find_readout(model)
    assert readout.names == ("lm_head",) and readout.source == "declared: get_output_embeddings()"


def test_heuristic_readout_ignores_attention_projections():
    model = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2))
    assert find_readout(model).names == ("0",)


def test_selection_reasons():
    model = Net()
    sel = Selection(model)
    assert sel("blocks.0.up", None) and not sel("head", None)
    assert sel.reason("head", None).startswith("readout (heuristic")
    assert sel.notes and "guess" in sel.notes[0]
    sel = Selection(model, select=["up", "down"], exclude="blocks.1.*")
    assert sel("blocks.0.up", None) and not sel("blocks.1.up", None)
    assert sel.reason("blocks.1.up", None) == "matched by exclude="
    assert sel.reason("head", None) == "not matched by select="
    sel = Selection(model, select=lambda n, m: True, exclude=lambda n, m: n == "head")
    assert sel("blocks.0.attn.q_proj", None) and not sel("head", None) and sel.notes == []
    model.readout_name = "head"
    assert Selection(model).notes == []
    with pytest.raises(TypeError, match="exclude must be a callable, a glob pattern or a list of patterns"):
        Selection(model, exclude=3)
    with pytest.raises(TypeError, match="select must be"):
        Selection(model, select=["up", 4])


def test_tied_and_parent_read_weights_are_blocked():
    model = Net()
    tied_head = nn.Linear(16, 11, bias=False)
    tied_head.weight = model.embed.weight
    model.head = tied_head
    tied = tied_parameters(model)
    assert tied["head"] == ["embed"]
    assert "tied to 'embed'" in blocked_reason(model, "head", tied)
    assert "out_proj.weight" in blocked_reason(model, "blocks.0.attn.out_proj")
    assert blocked_reason(model, "blocks.0.up") is None


def test_swap_attention_only_where_a_projection_is_selected():
    model = Net().double()
    tokens = torch.randint(0, 11, (2, 5))
    before = model(tokens)
    swapped, reasons = swap_attention(model, lambda name, m: name.startswith("blocks.1.") and name.endswith("q_proj"))
    assert swapped == ["blocks.1.attn"] and reasons == {}
    assert type(model.blocks[0].attn) is nn.MultiheadAttention
    assert isinstance(model.blocks[1].attn, StructuredMultiheadAttention)
    torch.testing.assert_close(model(tokens), before, atol=1e-12, rtol=1e-12)


def test_swap_attention_reports_a_subclass_it_cannot_split():
    class Custom(nn.MultiheadAttention):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    model = nn.Sequential(Custom(8, 2))
    swapped, reasons = swap_attention(model, lambda n, m: True)
    assert swapped == [] and set(reasons) == {"0.q_proj", "0.k_proj", "0.v_proj", "0.out_proj"}
    assert "overrides nn.MultiheadAttention.forward" in reasons["0.out_proj"]


def test_disable_fused_paths_only_above_changed_modules():
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model = nn.TransformerEncoder(layer, 2)
    assert model.use_nested_tensor
    notes = disable_fused_paths(model, ["layers.1.linear1"])
    assert not model.use_nested_tensor and model.layers[1].activation_relu_or_gelu == 0
    assert model.layers[0].activation_relu_or_gelu == 1 and len(notes) == 2
