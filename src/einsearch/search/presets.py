"""Presets: the specs shipped in ``einsearch/search/presets``, and user spec files.

One rule for every command: an argument that ends in ``.yaml`` / ``.yml`` / ``.toml``, contains
a path separator or names an existing file is a file (YAML, or TOML by suffix); anything else
is the name of a shipped preset. Sweep presets are ``presets/NAME.yaml``; ``einsearch
explore`` presets are ``presets/explore_NAME.yaml`` (named with or without the prefix).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["preset_names", "explore_preset_names", "read_spec", "read_file", "SWEEP", "EXPLORE"]

#: the two kinds of preset, by file-name prefix
SWEEP, EXPLORE = "", "explore_"


def _folder() -> Any:
    from importlib.resources import files

    return files("einsearch.search").joinpath("presets")


def _names(prefix: str) -> list[str]:
    out = []
    for p in _folder().iterdir():
        if not p.name.endswith(".yaml"):
            continue
        is_explore = p.name.startswith(EXPLORE)
        if prefix == EXPLORE and is_explore:
            out.append(p.name[len(EXPLORE):-5])
        elif prefix == SWEEP and not is_explore:
            out.append(p.name[:-5])
    return sorted(out)


def preset_names() -> list[str]:
    """Names of the sweep presets shipped with the package."""
    return _names(SWEEP)


def explore_preset_names() -> list[str]:
    """Names of the ``einsearch explore`` presets (``presets/explore_*.yaml``), without prefix."""
    return _names(EXPLORE)


def read_file(path: Path) -> tuple[dict[str, Any], str]:
    """(mapping, source) of a YAML or TOML spec file; ValueError for invalid syntax."""
    if not path.is_file():
        raise FileNotFoundError(f"no spec file at {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            return tomllib.loads(text), str(path)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: invalid TOML: {err}") from None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML: {err}") from None
    return data or {}, str(path)


def read_spec(preset_or_path: str | os.PathLike[str], kind: str = SWEEP) -> tuple[dict[str, Any], str, str]:
    """``(mapping, source, name)`` of a preset name or a spec file (see the module docstring).

    ``source`` names it in error messages (``preset 'demo'`` or the path); ``name`` is the
    preset's name or the file's stem. Raises ValueError for an unknown preset or a spec that is
    not a mapping, FileNotFoundError for a missing file.
    """
    import yaml

    text = os.fspath(preset_or_path)
    path = Path(text).expanduser()
    if path.suffix.lower() in (".yaml", ".yml", ".toml") or os.sep in text or path.exists():
        data, source = read_file(path)
        name = path.stem
    else:
        name = text[len(kind):] if kind and text.startswith(kind) else text
        known = _names(kind)
        if name not in known:
            what = "explore preset" if kind == EXPLORE else "preset"
            raise ValueError(f"unknown {what} {text!r}; known {what}s: {', '.join(known)} "
                             "(or give a path to a .yaml / .toml file)")
        raw = _folder().joinpath(f"{kind}{name}.yaml").read_text(encoding="utf-8")
        data, source = yaml.safe_load(raw) or {}, f"preset {name!r}"
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: a spec must be a mapping of keys, got {type(data).__name__}")
    return dict(data), source, name
