"""Shared fixtures: the named structures every layer test runs over."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

# The fast path's planner caches its measured choices on disk; tests keep theirs in a folder of
# their own instead of the user's ~/.cache/einsearch (set before einsearch plans anything).
os.environ.setdefault("EINSEARCH_CACHE_DIR", tempfile.mkdtemp(prefix="einsearch-test-planner-"))

from einsearch import Theta  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: more torch threads than cores makes OpenMP
    # regions (LAPACK's SVD above all) spin against each other, 100x slower
    torch.set_num_threads(1)

# Named points of the space plus two thetas that are none of the classic families.
NAMED_STRUCTURES: dict[str, Theta] = {
    "dense": Theta.dense(),
    "low_rank": Theta.low_rank(0.5),
    "kronecker": Theta.kronecker(),
    "tensor_train": Theta.tensor_train(0.25),
    "btt": Theta.btt(0.25),
    "monarch": Theta.monarch(),
    "low_rank_btt": Theta.low_rank_btt(0.25),
    "novel_a": Theta.parse("(0.5|0.25|0.25|0.25|0.5|0.25|0)"),
    "novel_b": Theta.parse("(0.75|0|0.25|0|0.5|0.5|0.25)"),
}


@pytest.fixture(params=sorted(NAMED_STRUCTURES), ids=sorted(NAMED_STRUCTURES))
def named_theta(request) -> Theta:
    return NAMED_STRUCTURES[request.param]


@pytest.fixture
def float64():
    """Default dtype float64 for the test (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def fake_config(monkeypatch):
    """Sweeps build the fake trainer's config (tests/search/fake_runs.py) instead of TrainConfig.

    Here rather than in tests/search/conftest.py: a second module named ``conftest`` would
    shadow this one for the tests that ``from conftest import NAMED_STRUCTURES``.
    """
    from fake_runs import FakeTrainConfig  # tests/search is on sys.path in the modules that use this

    import einsearch.search.spec as spec_mod

    monkeypatch.setattr(spec_mod, "_train_config_cls", lambda: FakeTrainConfig)
    return FakeTrainConfig
