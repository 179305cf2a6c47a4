"""The quickstart's report: report.json (every figure), report.md (readable) and plots."""

from __future__ import annotations

import json
from pathlib import Path

from dscoder import artifacts

MODELS = ("untrained", "no_fim", "fim", "instruct", "given")
FIGURES = [
    ("heldout_loss", "held-out loss (nats/token)", "{:.3f}"),
    ("heldout_perplexity", "held-out perplexity", "{:.1f}"),
    ("fim_line_exact_match", "FIM single-line exact match", "{:.1%}"),
    ("fim_line_edit_similarity", "FIM single-line edit similarity", "{:.1%}"),
    ("fim_line_loss", "FIM hole-line loss (nats/token)", "{:.3f}"),
    ("fim_line_loss_prefix_only", "hole-line loss from the prefix alone", "{:.3f}"),
    ("completion_parse_rate", "completions that parse", "{:.1%}"),
    ("pass@1", "pass@1, quickstart problems", "{:.1%}"),
]


def _plots(out: Path, data: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    runs = {name: out / f"pretrain-{name}" / "metrics.jsonl" for name in ("fim", "no_fim")}
    if any(p.is_file() for p in runs.values()):
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, path in runs.items():
            if path.is_file():
                rows = [json.loads(line) for line in path.read_text().splitlines()]
                ax.plot(
                    [r["tokens"] for r in rows if "loss" in r],
                    [r["loss"] for r in rows if "loss" in r],
                    label=f"{name} train",
                )
                ev = [(r["tokens"], r["eval_loss"]) for r in rows if "eval_loss" in r and "tokens" in r]
                if ev:
                    ax.plot(*zip(*ev), "o--", label=f"{name} held-out windows")
        ax.set_xlabel("tokens")
        ax.set_ylabel("loss (nats/token)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        artifacts.write_figure(out / "loss.png", fig)
        plt.close(fig)
        made.append("loss.png")
    names = [m for m in MODELS if m in data.get("heldout_loss", {})]
    if names:
        keys = [
            k
            for k in ("heldout_loss", "fim_line_exact_match", "fim_line_edit_similarity", "completion_parse_rate")
            if k in data
        ]
        titles = {key: title for key, title, _ in FIGURES}
        fig, axes = plt.subplots(1, len(keys), figsize=(15, 3.5), squeeze=False)
        for ax, key in zip(axes[0], keys):
            ax.bar(names, [data[key][n] for n in names], color=["#999", "#6a9", "#369", "#c63", "#639"][: len(names)])
            ax.set_title(titles[key], fontsize=9)
            ax.tick_params(axis="x", labelsize=8)
            if key != "heldout_loss":
                ax.set_ylim(0, 1)  # shares: a zero bar reads as zero, not as an empty plot
        fig.tight_layout()
        artifacts.write_figure(out / "eval.png", fig)
        plt.close(fig)
        made.append("eval.png")
    return made


def write(out: Path, data: dict) -> None:
    plots = _plots(out, data)
    artifacts.write_json(out / "report.json", data)
    names = [m for m in MODELS if m in data.get("heldout_loss", {})]
    lines = [
        "# dscoder quickstart",
        "",
        f"Corpus: {len(data['corpus']['train_repositories'])} installed Python packages "
        f"(held out for evaluation: {', '.join(data['corpus'].get('held_out', []))})."
        if "train_repositories" in data["corpus"]
        else f"Evaluated on installed Python packages: {', '.join(data['corpus'].get('held_out', []))}.",
        "",
        "| figure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key, title, fmt in FIGURES:
        if key in data:
            lines.append(f"| {title} | " + " | ".join(fmt.format(data[key][n]) for n in names) + " |")
    sizes = data.get("eval_sizes", {})
    lines += [
        "",
        f"FIM: {sizes.get('fim_lines')} lines of the held-out packages, greedy; parse rate: "
        f"{sizes.get('parse_prompts')} held-out function and method headers completed; pass@1: "
        f"{sizes.get('problems')} small problems written for dscoder, run in the sandbox.",
        "",
    ]
    for plot in plots:
        lines.append(f"![{plot}]({plot})")
    lines += ["", "## Examples", ""]
    for mode, example in data.get("examples", {}).items():
        lines += [
            f"### {mode}",
            "",
            "Prompt:",
            "```",
            example.get("prompt", ""),
            "```",
            "Output:",
            "```",
            example.get("output", ""),
            "```",
            "",
        ]
    lines += ["## Time per stage (seconds)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in data["seconds"].items()]
    lines += ["", "## Models", ""] + [f"- {k}: `{v}`" for k, v in data["models"].items()]
    artifacts.write_text(out / "report.md", "\n".join(lines) + "\n")
