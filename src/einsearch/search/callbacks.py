"""Hooks of the training loop (``einsearch.search.train``), the way Lightning and Composer
callbacks attach: the loop stays small and checkpoints, progress and expert statistics are
callbacks.

A callback gets the loop's explicit state (``TrainState``) at four events:

* ``on_start(state)``  model, optimizer and FLOP ledger are built, nothing trained yet (a
  checkpoint restores the state here);
* ``on_step(state)``   after every optimizer update; must not read values back from the device
  (that would stall an accelerator every step) and must run anything slow inside
  ``state.untimed()``;
* ``on_log(state, point)``  after a point is logged (the device has been synchronised);
* ``on_end(state, result)`` once, with the finished (or diverged) ``RunResult``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .train import Point, RunResult, TrainState

__all__ = ["Callback", "ProgressCallback"]


class Callback:
    """Base class: every event does nothing; override the ones you need."""

    def on_start(self, state: TrainState) -> None:  # noqa: B027 - optional hook
        """Called once before the first step (after a resume has restored the state)."""

    def on_step(self, state: TrainState) -> None:  # noqa: B027 - optional hook
        """Called after each optimizer update (``state.step`` is its number)."""

    def on_log(self, state: TrainState, point: Point) -> None:  # noqa: B027 - optional hook
        """Called after ``point`` is appended to ``state.points``."""

    def on_end(self, state: TrainState, result: RunResult) -> None:  # noqa: B027 - optional hook
        """Called once when the run ends (finished or diverged)."""


class ProgressCallback(Callback):
    """``progress(step, train_loss)`` at every logged point (progress bars of in-process runs)."""

    def __init__(self, progress: Callable[[int, float], Any]):
        self.progress = progress

    def on_log(self, state: TrainState, point: Point) -> None:
        self.progress(point.step, point.train_loss)
