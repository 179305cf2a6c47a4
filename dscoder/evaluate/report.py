"""`dscoder eval report`: runs side by side (markdown table, bar chart), with the published
DeepSeek-Coder scores as reference rows (docs/deepseek-coder.md#published-results)."""

from __future__ import annotations

import json
from pathlib import Path

from dscoder import artifacts
from dscoder.errors import UserError

# pass@1 (greedy), percent, from the DeepSeek-Coder paper (arXiv 2401.14196, Tables 3, 4, 6) and
# the LeetCode Contest table of its repository (Evaluation/LeetCode/readme.md). The paper's FIM
# figure (Table 6) is its "Mean" of single-line infilling in Python, Java and JavaScript; the Python
# column is what a run of HumanEval single-line infilling (Python only) compares with.
PUBLISHED = {
    "DeepSeek-Coder-1.3B-base": {
        "HumanEval": 34.8,
        "MBPP": 46.2,
        "HumanEval 8-lang": 28.3,
        "DS-1000": 16.2,
        "FIM line EM, Python": 57.4,
        "FIM line EM, 3-language mean": 70.4,
    },
    "DeepSeek-Coder-6.7B-base": {
        "HumanEval": 49.4,
        "MBPP": 60.6,
        "HumanEval 8-lang": 44.7,
        "DS-1000": 30.5,
        "FIM line EM, Python": 66.6,
        "FIM line EM, 3-language mean": 80.7,
    },
    "DeepSeek-Coder-33B-base": {
        "HumanEval": 56.1,
        "MBPP": 66.0,
        "HumanEval 8-lang": 50.3,
        "DS-1000": 40.2,
        "FIM line EM, Python": 65.4,
        "FIM line EM, 3-language mean": 81.2,
    },
    "DeepSeek-Coder-1.3B-instruct": {"LeetCode": 7.2, "LeetCode CoT": 7.2},
    "DeepSeek-Coder-6.7B-instruct": {
        "HumanEval": 78.6,
        "MBPP": 65.4,
        "HumanEval 8-lang": 66.1,
        "LeetCode": 19.4,
        "LeetCode CoT": 21.1,
    },
    "DeepSeek-Coder-33B-instruct": {
        "HumanEval": 79.3,
        "MBPP": 70.0,
        "HumanEval 8-lang": 69.2,
        "LeetCode": 27.8,
        "LeetCode CoT": 28.9,
    },
}
COLUMNS = {
    "humaneval": "HumanEval",
    "mbpp": "MBPP",
    "humaneval-plus": "HumanEval+",
    "mbpp-plus": "MBPP+",
    "ds-1000": "DS-1000",
    "humaneval-infilling": "FIM line EM, Python",
    "humaneval-8lang": "HumanEval 8-lang",
    "leetcode": "LeetCode",
}
EIGHT_LANGUAGES = 8


def load_run(folder: Path) -> dict:
    """A results folder's name, format and summary; a UserError for a folder without scores."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        raise UserError(f"{folder}: no summary.json (run `dscoder eval execute` first)")
    try:
        summary = json.loads(path.read_text())
        meta_path = Path(folder) / "run.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{folder}: unreadable results ({exc})") from None
    tasks = summary.get("overall", {}).get("tasks", 0)
    if not tasks:
        statuses = ", ".join(f"{k} {v}" for k, v in summary.get("statuses", {}).items()) or "no samples"
        raise UserError(f"{folder}: the run scored no task ({statuses})")
    name = meta.get("name") or Path(folder).name
    total = summary.get("tasks_in_benchmark", tasks)
    if tasks < total:  # a part of the benchmark: never shown as if it were the whole
        name = f"{name} ({tasks}/{total} tasks)"
    fmt = (meta.get("benchmark") or {}).get("format") or meta.get("format")
    return {
        "name": name,
        "format": fmt,
        "summary": summary,
        "partial": tasks < total,
        "record": meta,
        "folder": str(folder),
    }


def apart(runs: list[dict]) -> list[dict]:
    """The runs with names that tell them apart: runs sharing a name (one model run locally and
    through an endpoint, say) are each named after their folder too, so none replaces another."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["name"]] = counts.get(run["name"], 0) + 1
    named = [{**run, "name": f"{run['name']} [{run['folder']}]"} if counts[run["name"]] > 1 else run for run in runs]
    seen: dict[str, int] = {}
    for run in named:  # the same folder given twice: numbered
        seen[run["name"]] = seen.get(run["name"], 0) + 1
        if seen[run["name"]] > 1:
            run["name"] = f"{run['name']} #{seen[run['name']]}"
    return named


def _score(run: dict) -> tuple[str, float | None]:
    summary, fmt = run["summary"], run["format"]
    if fmt == "crosscodeeval":  # scored by matching: its exact match stands in for pass@1
        return "CrossCodeEval (exact match)", 100 * summary["overall"]["exact_match"]
    if fmt == "humaneval-infilling" and "fim" in summary:
        return COLUMNS[fmt], 100 * summary["fim"]["line_exact_match"]
    column = COLUMNS.get(fmt, fmt or "score")
    if fmt == "leetcode" and ((run["record"].get("source") or {}).get("generation") or {}).get("cot"):
        column = "LeetCode CoT"
    if fmt == "humaneval-8lang":  # the published row: the mean of the eight languages' scores
        mean = summary.get("language_mean") or {}
        whole = mean.get("languages") == EIGHT_LANGUAGES and not run["partial"]
        return column, 100 * mean["pass@1"] if whole else None
    value = summary["overall"].get("pass@1")
    return column, None if value is None else 100 * value


def table(runs: list[dict]) -> tuple[list[str], dict[str, dict[str, float]]]:
    rows: dict[str, dict[str, float]] = {}
    columns: list[str] = []
    for run in runs:
        column, value = _score(run)
        if column not in columns:
            columns.append(column)
        if value is not None:
            rows.setdefault(run["name"], {})[column] = value
        for language, scores in run["summary"]["languages"].items():
            if run["format"] in ("multipl-e", "humaneval-x", "humaneval-8lang", "suite") and "pass@1" in scores:
                col = f"{language}"
                if col not in columns:
                    columns.append(col)
                rows.setdefault(run["name"], {})[col] = 100 * scores["pass@1"]
    return columns, rows


def markdown(runs: list[dict]) -> str:
    runs = apart(runs)
    columns, rows = table(runs)
    published = {name: {c: v for c, v in scores.items() if c in columns} for name, scores in PUBLISHED.items()}
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, scores in list(rows.items()) + [(f"{n} (published)", s) for n, s in published.items() if s]:
        lines.append(f"| {name} | " + " | ".join(f"{scores[c]:.1f}" if c in scores else "" for c in columns) + " |")
    note = (
        "\n\npass@1 in percent (FIM: line exact match); published rows from the DeepSeek-Coder paper (its FIM "
        "figure per language, here Python's, and LeetCode Contest from its repository's table). HumanEval 8-lang "
        "is the mean of the eight languages' scores, shown only for a run of all eight.\n"
    )
    if any(run["partial"] for run in runs):
        note += (
            "Rows marked (k/N tasks) cover only part of the benchmark: their scores cannot be compared with "
            "the published full-benchmark rows.\n"
        )
    text = "\n".join(lines) + note
    return text + ("\n" + settings(runs) if len(runs) > 1 else "")


def _flat(value, where: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, inner in value.items():
            out |= _flat(inner, f"{where}.{key}" if where else str(key))
        return out
    text = json.dumps(value, ensure_ascii=False)
    return {where: text if len(text) <= 60 else text[:57] + "..."}


DECIDING = ("benchmark.format", "benchmark.sha256", "source.", "execution.")  # run.json parts that decide scores


def settings(runs: list[dict]) -> str:
    """The runs' run.json side by side: every setting that differs, marked `changes scores` when
    it decides the scores (benchmark file, model, prompt, generation, stops, post-processing,
    execution) rather than describing the run (software, machine, times)."""
    flat = [_flat({k: v for k, v in run["record"].items() if k not in ("name", "kind")}) for run in runs]
    keys = sorted({k for f in flat for k in f} - {"started", "finished", "benchmark.path"})
    differing = [k for k in keys if len({f.get(k, "") for f in flat}) > 1]
    deciding = [k for k in differing if k.startswith(DECIDING)]
    if not differing:
        return "Settings: the same settings (run.json) in every run; the scores are comparable.\n"
    names = [run["name"] for run in runs]
    lines = ["| setting | " + " | ".join(names) + " | |", "|---|" + "---|" * (len(runs) + 1)]
    for key in deciding + [k for k in differing if k not in deciding]:
        values = [f.get(key, "").replace("|", "\\|") for f in flat]
        lines.append(f"| {key} | " + " | ".join(values) + f" | {'changes scores' if key in deciding else ''} |")
    head = (
        f"Settings: {len(deciding)} difference(s) that change scores; these runs' scores are not comparable."
        if deciding
        else "Settings: the same settings that decide scores (only the software or machine differ)."
    )
    return head + "\n\n" + "\n".join(lines) + "\n"


def chart(runs: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns, rows = table(apart(runs))
    names = list(rows) + [n for n, s in PUBLISHED.items() if any(c in s for c in columns)]
    scores = {**rows, **PUBLISHED}
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(columns) + 2), 4))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [scores[name].get(c, 0.0) for c in columns]
        ax.bar(np.arange(len(columns)) + i * width, values, width, label=name, alpha=0.6 if name in PUBLISHED else 1.0)
    ax.set_xticks(np.arange(len(columns)) + 0.4 - width / 2, columns)
    ax.set_ylabel("pass@1 (%)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    artifacts.write_figure(out, fig)
    plt.close(fig)
    return out
