"""CrossCodeEval: reading rows, prompts, cutting a generation to a statement, the four metrics
against hand-computed values, and `dscoder eval run` on a CrossCodeEval file."""

import json

import pytest

from dscoder.benchmark_files import detect_format
from dscoder.errors import UserError
from dscoder.evaluate import crosscodeeval as cc
from dscoder.evaluate import metrics

CROSSFILE = (
    "# Here are some relevant code fragments from other files of the repo:\n"
    "# the below code fragment can be found in: geo/point.py\n"
    "# class Point:\n#     def __init__(self, x, y):\n"
)
ROWS = [
    {
        "prompt": "from geo.point import Point\n\n\ndef shift(p):\n    ",
        "groundtruth": "return Point(p.x + 1, p.y)",
        "right_context": "\n\n\ndef other():\n    pass\n",
        "crossfile_context": {
            "text": CROSSFILE,
            "list": [{"retrieved_chunk": "class Point:", "filename": "geo/point.py", "score": 1.0}],
        },
        "metadata": {"task_id": "project_cc_python/0", "repository": "demo/geo", "file": "geo/shift.py"},
    },
    {
        "prompt": "import os\n\nCONFIG_DIR = 'conf'\n\n\ndef config_path(name):\n    ",
        "groundtruth": "return os.path.join(CONFIG_DIR, name)",
        "right_context": "\n",
        "crossfile_context": {"text": "", "list": []},
        "metadata": {"task_id": "project_cc_python/1", "repository": "demo/conf", "file": "conf/paths.py"},
    },
    {
        "prompt": "package demo;\n\npublic class Shop {\n    public int total(Cart cart) {\n        ",
        "groundtruth": "return cart.sum(Item::price);",
        "right_context": "\n    }\n}\n",
        "crossfile_context": {
            "text": "// the below code fragment can be found in: src/demo/Item.java\n"
            "// public int price() { return price; }\n",
            "list": [],
        },
        "metadata": {"task_id": "project_cc_java/0", "repository": "demo/shop", "file": "src/demo/Shop.java"},
    },
]
# What a model might generate for each row (before the cut to a statement).
GENERATIONS = [
    "return Point(p.x + 1, p.y)\n\n\ndef other():\n    pass\n",
    "return os.path.join(BASE, name)  # the file\n    x = 1\n",
    "return cart.sum(Item::cost);\n    }\n}\n",
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_are_read_and_the_format_is_detected():
    assert detect_format(ROWS) == "crosscodeeval"
    rows = cc.read_rows("cceval.jsonl", ROWS)
    assert [(r.task_id, r.language) for r in rows] == [
        ("project_cc_python/0", "python"),
        ("project_cc_python/1", "python"),
        ("project_cc_java/0", "java"),
    ]
    assert rows[0].crossfile == CROSSFILE and rows[1].crossfile == ""


def test_a_row_without_groundtruth_is_one_clear_error():
    bad = [ROWS[0], {k: v for k, v in ROWS[2].items() if k != "groundtruth"}]
    with pytest.raises(UserError, match=r"cceval.jsonl: row 2 \(project_cc_java/0\): no 'groundtruth'"):
        cc.read_rows("cceval.jsonl", bad)


def test_generations_are_cut_at_the_end_of_their_first_statement():
    prompt = "def f(x):\n    "
    assert cc.statement(prompt, "if x:\n        return 1\n    return 2\n", "python") == "if x:\n        return 1"
    assert cc.statement(prompt, "return (x +\n        1)\n", "python") == "return (x +\n        1)"
    assert cc.statement(prompt, "return x", "python") == "return x"  # no line end: kept whole
    assert cc.statement("", "int x = 1;\nfoo();", "java") == "int x = 1;"
    assert cc.statement("", "if (ok) {\n  go();", "csharp") == "if (ok) {"
    assert cc.statement("", "}\nfoo();", "typescript") == "}\nfoo();"  # the scripts' quirk: a leading `}` keeps all


def test_comments_identifiers_and_f1():
    assert cc.remove_comments("x = a // b  # half\ny = 1 // z") == "x = a \ny = 1 "
    assert cc.identifiers('print("hello world", x1, 2y, None, True)', "python") == ["print", "x1", "True"]
    assert cc.identifiers("return cart.sum(Item::price);", "java") == ["cart", "sum", "Item", "price"]
    assert cc.identifier_f1(["a", "b", "b"], ["b", "c"]) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert cc.identifier_f1([], []) == 0.0  # as the scripts score a line without identifiers


def test_line_metrics_are_crosscodeevals():
    assert metrics.exact_match("    x = 1  ", "x = 1") and not metrics.exact_match("x = 1", "x = 2")
    assert metrics.exact_match("a\n\n  b\n", "a\nb")
    assert metrics.edit_similarity("  abc ", "abc") == 1.0 and metrics.edit_similarity("", "") == 1.0
    assert metrics.edit_similarity("", "x") == 0.0
    # difflib's ratio: 2 * matched characters / all characters ("abcd" vs "abed": a, b, d match)
    assert metrics.edit_similarity("abcd", "abed") == pytest.approx(6 / 8)


def test_scores_against_hand_computed_values():
    rows = cc.read_rows("cceval.jsonl", ROWS)
    scored = [cc.score(r, g) for r, g in zip(rows, GENERATIONS)]
    # row 1: the statement is the real line
    assert scored[0] == {
        "completion": "return Point(p.x + 1, p.y)",
        "exact_match": 1.0,
        "edit_similarity": 1.0,
        "identifier_exact_match": 1.0,
        "identifier_f1": 1.0,
    }
    # row 2: cut at the first line end (the comment is scored without); "return os.path.join(" and
    # ", name)" match (27 characters of 31 and 37); identifiers os path join BASE name against
    # os path join CONFIG_DIR name: 4 shared, 1 wrong, 1 missed
    assert scored[1]["completion"] == "return os.path.join(BASE, name)  # the file"
    assert scored[1]["exact_match"] == 0.0 and scored[1]["identifier_exact_match"] == 0.0
    assert scored[1]["edit_similarity"] == pytest.approx(2 * 27 / (31 + 37))
    assert scored[1]["identifier_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    # row 3: cut at the first `;`; "return cart.sum(Item::", ");" and "c" match (25 of 28 and 29);
    # identifiers cart sum Item cost against cart sum Item price
    assert scored[2]["completion"] == "return cart.sum(Item::cost);"
    assert scored[2]["edit_similarity"] == pytest.approx(2 * 25 / (28 + 29))
    assert scored[2]["identifier_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    summary = cc.summarize(rows, scored, crossfile=True)
    assert summary["overall"] == pytest.approx(
        {
            "tasks": 3,
            "exact_match": 1 / 3,
            "identifier_exact_match": 1 / 3,
            "edit_similarity": (1 + 54 / 68 + 50 / 57) / 3,
            "identifier_f1": (1 + 0.8 + 0.75) / 3,
        }
    )
    assert summary["languages"]["java"]["tasks"] == 1 and summary["languages"]["python"]["tasks"] == 2


def test_a_model_that_echoes_the_groundtruth_scores_full_marks():
    rows = cc.read_rows("cceval.jsonl", ROWS)
    echoes = [r.groundtruth + "\n" + raw["right_context"] for r, raw in zip(rows, ROWS)]
    summary = cc.summarize(rows, [cc.score(r, e) for r, e in zip(rows, echoes)], crossfile=False)
    assert all(summary["overall"][m] == 1.0 for m in cc.METRICS)


@pytest.mark.slow
def test_eval_run_on_a_crosscodeeval_file(tiny_base_model, tmp_path, capsys):
    from dscoder.cli import main
    from dscoder.infer import prompts
    from dscoder.infer.engine import Engine

    engine = Engine.load(tiny_base_model)
    with_context = prompts.cross_file(engine, ROWS[0]["prompt"], CROSSFILE, 50, 512)
    assert with_context.text == CROSSFILE + "\n" + ROWS[0]["prompt"] and with_context.truncated == 0
    assert prompts.cross_file(engine, ROWS[0]["prompt"], "", 50, 512).text == ROWS[0]["prompt"]
    short = prompts.cross_file(engine, "x = 1\n" * 200, CROSSFILE * 20, engine.context - 100, 40)
    assert len(short.ids) <= 100 and short.truncated > 0 and short.text.endswith("x = 1\n")

    bench = _write(tmp_path / "cceval.jsonl", ROWS)
    for flags, crossfile in (([], True), (["--no-crossfile"], False)):
        out = tmp_path / f"run{len(flags)}"
        assert (
            main(["eval", "run", "--model", str(tiny_base_model), "--benchmark", str(bench), "--out", str(out), *flags])
            == 0
        )
        summary = json.loads((out / "summary.json").read_text())
        assert summary["crossfile"] is crossfile and summary["overall"]["tasks"] == 3
        assert set(cc.METRICS) <= set(summary["overall"])
        samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        assert [s["task_id"] for s in samples] == [r["metadata"]["task_id"] for r in ROWS]
        assert json.loads((out / "run.json").read_text())["source"]["generation"]["max_new_tokens"] == cc.NEW_TOKENS
    assert "exact_match" in capsys.readouterr().out
    assert main(["eval", "report", str(tmp_path / "run0"), "--out", str(tmp_path / "report.md")]) == 0
    assert "CrossCodeEval (exact match)" in (tmp_path / "report.md").read_text()

    bad = _write(tmp_path / "bad.jsonl", [ROWS[0], {k: v for k, v in ROWS[1].items() if k != "groundtruth"}])
    assert (
        main(["eval", "run", "--model", str(tiny_base_model), "--benchmark", str(bad), "--out", str(tmp_path / "bad")])
        != 0
    )
    assert "row 2 (project_cc_python/1): no 'groundtruth'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
