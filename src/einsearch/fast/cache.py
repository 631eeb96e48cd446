"""The planner's on-disk cache: one JSON file per machine (docs/design.md section 8).

The file is ``<dir>/planner-<key>.json`` where ``<dir>`` is ``$EINSEARCH_CACHE_DIR``, else
``$XDG_CACHE_HOME/einsearch``, else ``~/.cache/einsearch``, and ``<key>`` identifies the machine
and software a measurement holds for: the CPU model and a hash of its feature flags (from
``/proc/cpuinfo``, or ``platform.processor()`` elsewhere), the torch version and the planner's
schema version. A file whose recorded key or schema differs is ignored (and rewritten on the
next save). Writes are atomic (temporary file + rename) and merge what another process wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import tempfile
from pathlib import Path

import torch

__all__ = ["PlanCache", "cache_dir", "machine_key", "machine_info", "SCHEMA"]

log = logging.getLogger("einsearch.fast")

#: bump when candidates or record fields change: older choices no longer apply
SCHEMA = 1


def machine_info() -> dict[str, str]:
    """CPU model, a hash of its feature flags, machine type and torch version."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not model and line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif not flags and line.startswith(("flags", "Features")):
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
                if model and flags:
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown-cpu"
    return {"cpu": model, "flags_sha1": hashlib.sha1(flags.encode()).hexdigest()[:12],
            "machine": platform.machine(), "torch": torch.__version__}


def machine_key(info: dict[str, str] | None = None) -> str:
    """A short file-name-safe key: readable CPU model + hash of everything that identifies it."""
    info = info or machine_info()
    digest = hashlib.sha1(json.dumps({**info, "schema": SCHEMA}, sort_keys=True).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9]+", "-", info["cpu"]).strip("-")[:40] or "cpu"
    return f"{name}-{digest}"


def cache_dir() -> Path:
    """``$EINSEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/einsearch``, else ``~/.cache/einsearch``."""
    override = os.environ.get("EINSEARCH_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "einsearch"


class PlanCache:
    """Choices keyed by entry strings, kept in memory and in one JSON file per machine key."""

    def __init__(self, directory: Path | str | None = None, key: str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else cache_dir()
        self.info = machine_info()
        self.key = key or machine_key(self.info)
        self._entries: dict[str, dict] | None = None

    @property
    def path(self) -> Path:
        return self.directory / f"planner-{self.key}.json"

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("einsearch planner: ignoring unreadable cache %s (%r)", self.path, exc)
            return {}
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("key") != self.key:
            log.info("einsearch planner: cache %s is for another machine/schema; ignoring it", self.path)
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def entries(self) -> dict[str, dict]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def get(self, entry: str) -> dict | None:
        return self.entries().get(entry)

    def put(self, entry: str, record: dict) -> bool:
        """Store a record and write the file (merged with what is on disk); False if unwritable."""
        mine = self.entries()
        mine[entry] = record
        merged = {**self._read(), **mine}
        payload = {"schema": SCHEMA, "key": self.key, "machine": self.info, "entries": merged}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".planner-", suffix=".json", dir=self.directory)
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("einsearch planner: cannot write cache %s (%r); choices stay in memory", self.path, exc)
            return False
        self._entries = merged
        return True
