"""einsearch compress: a trained dense model -> structured with projection -> fine-tuned -> saved,
restored by load_structured; loss before and after in its report."""

from __future__ import annotations

import json

import pytest
import torch
from test_tokens import V, markov_dir  # noqa: F401 - the Markov token files fixture

from einsearch import load_structured
from einsearch.search.cli import main
from einsearch.search.compress import _loss, load_model
from einsearch.search.models import GPT
from einsearch.search.tasks import TokenFiles, step_generator
from einsearch.search.tasks.windows import random_windows


def _trained_gpt(folder, steps: int = 60) -> GPT:
    torch.manual_seed(0)
    model = GPT(64, vocab_size=V, block_size=32, depth=1)
    files = TokenFiles(folder)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        opt.zero_grad()
        _loss(model, random_windows(files.train, 32, 16, step_generator(5, step, "t"))).backward()
        opt.step()
    return model


def test_compress_a_small_gpt_and_restore_it(markov_dir, tmp_path, capsys):  # noqa: F811
    torch.save(_trained_gpt(markov_dir), tmp_path / "gpt.pt")
    out = tmp_path / "structured"
    assert main(["compress", str(tmp_path / "gpt.pt"), "--structure", "monarch", "--out", str(out), "--data",
                 str(markov_dir), "--steps", "20", "--block-size", "32", "--lr", "1e-3"]) == 0
    printed = capsys.readouterr().out
    assert "dense (loaded)" in printed and "after 20 fine-tuning steps" in printed
    result = json.loads((out / "compress.json").read_text())
    before, after = result["before"], result["after"]
    assert after["params"] < before["params"] and after["forward_flops_per_token"] < before["forward_flops_per_token"]
    assert before["loss"] is not None and after["loss"] is not None and result["layers"] > 0
    restored = load_structured(GPT(64, vocab_size=V, block_size=32, depth=1), out).eval()
    files = TokenFiles(markov_dir)
    eval_set = [random_windows(files.val, 32, 8, step_generator(0, i, "compress-eval")) for i in range(4)]
    with torch.no_grad():
        loss = sum(float(_loss(restored, b)) for b in eval_set) / len(eval_set)
    assert loss == pytest.approx(after["loss"], abs=1e-5)  # the saved model is the one measured


def test_compress_a_hugging_face_folder(tmp_path):
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=V, n_positions=32)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    assert main(["compress", str(tmp_path / "hf"), "--structure", "btt(0.25)", "--out", str(tmp_path / "out"),
                 "--block-size", "32"]) == 0
    model, kind = load_model(tmp_path / "out")
    assert kind == "hf+einsearch" and model(torch.zeros(1, 8, dtype=torch.long)).logits.shape == (1, 8, V)


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/model.pt", "--structure", "monarch"], "no such file or folder"),
    (["MODEL", "--structure", "hyperbolic"], "unknown structure"),
    (["DICT", "--structure", "monarch"], "not a whole nn.Module"),
    (["MODEL", "--structure", "monarch", "--steps", "5"], "need --data"),
])
def test_compress_errors_are_clear(args, message, tmp_path, capsys):
    torch.save(GPT(64, vocab_size=V, block_size=32, depth=1), tmp_path / "model.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "dict.pt")
    args = [str(tmp_path / "model.pt") if a == "MODEL" else str(tmp_path / "dict.pt") if a == "DICT" else a
            for a in args]
    assert main(["compress", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "out").exists()
