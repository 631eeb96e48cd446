"""Fixtures shared by the pipeline tests: the fake trainer's config in place of TrainConfig."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fake_runs, beside the tests that use it

from fake_runs import FakeTrainConfig  # noqa: E402

import einsearch.search.sweep as sweep_mod  # noqa: E402


@pytest.fixture
def fake_config(monkeypatch):
    """Build FakeTrainConfig instead of TrainConfig (same fields), for the fake trainer."""
    monkeypatch.setattr(sweep_mod, "_train_config_cls", lambda: FakeTrainConfig)
    return FakeTrainConfig
