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

__all__ = ["Callback", "ProgressCallback", "ExpertStatsCallback"]


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


class ExpertStatsCallback(Callback):
    """Expert diagnostics of a mixture of experts at every logged point, from the routing of the
    last training step (``einsearch.expert_stats``; the routers keep it on the device, so this
    costs a few small reads at log points and nothing per step): per MoE layer ``L``,
    ``moe/L/top_share`` (the largest expert's share of the assignments; fair share 1/E),
    ``moe/L/entropy`` (router entropy, nats), ``moe/L/aux`` (its auxiliary loss) and
    ``moe/L/load/e`` for each expert e, into ``point.metrics`` (the store's metrics table)."""

    def on_log(self, state: TrainState, point: Point) -> None:
        from einsearch import expert_stats

        for key, value in expert_stats(state.model).items():
            layer, stat = key.rsplit("/", 1)
            if stat == "load":
                for e, share in enumerate(value.tolist()):
                    point.metrics[f"moe/{layer}/load/{e}"] = float(share)
            else:
                point.metrics[f"moe/{layer}/{stat}"] = float(value)
