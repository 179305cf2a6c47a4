"""Quality screening (paper section 2.5: "a compiler and a quality model, combined with
heuristic rules" remove code with syntax errors and poor readability; the details were never
published, so these are documented choices).

- `syntax_error`: the file does not parse. Python must pass `ast.parse`; other languages may not
  have more than `max_error_fraction` of their bytes in tree-sitter error nodes (C and C++ get
  `max_error_fraction_c`, since the grammar cannot see through every macro).
- `literal_table`: more than half of the non-empty lines (of a file of at least 20 lines) are
  data rows: numbers, quoted strings and separators with at least three commas.
- `encoded_data`: more than half of the lines are base64/hex-like runs of 60+ characters.
- `low_identifier_content`: words (identifiers, keywords) cover under 15% of the non-space
  characters: symbol soup rather than code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

import numpy as np

from dscoder.config import FRACTION
from dscoder.data.parsing import Parsed


@dataclass(frozen=True)
class QualityConfig:
    """Quality-screening thresholds."""

    check_syntax: bool = True
    """Drop files that do not parse."""
    max_error_fraction: Annotated[float, FRACTION] = 0.0
    """Largest share of a file's bytes in tree-sitter error nodes."""
    max_error_fraction_c: Annotated[float, FRACTION] = 0.01
    """The same for C and C++ (macros confuse the grammar)."""
    max_data_line_fraction: Annotated[float, FRACTION] = 0.5
    """Largest share of data-table lines."""
    max_encoded_line_fraction: Annotated[float, FRACTION] = 0.5
    """Largest share of base64/hex-like lines."""
    min_word_fraction: Annotated[float, FRACTION] = 0.15
    """Least share of non-space characters inside words."""


_DATA_TOKEN = re.compile(r""""[^"\n]*"|'[^'\n]*'|[^\s,;:\[\]{}()]+""")
_LITERAL = re.compile(r"""0[xX][0-9a-fA-F]+|[-+]?\.?\d[\w.+-]*|".*"|'.*'|true|false|null|None|True|False""")
_ENCODED_LINE = re.compile(r"""^\s*[bru]?["']?[A-Za-z0-9+/=_-]{60,}["']?,?\s*$""")
_SPACE_BYTES = np.zeros(256, dtype=bool)
_SPACE_BYTES[list(b" \t\n\r\f\v")] = True
# Bytes of words: ASCII letters, digits, underscore, and every byte of a non-ASCII character.
_WORDISH_BYTES = np.zeros(256, dtype=bool)
_WORDISH_BYTES[list(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")] = True
_WORDISH_BYTES[128:] = True


def is_data_line(line: str) -> bool:
    """A row of a literal table: only numbers, quoted strings and literals between separators."""
    return all(_LITERAL.fullmatch(token) for token in _DATA_TOKEN.findall(line))


def readability_reason(text: str, cfg: QualityConfig) -> str | None:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) >= 20:
        data = sum(1 for line in lines if line.count(",") >= 3 and is_data_line(line))
        if data > cfg.max_data_line_fraction * len(lines):
            return "literal_table"
    if lines:
        encoded = sum(1 for line in lines if len(line) >= 60 and _ENCODED_LINE.match(line))
        if encoded > cfg.max_encoded_line_fraction * len(lines):
            return "encoded_data"
    data = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    visible = int((~_SPACE_BYTES[data]).sum())
    if visible and int(_WORDISH_BYTES[data].sum()) < cfg.min_word_fraction * visible:
        return "low_identifier_content"
    return None


def quality_reason(text: str, parsed: Parsed | None, cfg: QualityConfig) -> str | None:
    """Why `text` fails screening, or None. `parsed` is its parse (None: no parser for it)."""
    if cfg.check_syntax and parsed is not None:
        limit = cfg.max_error_fraction_c if parsed.language in ("c", "cpp") else cfg.max_error_fraction
        if parsed.error_fraction > limit:
            return "syntax_error"
    return readability_reason(text, cfg)
