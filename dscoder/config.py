"""Typed configuration: frozen dataclasses with defaults in code, a TOML file over them, and
`--section.key=value` flags over both (docs/design.md#one-source-of-truth-per-convention).

A field's name is its TOML key, its flag and its JSON key. Unknown keys are errors. A number
field may carry its bounds, `Annotated[int, Range(1)]`: one declaration that TOML values,
`--section.key` flags, the commands' own flags (`flag_type`), the server's request schema
(`schema_bounds`) and objects built in code (`check`) are all held to. Every float must be
finite, every int must fit in 64 bits.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Mapping, Sequence, TypeVar

from dscoder.errors import SettingError, UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

C = TypeVar("C")
INT_LIMIT = 2**63  # ints beyond it overflow torch and numpy


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a number setting: `low <= value <= high` (`low < value` when `low_open`)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def describe(self) -> str:
        if self.low is not None and self.high is not None and not self.low_open:
            return f"between {self.low:g} and {self.high:g}"
        low = (
            None if self.low is None else (f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}")
        )
        high = None if self.high is None else f"at most {self.high:g}"
        return " and ".join(p for p in (low, high) if p) or "a finite number"

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1)
Seed = Annotated[int, NON_NEGATIVE]  # what torch, numpy and random all take


def check_number(value: Any, annotation: Any, where: str) -> Any:
    """`value` when it is a finite number inside the bounds `annotation` carries (if any);
    a SettingError naming `where` otherwise."""
    bounds = next((m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, Range)), None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(where, f"{where}: expected a finite number, got {value}")
    if isinstance(value, int) and abs(value) >= INT_LIMIT:
        raise SettingError(where, f"{where}: {value} is out of range")
    if bounds is not None and not bounds.holds(value):
        raise SettingError(where, f"{where}: must be {bounds.describe()}, got {value:g}")
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def check(obj: Any, where: str = "") -> None:
    """Hold every number field of the dataclass `obj` (and of its sections) to its bounds."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            check(value, path)
        else:
            check_number(value, hints[f.name], path)


def field_annotation(cls: type, name: str) -> Any:
    """The declared type (with its bounds) of field `name` of the dataclass `cls`."""
    return _hints(cls)[name]


def converter(annotation: Any, where: str) -> Callable[[str], Any]:
    """An argparse `type`: text to `annotation`'s type, held to its bounds; a bad value raises
    argparse's ArgumentTypeError, so argparse names the flag in its one-line error."""
    import argparse

    def parse(text: str) -> Any:
        try:
            return _convert(text, annotation, where)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None

    return parse


def schema_bounds(cls: type, name: str) -> dict[str, Any]:
    """pydantic `Field` keywords (ge/gt/le, allow_inf_nan) for field `name` of `cls`, so a
    request schema holds the same bounds as the CLI."""
    annotation = _hints(cls)[name]
    bounds = next((m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, Range)), None)
    out: dict[str, Any] = {}
    if float in (_base(annotation), *typing.get_args(_base(annotation))):
        out["allow_inf_nan"] = False
    if bounds is not None:
        if bounds.low is not None:
            out["gt" if bounds.low_open else "ge"] = bounds.low
        if bounds.high is not None:
            out["le"] = bounds.high
    return out


def _base(annotation: Any) -> Any:
    """The annotation without `Annotated` metadata."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation


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
    """Coerce a TOML value or a flag string to the field's declared type (and bounds)."""
    if typing.get_origin(annotation) is Annotated:
        return check_number(_convert(value, _base(annotation), where), annotation, where)
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
        if annotation is int and isinstance(value, float):
            if not value.is_integer():  # 1.5 batches is a mistake, not 1
                raise UserError(f"{where}: expected int, got {value!r}")
            value = int(value)
        try:
            return check_number(annotation(value), annotation, where)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
    raise UserError(f"{where}: unsupported setting type {annotation!r}")


def merge(cfg: C, values: Mapping[str, Any], where: str = "") -> C:
    """A copy of the dataclass `cfg` with nested `values` (as read from TOML) applied."""
    hints = _hints(type(cfg))
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
    cfg: C, toml_path: str | Path | None = None, overrides: Mapping[str, str] = {}, section: str | None = None
) -> C:
    """Defaults (`cfg`), then the TOML file, then flag overrides: the resolved config.

    With `section`, `cfg` is that one section of the tree: the TOML file's `[section]` table
    applies and the overrides must be spelled `section.key`.
    """
    if section is not None:
        for key in overrides:
            if not key.startswith(section + "."):
                raise UserError(f"unknown setting --{key} (settings here start with --{section}.)")
        overrides = {key[len(section) + 1 :]: value for key, value in overrides.items()}
    if toml_path is not None:
        values = read_toml(toml_path)
        if section is not None:
            values = values.get(section, {})
        cfg = merge(cfg, values, section or "")
    return apply_overrides(cfg, overrides, section or "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON/TOML-ready data."""
    return dataclasses.asdict(cfg)
