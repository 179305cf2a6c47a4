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
from dscoder.repo.parsing import Parsed


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
_SPACE_BYTES = b" \t\n\r\f\v"
# Bytes of words: ASCII letters, digits, underscore, and every byte of a non-ASCII character.
_WORDISH_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_" + bytes(range(128, 256))
# ASCII that str.splitlines() or str.strip() also take for line breaks or spaces.
_OTHER_BREAKS = b"\r\v\f\x1c\x1d\x1e\x1f"


def is_data_line(line: str) -> bool:
    """A row of a literal table: only numbers, quoted strings and literals between separators."""
    return all(_LITERAL.fullmatch(token) for token in _DATA_TOKEN.findall(line))


def readability_reason(text: str, cfg: QualityConfig) -> str | None:
    data = text.encode("utf-8", "surrogatepass")
    # Lines are cut as str.splitlines() cuts them. In ASCII text without \r, \v, \f or \x1c-\x1f
    # they are the pieces between "\n"s and are counted on the bytes, with no string per line.
    plain = text.isascii() and len(data.translate(None, _OTHER_BREAKS)) == len(data)
    if plain:
        count = _nonblank_lines(data)
    else:
        lines = [line for line in text.splitlines() if line.strip()]
        count = len(lines)
    # A data line has at least three commas: most files have too few for a literal table.
    if count >= 20 and text.count(",") // 3 > cfg.max_data_line_fraction * count:
        data_lines = sum(
            1 for line in (text.split("\n") if plain else lines) if line.count(",") >= 3 and is_data_line(line)
        )
        if data_lines > cfg.max_data_line_fraction * count:
            return "literal_table"
    if count:  # an encoded line has at least 60 characters: most files have too few such lines
        long = (
            _long_lines(text, data, cfg.max_encoded_line_fraction * count)
            if plain
            else [line for line in lines if len(line) >= 60]
        )
        encoded = sum(1 for line in long if _ENCODED_LINE.match(line))
        if encoded > cfg.max_encoded_line_fraction * count:
            return "encoded_data"
    visible = len(data.translate(None, _SPACE_BYTES))
    if visible and len(data) - len(data.translate(None, _WORDISH_BYTES)) < cfg.min_word_fraction * visible:
        return "low_identifier_content"
    return None


def _nonblank_lines(data: bytes) -> int:
    """Lines of ASCII `data` (cut at "\n" only) holding more than spaces and tabs."""
    if not data:
        return 0
    squeezed = data.translate(None, b" \t")  # a blank line is now empty
    breaks = np.frombuffer(squeezed, dtype=np.uint8) == ord("\n")
    if not breaks.any():
        return 1 if squeezed else 0
    empty = int(np.count_nonzero(breaks[1:] & breaks[:-1])) + int(breaks[0]) + int(breaks[-1])
    return int(np.count_nonzero(breaks)) + 1 - empty


def _long_lines(text: str, data: bytes, at_most: float) -> list[str]:
    """The lines of 60 or more characters of ASCII `text` (cut at "\n" only); none when there are
    no more than `at_most` of them."""
    bounds = np.concatenate(([-1], np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n")), [len(data)]))
    long = np.flatnonzero(np.diff(bounds) > 60)
    if long.size <= at_most:
        return []
    return [text[bounds[i] + 1 : bounds[i + 1]] for i in long.tolist()]


def quality_reason(text: str, parsed: Parsed | None, cfg: QualityConfig) -> str | None:
    """Why `text` fails screening, or None. `parsed` is its parse (None: no parser for it)."""
    if cfg.check_syntax and parsed is not None:
        limit = cfg.max_error_fraction_c if parsed.language in ("c", "cpp") else cfg.max_error_fraction
        if parsed.error_fraction > limit:
            return "syntax_error"
    return readability_reason(text, cfg)
