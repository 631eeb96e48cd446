"""Mid-run checkpoints: a run killed at any moment resumes where its last checkpoint left it
and logs the same curve an uninterrupted run logs (docs/design.md section 11).

A checkpoint holds the model, optimizer, scheduler and gradient-scaler states, the torch RNG
states, the step, the points logged so far, the loss window since the last point (a device
tensor), the divergence watch, the initial loss and the training time so far. The data stream
needs no state: a task's batch is a pure function of (seed, step). The file is
``<folder>/<run_id>.pt``, written atomically (a temporary file, then ``os.replace``) inside
``state.untimed()``, so neither a kill mid-write nor the write's own time spoils anything. An
unreadable checkpoint, or one of another run id or format version, is ignored with a warning
(the run starts over rather than resuming something else); one whose tensors do not fit the
model raises, naming the file. The file is removed when the run ends.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .callbacks import Callback

if TYPE_CHECKING:  # pragma: no cover
    from .train import RunResult, TrainState

__all__ = ["Checkpointer", "checkpoint_path", "CHECKPOINT_VERSION"]

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


def checkpoint_path(folder: str | os.PathLike[str], run_id: str) -> Path:
    """Where run ``run_id`` keeps its checkpoint under ``folder``."""
    return Path(folder) / f"{run_id}.pt"


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer(Callback):
    """Resume from ``<folder>/<run_id>.pt`` at the start, save every ``every_s`` seconds of
    training (0: never save), remove the file at the end."""

    def __init__(self, folder: str | os.PathLike[str], every_s: float):
        self.folder = Path(folder)
        self.every_s = float(every_s)
        self._last = time.perf_counter()
        self.saves = 0
        self.resumed_from: int | None = None

    def path(self, state: TrainState) -> Path:
        return checkpoint_path(self.folder, state.config.run_id())

    # -- events ---------------------------------------------------------------------------
    def on_start(self, state: TrainState) -> None:
        path = self.path(state)
        if path.is_file():
            self._restore(state, path)
        self._last = time.perf_counter()

    def on_step(self, state: TrainState) -> None:
        if self.every_s > 0 and time.perf_counter() - self._last >= self.every_s:
            with state.untimed():
                self.save(state)
            self._last = time.perf_counter()

    def on_end(self, state: TrainState, result: RunResult) -> None:
        self.path(state).unlink(missing_ok=True)

    # -- files ----------------------------------------------------------------------------
    def save(self, state: TrainState) -> Path:
        """Write the checkpoint of ``state`` atomically; returns its path."""
        path = self.path(state)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "version": CHECKPOINT_VERSION, "run_id": state.config.run_id(),
            "torch": torch.__version__, "loop": state.loop_state(),
            "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "scaler": None if state.scaler is None else state.scaler.state_dict(),
            "rng": _rng_state(),
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(payload, tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.saves += 1
        log.info("run %s: checkpoint at step %d -> %s", payload["run_id"], state.step, path)
        return path

    def _restore(self, state: TrainState, path: Path) -> None:
        try:
            payload = torch.load(path, map_location=state.device, weights_only=False)
        except Exception as err:  # noqa: BLE001 - a torn or foreign file: start over
            log.warning("run %s: unreadable checkpoint %s (%s); starting from step 0",
                        state.config.run_id(), path, err)
            return
        run_id = state.config.run_id()
        if payload.get("version") != CHECKPOINT_VERSION or payload.get("run_id") != run_id:
            log.warning("run %s: checkpoint %s belongs to another run or version; starting from step 0",
                        run_id, path)
            return
        try:
            state.model.load_state_dict(payload["model"])
            state.optimizer.load_state_dict(payload["optimizer"])
            state.scheduler.load_state_dict(payload["scheduler"])
            if state.scaler is not None and payload["scaler"] is not None:
                state.scaler.load_state_dict(payload["scaler"])
        except (RuntimeError, ValueError, KeyError) as err:
            log.warning("run %s: checkpoint %s does not fit this model (%s); starting from step 0",
                        run_id, path, err)
            raise RuntimeError(f"checkpoint {path} does not fit run {run_id}: {err}; remove it to "
                               "start the run over") from None
        state.load_loop_state(payload["loop"])
        _set_rng_state(payload["rng"])
        self.resumed_from = state.step
        log.info("run %s: resumed from checkpoint at step %d", run_id, state.step)
