"""What each file of a repository depends on, among the repository's own files (paper section
2.3, the input of Algorithm 1). DeepSeek never published its parsing rules; these are ours:

- Python (see parsing.python_imports): `import a.b`, `from a.b import c, d` (each of modules
  `a.b.c`, `a.b.d` that is a file, and `a.b` for a name that is not), relative imports; a
  module resolves next to the importing file, then from the repository root, then (dotted names
  only) under any folder, shortest path first.
- Java (tree-sitter): imports (single, static, wildcard) by fully qualified type name, and the
  top-level types of the same package a file mentions (no import needed there; a nested type
  is reached through its outer type's name, so two files' private `Node` classes are unrelated).
- C# (tree-sitter): the types a file mentions that are declared in a namespace it can see
  (its own, their parents, and its `using` namespaces).
- C/C++ (tree-sitter): `#include "..."` next to the including file, then in the include folders
  (`-I` flags and `include_directories` of the repository's Makefiles/CMakeLists, folders named
  include/inc/src), then the root; `#include <...>` in the include folders and the root; an
  include that matches exactly one file's path suffix resolves to it.
- JavaScript/TypeScript (tree-sitter): relative `import`/`export ... from`, `require()`,
  `import()`, with the usual extension and `index` fallbacks (`./x.js` may name `x.ts`).
- Go (tree-sitter): imports under the module path of `go.mod` name a package folder (every
  non-test file of it); in the same folder, a file depends on the files declaring the
  identifiers it uses.
- Rust (tree-sitter): `mod x;` and `use crate::/self::/super::` paths to module files.

A dependency that no statement names (a Java type of the file's own package, a C# type of its
own namespace, a Go identifier of its own package) is also recorded as a *reference*: Algorithm 1
gives imports precedence over references when it has to break a cycle (see dependencies.py).
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable

from dscoder.repo.parsing import Parsed, grammar

DEPENDENCY_LANGUAGES = frozenset({"python", "java", "csharp", "c", "cpp", "javascript", "typescript", "go", "rust"})
# Files read for what they say about the others (include folders, the Go module path), not ordered.
BUILD_FILE_LANGUAGES = frozenset({"makefile", "cmake", "gomod"})


@dataclass
class CodeFile:
    path: str
    text: str
    language: str
    parsed: Parsed | None


@dataclass
class Graph:
    """A repository's dependency graph over its file paths."""

    deps: dict[str, set[str]]
    """Every file's dependencies among the repository's files."""
    references: dict[str, set[str]] = field(default_factory=dict)
    """The part of `deps` that no import statement names (same package, namespace or folder)."""


# --- tree-sitter queries ------------------------------------------------------------------------

QUERIES = {
    "java": """
        (package_declaration (scoped_identifier) @package)
        (package_declaration (identifier) @package)
        (import_declaration (scoped_identifier) @import)
        (import_declaration (asterisk)) @wildcard
        (type_identifier) @use
        (method_invocation object: (identifier) @use)
        (field_access object: (identifier) @use)
        (program (class_declaration name: (identifier) @declare))
        (program (interface_declaration name: (identifier) @declare))
        (program (enum_declaration name: (identifier) @declare))
        (program (record_declaration name: (identifier) @declare))
    """,
    "csharp": """
        (using_directive (qualified_name) @using)
        (using_directive (identifier) @using)
        (namespace_declaration name: (_) @namespace)
        (file_scoped_namespace_declaration name: (_) @namespace)
        (class_declaration name: (identifier) @declare)
        (interface_declaration name: (identifier) @declare)
        (struct_declaration name: (identifier) @declare)
        (enum_declaration name: (identifier) @declare)
        (record_declaration name: (identifier) @declare)
        (identifier) @use
    """,
    "c": """
        (preproc_include path: (string_literal) @local)
        (preproc_include path: (system_lib_string) @system)
    """,
    "javascript": """
        (import_statement source: (string) @source)
        (export_statement source: (string) @source)
        (call_expression function: (identifier) @fn arguments: (arguments . (string) @call))
        (call_expression function: (import) arguments: (arguments . (string) @source))
    """,
    "go": """
        (import_spec path: (interpreted_string_literal) @import)
        (function_declaration name: (identifier) @declare)
        (type_spec name: (type_identifier) @declare)
        (const_spec name: (identifier) @declare)
        (var_spec name: (identifier) @declare)
        (identifier) @use
        (type_identifier) @use
    """,
    "rust": """
        (mod_item name: (identifier) @mod !body)
        (use_declaration argument: (_) @use)
    """,
}
QUERIES["cpp"] = QUERIES["c"]
QUERIES["typescript"] = QUERIES["tsx"] = QUERIES["javascript"]


@lru_cache(maxsize=None)
def _query(grammar_name: str):
    from tree_sitter import Query

    return Query(grammar(grammar_name), QUERIES[grammar_name])


def captures(parsed: Parsed) -> dict[str, list[str]]:
    """Texts captured by the file's query, by capture name."""
    from tree_sitter import QueryCursor

    found = QueryCursor(_query(parsed.grammar)).captures(parsed.tree.root_node)
    return {name: [n.text.decode("utf-8", "replace") for n in nodes] for name, nodes in found.items()}


def _unquote(text: str) -> str:
    return text.strip().strip("\"'`<>")


# --- resolution helpers --------------------------------------------------------------------------


class PathIndex:
    """Lookups over a repository's file paths."""

    def __init__(self, paths: Iterable[str]):
        self.paths = set(paths)
        self.by_suffix: dict[str, list[str]] = defaultdict(list)
        for path in sorted(self.paths, key=lambda p: (p.count("/"), p)):
            parts = path.split("/")
            for i in range(len(parts)):
                self.by_suffix["/".join(parts[i:])].append(path)

    def first(self, candidates: Iterable[str]) -> str | None:
        for candidate in candidates:
            candidate = posixpath.normpath(candidate)
            if candidate in self.paths:
                return candidate
        return None


# --- Python ------------------------------------------------------------------------------------


def _python_module_files(base: str, dotted: str) -> list[str]:
    stem = posixpath.join(base, *dotted.split(".")) if dotted else base
    return [stem + ".py", stem + ".pyi", posixpath.join(stem, "__init__.py")]


def resolve_python(dotted: str, level: int, here: str, index: PathIndex, root_package: str = "") -> str | None:
    """The file a Python module name refers to, from the folder `here` of the importing file."""
    if not dotted and not level:
        return None
    if level:
        base = here
        for _ in range(level - 1):
            base = posixpath.dirname(base)
        return index.first(_python_module_files(base, dotted))
    if root_package and (dotted + ".").startswith(root_package + "."):
        return index.first(_python_module_files("", dotted[len(root_package) + 1 :]))
    hit = index.first(_python_module_files(here, dotted)) or index.first(_python_module_files("", dotted))
    if hit is None and "." in dotted:
        for candidate in _python_module_files("", dotted):
            matches = index.by_suffix.get(candidate)
            if matches:
                return matches[0]
    return hit


def python_dependencies(files: list[CodeFile], index: PathIndex, root_package: str = "") -> dict[str, set[str]]:
    """`root_package`: the import name of the repository root when the root itself is a
    package (it holds `__init__.py`), as when a package folder is collected as a repository."""
    deps: dict[str, set[str]] = {}
    for f in files:
        if f.parsed is None or f.parsed.python_imports is None:
            continue
        here = posixpath.dirname(f.path)
        found: set[str] = set()
        for module, level, names in f.parsed.python_imports:
            # `from a import b, c`: each submodule a.b, a.c that is a file, and the package a
            # for any name that is not one (`import a.b`: the module a.b)
            hits = [
                resolve_python(f"{module}.{n}" if module else n, level, here, index, root_package)
                for n in names
                if n != "*"
            ]
            if not hits or not all(hits):
                hits.append(resolve_python(module, level, here, index, root_package))
            found.update(hit for hit in hits if hit)
        found.discard(f.path)
        deps[f.path] = found
    return deps


# --- Java and C# ----------------------------------------------------------------------------------


def java_dependencies(files: list[CodeFile]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(imports, same-package references) of each file."""
    info = {f.path: captures(f.parsed) for f in files if f.parsed is not None}
    by_fqn: dict[str, str] = {}
    by_package: dict[str, dict[str, str]] = defaultdict(dict)  # package -> type -> path
    for path, caps in info.items():
        package = (caps.get("package") or [""])[0]
        stem = posixpath.splitext(posixpath.basename(path))[0]
        for name in {stem, *caps.get("declare", [])}:
            by_fqn.setdefault(f"{package}.{name}" if package else name, path)
            by_package[package].setdefault(name, path)
    imports, references = {}, {}
    for path, caps in info.items():
        package = (caps.get("package") or [""])[0]
        used = set(caps.get("use", []))
        found = set()
        for imported in caps.get("import", []):
            hit = by_fqn.get(imported) or by_fqn.get(imported.rsplit(".", 1)[0])
            if hit:
                found.add(hit)
            elif imported in by_package:  # wildcard import of a package: the types used
                found.update(p for name, p in by_package[imported].items() if name in used)
        found.discard(path)
        imports[path] = found
        references[path] = {p for name, p in by_package[package].items() if name in used} - found - {path}
    return imports, references


def _with_parents(namespaces: list[str]) -> set[str]:
    """`a.b.c` and its parents `a.b`, `a`."""
    return {".".join(ns.split(".")[:i]) for ns in namespaces for i in range(1, ns.count(".") + 2)}


def csharp_dependencies(files: list[CodeFile]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(types of `using` namespaces, types of the file's own namespaces) of each file."""
    info = {f.path: captures(f.parsed) for f in files if f.parsed is not None}
    declared: dict[str, list[tuple[str, str]]] = defaultdict(list)  # type -> [(namespace, path)]
    for path, caps in info.items():
        namespace = (caps.get("namespace") or [""])[0]
        for name in caps.get("declare", []):
            declared[name].append((namespace, path))
    imports, references = {}, {}
    for path, caps in info.items():
        own = {""} | _with_parents(caps.get("namespace", []))
        visible = own | _with_parents(caps.get("using", []))
        found = {
            (ns, p)
            for name in set(caps.get("use", []))
            for ns, p in declared.get(name, [])
            if ns in visible and p != path
        }
        imports[path] = {p for ns, p in found if ns not in own}
        references[path] = {p for ns, p in found if ns in own} - imports[path]
    return imports, references


# --- C and C++ ---------------------------------------------------------------------------------------

_INCLUDE_FLAG = re.compile(r"-I\s*([^\s\"')]+)")
_CMAKE_INCLUDE = re.compile(r"include_directories\s*\(([^)]*)\)", re.I)
INCLUDE_FOLDER_NAMES = ("include", "inc", "src")


def include_folders(paths: Iterable[str], build_files: Iterable[CodeFile]) -> list[str]:
    """Folders searched for includes: those build files name, then conventional ones."""
    folders: list[str] = []
    for f in build_files:
        base = posixpath.dirname(f.path)
        names = _INCLUDE_FLAG.findall(f.text)
        for args in _CMAKE_INCLUDE.findall(f.text):
            names += [
                a
                for a in args.split()
                if a.upper() not in ("PUBLIC", "PRIVATE", "INTERFACE", "SYSTEM", "BEFORE", "AFTER")
            ]
        for name in names:
            name = (
                name.replace("${CMAKE_CURRENT_SOURCE_DIR}", "")
                .replace("${PROJECT_SOURCE_DIR}", "")
                .replace("$(srcdir)", "")
            )
            folder = posixpath.normpath(posixpath.join(base, name.lstrip("/")))
            if not folder.startswith("..") and folder not in folders:
                folders.append(folder)
    for path in sorted(paths):
        parts = path.split("/")[:-1]
        for i, part in enumerate(parts):
            if part in INCLUDE_FOLDER_NAMES:
                folder = "/".join(parts[: i + 1])
                if folder not in folders:
                    folders.append(folder)
    return folders


def c_dependencies(files: list[CodeFile], index: PathIndex, folders: list[str]) -> dict[str, set[str]]:
    deps = {}
    for f in files:
        if f.parsed is None:
            continue
        caps = captures(f.parsed)
        found = set()
        for kind in ("local", "system"):
            for raw in caps.get(kind, []):
                name = _unquote(raw)
                bases = ([posixpath.dirname(f.path)] if kind == "local" else []) + folders + [""]
                hit = index.first(posixpath.join(b, name) for b in bases)
                if hit is None:
                    matches = index.by_suffix.get(posixpath.normpath(name), [])
                    hit = matches[0] if len(matches) == 1 else None
                if hit and hit != f.path:
                    found.add(hit)
        deps[f.path] = found
    return deps


# --- JavaScript and TypeScript -------------------------------------------------------------------------

JS_EXTENSIONS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".d.ts")


def js_dependencies(files: list[CodeFile], index: PathIndex) -> dict[str, set[str]]:
    deps = {}
    for f in files:
        if f.parsed is None:
            continue
        caps = captures(f.parsed)
        specs = caps.get("source", [])
        specs += [s for fn, s in zip(caps.get("fn", []), caps.get("call", [])) if fn == "require"]
        found = set()
        for raw in specs:
            spec = _unquote(raw)
            if not spec.startswith("."):
                continue  # a package, not a file of this repository
            stem = posixpath.join(posixpath.dirname(f.path), spec)
            bare = re.sub(r"\.(m|c)?jsx?$", "", stem)
            candidates = (
                [stem]
                + [bare + ext for ext in JS_EXTENSIONS]
                + [posixpath.join(stem, "index" + ext) for ext in JS_EXTENSIONS]
            )
            hit = index.first(candidates)
            if hit and hit != f.path:
                found.add(hit)
        deps[f.path] = found
    return deps


# --- Go ------------------------------------------------------------------------------------------------

_GO_MODULE = re.compile(r"^module\s+(\S+)", re.M)


def go_dependencies(files: list[CodeFile], go_mods: list[CodeFile]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(files of imported packages, files of the same package declaring what it uses) of each file."""
    modules = sorted(
        ((posixpath.dirname(m.path), match.group(1)) for m in go_mods if (match := _GO_MODULE.search(m.text))),
        key=lambda x: -len(x[1]),
    )
    info = {f.path: captures(f.parsed) for f in files if f.parsed is not None}
    by_folder: dict[str, list[str]] = defaultdict(list)
    for path in sorted(info):
        if not path.endswith("_test.go"):
            by_folder[posixpath.dirname(path)].append(path)
    imports, references = {}, {}
    for path, caps in info.items():
        folder = posixpath.dirname(path)
        found = set()
        for raw in caps.get("import", []):
            spec = _unquote(raw)
            for root, module in modules:
                if spec == module or spec.startswith(module + "/"):
                    target = posixpath.normpath(posixpath.join(root, spec[len(module) + 1 :]))
                    found.update(by_folder.get("" if target == "." else target, []))
                    break
        found.discard(path)
        used = set(caps.get("use", []))
        imports[path] = found
        references[path] = {
            other for other in by_folder.get(folder, []) if other != path and used & set(info[other].get("declare", []))
        } - found
    return imports, references


# --- Rust ----------------------------------------------------------------------------------------------


def _rust_module_dir(path: str) -> str:
    """The folder holding a module's submodules: `src/` for lib.rs/main.rs/mod.rs, else `a/b/` for a/b.rs."""
    stem, name = posixpath.splitext(path)[0], posixpath.basename(path)
    return posixpath.dirname(path) if name in ("lib.rs", "main.rs", "mod.rs") else stem


def rust_dependencies(files: list[CodeFile], index: PathIndex) -> dict[str, set[str]]:
    roots = sorted(p for p in index.paths if posixpath.basename(p) in ("lib.rs", "main.rs"))
    deps = {}
    for f in files:
        if f.parsed is None:
            continue
        caps = captures(f.parsed)
        module_dir = _rust_module_dir(f.path)
        crate_dir = next((posixpath.dirname(r) for r in roots if f.path.startswith(posixpath.dirname(r))), "")
        found = set()
        for name in caps.get("mod", []):
            hit = index.first([posixpath.join(module_dir, name + ".rs"), posixpath.join(module_dir, name, "mod.rs")])
            if hit:
                found.add(hit)
        for use in caps.get("use", []):
            segments = re.split(r"\s*::\s*", re.sub(r"[{}*].*$", "", use, flags=re.S).strip(": \n"))
            if not segments or segments[0] not in ("crate", "self", "super"):
                continue
            base = {"crate": crate_dir, "self": module_dir, "super": posixpath.dirname(module_dir)}[segments[0]]
            rest = [s for s in segments[1:] if s and s != "super"]
            for n in range(len(rest), 0, -1):  # the longest path that is a module file
                stem = posixpath.join(base, *rest[:n])
                hit = index.first([stem + ".rs", posixpath.join(stem, "mod.rs")])
                if hit:
                    found.add(hit)
                    break
        found.discard(f.path)
        deps[f.path] = found
    return deps


# --- all languages ---------------------------------------------------------------------------------------


def dependencies(files: list[CodeFile], build_files: list[CodeFile], repo_name: str = "") -> Graph:
    """For each file of a dependency language, the repository files it depends on.
    `build_files` are the repository's Makefiles, CMakeLists and go.mod files (read, not ordered);
    `repo_name` is the root's import name when the root holds `__init__.py`."""
    index = PathIndex(f.path for f in files)
    by_language: dict[str, list[CodeFile]] = defaultdict(list)
    for f in files:
        by_language[f.language].append(f)
    graph = Graph({f.path: set() for f in files})
    root_package = repo_name if "__init__.py" in index.paths and repo_name.isidentifier() else ""
    graph.deps.update(python_dependencies(by_language["python"], index, root_package))
    c_files = by_language["c"] + by_language["cpp"]
    if c_files:
        folders = include_folders(index.paths, [b for b in build_files if b.language in ("makefile", "cmake")])
        graph.deps.update(c_dependencies(c_files, index, folders))
    graph.deps.update(js_dependencies(by_language["javascript"] + by_language["typescript"], index))
    graph.deps.update(rust_dependencies(by_language["rust"], index))
    go_mods = [b for b in build_files if b.path.endswith("go.mod")]
    for imports, references in (
        java_dependencies(by_language["java"]),
        csharp_dependencies(by_language["csharp"]),
        go_dependencies(by_language["go"], go_mods),
    ):
        for path, found in imports.items():
            graph.deps[path] = found | references[path]
            if references[path]:
                graph.references[path] = references[path]
    return graph
