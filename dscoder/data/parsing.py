"""Parsing source files once, for both quality screening (does it parse?) and dependency
extraction (what does it import?).

Python uses the interpreter's own `ast` (the authority on what is valid Python); the other
languages use the tree-sitter grammar wheels, whose ERROR and MISSING nodes mark what does not
parse.
"""

from __future__ import annotations

import ast
import gc
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from dscoder.errors import UserError

# language -> (grammar module, function returning the language pointer)
GRAMMARS = {
    "java": ("tree_sitter_java", "language"),
    "csharp": ("tree_sitter_c_sharp", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
}
PARSED_LANGUAGES = frozenset(GRAMMARS) - {"tsx"} | {"python"}


@dataclass
class Parsed:
    """A parsed file. Python keeps only its import statements (`python_imports`): holding
    whole ASTs for a large repository makes the garbage collector crawl; other languages keep
    their tree-sitter Tree (C memory)."""

    language: str
    tree: Any
    error_fraction: float  # share of the source inside error nodes (1.0: does not parse)
    error: str = ""
    grammar: str = ""  # the tree-sitter grammar used ("tsx" for .tsx files)
    python_imports: list[tuple[str, int, list[str]]] | None = None


@contextmanager
def _gc_paused():
    """An AST holds no reference cycles, but building one allocates millions of objects, and
    the cyclic collector would walk them again and again (3x slower on large files)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@lru_cache(maxsize=None)
def grammar(language: str):
    """The tree-sitter Language for `language` (grammar wheels are imported on first use)."""
    import importlib

    from tree_sitter import Language

    module_name, function = GRAMMARS[language]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise UserError(
            f"parsing {language} needs the {module_name.replace('_', '-')} grammar: "
            "pip install 'dscoder[data]'"
        ) from None
    return Language(getattr(module, function)())


@lru_cache(maxsize=None)
def _parser(language: str):
    from tree_sitter import Parser

    return Parser(grammar(language))


def parse(text: str, language: str, path: str = "") -> Parsed | None:
    """Parse `text`; None for languages without a parser here. `path` picks the TSX grammar for
    `.tsx` files."""
    if language == "python":
        try:
            with warnings.catch_warnings(), _gc_paused():
                warnings.simplefilter("ignore")  # invalid escape sequences etc. still parse
                imports = python_imports(ast.parse(text))  # the tree is freed before GC resumes
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            return Parsed(language, None, 1.0, f"{type(exc).__name__}: {exc}")
        return Parsed(language, None, 0.0, python_imports=imports)
    if language not in GRAMMARS:
        return None
    source = text.encode("utf-8", "surrogatepass")
    name = "tsx" if path.endswith(".tsx") else language
    tree = _parser(name).parse(source)
    fraction = _error_bytes(tree.root_node) / max(len(source), 1) if tree.root_node.has_error else 0.0
    return Parsed(language, tree, fraction, "syntax errors" if tree.root_node.has_error else "", name)


def python_imports(tree: ast.Module) -> list[tuple[str, int, list[str]]]:
    """(module, level, imported names) for every import statement, however nested."""
    found, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found.extend((alias.name, 0, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level, [a.name for a in node.names]))
        elif isinstance(node, _COMPOUND):
            for name in ("body", "orelse", "finalbody", "handlers", "cases"):
                stack.extend(getattr(node, name, None) or [])
    return found


# Statements that hold other statements (where nested imports can hide).
_COMPOUND = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.If, ast.For, ast.AsyncFor,
             ast.While, ast.With, ast.AsyncWith, ast.Try, ast.ExceptHandler, ast.Match, ast.match_case)
if hasattr(ast, "TryStar"):
    _COMPOUND += (ast.TryStar,)


def _error_bytes(root) -> int:
    """Bytes covered by ERROR nodes (a MISSING node counts one byte), visiting only subtrees
    that contain errors."""
    total, stack = 0, [root]
    while stack:
        node = stack.pop()
        if node.is_error:
            total += max(node.end_byte - node.start_byte, 1)
        elif node.is_missing:
            total += 1
        elif node.has_error:
            stack.extend(node.children)
    return total
