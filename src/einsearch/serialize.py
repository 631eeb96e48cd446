"""Save a structurized model in the field's formats and rebuild it on a fresh dense model.

The way PEFT ships adapters and torchao quantized models: the weights are plain tensors
(safetensors), and what turns a dense architecture into this model is a small config kept beside
them::

    DIR/einsearch_config.json        format version, einsearch version, the model's class, and
                                     per structured module its name, kind and options (theta,
                                     sizes, experts...); which linear layers stayed dense (and why,
                                     when the structurize summary is given)
    DIR/einsearch_model.safetensors  every tensor of the state dict (shared tensors once)

``save_structured(model, DIR)`` writes both (and may share DIR with a Hugging Face
``save_pretrained``). ``load_structured(fresh_dense_model, DIR)`` re-applies exactly those
structures to a fresh instance of the *dense* architecture (built from its config, e.g.
``AutoModelForCausalLM.from_config(config)``), loads the weights strictly and returns the model.
A module the model does not have, other sizes, an unknown kind, a newer format or a weight file
whose keys do not match are ``ValueError`` naming them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from .attention import StructuredMultiheadAttention, disable_fused_paths
from .layers import EinsumLinear
from .moe import BTTMoELinear, MoEFFN
from .replace import linear_dims, set_submodule

__all__ = ["save_structured", "load_structured", "structure_config", "FORMAT_VERSION", "CONFIG_NAME",
           "WEIGHTS_NAME"]

FORMAT_VERSION = 1
CONFIG_NAME = "einsearch_config.json"
WEIGHTS_NAME = "einsearch_model.safetensors"


def _entry(name: str, module: nn.Module) -> dict[str, Any] | None:
    if isinstance(module, EinsumLinear):
        return {"name": name, **module.structure_dict()}
    if isinstance(module, BTTMoELinear):
        return {"name": name, "kind": "btt_moe_linear", "d_in": module.d_in, "d_out": module.d_out,
                "num_experts": module.num_experts, "top_k": module.top_k, "bias": module.bias is not None,
                "einsum_norm": module.einsum_norm, "zero_init": module.zero_init, "router_lr": module.router_lr,
                "router_init": module.router.init, "router_gate": module.router.gate}
    if isinstance(module, MoEFFN):
        return {"name": name, "kind": "moe_ffn", "width": module.width, "num_experts": module.num_experts,
                "top_k": module.top_k, "hidden_mult": module.hidden_mult, "zero_init": module.zero_init,
                "router_lr": module.router_lr, "router_init": module.router.init,
                "router_gate": module.router.gate}
    if type(module) is StructuredMultiheadAttention:
        return {"name": name, "kind": "attention"}
    return None


def structure_config(model: nn.Module, summary: Any = None) -> dict[str, Any]:
    """The config ``save_structured`` writes: every structured module (parents first) and the
    linear layers that stayed dense (with the structurize ``summary``'s reasons when given)."""
    from ._version import __version__

    modules = [e for name, m in model.named_modules() if name and (e := _entry(name, m)) is not None]
    reasons = dict(getattr(summary, "skipped_reasons", {}) or {})
    dense = [{"name": n, "reason": reasons.get(n, "not structured")} for n, m in model.named_modules()
             if n and (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")]
    return {"format_version": FORMAT_VERSION, "einsearch_version": __version__,
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}", "modules": modules,
            "dense": dense}


def save_structured(model: nn.Module, directory: str | os.PathLike[str], summary: Any = None) -> Path:
    """Write ``DIR/einsearch_config.json`` and ``DIR/einsearch_model.safetensors``; returns DIR."""
    from safetensors.torch import save_model

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = structure_config(model, summary)
    if not config["modules"]:
        raise ValueError(f"{type(model).__name__} has no structured module to save; structurize it first "
                         "(a dense model saves with torch.save or save_pretrained)")
    tmp = out / f".{WEIGHTS_NAME}.{os.getpid()}.tmp"
    try:
        save_model(model, str(tmp), metadata={"format": "pt", "einsearch_format": str(FORMAT_VERSION)})
        os.replace(tmp, out / WEIGHTS_NAME)
    finally:
        tmp.unlink(missing_ok=True)
    text = json.dumps(config, indent=2) + "\n"
    tmp_cfg = out / f".{CONFIG_NAME}.{os.getpid()}.tmp"
    tmp_cfg.write_text(text, encoding="utf-8")
    os.replace(tmp_cfg, out / CONFIG_NAME)
    return out


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{directory}: no {CONFIG_NAME} (was it written by einsearch.save_structured?)")
    config = json.loads(path.read_text(encoding="utf-8"))
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path}: format version {version!r} is newer than this einsearch reads "
                         f"({FORMAT_VERSION}); upgrade einsearch")
    return config


def _factory(module: nn.Module) -> dict[str, Any]:
    weight = next((p for p in module.parameters()), None)
    return {} if weight is None else {"device": weight.device, "dtype": weight.dtype}


def _rebuild(entry: dict[str, Any], old: nn.Module) -> nn.Module:
    kind, name = entry.get("kind"), entry["name"]
    if kind == "attention":
        if not isinstance(old, nn.MultiheadAttention):
            raise ValueError(f"{name}: expected an nn.MultiheadAttention to restructure, found {type(old).__name__}")
        return StructuredMultiheadAttention.from_mha(old)
    if kind in ("einsum_linear", "btt_moe_linear"):
        try:
            d_in, d_out, has_bias, _ = linear_dims(old)
        except (TypeError, AttributeError):
            raise ValueError(f"{name}: expected a dense linear layer, found {type(old).__name__}") from None
        if (d_in, d_out) != (entry["d_in"], entry["d_out"]):
            raise ValueError(f"{name}: the saved layer is {entry['d_in']} -> {entry['d_out']}, this model's is "
                             f"{d_in} -> {d_out}: not the same architecture")
        if kind == "einsum_linear":
            return EinsumLinear(d_in, d_out, entry["theta"], entry["bias"], einsum_norm=entry["einsum_norm"],
                                zero_init=entry["zero_init"], **_factory(old))
        return BTTMoELinear(d_in, d_out, entry["num_experts"], entry["top_k"], entry["bias"],
                            einsum_norm=entry["einsum_norm"], zero_init=entry["zero_init"],
                            router_lr=entry["router_lr"], router_init=entry["router_init"],
                            router_gate=entry.get("router_gate", "topk"), **_factory(old))
    if kind == "moe_ffn":
        if getattr(old, "is_ffn", False) is not True:
            raise ValueError(f"{name}: expected a feed-forward block (is_ffn = True), found {type(old).__name__}")
        return MoEFFN(entry["width"], entry["num_experts"], entry["top_k"], entry["hidden_mult"],
                      zero_init=entry["zero_init"], router_lr=entry["router_lr"], router_init=entry["router_init"],
                      router_gate=entry.get("router_gate", "topk"), **_factory(old))
    raise ValueError(f"{name}: unknown structured module kind {kind!r}")


def load_structured(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Re-apply the structures saved in ``directory`` to ``model`` (a fresh instance of the dense
    architecture), load the saved weights strictly and return the model (see the module docstring)."""
    from safetensors.torch import load_model

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    folder = Path(directory)
    if not folder.is_dir():
        raise ValueError(f"{str(directory)!r} is not a folder written by einsearch.save_structured")
    config = _read_config(folder)
    changed = []
    for entry in config["modules"]:
        name = entry["name"]
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{type(model).__name__} has no module {name!r} (saved from "
                             f"{config.get('model_class')}): not the same architecture") from None
        set_submodule(model, name, _rebuild(entry, old))
        changed.append(name)
    disable_fused_paths(model, changed)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ValueError(f"{folder}: no {WEIGHTS_NAME}")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{weights}: the weights do not fit the rebuilt model: {err}") from None
    if missing or unexpected:
        raise ValueError(f"{weights}: the weights do not match the rebuilt model (missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]})")
    return model
