"""The command-line parser every `dscoder` command is built with.

- A bad argument is one line, `dscoder: error: --lr: must be greater than 0, got -1 (see ...)`,
  and exit status 2, like every other error (argparse's usage block is left to `--help`).
- `--help` shows each option's default and, at the end, an example (`add_parser(...,
  example="dscoder ...")`).
- `number(int, Range(1))` and `setting(Cls, "field")` are flag types that hold a value to its
  bounds before any command starts; `setting` takes the bounds a config field declares, so a
  flag and the setting it sets cannot disagree (config.py).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Annotated, Any, Callable

from dscoder import config


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped, examples as written, and each option's default after its help."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
            or default == []
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser with one-line errors and an `example` shown at the end of --help."""

    def __init__(self, *args: Any, example: str | None = None, **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        if example:
            kwargs["epilog"] = "example:\n" + "\n".join(f"  {line}" for line in example.strip().splitlines())
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        message = re.sub(r"^argument ([^:]+): ", lambda m: m.group(1).split("/")[-1] + ": ", message)
        print(f"dscoder: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def number(kind: type, bounds: config.Range | None = None, flag: str = "value") -> Callable[[str], Any]:
    """A flag type: text to `kind` (int or float), finite and within `bounds`."""
    annotation = Annotated[kind, bounds] if bounds is not None else kind
    return config.converter(annotation, flag)


def setting(cls: type, name: str) -> Callable[[str], Any]:
    """A flag type for a flag that sets field `name` of the config dataclass `cls`."""
    return config.converter(config.field_annotation(cls, name), name)


PORT = number(int, config.Range(1, 65535))
