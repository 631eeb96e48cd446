"""Where a run executes and in which precision (docs/design.md section 11).

A run's *precision* is part of its identity (``TrainConfig.precision``): ``fp32``, or mixed
precision through torch's autocast, ``bf16`` or ``fp16`` (with a gradient scaler); parameters
stay float32 in every case. Its *device* is an execution option (``RunOptions.device``) that
does not change what the run means: ``auto`` (CUDA when present, else the CPU), ``cpu``,
``cuda`` or ``cuda:N``.

Everything here is checked before a sweep writes anything: ``--device cuda`` on a machine
without CUDA, a GPU index that does not exist, or a precision the device cannot run raise
``ValueError`` naming the option.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["PRECISIONS", "DEVICE_CHOICES", "resolve_device", "placement", "check_precision", "autocast_dtype",
           "autocast", "make_grad_scaler", "visible_gpus", "device_description", "device_memory"]

#: run precisions: float32, or autocast to bfloat16 / float16 with float32 parameters
PRECISIONS = ("fp32", "bf16", "fp16")
#: what ``--device`` accepts besides ``cuda:N``
DEVICE_CHOICES = ("auto", "cpu", "cuda")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def visible_gpus() -> int:
    """CUDA devices this process can see (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(device: Any = "auto", *, gpus: int | None = None) -> str:
    """The concrete device text (``"cpu"``, ``"cuda:0"``, ...) for ``--device``.

    ``gpus`` overrides the number of visible CUDA devices (tests pass fake counts). Raises
    ValueError for anything else, for ``cuda`` without CUDA and for an index out of range.
    """
    if not isinstance(device, str) or not device.strip():
        raise ValueError(f"--device must be one of auto, cpu, cuda, cuda:N, got {device!r}")
    text = device.strip().lower()
    count = visible_gpus() if gpus is None else gpus
    if text == "auto":
        return "cuda:0" if count > 0 else "cpu"
    if text == "cpu":
        return "cpu"
    if text == "cuda" or text.startswith("cuda:"):
        index_text = text.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise ValueError(f"--device must be one of auto, cpu, cuda, cuda:N, got {device!r}")
        if count == 0:
            raise ValueError(f"--device {device}: CUDA is not available on this machine "
                             f"(torch {torch.__version__}, torch.cuda.is_available() is False); "
                             "use --device cpu or auto")
        index = int(index_text)
        if index >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA device(s) "
                             f"(cuda:0..cuda:{count - 1})")
        return f"cuda:{index}"
    raise ValueError(f"--device must be one of auto, cpu, cuda, cuda:N, got {device!r}")


def placement(device: Any = "auto", *, gpus: int | None = None) -> list[str]:
    """The devices a sweep's runs go to for ``--device``: every visible GPU for ``auto`` (with
    GPUs) and ``cuda``, the one GPU of ``cuda:N``, else ``["cpu"]``. ``gpus`` overrides the
    number of visible CUDA devices (tests); errors as :func:`resolve_device`."""
    first = resolve_device(device, gpus=gpus)
    text = str(device).strip().lower()
    if first == "cpu" or ":" in text:
        return [first]
    count = visible_gpus() if gpus is None else gpus
    return [f"cuda:{i}" for i in range(count)]


def check_precision(precision: Any, device: str = "cpu") -> str:
    """``precision`` if ``device`` (a resolved device text) can run it, else ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = torch.device(device).type
    if kind == "cpu" and precision == "fp16":
        raise ValueError("--precision fp16 needs a GPU: CPU autocast has no float16 matrix "
                         "products worth training with; use bf16 on the CPU")
    if kind == "cuda" and precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(torch.device(device))} "
                         "has no bfloat16 support; use fp16")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (None for fp32)."""
    return _DTYPES.get(precision)


@contextlib.contextmanager
def autocast(device: str, precision: str) -> Iterator[None]:
    """``torch.autocast`` for mixed precision on ``device``; nothing for fp32."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield


def make_grad_scaler(device: str, precision: str) -> Any:
    """A ``torch.amp.GradScaler`` for fp16 (whose small gradients underflow), else None."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def device_memory(device: str) -> int:
    """Bytes of memory of ``device``: a GPU's total memory, or the machine's physical RAM."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def device_description(device: str) -> str:
    """Human text of a device: the GPU's name, or the CPU model from /proc/cpuinfo."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return "CPU: " + (platform.processor() or platform.machine())
