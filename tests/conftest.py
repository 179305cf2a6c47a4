"""Shared fixtures: the real DeepSeek-Coder vocabulary from ../shared and a small trained one."""

from __future__ import annotations

import os
import sysconfig
from collections import Counter
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
GGUF = SHARED / "reference" / "deepseek-coder-vocab" / "ggml-vocab-deepseek-coder.gguf"
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present (the shared reference data sits beside the repository)")
    return path


@pytest.fixture(scope="session")
def deepseek_tokenizer_dir(tmp_path_factory) -> Path:
    """The released vocabulary, imported from llama.cpp's GGUF file."""
    from dscoder import tokenizer

    need_shared(GGUF)
    tok, facts = tokenizer.from_gguf(GGUF)
    out = tmp_path_factory.mktemp("deepseek-tokenizer")
    tokenizer.save(tok, out, eos_token=facts["eos_token"], add_bos_token=facts["add_bos_token"])
    return out


@pytest.fixture(scope="session")
def trained_tokenizer_dir(tmp_path_factory) -> Path:
    """A 2,000-token vocabulary learned on two standard-library packages (a few seconds)."""
    from dscoder import tokenizer
    from dscoder.texts import read_texts

    texts = read_texts([STDLIB / "json", STDLIB / "email", STDLIB / "logging"], Counter())
    tok = tokenizer.train(texts, vocab_size=2000, show_progress=False)
    out = tmp_path_factory.mktemp("trained-tokenizer")
    tokenizer.save(tok, out)
    return out


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Create `files` ({relative path: text}) under `root`."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


# Small real-looking repositories, one per dependency language.
PYTHON_REPO = {
    "pkg/__init__.py": "from .core import Engine\n\n__all__ = ['Engine']\n",
    "pkg/core.py": "from .util import clamp\nfrom . import config\n\n\nclass Engine:\n    def run(self, value):\n        return clamp(value, config.LOW, config.HIGH)\n",
    "pkg/util.py": 'def clamp(value, low, high):\n    """Keep value inside [low, high]."""\n    return max(low, min(value, high))\n',
    "pkg/config.py": "import os\n\nLOW = int(os.environ.get('LOW', '0'))\nHIGH = int(os.environ.get('HIGH', '10'))\n",
    "pkg/a.py": "from pkg import b\n\n\ndef ping(n):\n    return b.pong(n - 1) if n else 'done'\n",
    "pkg/b.py": "from pkg import a\n\n\ndef pong(n):\n    return a.ping(n - 1) if n else 'done'\n",
    "main.py": "import sys\nfrom pkg import Engine\nimport helpers\n\nif __name__ == '__main__':\n    print(Engine().run(int(sys.argv[1])), helpers.greeting())\n",
    "helpers.py": "def greeting():\n    return 'hello from the helpers module'\n",
    "README.md": "# Demo\n\nA small package used by the tests: the engine clamps values between bounds.\n",
}

JAVA_REPO = {
    "src/main/java/com/acme/model/Shape.java": "package com.acme.model;\n\npublic interface Shape {\n    double area();\n}\n",
    "src/main/java/com/acme/model/Circle.java": "package com.acme.model;\n\npublic class Circle implements Shape {\n    private final double r;\n    public Circle(double r) { this.r = r; }\n    public double area() { return Math.PI * r * r; }\n}\n",
    "src/main/java/com/acme/util/Geometry.java": "package com.acme.util;\n\nimport com.acme.model.*;\n\npublic final class Geometry {\n    public static double total(Shape[] shapes) {\n        double sum = 0;\n        for (Shape s : shapes) sum += s.area();\n        return sum;\n    }\n}\n",
    "src/main/java/com/acme/App.java": "package com.acme;\n\nimport com.acme.model.Circle;\nimport com.acme.model.Shape;\nimport com.acme.util.Geometry;\n\npublic class App {\n    public static void main(String[] args) {\n        Shape[] shapes = { new Circle(1), new Circle(2) };\n        System.out.println(Geometry.total(shapes));\n    }\n}\n",
}

C_REPO = {
    "CMakeLists.txt": "cmake_minimum_required(VERSION 3.10)\nproject(calc C)\ninclude_directories(lib/inc)\nadd_executable(calc src/main.c src/ops.c lib/vec.c)\n",
    "lib/inc/vec.h": "#ifndef VEC_H\n#define VEC_H\ntypedef struct { double x, y; } vec;\nvec vec_add(vec a, vec b);\n#endif\n",
    "lib/vec.c": '#include "vec.h"\n\nvec vec_add(vec a, vec b) {\n    vec r = { a.x + b.x, a.y + b.y };\n    return r;\n}\n',
    "src/ops.h": "#ifndef OPS_H\n#define OPS_H\n#include <vec.h>\ndouble dot(vec a, vec b);\n#endif\n",
    "src/ops.c": '#include "ops.h"\n\ndouble dot(vec a, vec b) {\n    return a.x * b.x + a.y * b.y;\n}\n',
    "src/main.c": '#include <stdio.h>\n#include "ops.h"\n\nint main(void) {\n    vec a = { 1, 2 }, b = { 3, 4 };\n    printf("%f\\n", dot(vec_add(a, b), b));\n    return 0;\n}\n',
}


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A corpus of four standard-library packages (about 1.5 MB)."""
    from dscoder.config import apply_overrides
    from dscoder.data.build import build
    from dscoder.data.steps import BuildConfig

    out = tmp_path_factory.mktemp("corpus") / "stdlib"
    build(
        out,
        [STDLIB / n for n in ("json", "email", "logging", "asyncio")],
        [],
        [],
        apply_overrides(BuildConfig(), {"run.workers": "1"}),
    )
    return out


# Small, quick training settings for tests: flags of `dscoder train ...`.
QUICK_TRAIN = [
    "--seq-len",
    "64",
    "--batch-size",
    "4",
    "--max-steps",
    "12",
    "--eval-every",
    "6",
    "--save-every",
    "4",
    "--loop.log_every=1",
    "--loop.eval_batches=2",
    "--data.eval_fraction=0.05",
]


@pytest.fixture(scope="session")
def tiny_base_model(small_corpus, trained_tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny base model trained for a few seconds (its text is code-like noise)."""
    from dscoder.cli import main

    run = tmp_path_factory.mktemp("models") / "base"
    assert (
        main(
            [
                "train",
                "pretrain",
                "--data",
                str(small_corpus),
                "--tokenizer",
                str(trained_tokenizer_dir),
                "--preset",
                "tiny",
                "--out",
                str(run),
                *QUICK_TRAIN,
                "--max-steps",
                "30",
                "--lr",
                "3e-3",
                "--save-every",
                "30",
            ]
        )
        == 0
    )
    return run / "final"


@pytest.fixture(scope="session")
def tiny_instruct_model(tiny_base_model, small_corpus, tmp_path_factory) -> Path:
    """The base model after a few instruction-tuning steps (EOS = <|EOT|>)."""
    from dscoder.cli import main

    folder = tmp_path_factory.mktemp("models")
    pairs = folder / "pairs.jsonl"
    assert main(["train", "make-instruct", str(small_corpus), "--out", str(pairs), "--max-pairs", "100"]) == 0
    assert (
        main(
            [
                "train",
                "instruct",
                "--model",
                str(tiny_base_model),
                "--data",
                str(pairs),
                "--out",
                str(folder / "instruct"),
                *QUICK_TRAIN,
                "--max-steps",
                "3",
                "--save-every",
                "3",
            ]
        )
        == 0
    )
    return folder / "instruct" / "final"


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # `make test` runs two workers on two cores: one thread each (torch's threads would
        # otherwise wait on each other across the workers)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = "1"


def pytest_collection_modifyitems(config, items):
    """The files with the longest tests first (`slow(seconds=...)`, 10 by default), so that parallel
    workers (one file each at a time) end together; each file's tests keep their order."""
    weight: Counter = Counter()
    for item in items:
        mark = item.get_closest_marker("slow")
        if mark is not None:
            weight[item.path] += mark.kwargs.get("seconds", 10)
    items.sort(key=lambda item: -weight[item.path])


def pytest_terminal_summary(terminalreporter):
    """The run's last line: which isolation modes and evaluation languages this machine had (the
    tests of the others were skipped, each saying what to install)."""
    from dscoder.evaluate import sandbox, toolchains

    readable = toolchains.readable_roots()
    modes = {mode: sandbox.problem_with(mode, readable) for mode in ("bwrap", "unshare")}
    usable = [mode for mode, problem in modes.items() if problem is None]
    languages = {language: toolchains.missing(language) for language in toolchains.TOOLCHAINS}
    line = (
        f"evaluation: isolation {', '.join(usable) or 'none (programs ran unisolated)'}; languages "
        f"{', '.join(language for language, problem in languages.items() if problem is None)}"
    )
    absent = [problem for problem in list(languages.values()) + [p for p in modes.values()] if problem]
    if absent:
        line += " (not here: " + "; ".join(absent) + ")"
    terminalreporter.write_line(line)
