"""Parsing: Python's verdict is the interpreter's, and its imports are read as `ast` reads them."""

import ast

import pytest

from dscoder.repo.parsing import parse, python_imports, python_syntax_error


@pytest.mark.parametrize(
    "text",
    [
        "nonlocal x\n",  # the symbol table rejects it, the parser does not
        "x = 1\nfrom __future__ import annotations\n",
        "def f():\n    global y\n    y = 1\n",
        "x = " + "+".join(["a"] * 2000) + "\n",
    ],
)
def test_what_only_the_compiler_rejects_is_valid(text):
    assert python_syntax_error(text) == ""
    assert parse(text, "python").error_fraction == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "print 'python 2'\n",
        "def broken(:\n    pass\n",
        "if x:\n        a\n    b\n",  # unindent to no outer level
        "x = 1\0\n",
        "s = 'C:\\Users\\me'\n",  # a truncated \U escape
        "x = " + "(" * 300 + ")" * 300 + "\n",
    ],
)
def test_errors_are_the_ones_ast_parse_raises(text):
    with pytest.raises((SyntaxError, ValueError)) as raised:
        ast.parse(text)
    assert python_syntax_error(text) == f"{type(raised.value).__name__}: {raised.value}"
    assert parse(text, "python").error_fraction == 1.0


def test_imports_as_ast_reads_them():
    text = (
        "import os, sys as system\n"
        "from . import (a,  # a comment (with parentheses)\n    b as bee,)\n"
        "from ..pkg . sub import *\n"
        "from .import sibling\n"
        "text = 'import not_this'\n"
        '"""\nimport nor_this\n"""\n'
        "# import nor_that\n"
        "reimport = important = 1\n"
        "def f():\n    import json; from \\\n        k import m\n"
        "try: import fast\nexcept ImportError: import slow\n"
        "from a.importlib import x\n"
        "import ﬁle\n"  # NFKC-normalised, like every identifier
    )
    found = python_imports(text)
    assert found == [
        ("os", 0, []),
        ("sys", 0, []),
        ("", 1, ["a", "b"]),
        ("pkg.sub", 2, ["*"]),
        ("", 1, ["sibling"]),
        ("json", 0, []),
        ("k", 0, ["m"]),
        ("fast", 0, []),
        ("slow", 0, []),
        ("a.importlib", 0, ["x"]),
        ("file", 0, []),
    ]
    assert parse(text, "python").python_imports == found


def test_carriage_returns_end_lines():
    assert python_imports("x = 1 # note\rimport os\r\nimport sys\n") == [("os", 0, []), ("sys", 0, [])]
