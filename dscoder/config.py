"""Typed configuration: frozen dataclasses with defaults in code, a TOML file over them, and
`--section.key=value` flags over both (DESIGN.md, "One source of truth per convention").

A field's name is its TOML key, its flag and its JSON key. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

from dscoder.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

C = TypeVar("C")


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict, with a one-line error for a missing or malformed file."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """`--section.key=value` (or `--section.key value`) arguments as {"section.key": "value"}."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise UserError(f"unrecognized argument {arg!r}")
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args):
                raise UserError(f"{arg} needs a value")
            value = args[i + 1]
            i += 1
        overrides[key.replace("-", "_")] = value
        i += 1
    return overrides


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Coerce a TOML value or a flag string to the field's declared type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in typing.get_args(annotation):
                return None
        last_error = None
        for option in options:
            try:
                return _convert(value, option, where)
            except UserError as exc:
                last_error = exc
        raise last_error or UserError(f"{where}: cannot use {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise UserError(f"{where}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin in (tuple, list):
        (item,) = typing.get_args(annotation)[:1] or (str,)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return tuple(_convert(v, item, where) for v in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if annotation in (int, float, str):
        if annotation is not str and isinstance(value, bool):
            raise UserError(f"{where}: expected {annotation.__name__}, got {value!r}")
        if annotation is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        try:
            return annotation(value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
    raise UserError(f"{where}: unsupported setting type {annotation!r}")


def merge(cfg: C, values: Mapping[str, Any], where: str = "") -> C:
    """A copy of the dataclass `cfg` with nested `values` (as read from TOML) applied."""
    hints = typing.get_type_hints(type(cfg))
    fields = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        path = f"{where}.{name}" if where else name
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise UserError(f"unknown setting {path!r} (known here: {known})")
        current = getattr(cfg, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise UserError(f"{path}: expected a section, got {value!r}")
            changes[name] = merge(current, value, path)
        else:
            changes[name] = _convert(value, hints[name], path)
    return dataclasses.replace(cfg, **changes)


def apply_overrides(cfg: C, overrides: Mapping[str, str], where: str = "") -> C:
    """Apply flat `{"section.key": "value"}` overrides (from `parse_overrides`) to `cfg`."""
    nested: dict[str, Any] = {}
    for dotted, value in overrides.items():
        node = nested
        *sections, leaf = dotted.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return merge(cfg, nested, where)


def load(
    cfg: C,
    toml_path: str | Path | None = None,
    overrides: Mapping[str, str] = {},
    section: str | None = None,
) -> C:
    """Defaults (`cfg`), then the TOML file, then flag overrides: the resolved config.

    With `section`, `cfg` is that one section of the tree: the TOML file's `[section]` table
    applies and the overrides must be spelled `section.key`.
    """
    if section is not None:
        for key in overrides:
            if not key.startswith(section + "."):
                raise UserError(f"unknown setting --{key} (settings here start with --{section}.)")
        overrides = {key[len(section) + 1:]: value for key, value in overrides.items()}
    if toml_path is not None:
        values = read_toml(toml_path)
        if section is not None:
            values = values.get(section, {})
        cfg = merge(cfg, values, section or "")
    return apply_overrides(cfg, overrides, section or "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON/TOML-ready data."""
    return dataclasses.asdict(cfg)
