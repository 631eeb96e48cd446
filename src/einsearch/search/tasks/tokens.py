"""``tokens``: language modelling on token files in nanoGPT's format, with the charlm GPT.

A data folder holds ``train.bin`` and ``val.bin``: flat arrays of token ids, ``uint16`` by default
(nanoGPT's ``prepare.py``), ``uint32`` allowed. Both are memory-mapped, so a multi-GB file costs no
RAM: a batch reads only its windows (``tasks.windows``, the sampler charlm uses). The vocabulary
size comes from ``meta.json`` (``{"vocab_size": V, "dtype": "uint16"}``, what
:func:`write_token_files` writes) or nanoGPT's ``meta.pkl`` (its ``vocab_size``), else the
``vocab_size`` option, else the largest id + 1. The largest id is checked against the vocabulary
once per file (a sequential read, cached by path, size and modification time).

Bad folders are clear errors before any training: a missing folder or file, an empty file, a
byte length that is not a whole number of ids, fewer tokens than a window needs, ids beyond the
vocabulary, a dtype other than uint16 / uint32.

:func:`write_token_files` turns a text file into such a folder with a byte-level tokenizer (ids
0..255) or a local Hugging Face ``tokenizers`` file (``tokenizer.json``; nothing is downloaded).
"""

from __future__ import annotations

import functools
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from einsearch._checks import check_positive_int

from .base import TensorSpec
from .windows import WindowLMTask

__all__ = ["TokensTask", "TokenFiles", "load_token_files", "write_token_files", "TOKEN_DTYPES"]

TOKEN_DTYPES = ("uint16", "uint32")
_SPLITS = ("train", "val")


class _MetaUnpickler(pickle.Unpickler):
    """nanoGPT's meta.pkl holds plain dicts, strings and ints: nothing else is unpickled."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"meta.pkl: refusing to load {module}.{name} (only plain data is read)")


def _read_meta(folder: Path) -> dict[str, Any]:
    if (folder / "meta.json").is_file():
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{folder / 'meta.json'}: invalid JSON: {err}") from None
    elif (folder / "meta.pkl").is_file():
        with open(folder / "meta.pkl", "rb") as fh:
            meta = _MetaUnpickler(fh).load()
    else:
        return {}
    if not isinstance(meta, dict):
        raise ValueError(f"{folder}: the meta file must hold a mapping (vocab_size, dtype), got {type(meta).__name__}")
    return meta


@functools.lru_cache(maxsize=16)
def _max_id(path: str, dtype: str, size: int, mtime: float) -> int:
    data = np.memmap(path, dtype=dtype, mode="r")
    step = 1 << 24
    return int(max(int(data[i:i + step].max()) for i in range(0, len(data), step)))


class TokenFiles:
    """The two memory-mapped splits of a data folder, checked (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str], *, vocab_size: int | None = None, dtype: str | None = None,
                 min_tokens: int = 2) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise ValueError(f"--data {str(folder)!r}: no such folder (the tokens task reads a folder with "
                             "train.bin and val.bin)")
        meta = _read_meta(self.folder)
        self.dtype = str(dtype or meta.get("dtype") or "uint16")
        if self.dtype not in TOKEN_DTYPES:
            raise ValueError(f"{self.folder}: token dtype must be one of {TOKEN_DTYPES}, got {self.dtype!r}")
        itemsize = np.dtype(self.dtype).itemsize
        self.splits: dict[str, np.memmap] = {}
        for split in _SPLITS:
            path = self.folder / f"{split}.bin"
            if not path.is_file():
                raise ValueError(f"{self.folder}: {split}.bin is missing (nanoGPT's format: train.bin and val.bin)")
            size = path.stat().st_size
            if size == 0:
                raise ValueError(f"{path}: the file is empty")
            if size % itemsize:
                raise ValueError(f"{path}: {size} bytes is not a whole number of {self.dtype} token ids "
                                 f"({itemsize} bytes each); is the dtype right?")
            if size // itemsize < min_tokens:
                raise ValueError(f"{path}: {size // itemsize} tokens; a window needs at least {min_tokens}")
            self.splits[split] = np.memmap(path, dtype=self.dtype, mode="r")
        largest = max(_max_id(str(self.folder / f"{s}.bin"), self.dtype, (self.folder / f"{s}.bin").stat().st_size,
                              (self.folder / f"{s}.bin").stat().st_mtime) for s in _SPLITS)
        given = vocab_size if vocab_size is not None else meta.get("vocab_size")
        if given is not None:
            check_positive_int(given, "vocab_size", "tokens task")
            if largest >= given:
                raise ValueError(f"{self.folder}: token id {largest} is beyond the vocabulary of {given} ids "
                                 "(vocab_size from the option or the meta file)")
        self.vocab_size = int(given) if given is not None else largest + 1

    @property
    def train(self) -> np.memmap:
        return self.splits["train"]

    @property
    def val(self) -> np.memmap:
        return self.splits["val"]

    def __repr__(self) -> str:
        return (f"TokenFiles({str(self.folder)!r}, {self.dtype}, vocab {self.vocab_size}, "
                f"train {len(self.train):,} / val {len(self.val):,} tokens)")


def load_token_files(folder: str | os.PathLike[str], **options: Any) -> TokenFiles:
    """The checked, memory-mapped token files of ``folder`` (see :class:`TokenFiles`)."""
    return TokenFiles(folder, **options)


class TokensTask(WindowLMTask):
    """Next-token prediction with the charlm GPT on nanoGPT-format token files.

    Options:
        data: the folder with ``train.bin`` / ``val.bin`` (required).
        block_size, depth, depth_mup, qk_norm: as for ``charlm``.
        vocab_size: the vocabulary (default: the meta file's, else the largest id + 1).
        dtype: ``uint16`` (default) or ``uint32`` (default: the meta file's).
    """

    name = "tokens"

    def __init__(self, *, data: str | os.PathLike[str] | None = None, block_size: int = 128, depth: int | None = None,
                 vocab_size: int | None = None, dtype: str | None = None, depth_mup: bool = False,
                 qk_norm: bool = True) -> None:
        if data is None:
            raise ValueError("the tokens task needs --data DIR: a folder with train.bin and val.bin")
        self.depth = self.default_depth if depth is None else depth
        for fname, value in (("block_size", block_size), ("depth", self.depth)):
            check_positive_int(value, fname, "tokens task")
        self.block_size = block_size
        self.tokens_per_example = block_size
        self.depth_mup, self.qk_norm = bool(depth_mup), bool(qk_norm)
        self.files = load_token_files(data, vocab_size=vocab_size, dtype=dtype, min_tokens=block_size + 1)
        self.vocab_size = self.files.vocab_size
        self.train_tokens, self.val_tokens = self.files.train, self.files.val
        self.input_spec = TensorSpec((-1, block_size), "int64", f"token ids in [0, {self.vocab_size})")
        self.output_spec = TensorSpec((-1, block_size, self.vocab_size), "float", "next-token logits")



def write_token_files(text_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                      tokenizer: str | os.PathLike[str] | None = None, val_fraction: float = 0.1) -> TokenFiles:
    """Tokenize a text file into ``out_dir/{train,val}.bin`` and ``meta.json``: bytes (vocabulary
    256) or, with ``tokenizer``, a local Hugging Face ``tokenizers`` file. The last
    ``val_fraction`` of the ids is the validation split. Returns the checked files."""
    src = Path(text_path).expanduser()
    if not src.is_file():
        raise ValueError(f"text file {str(text_path)!r} does not exist")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if tokenizer is None:
        ids = np.frombuffer(src.read_bytes(), dtype=np.uint8).astype(np.uint16)
        vocab, name = 256, "bytes"
    else:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ValueError("--tokenizer needs the tokenizers package: pip install tokenizers") from None
        tok_path = Path(tokenizer).expanduser()
        if not tok_path.is_file():
            raise ValueError(f"tokenizer file {str(tokenizer)!r} does not exist")
        tok = Tokenizer.from_file(str(tok_path))
        vocab, name = tok.get_vocab_size(), str(tok_path)
        ids = np.asarray(tok.encode(src.read_text(encoding="utf-8", errors="replace")).ids,
                         dtype=np.uint16 if vocab <= 1 << 16 else np.uint32)
    if len(ids) < 4:
        raise ValueError(f"{src}: too little text to split ({len(ids)} tokens)")
    cut = max(1, min(len(ids) - 1, int(round(len(ids) * (1 - val_fraction)))))
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    ids[:cut].tofile(out / "train.bin")
    ids[cut:].tofile(out / "val.bin")
    meta = {"vocab_size": vocab, "dtype": str(ids.dtype), "tokenizer": name, "source": str(src)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return TokenFiles(out)
