"""The tokens task: nanoGPT-format token files, memory-mapped, checked, learned."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from einsearch.search.cli import main
from einsearch.search.store import ResultStore
from einsearch.search.tasks import TokenFiles, get_task, write_token_files

V = 32


def markov_tokens(n: int, seed: int) -> np.ndarray:
    """A Markov chain over V states: each state goes to one of two fixed next states with
    probability 1/2, so its entropy rate is ln 2 nats per token (log V = 3.47 for a uniform guess)."""
    rng = np.random.default_rng(seed)
    nxt = np.random.default_rng(0).integers(0, V, size=(V, 2))
    out = np.empty(n, dtype=np.uint16)
    s = 0
    coins = rng.integers(0, 2, size=n)
    for i in range(n):
        out[i] = s
        s = nxt[s, coins[i]]
    return out


@pytest.fixture(scope="module")
def markov_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("markov")
    markov_tokens(60_000, 1).tofile(d / "train.bin")
    markov_tokens(6_000, 2).tofile(d / "val.bin")
    (d / "meta.json").write_text(json.dumps({"vocab_size": V}))
    return d


SPEC = """\
task: tokens
structures: [dense]
widths: [64]
seeds: [0]
lrs: [0.01]
train: {steps: 150, batch_size: 32, block_size: 32, depth: 1, warmup_steps: 10, log_every: 50, eval_batches: 1}
"""


def test_search_on_token_files_learns_the_chain(markov_dir, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "spec.yaml").write_text(SPEC)
    assert main(["search", "--data", str(markov_dir), "--preset", str(tmp_path / "spec.yaml"), "--out", str(out),
                 "--quiet", "--checkpoint-every", "0"]) == 0
    with ResultStore(out / "results.sqlite") as st:
        (run,) = st.runs()
        final = run.final_eval_loss
    assert final < 0.5 * math.log(V), final  # well below a uniform guess (ln 32 = 3.47; the chain's is ln 2)


def test_token_files_are_memory_mapped_and_sized(markov_dir):
    task = get_task("tokens", data=str(markov_dir), block_size=16)
    assert isinstance(task.files.train, np.memmap) and task.vocab_size == V
    x, y = task.batch(3, 4, __import__("torch").Generator().manual_seed(0))
    assert x.shape == (4, 16) and (x[:, 1:] == y[:, :-1]).all() and int(x.max()) < V


def test_vocabulary_without_a_meta_file_is_the_largest_id_plus_one(tmp_path):
    (tmp_path / "train.bin").write_bytes(np.array([0, 5, 9, 3] * 10, dtype=np.uint16).tobytes())
    (tmp_path / "val.bin").write_bytes(np.array([1, 2, 7] * 10, dtype=np.uint16).tobytes())
    assert TokenFiles(tmp_path).vocab_size == 10
    assert TokenFiles(tmp_path, vocab_size=12).vocab_size == 12


@pytest.mark.parametrize("break_it, message", [
    (lambda d: (d / "val.bin").unlink(), "val.bin is missing"),
    (lambda d: (d / "train.bin").write_bytes(b""), "the file is empty"),
    (lambda d: (d / "train.bin").write_bytes(b"\x01\x00\x02"), "is not a whole number of uint16"),
    (lambda d: (d / "meta.json").write_text('{"vocab_size": 8}'), "token id 9 is beyond the vocabulary of 8"),
    (lambda d: (d / "meta.json").write_text('{"dtype": "int8"}'), "dtype must be one of"),
])
def test_bad_folders_are_clear_errors(tmp_path, break_it, message):
    (tmp_path / "train.bin").write_bytes(np.array([0, 5, 9, 3] * 10, dtype=np.uint16).tobytes())
    (tmp_path / "val.bin").write_bytes(np.array([1, 2, 7] * 10, dtype=np.uint16).tobytes())
    break_it(tmp_path)
    with pytest.raises(ValueError, match=message):
        TokenFiles(tmp_path)


def test_a_missing_folder_fails_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["search", "--task", "tokens", "--data", str(tmp_path / "nope"), "--preset", "tiny",
                 "--out", str(out), "--quiet"]) == 2
    assert "no such file or directory" in capsys.readouterr().err and not out.exists()


def test_tokenize_bytes_and_a_local_tokenizer(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    assert main(["tokenize", str(text), str(tmp_path / "bytes")]) == 0
    files = TokenFiles(tmp_path / "bytes")
    assert files.vocab_size == 256 and len(files.train) + len(files.val) == len(text.read_bytes())
    assert bytes(files.train[:9].astype(np.uint8)) == b"the quick"

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([text.read_text()], trainers.BpeTrainer(vocab_size=60, special_tokens=["[UNK]"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    files = write_token_files(text, tmp_path / "bpe", tokenizer=tmp_path / "tokenizer.json")
    meta = json.loads((tmp_path / "bpe" / "meta.json").read_text())
    assert meta["vocab_size"] == tok.get_vocab_size() == files.vocab_size and meta["dtype"] == "uint16"
    assert int(max(files.train.max(), files.val.max())) < files.vocab_size
    assert main(["tokenize", str(tmp_path / "missing.txt"), str(tmp_path / "x")]) == 2
