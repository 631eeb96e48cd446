"""``einsearch compress``: the practitioner's path from a trained dense model to a saved structured one.

    load (a Hugging Face folder, or a torch.save'd nn.Module) -> measure (params, FLOPs/token, loss)
    -> structurize with projection (optionally data-aware on calibration windows)
    -> optionally fine-tune a few steps -> measure again -> save_structured (+ the HF config)

Data is a token folder in nanoGPT's format (``--data DIR`` with train.bin / val.bin, as the
``tokens`` task reads): windows of the train split calibrate and fine-tune, fixed windows of the
val split measure the next-token loss. Without ``--data`` only params and FLOPs are reported.
Nothing is downloaded: a Hugging Face model is loaded from its folder with ``local_files_only``.
``OUT/compress.json`` holds the before / after figures.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from einsearch import load_structured, parse_structure, save_structured, structurize

from .tasks import TokenFiles, step_generator
from .tasks.windows import random_windows
from .train import count_forward_flops

__all__ = ["CompressConfig", "compress", "load_model", "format_compress"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompressConfig:
    """What ``compress`` does; every field is checked before the model is touched."""

    model: str
    structure: str
    out: str
    data: str | None = None
    calibrate: bool = False
    steps: int = 0
    lr: float = 1e-4
    batch_size: int = 8
    block_size: int = 128
    eval_batches: int = 4

    def __post_init__(self) -> None:
        if not Path(self.model).expanduser().exists():
            raise ValueError(f"model {self.model!r}: no such file or folder (a Hugging Face folder or a torch.save'd "
                             "nn.Module)")
        parse_structure(self.structure)  # ValueError names an unknown structure
        for name in ("batch_size", "block_size", "eval_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {self.steps!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if (self.steps or self.calibrate) and self.data is None:
            raise ValueError("--steps and --calibrate need --data DIR (token files) to train or calibrate on")


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Module, str]:
    """(model, kind): a Hugging Face folder (``config.json``; causal LM, local files only), an
    einsearch ``save_structured`` folder beside its HF config, or a file holding a whole
    ``nn.Module`` (``torch.save(model)``). Anything else is a ValueError naming the path."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ValueError(f"{p}: a folder without config.json is not a Hugging Face model folder")
        try:
            import transformers
        except ImportError:
            raise ValueError("loading a Hugging Face folder needs transformers: pip install 'einsearch[hf]'") from None
        if (p / "einsearch_config.json").is_file():
            config = transformers.AutoConfig.from_pretrained(p, local_files_only=True)
            return load_structured(transformers.AutoModelForCausalLM.from_config(config), p), "hf+einsearch"
        try:
            return transformers.AutoModelForCausalLM.from_pretrained(p, local_files_only=True), "hf"
        except (OSError, ValueError) as err:
            raise ValueError(f"{p}: cannot load it as a Hugging Face causal LM: {err}") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file
        raise ValueError(f"{p}: not a torch checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(obj, nn.Module):
        raise ValueError(f"{p}: holds a {type(obj).__name__}, not a whole nn.Module; save the model with "
                         "torch.save(model, path) (a state dict alone does not say which architecture it is)")
    return obj, "torch"


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def _loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    logits = _logits(model, x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _measure(model: nn.Module, eval_set: list[tuple[Tensor, Tensor]] | None, example: Tensor) -> dict[str, Any]:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            loss = None if eval_set is None else sum(float(_loss(model, b)) for b in eval_set) / len(eval_set)
        flops = count_forward_flops(model, example) / example.numel()
    finally:
        model.train(was)
    return {"params": sum(p.numel() for p in model.parameters()), "forward_flops_per_token": flops, "loss": loss}


def compress(config: CompressConfig) -> dict[str, Any]:
    """Run ``config`` (see the module docstring); returns (and writes to ``OUT/compress.json``)
    the figures before and after."""
    model, kind = load_model(config.model)
    files = TokenFiles(config.data, min_tokens=config.block_size + 1) if config.data else None
    window = min(config.block_size, getattr(getattr(model, "config", None), "n_positions", config.block_size),
                 getattr(model, "block_size", config.block_size))
    if files is not None:
        eval_set = [random_windows(files.val, window, config.batch_size, step_generator(0, i, "compress-eval"))
                    for i in range(config.eval_batches)]
        example = eval_set[0][0]
    else:
        eval_set, example = None, torch.zeros(1, window, dtype=torch.long)
    before = _measure(model, eval_set, example)
    calibration = None
    if config.calibrate and files is not None:
        calibration = random_windows(files.train, window, config.batch_size, step_generator(0, 0, "compress-calib"))[0]
    target = parse_structure(config.structure)
    # mixtures of experts have no projection: fresh layers, then fine-tuning
    summary = structurize(model, target, fit=not target.is_moe, calibration=calibration)
    projected = _measure(model, eval_set, example)
    if config.steps and files is not None:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
        model.train()
        for step in range(config.steps):
            batch = random_windows(files.train, window, config.batch_size, step_generator(1, step, "compress-tune"))
            opt.zero_grad(set_to_none=True)
            _loss(model, batch).backward()
            opt.step()
    after = _measure(model, eval_set, example)
    out = Path(config.out)
    save_structured(model, out, summary)
    hf_config: Any = getattr(model, "config", None)
    if hf_config is not None and hasattr(hf_config, "save_pretrained"):
        hf_config.save_pretrained(out)  # AutoConfig.from_pretrained(out) rebuilds the dense architecture
    result = {"config": asdict(config), "model_kind": kind, "structure": summary.structure,
              "layers": len(summary.layers), "skipped": dict(summary.skipped_reasons),
              "fit_errors": {r.name: r.fit_error for r in summary.layers if getattr(r, "fit_error", None) is not None},
              "before": before, "projected": projected, "after": after}
    (out / "compress.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return result


def format_compress(result: dict[str, Any]) -> str:
    """The before / after table ``einsearch compress`` prints."""
    def loss(x: Any) -> str:
        return "n/a (no --data)" if x is None else f"{x:.4f}"

    rows = [("dense (loaded)", result["before"]), ("structured, projected", result["projected"])]
    if result["config"]["steps"]:
        rows.append((f"after {result['config']['steps']} fine-tuning steps", result["after"]))
    lines = [f"{result['structure']}: {result['layers']} layers structured, {len(result['skipped'])} kept dense",
             f"{'':28s} {'params':>12s} {'FLOPs/token':>14s} {'loss':>16s}"]
    for label, r in rows:
        lines.append(f"{label:28s} {r['params']:>12,d} {r['forward_flops_per_token']:>14,.0f} {loss(r['loss']):>16s}")
    lines.append(f"saved to {result['config']['out']} (einsearch.load_structured restores it)")
    return "\n".join(lines)
