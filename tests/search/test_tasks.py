"""Tasks: teacher, data streams, structured_select, corpus loading, registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from einsearch.search.tasks import (
    CharLMTask,
    RegressionTask,
    decode,
    encode,
    get_task,
    load_corpus,
    task_names,
    task_options,
)
from einsearch.search.tasks.charlm import REPLACEMENT, VOCAB, VOCAB_SIZE
from einsearch.search.tasks.regression import BATCH_CACHE, Teacher, TeacherSpec, get_teacher


# ------------------------------------------------------------------------------ regression
@pytest.fixture(scope="module")
def regression() -> RegressionTask:
    return get_task("regression")


def test_teacher_shape_and_determinism():
    t = get_teacher(0)
    assert [tuple(w.shape) for w in t.weights] == [(8, 1024)] + [(1024, 1024)] * 5 + [(1024, 1)]
    # weights N(0, 1 / fan_in)
    assert t.weights[1].std().item() == pytest.approx(1024 ** -0.5, rel=0.01)
    fresh = Teacher(TeacherSpec(seed=0))  # a second build gives the same function
    x = torch.randn(64, 8)
    torch.testing.assert_close(fresh(x), t(x))
    assert (fresh.mean, fresh.std) == (t.mean, t.std)
    other = get_teacher(1)
    assert not torch.allclose(other(x), t(x))


def test_teacher_is_standardized_on_a_fresh_sample():
    t = get_teacher(0)
    y = t(torch.randn(8192, 8, generator=torch.Generator().manual_seed(123))).double()
    assert y.shape == (8192, 1)
    assert abs(y.mean().item()) < 0.06
    assert abs(y.std().item() - 1) < 0.06


def test_regression_batches_are_a_pure_function_of_seed_step_and_size(regression):
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    x1, y1 = regression.batch(3, 16, g)
    assert torch.equal(g.get_state(), state)  # the generator names the stream, it is not consumed
    x2, y2 = regression.batch(3, 16, torch.Generator().manual_seed(7))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (16, 8) and y1.shape == (16, 1)
    assert not torch.equal(regression.batch(4, 16, g)[0], x1)
    assert not torch.equal(regression.batch(3, 16, torch.Generator().manual_seed(8))[0], x1)
    torch.testing.assert_close(y1, regression.teacher(x1))
    # a second task object shares the process-wide cache
    hits = BATCH_CACHE.hits
    get_task("regression").batch(3, 16, g)
    assert BATCH_CACHE.hits == hits + 1


def test_regression_eval_is_fixed_and_matches_zero_model(regression):
    model = regression.build_model(16, seed=0)
    batches = regression.eval_batches(2, 32)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, regression.eval_batches(2, 32)))
    train_x = regression.batch(0, 32, torch.Generator().manual_seed(0))[0]
    assert not torch.equal(batches[0][0], train_x)
    loss = regression.eval_loss(model, num_batches=2, batch_size=32)
    expected = sum(float((y ** 2).mean()) for _, y in batches) / 2  # readout is zero at init
    assert loss == pytest.approx(expected, rel=1e-6)
    assert regression.eval_loss(model, num_batches=2, batch_size=32) == loss
    assert model.training  # eval_loss restores the mode


def test_regression_structured_select_picks_exactly_the_block_layers(regression):
    model = regression.build_model(16, seed=0)
    chosen = [n for n, m in model.named_modules() if regression.structured_select(n, m)]
    assert chosen == [f"blocks.{i}.{k}" for i in range(3) for k in ("fc", "proj")]


def test_regression_build_model_is_seeded_and_leaves_global_rng_alone(regression):
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    a = regression.build_model(16, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = regression.build_model(16, seed=1)
    c = regression.build_model(16, seed=2)
    assert a.width == 16
    assert torch.equal(a.blocks[0].fc.weight, b.blocks[0].fc.weight)
    assert not torch.equal(a.blocks[0].fc.weight, c.blocks[0].fc.weight)


def test_specs_and_tokens_per_example(regression):
    assert regression.tokens_per_example == 1
    assert regression.input_spec.shape == (-1, 8) and regression.output_spec.shape == (-1, 1)
    assert "regression" in regression.describe()


# -------------------------------------------------------------------------------- registry
def test_registry_names_and_errors():
    assert {"regression", "charlm"} <= set(task_names())
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*charlm.*regression"):
        get_task("nope")
    with pytest.raises(ValueError, match=r"does not take option\(s\) data"):
        get_task("regression", data="x.txt")
    assert {"data", "block_size", "depth"} <= task_options("charlm")
    with pytest.raises(ValueError, match="depth"):
        get_task("regression", depth=0)


# -------------------------------------------------------------------------- vocabulary
def test_vocabulary_round_trip_and_replacement():
    assert VOCAB_SIZE == 96 and len(set(VOCAB)) == 96
    text = "".join(VOCAB) + "def f(x):\n    return x ~ 1\n"
    ids = encode(text)
    assert ids.dtype.name == "uint8" and ids.max() < 96
    assert decode(ids) == text
    assert decode(encode("a\tb\u00e9c\x01\r\nd")) == f"a{REPLACEMENT}b{REPLACEMENT}c{REPLACEMENT}\nd"
    with pytest.raises(ValueError):
        decode([96])


# ------------------------------------------------------------------------------ corpus
def _write_dir(root, n_files: int):
    for i in range(n_files):
        sub = root / ("sub" if i % 2 else "") / f"f{i:02d}.txt"
        sub.parent.mkdir(parents=True, exist_ok=True)
        sub.write_text(f"file {i:02d}\n" * 20)
    (root / ".hidden.txt").write_text("HIDDEN\n" * 50)
    (root / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)


def test_load_corpus_directory_splits_by_file(tmp_path):
    _write_dir(tmp_path, 12)
    c = load_corpus(tmp_path)
    names = sorted(c.train_files + c.val_files)
    assert len(names) == 12 and "blob.bin" not in names and ".hidden.txt" not in names
    assert not set(c.train_files) & set(c.val_files)
    # every tenth file in sorted relative-path order (index 5) is validation
    order = sorted(names)
    assert c.val_files == (order[5],)
    assert decode(c.val) == f"file {order[5][-6:-4]}\n" * 20
    assert "HIDDEN" not in decode(c.train) and len(c.train) == 11 * len("file 00\n") * 20
    assert load_corpus(str(tmp_path)).val_files == c.val_files  # deterministic, str path works


def test_load_corpus_single_file_splits_by_position(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("abcdefghij" * 100)
    c = load_corpus(f)
    assert len(c.train) == 900 and len(c.val) == 100
    assert decode(c.train) + decode(c.val) == "abcdefghij" * 100


def test_load_corpus_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(empty)
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(ValueError, match="no non-empty text files"):
        load_corpus(d)


def test_default_corpus_is_python_stdlib():
    c = load_corpus(None, max_bytes=100_000)
    assert c.source.startswith("python-stdlib:")
    assert len(c.train) > 0 and len(c.val) > 0
    assert all(f.endswith(".py") for f in c.train_files + c.val_files)


# ------------------------------------------------------------------------------ charlm
def test_charlm_batches_select_and_errors(tmp_path):
    f = tmp_path / "text.txt"
    f.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    task = get_task("charlm", data=str(f), block_size=16, depth=1)
    assert isinstance(task, CharLMTask) and task.tokens_per_example == 16
    g = torch.Generator().manual_seed(0)
    x, y = task.batch(0, 4, g)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    assert torch.equal(task.batch(0, 4, g)[0], x)
    full = decode(task.corpus.train)
    assert decode(x[0]) + decode(y[0, -1:]) in full
    model = task.build_model(32, seed=0)
    uniform = float(torch.log(torch.tensor(96.0)))  # cross-entropy of a uniform guess over the vocabulary
    assert task.eval_loss(model, num_batches=2, batch_size=4) == pytest.approx(uniform, rel=1e-5)
    chosen = {n for n, m in model.named_modules() if task.structured_select(n, m)}
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert chosen == linears - {"readout"} and len(chosen) == 6
    with pytest.raises(ValueError, match="block_size=4096 needs at least 4097"):
        get_task("charlm", data=str(f), block_size=4096)
    with pytest.raises(FileNotFoundError):
        get_task("charlm", data=str(tmp_path / "nope"))


def test_regression_labels_do_not_depend_on_the_callers_precision():
    """Labels are cached per process and shared by every run: a bf16 run asking first must not
    leave bf16-rounded labels behind for the fp32 runs after it."""
    from einsearch.search.tasks.regression import get_teacher

    teacher = get_teacher()
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    plain = teacher(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = teacher(x)
    assert torch.equal(plain, under) and under.dtype == torch.float32
