"""``charlm``: character-level language modelling with a small GPT (docs/design.md section 6).

Vocabulary: 96 tokens, newline (id 0) and the printable ASCII characters 32..126 (ids 1..95).
Any other character (tab, non-ASCII, control characters) is mapped to ``REPLACEMENT`` (``?``)
before encoding; ``\\r\\n`` and ``\\r`` become ``\\n`` (files are read with universal newlines).

Corpus: ``load_corpus(path)`` reads one text file or every text file under a directory
(recursively, sorted by relative path; binary files, i.e. with a NUL byte in their first 8 KiB,
and hidden files are skipped). A directory is split by file: every tenth file in sorted order
(indices 5, 15, 25, ...) goes to validation, about 90/10; with a single file, or when that rule
would leave one side empty, the text is split by position (first 90% train, last 10% val).
``path=None`` loads the embedded default: the Python standard library's own ``*.py`` files
(``sysconfig.get_paths()["stdlib"]``, site-packages excluded), in sorted order, capped at 4 MB.

Batches are random windows of ``block_size + 1`` characters from the training split; the
held-out set is a fixed set of windows of the validation split.
"""

from __future__ import annotations

import functools
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from einsearch._checks import check_positive_int

from .base import TensorSpec
from .windows import WindowLMTask

__all__ = ["CharLMTask", "Corpus", "load_corpus", "encode", "decode", "VOCAB", "VOCAB_SIZE", "REPLACEMENT"]

VOCAB: str = "\n" + "".join(chr(c) for c in range(32, 127))
VOCAB_SIZE: int = len(VOCAB)  # 96
REPLACEMENT: str = "?"
DEFAULT_CORPUS_BYTES = 4_000_000
_SNIFF_BYTES = 8192

# byte -> token id; every byte outside the vocabulary maps to the replacement's id
_BYTE_TO_ID = np.full(256, VOCAB.index(REPLACEMENT), dtype=np.uint8)
for _i, _ch in enumerate(VOCAB):
    _BYTE_TO_ID[ord(_ch)] = _i
_ID_TO_BYTE = np.frombuffer(VOCAB.encode("ascii"), dtype=np.uint8)


def encode(text: str) -> np.ndarray:
    """Token ids (uint8) of ``text``; characters outside the vocabulary become ``REPLACEMENT``."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    raw = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)
    return _BYTE_TO_ID[raw]


def decode(ids: np.ndarray | Tensor | list[int]) -> str:
    """Text of token ids (inverse of ``encode`` on text made of vocabulary characters)."""
    arr = np.asarray(ids.cpu() if isinstance(ids, Tensor) else ids, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
        raise ValueError(f"token ids must lie in [0, {VOCAB_SIZE}), got range [{arr.min()}, {arr.max()}]")
    return _ID_TO_BYTE[arr].tobytes().decode("ascii")


@dataclass(frozen=True)
class Corpus:
    """Encoded train and validation text (uint8 token ids) and where they came from."""

    train: np.ndarray
    val: np.ndarray
    source: str
    train_files: tuple[str, ...] = field(default=())
    val_files: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        return (f"Corpus(source={self.source!r}, train={len(self.train)} chars / {len(self.train_files)} files, "
                f"val={len(self.val)} chars / {len(self.val_files)} files)")


def _read_text(path: Path) -> str | None:
    """The file's text, or None if it looks binary."""
    data = path.read_bytes()
    if b"\x00" in data[:_SNIFF_BYTES]:
        return None
    return data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")


def _split_by_position(text_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cut = int(round(len(text_ids) * 0.9))
    return text_ids[:cut], text_ids[cut:]


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _from_files(files: list[tuple[str, str]], source: str) -> Corpus:
    """Split (name, text) pairs by file: index % 10 == 5 goes to validation."""
    if not files:
        raise ValueError(f"corpus {source!r} has no text files")
    val_idx = {i for i in range(len(files)) if i % 10 == 5}
    if len(files) >= 2 and not val_idx:
        val_idx = {len(files) - 1}
    train_parts = [(n, t) for i, (n, t) in enumerate(files) if i not in val_idx]
    val_parts = [(n, t) for i, (n, t) in enumerate(files) if i in val_idx]
    train_text = "".join(t for _, t in train_parts)
    val_text = "".join(t for _, t in val_parts)
    if len(files) < 2 or not train_text or not val_text:
        train, val = _split_by_position(encode("".join(t for _, t in files)))
        names = tuple(n for n, _ in files)
        return Corpus(train, val, source, names, names)
    return Corpus(encode(train_text), encode(val_text), source,
                  tuple(n for n, _ in train_parts), tuple(n for n, _ in val_parts))


def load_corpus(path: str | Path | None = None, *, max_bytes: int | None = None) -> Corpus:
    """Load a text corpus: a file, a directory of text files, or ``None`` for the embedded default.

    Raises ``FileNotFoundError`` when ``path`` does not exist and ``ValueError`` when it holds
    no text (empty file, directory without text files). ``max_bytes`` caps the text read (files
    are taken whole, in sorted order, until the cap is reached).
    """
    if path is None:
        return _default_corpus(DEFAULT_CORPUS_BYTES if max_bytes is None else max_bytes)
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"corpus path {str(path)!r} does not exist")
    if p.is_file():
        text = _read_text(p)
        if text is None:
            raise ValueError(f"corpus file {str(p)!r} is not a text file (it contains NUL bytes)")
        if max_bytes is not None:
            text = text[:max_bytes]
        if not text:
            raise ValueError(f"corpus file {str(p)!r} is empty")
        return _from_files([(p.name, text)], str(p))
    if not p.is_dir():
        raise ValueError(f"corpus path {str(p)!r} is neither a file nor a directory")
    files: list[tuple[str, str]] = []
    total = 0
    for f in sorted((q for q in p.rglob("*") if q.is_file()), key=lambda q: q.relative_to(p).as_posix()):
        rel = f.relative_to(p)
        if _is_hidden(rel):
            continue
        text = _read_text(f)
        if not text:
            continue
        files.append((rel.as_posix(), text))
        total += len(text)
        if max_bytes is not None and total >= max_bytes:
            break
    if not files:
        raise ValueError(f"corpus directory {str(p)!r} contains no non-empty text files")
    return _from_files(files, str(p))


@functools.lru_cache(maxsize=2)
def _default_corpus(max_bytes: int) -> Corpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[tuple[str, str]] = []
    total = 0
    for f in sorted(root.rglob("*.py"), key=lambda q: q.relative_to(root).as_posix()):
        rel = f.relative_to(root)
        if any(part in ("site-packages", "dist-packages") or part.startswith(".") for part in rel.parts):
            continue
        try:
            text = _read_text(f)
        except OSError:
            continue
        if not text:
            continue
        files.append((rel.as_posix(), text))
        total += len(text)
        if total >= max_bytes:
            break
    if not files:
        raise ValueError(f"the default corpus (Python standard library sources under {str(root)!r}) is empty")
    return _from_files(files, f"python-stdlib:{root}")


@functools.lru_cache(maxsize=8)
def _cached_corpus(path: str | None) -> Corpus:
    return load_corpus(path)


class CharLMTask(WindowLMTask):
    """Next-character prediction with a GPT.

    Options:
        data: corpus path (file or directory); ``None`` = Python standard library sources.
        block_size: context length T (default 128); one example is T tokens.
        depth: transformer blocks (default 4).
        depth_mup, qk_norm: the GPT's residual-branch scaling and QK-LayerNorm (``models.GPT``).
    """

    name = "charlm"

    def __init__(self, *, data: str | Path | None = None, block_size: int = 128, depth: int | None = None,
                 depth_mup: bool = False, qk_norm: bool = True) -> None:
        self.depth = self.default_depth if depth is None else depth
        self.depth_mup, self.qk_norm = bool(depth_mup), bool(qk_norm)
        for fname, value in (("block_size", block_size), ("depth", self.depth)):
            check_positive_int(value, fname, "charlm task")
        self.block_size = block_size
        self.tokens_per_example = block_size
        self.corpus = _cached_corpus(None if data is None else str(Path(data).expanduser().resolve()))
        for split in ("train", "val"):
            n = len(getattr(self.corpus, split))
            if n < block_size + 1:
                raise ValueError(
                    f"charlm task: the {split} split of corpus {self.corpus.source!r} has {n} characters; "
                    f"block_size={block_size} needs at least {block_size + 1}"
                )
        self.vocab_size = VOCAB_SIZE
        self.train_tokens, self.val_tokens = self.corpus.train, self.corpus.val
        self.input_spec = TensorSpec((-1, block_size), "int64", f"token ids in [0, {VOCAB_SIZE})")
        self.output_spec = TensorSpec((-1, block_size, VOCAB_SIZE), "float", "next-token logits")

