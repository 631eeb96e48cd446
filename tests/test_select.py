"""Selection (select/exclude patterns, readout), blocked layers, attention swap, densify."""

import logging

import pytest
import torch
from torch import nn

from einsearch import EinsumLinear, structurize
from einsearch.attention import StructuredMultiheadAttention, disable_fused_paths, swap_attention
from einsearch.convert import densify
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


# ------------------------------------------------------------------ through structurize
def _encoder(batch_first: bool = True) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, num_layers=2)


def test_structurize_torch_encoder_runs_in_every_mode():
    model = _encoder()
    summary = structurize(model, "monarch", select="*")
    names = [r.name for r in summary.layers]
    assert "layers.0.self_attn.q_proj" in names and "layers.1.self_attn.out_proj" in names
    assert "layers.0.linear1" in names and len(names) == 2 * 6
    assert all(isinstance(model.layers[i].self_attn, StructuredMultiheadAttention) for i in range(2))
    assert any("fast path off" in note for note in summary.notes)
    x = torch.randn(3, 5, 16)
    kpm = torch.zeros(3, 5, dtype=torch.bool)
    kpm[0, -1] = True
    for train in (True, False):
        model.train(train)
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                out = model(x, src_key_padding_mask=kpm)
            assert out.shape == x.shape and torch.isfinite(out).all()


def test_unselected_attention_keeps_its_out_proj_dense_with_a_reason():
    model = _encoder()
    summary = structurize(model, "monarch", select=["linear1", "linear2", "out_proj"], exclude="layers.1.*")
    assert [r.name for r in summary.layers] == ["layers.0.self_attn.out_proj", "layers.0.linear1",
                                                  "layers.0.linear2"]
    assert type(model.layers[1].self_attn) is nn.MultiheadAttention
    assert summary.skipped_reasons["layers.1.linear1"] == "matched by exclude="
    assert "kept dense: layers.1.linear1 (matched by exclude=)" in str(summary)
    model.eval()
    with torch.no_grad():  # the encoder layer's fused path would read linear1.weight
        out = model(torch.randn(2, 4, 16), src_key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    assert out.shape == (2, 4, 16)


def test_out_proj_of_an_attention_that_cannot_be_swapped_stays_dense():
    class Custom(nn.MultiheadAttention):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    model = nn.Sequential(nn.Linear(8, 8))
    model.attn = Custom(8, 2)
    summary = structurize(model, "monarch", select="*")
    assert [r.name for r in summary.layers] == ["0"]
    assert "overrides nn.MultiheadAttention.forward" in summary.skipped_reasons["attn.out_proj"]
    assert type(model.attn.out_proj) is not EinsumLinear


def test_tied_readout_stays_tied():
    import transformers

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    summary = structurize(model, "monarch", select="*")
    assert "lm_head" in summary.skipped and "tied to" in summary.skipped_reasons["lm_head"]
    assert model.lm_head.weight is model.transformer.wte.weight


def test_default_selection_uses_the_declared_readout_and_notes_a_guess():
    model = Net()
    summary = structurize(model, "monarch")
    assert summary.skipped == ["head"] and summary.skipped_reasons["head"].startswith("readout (heuristic")
    assert any("guess" in n for n in summary.notes)
    model = Net()
    model.readout_name = "head"
    summary = structurize(model, "monarch")
    assert summary.skipped_reasons["head"] == "readout (declared: model.readout_name)"
    assert not any("guess" in n for n in summary.notes)


class _ReadsWeight(nn.Module):
    """A parent that reads its child's weight directly: structurize cannot know it."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.other = nn.Linear(8, 8)

    def forward(self, x):
        return self.other(x @ self.proj.weight.T)


def test_example_input_undoes_only_the_change_that_breaks_forward():
    model = _ReadsWeight()
    x = torch.randn(3, 8)
    summary = structurize(model, "monarch", select="*", example_input=x)
    assert [r.name for r in summary.layers] == ["other"] and isinstance(model.other, EinsumLinear)
    assert type(model.proj) is nn.Linear
    assert "forward on example_input failed" in summary.skipped_reasons["proj"]
    assert model(x).shape == (3, 8)
    with pytest.raises(ValueError, match="example_input does not run through the model even unchanged"):
        structurize(_ReadsWeight(), "monarch", select="*", example_input=torch.randn(3, 5))


def test_densify_restores_plain_modules_with_the_same_function():
    model = _encoder().double()
    model.eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    structurize(model, "monarch", select="*")
    want = model(x)
    summary = densify(model)
    assert summary.layers == ["layers.0.self_attn", "layers.0.linear1", "layers.0.linear2",
                              "layers.1.self_attn", "layers.1.linear1", "layers.1.linear2"]
    assert not any(isinstance(m, (EinsumLinear, StructuredMultiheadAttention)) for m in model.modules())
    torch.testing.assert_close(model(x), want, atol=1e-12, rtol=1e-12)


def test_densify_leaves_an_moe_layer_with_a_reason():
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    structurize(model, "btt_moe", select="0", num_experts=2)
    summary = densify(model)
    assert summary.layers == [] and "no single dense weight" in summary.skipped_reasons["0"]
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        densify("model")


def test_a_head_tied_to_the_embedding_is_the_readout_not_the_last_linear_layer(caplog):
    """nanoGPT-style: the LM head shares the token embedding's weight and nothing is declared;
    only the tied head stays dense (the last-defined linear layer is structured)."""
    from einsearch.select import find_readout

    class TinyLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = torch.nn.Embedding(50, 32)
            self.lm_head = torch.nn.Linear(32, 50, bias=False)
            self.lm_head.weight = self.wte.weight          # tied
            self.fc = torch.nn.Linear(32, 128)
            self.proj = torch.nn.Linear(128, 32)            # defined last

        def forward(self, idx):
            h = self.wte(idx)
            return self.lm_head(h + self.proj(torch.relu(self.fc(h))))

    model = TinyLM()
    readout = find_readout(model)
    assert readout.names == ("lm_head",) and not readout.heuristic and "tied" in readout.source
    summary = structurize(model, "monarch")
    assert isinstance(model.proj, EinsumLinear) and isinstance(model.fc, EinsumLinear)
    assert isinstance(model.lm_head, torch.nn.Linear) and "guess" not in caplog.text
    assert model(torch.randint(0, 50, (2, 5))).shape == (2, 5, 50) and summary.layers
    assert "readout (tied" in summary.skipped_reasons["lm_head"]  # the summary says which rule chose it
