"""How each language's program is built and run in the sandbox, and how its outcome is read.

| language | needs (Debian package / other) | build | run |
|---|---|---|---|
| python | the running interpreter | - | python main.py |
| javascript | node (nodejs) | - | node main.js |
| typescript | node + tsc (`npm install -g typescript`) | tsc | node main.js |
| cpp | g++ (g++) | g++ -std=c++17 | ./main |
| java | javac, java (default-jdk) | javac Main.java | java Main |
| go | go (golang-go) | go test (cold per sample; the standard library comes precompiled) | |
| rust | rustc (rustup or rustc) | rustc --test / rustc | ./main |
| shell | bash | - | bash main.sh |
| php | php (php-cli) | - | php -f main.php |
| csharp | mcs, mono (mono-mcs, mono-runtime) | mcs -d:DEBUG | mono main.exe |
A language whose tools are missing gives one clear message naming what to install; the other
languages still run.

PHP and C# run as in DeepSeek-Coder's released harness (Evaluation/HumanEval/human_eval/execution.py),
read more strictly where it lets a broken program pass:
- PHP: as there, a program that does not open with `<?php` gets it (else PHP would print the text
  and exit 0), and only exit status 0 passes. Errors go to stderr whatever php.ini says. MultiPL-E's
  tests throw `Exception("Test failed!")`: uncaught, PHP exits 255 and the run is `failed`; another
  uncaught error is `runtime_error`, a parse error `compile_error`.
- C#: MultiPL-E's tests are `Debug.Assert` calls in `Main`, compiled in by `-d:DEBUG`. Under mono a
  failed Debug.Assert neither throws nor changes the exit status: with MONO_TRACE_LISTENER=
  Console.Error (sandbox.environment) it writes `Fail: <message>` and a stack trace through
  DefaultTraceListener.Fail to stderr and the program goes on; without the variable it is silent.
  Such a run is `failed`, as in the harness. Stricter than the harness, which passes any run
  whose stderr lacks "Fail": a run that exits non-zero (an unhandled exception, a crash) is
  `runtime_error`. More lenient: the build references System.Numerics, so BigInteger (its
  namespace is imported by every prompt) compiles.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from dscoder.evaluate import sandbox

TESTIFY_SHIM = """package assert

import (
\t"reflect"
\t"testing"
)

type Assertions struct{ t *testing.T }

func New(t *testing.T) *Assertions { return &Assertions{t} }

func equal(a, b interface{}) bool {
\tif reflect.DeepEqual(a, b) {
\t\treturn true
\t}
\tav, bv := reflect.ValueOf(a), reflect.ValueOf(b)
\treturn av.IsValid() && bv.IsValid() && av.Type().ConvertibleTo(bv.Type()) && reflect.DeepEqual(av.Convert(bv.Type()).Interface(), b)
}

func (a *Assertions) Equal(expected, actual interface{}, msg ...interface{}) bool {
\ta.t.Helper()
\tif !equal(expected, actual) {
\t\ta.t.Errorf("assertion failed: expected %#v, got %#v", expected, actual)
\t\treturn false
\t}
\treturn true
}
func (a *Assertions) NotEqual(expected, actual interface{}, msg ...interface{}) bool {
\ta.t.Helper()
\tif equal(expected, actual) {
\t\ta.t.Errorf("assertion failed: %#v should differ from %#v", actual, expected)
\t\treturn false
\t}
\treturn true
}
func (a *Assertions) True(value bool, msg ...interface{}) bool  { return a.Equal(true, value) }
func (a *Assertions) False(value bool, msg ...interface{}) bool { return a.Equal(false, value) }
func (a *Assertions) Nil(value interface{}, msg ...interface{}) bool {
\ta.t.Helper()
\tif value != nil && !reflect.ValueOf(value).IsNil() {
\t\ta.t.Errorf("assertion failed: expected nil, got %#v", value)
\t\treturn false
\t}
\treturn true
}
func Equal(t *testing.T, expected, actual interface{}, msg ...interface{}) bool { return New(t).Equal(expected, actual) }
func True(t *testing.T, value bool, msg ...interface{}) bool                     { return New(t).True(value) }
func False(t *testing.T, value bool, msg ...interface{}) bool                    { return New(t).False(value) }
"""


@dataclass(frozen=True)
class Toolchain:
    """What a language needs and how a program is built and run."""

    name: str
    source: str  # file name of the program in the sample folder
    tools: tuple[str, ...]  # executables that must be on PATH
    install: str  # what to install when they are missing
    memory_bytes: int = 2 * 2**30  # address-space limit (0 where a runtime reserves a lot of it)


TOOLCHAINS = {
    "python": Toolchain("python", "main.py", (), "python3"),
    "javascript": Toolchain("javascript", "main.js", ("node",), "Debian package nodejs", memory_bytes=0),
    "typescript": Toolchain(
        "typescript", "main.ts", ("node", "tsc"), "nodejs, then: npm install -g typescript", memory_bytes=0
    ),
    "cpp": Toolchain("cpp", "main.cpp", ("g++",), "Debian package g++"),
    "java": Toolchain("java", "Main.java", ("javac", "java"), "Debian package default-jdk-headless", memory_bytes=0),
    "go": Toolchain("go", "main_test.go", ("go",), "Debian package golang-go", memory_bytes=0),
    "rust": Toolchain("rust", "main.rs", ("rustc",), "rustup, or Debian package rustc"),
    "shell": Toolchain("shell", "main.sh", ("bash",), "bash"),
    "php": Toolchain("php", "main.php", ("php",), "Debian package php-cli"),
    "csharp": Toolchain("csharp", "main.cs", ("mcs", "mono"), "Debian packages mono-mcs and mono-runtime"),
}
ALIASES = {
    "py": "python",
    "js": "javascript",
    "ts": "typescript",
    "c++": "cpp",
    "rs": "rust",
    "sh": "shell",
    "bash": "shell",
    "golang": "go",
    "cs": "csharp",
    "c#": "csharp",
}
JVM_FLAGS = [
    "-Xmx512m",
    "-Xss16m",
    "-XX:MaxMetaspaceSize=256m",
    "-XX:ReservedCodeCacheSize=64m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
]


def canonical(language: str) -> str:
    language = language.lower()
    return ALIASES.get(language, language)


@lru_cache(maxsize=None)
def missing(language: str) -> str | None:
    """None when the language can run here, else what to install."""
    chain = TOOLCHAINS.get(canonical(language))
    if chain is None:
        return f"no executor for language {language!r} (supported: {', '.join(TOOLCHAINS)})"
    absent = [t for t in chain.tools if shutil.which(t) is None]
    return f"{language} needs {', '.join(absent)}: install {chain.install}" if absent else None


@lru_cache(maxsize=1)
def rustc() -> str:
    """The real rustc binary (not a rustup proxy, which wants a writable home)."""
    proxy = shutil.which("rustc") or "rustc"
    try:
        sysroot = subprocess.run(
            [proxy, "--print", "sysroot"], capture_output=True, text=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return proxy
    real = Path(sysroot) / "bin" / "rustc"
    return str(real) if real.is_file() else proxy


@lru_cache(maxsize=1)
def readable_roots() -> tuple[str, ...]:
    """The folders programs need wherever they are installed: the interpreter and its
    environment, this package (the Python worker) and the Rust toolchain. The sandbox shows them
    where its user could not otherwise reach them (a private home, the private /tmp)."""
    paths = [sys.base_prefix, sys.prefix, str(Path(__file__).resolve().parent.parent)]
    if shutil.which("rustc"):
        paths.append(str(Path(rustc()).parent.parent))
    return tuple(dict.fromkeys(str(Path(p).resolve()) for p in paths))


@lru_cache(maxsize=None)
def probe(language: str, mode: str) -> str | None:
    """None when the language's tools start inside sandbox `mode`, else what went wrong."""
    language = canonical(language)
    command = {
        "python": [sys.executable, "-c", "pass"],
        "javascript": ["node", "--version"],
        "typescript": ["tsc", "--version"],
        "cpp": ["g++", "--version"],
        "java": ["javac", "--version"],
        "go": ["go", "version"],
        "rust": [rustc(), "--version"],
        "shell": ["bash", "-c", "true"],
        "php": ["php", "--version"],
        "csharp": ["mcs", "--version"],
    }[language]
    with sandbox.Workdir() as folder:
        result = sandbox.run(
            command, folder, sandbox.Limits(timeout=60, cpu_seconds=60, memory_bytes=0), mode, readable=readable_roots()
        )
    if result.returncode == 0:
        return None
    detail = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1][:200]
    return f"{language}: {command[0]} does not start inside the sandbox ({detail})"


_RUST_EXTERNAL = re.compile(r"^\s*use\s+(rand|regex|md5)\b[^;]*;\s*$", re.M)
_JAVATUPLES = re.compile(r"^\s*import\s+org\.javatuples\.\*;\s*$", re.M)
_TUPLE_TYPES = re.compile(r"\b(Unit|Pair|Triplet|Quartet|Quintet|Sextet|Septet|Octet|Ennead|Decade)\s*<")


def java_files(program: str) -> tuple[str, str]:
    """(source file name, class to run): a public class names the file; the class holding
    `main` is run."""
    public = re.search(r"^\s*public\s+(?:final\s+)?class\s+(\w+)", program, re.M)
    main_at = program.find("static void main")
    classes = [(m.start(), m.group(1)) for m in re.finditer(r"\bclass\s+(\w+)", program)]
    before = [name for start, name in classes if start < main_at]
    runner = before[-1] if before else (public.group(1) if public else "Main")
    return (f"{public.group(1)}.java" if public else "Main.java"), runner


def write_program(language: str, program: str, folder: Path) -> None:
    """Put the program (and what its build needs) into the sample folder."""
    language = canonical(language)
    chain = TOOLCHAINS[language]
    source = chain.source
    if language == "rust":
        program = _RUST_EXTERNAL.sub("", program)  # crates that are not available offline
    if language == "java":
        if not _TUPLE_TYPES.search(program):
            program = _JAVATUPLES.sub("", program)  # MultiPL-E imports javatuples, which is not here
        source = java_files(program)[0]
    if language == "php" and not program.lstrip().startswith("<?php"):
        program = "<?php\n" + program
    (folder / source).write_text(program, encoding="utf-8", errors="surrogatepass")
    if language == "go":
        (folder / "go.mod").write_text(
            "module sample\n\ngo 1.18\n\n"
            "require github.com/stretchr/testify v1.8.0\n\nreplace github.com/stretchr/testify => ./testify\n"
        )
        shim = folder / "testify" / "assert"
        shim.mkdir(parents=True)
        (folder / "testify" / "go.mod").write_text("module github.com/stretchr/testify\n\ngo 1.18\n")
        (shim / "assertions.go").write_text(TESTIFY_SHIM)


def steps(language: str, program: str) -> list[tuple[str, list[str]]]:
    """The commands to run in order: ("build" | "run", argv)."""
    language = canonical(language)
    if language == "python":
        return [("run", [sys.executable, "main.py"])]
    if language == "javascript":
        return [("run", ["node", "--max-old-space-size=512", "main.js"])]
    if language == "typescript":
        return [
            (
                "build",
                [
                    "tsc",
                    "--target",
                    "es2020",
                    "--module",
                    "commonjs",
                    "--lib",
                    "es2020,dom",
                    "--noEmitOnError",
                    "--skipLibCheck",
                    "main.ts",
                ],
            ),
            ("run", ["node", "--max-old-space-size=512", "main.js"]),
        ]
    if language == "cpp":
        # unoptimized, as the released harness builds: at -O1 a function that falls off its end without
        # returning (an empty completion) is undefined behaviour that g++ turns into a test that passes
        return [("build", ["g++", "-std=c++17", "-o", "main", "main.cpp"]), ("run", ["./main"])]
    if language == "java":
        source, runner = java_files(program)
        return [
            ("build", ["javac", *[f"-J{f}" for f in JVM_FLAGS], "-encoding", "UTF-8", source]),
            ("run", ["java", *JVM_FLAGS, "-ea", "-cp", ".", runner]),
        ]
    if language == "go":
        return [("run", ["go", "test", "-count=1", "./..."])]
    if language == "rust":
        test = "#[cfg(test)]" in program or "#[test]" in program
        build = [rustc(), "--edition", "2021", "-O", "-o", "main", "main.rs"] + (["--test"] if test else [])
        return [("build", build), ("run", ["./main"])]
    if language == "shell":
        return [("run", ["bash", "main.sh"])]
    if language == "php":
        return [("run", ["php", "-d", "display_errors=stderr", "-d", "log_errors=0", "-f", "main.php"])]
    if language == "csharp":
        return [
            ("build", ["mcs", "-d:DEBUG", "-r:System.Numerics.dll", "-out:main.exe", "main.cs"]),
            ("run", ["mono", "main.exe"]),
        ]
    raise ValueError(language)


_ASSERTION = re.compile(
    r"AssertionError|Assertion failed|assertion failed|assertion `|panicked at|--- FAIL|"
    r"assert_eq|test result: FAILED|Assertion .* failed|AssertionError",
    re.I,
)
_PHP_TEST_FAILED = "Uncaught Exception: Test failed!"  # what MultiPL-E's PHP tests throw
_CSHARP_ASSERT = re.compile(r"^Fail: |DefaultTraceListener\.Fail", re.M)  # mono on a failed Debug.Assert


def status(language: str, step: str, run: sandbox.Run) -> str:
    """`passed`, `failed`, `timeout`, `compile_error` or `runtime_error` for one command."""
    language = canonical(language)
    if run.timed_out:
        return "timeout"
    if step == "build":
        return "passed" if run.returncode == 0 else "compile_error"
    failed_assertion = bool(_ASSERTION.search(run.stderr) or _ASSERTION.search(run.stdout))
    if language == "php":
        failed_assertion = failed_assertion or _PHP_TEST_FAILED in run.stderr
    if language == "csharp" and _CSHARP_ASSERT.search(run.stderr):
        return "failed"  # a failed Debug.Assert neither stops the program nor changes its exit status
    if (
        language == "go"
        and run.returncode != 0
        and ("[build failed]" in run.stdout + run.stderr or "[setup failed]" in run.stdout + run.stderr)
    ):
        return "compile_error"
    if run.returncode == 0:
        # console.assert only prints: a JavaScript program that "fails" still exits 0
        return "failed" if language in ("javascript", "typescript") and failed_assertion else "passed"
    last = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""
    if language == "python" and last.startswith(("SyntaxError", "IndentationError", "TabError")):
        return "compile_error"
    if language == "php" and "Parse error: " in run.stderr:
        return "compile_error"
    if language == "cpp" and run.returncode in (-6, 134):  # abort() from a failed assert
        return "failed"
    if language == "shell":
        return "failed"  # the tests are `[[ ... ]]` under `set -e`
    return "failed" if failed_assertion else "runtime_error"
