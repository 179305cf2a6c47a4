"""`dscoder experiment`: each ablation end to end on a small corpus with a few training steps
(the figures mean nothing at this size; the report's shape, intervals, verdicts, resuming and
the refusals do), and the statistics on known data."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from conftest import STDLIB, write_tree
from dscoder.cli import main
from dscoder.config import apply_overrides
from dscoder.data.build import build
from dscoder.data.steps import BuildConfig
from dscoder.errors import UserError
from dscoder.experiment import common, extend, fim_rate, repo_level
from dscoder.experiment.common import ExperimentConfig, interval, verdict

PACKAGES = (
    "json",
    "wsgiref",
    "xmlrpc",
    "sqlite3",
    "concurrent",
    "dbm",
    "curses",
    "zoneinfo",
    "tomllib",
    "re",
    "collections",
    "html",
)
CFG = ExperimentConfig(minutes=1, vocab_size=400, seq_len=64, batch_size=2, eval_items=50, fim_max_chars=300)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    for name in PACKAGES:
        shutil.copytree(STDLIB / name, root / "src" / name, ignore=shutil.ignore_patterns("__pycache__", "test*"))
    build(
        root / "corpus", sorted((root / "src").iterdir()), [], [], apply_overrides(BuildConfig(), {"run.workers": "1"})
    )
    return root / "corpus"


@pytest.fixture
def few_steps(monkeypatch):
    """Two optimizer steps per variant instead of a timed plan."""
    monkeypatch.setattr(common, "plan_steps", lambda out, cfg, corpus: 2)


def check_report(out, data, plot):
    assert (out / "report.md").is_file() and (out / plot).is_file()
    saved = json.loads((out / "report.json").read_text())
    assert saved["expectations"] and len(saved["expectations"]) == len(data["expectations"])
    for e in data["expectations"]:
        mean, low, high = e["difference"]
        assert low <= mean <= high
        assert e["verdict"] in (
            "reproduced",
            "not reproduced (the opposite direction)",
            "not distinguishable from noise at this budget",
        )
        assert e["verdict"] in (out / "report.md").read_text()


@pytest.mark.slow
def test_fim_rate_end_to_end_and_resumed(small_corpus, tmp_path, few_steps, monkeypatch):
    out = tmp_path / "fim"
    data = fim_rate.run(out, CFG, small_corpus)
    check_report(out, data, "fim_rate.png")
    assert set(data["figures"]) == set(fim_rate.VARIANTS)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(f"{v}-s0" for v in fim_rate.VARIANTS)
    for figures in data["figures"].values():
        assert 0 <= figures["exact_match"][1] <= figures["exact_match"][2] <= 1
    # Run again: every finished stage is kept, nothing is trained or scored again.
    from dscoder.train import recipes

    pretrain, evaluate = recipes.pretrain, fim_rate._evaluate
    monkeypatch.setattr(recipes, "pretrain", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr(fim_rate, "_evaluate", lambda *a, **k: pytest.fail("scored again"))
    again = json.loads(json.dumps(fim_rate.run(out, CFG, small_corpus)["expectations"]))
    assert again == json.loads((out / "report.json").read_text())["expectations"]
    # Other settings would mix runs in one report: refused, the report kept.
    report = (out / "report.md").read_text()
    with pytest.raises(UserError, match=r"made with --minutes 1, not 2; give the same settings"):
        fim_rate.run(out, replace(CFG, minutes=2), small_corpus)
    with pytest.raises(UserError, match=r"made with experiment fim-rate, not extend"):
        extend.run(out, CFG, small_corpus)
    assert (out / "report.md").read_text() == report
    # More seeds later: only the new seed is trained, and the figures are scored over both.
    monkeypatch.setattr(recipes, "pretrain", pretrain)
    monkeypatch.setattr(fim_rate, "_evaluate", evaluate)
    two = fim_rate.run(out, replace(CFG, seeds=2), small_corpus)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        f"{v}-s{s}" for v in fim_rate.VARIANTS for s in (0, 1)
    )
    assert two["seeds"] == 2 and "over held-out items and seeds" in (out / "report.md").read_text()


@pytest.mark.slow
def test_repo_level_end_to_end(small_corpus, tmp_path, few_steps):
    out = tmp_path / "repo"
    data = repo_level.run(out, replace(CFG, seq_len=128), small_corpus)
    check_report(out, data, "repo_level.png")
    assert data["repositories"] >= repo_level.MIN_REPOSITORIES and data["cases"] >= repo_level.MIN_CASES
    texts = {}
    for variant in ("corpus", "corpus-shuffled", "corpus-files"):  # the same files, arranged three ways
        from dscoder import formats
        from dscoder.data import corpus as corpus_lib

        rows = corpus_lib.iter_rows(out / variant, ("text", "paths"))
        texts[variant] = sorted(t for r in rows for t in formats.split_repo_sample(r["text"], r["paths"]))
    assert texts["corpus"] == texts["corpus-shuffled"] == texts["corpus-files"]


def test_extend_end_to_end(small_corpus, tmp_path, few_steps):
    out = tmp_path / "extend"
    cfg = replace(CFG, seq_len=128)  # pretrained at 32 tokens, scored at 128
    data = extend.run(out, cfg, small_corpus)
    check_report(out, data, "extend.png")
    assert data["trained_length"] * extend.FACTOR == data["scored_length"] == 128
    assert set(data["figures"]) == set(extend.MODELS) and all(
        len(b) == extend.BUCKETS for b in data["figures"].values()
    )
    scaled = json.loads((out / "runs" / "scaled-s0" / "config.json").read_text())
    assert scaled["rope_scaling"] == {"type": "linear", "factor": 4.0}


def test_bad_input_is_refused_before_any_work(small_corpus, tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["experiment", "fim-rate", "--out", str(out), "--minutes", "0.5"]) == 2
    assert "--minutes 0.5: at least 1 minute" in capsys.readouterr().err and not out.exists()
    assert main(["experiment", "extend", "--out", str(out), "--corpus", str(tmp_path)]) == 2
    assert "not a corpus folder" in capsys.readouterr().err and not out.exists()
    assert main(["experiment", "repo-level", "--out", str(out), "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err and not out.exists()
    assert main(["experiment", "repo-level", "--out", str(out), "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err and not out.exists()


def test_too_few_held_out_repositories_say_how_many(tmp_path, capsys):
    for name in ("json", "wsgiref", "sqlite3"):
        shutil.copytree(STDLIB / name, tmp_path / "src" / name, ignore=shutil.ignore_patterns("__pycache__"))
    build(
        tmp_path / "corpus",
        sorted((tmp_path / "src").iterdir()),
        [],
        [],
        apply_overrides(BuildConfig(), {"run.workers": "1"}),
    )
    assert (
        main(
            [
                "experiment",
                "repo-level",
                "--out",
                str(tmp_path / "out"),
                "--corpus",
                str(tmp_path / "corpus"),
                "--minutes",
                "2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "3 repositories; at least 9 are needed (8 held out and one to train on)" in err and "Traceback" not in err


def test_intervals_and_verdicts_on_known_data():
    rng = np.random.default_rng(0)
    mean, low, high = interval(rng.normal(1.0, 0.5, size=400))
    assert low < 1.0 < high and high - low < 0.15 and low <= mean <= high
    assert verdict(interval(rng.normal(0.5, 0.5, size=400))) == "reproduced"
    assert verdict(interval(rng.normal(-0.5, 0.5, size=400))) == "not reproduced (the opposite direction)"
    assert verdict(interval(rng.normal(0.0, 0.5, size=20))) == "not distinguishable from noise at this budget"
    one, two = interval(np.ones((1, 50))), interval(np.stack([np.zeros(50), np.ones(50) * 2]))
    assert one == (1.0, 1.0, 1.0) and two[0] == 1.0 and two[1] == 0.0 and two[2] == 2.0  # seeds resampled too
    weighted = interval(np.array([[1.0, 3.0]]), weights=np.array([[3.0, 1.0]]))
    assert weighted[0] == pytest.approx(1.5)


def test_the_step_plan_is_timed_on_the_variants_preset(tmp_path, monkeypatch):
    """A larger --preset takes longer per step: the probe that turns --minutes into steps must train it."""
    from dscoder.train import recipes

    seen = []

    def probe(run, settings, tokenizer, preset, *args, **kwargs):
        seen.append(preset)
        raise RuntimeError("probe stopped here")

    monkeypatch.setattr(recipes, "pretrain", probe)
    with pytest.raises(RuntimeError, match="probe stopped"):
        common.plan_steps(tmp_path, replace(CFG, preset="small"), tmp_path / "corpus")
    assert seen == ["small"]


def test_every_setting_is_checked_before_the_corpus_is_built(small_corpus, tmp_path, capsys):
    for flag, value, needle in (
        ("--seq-len", "100000", "--seq-len 100000 exceeds the model's 1024 positions"),
        ("--seq-len", "16", "--seq-len 16: FIM pieces fitted to windows need at least 32"),
    ):
        code = main(
            ["experiment", "fim-rate", "--corpus", str(small_corpus), "--out", str(tmp_path / "x"), flag, value]
        )
        assert code == 2 and needle in capsys.readouterr().err
        assert not (tmp_path / "x").exists()


def test_held_out_data_too_small_for_the_experiment_is_refused_before_any_work(tmp_path, capsys):
    """A corpus whose held-out repositories cannot give the experiment its cases (FIM holes,
    repositories with two Python files, long windows) is refused before the corpus split and
    tokenizer are made."""
    for k in range(9):
        body = "".join(f"def scale_{k}_{i}(value):\n    return value * {i} + {k}\n\n\n" for i in range(3))
        write_tree(tmp_path / "src" / f"r{k}", {"only.py": body})
    build(
        tmp_path / "corpus",
        sorted((tmp_path / "src").iterdir()),
        [],
        [],
        apply_overrides(BuildConfig(), {"run.workers": "1"}),
    )
    for experiment, needle in (
        ("fim-rate", "code lines to make FIM holes from; at least 50 are needed"),
        ("repo-level", "repositories with two or more Python files; this experiment needs at least 8"),
        ("extend", "at most 0 stretches of 513 tokens in one file; at least 16 are needed"),
    ):
        out = tmp_path / experiment
        code = main(["experiment", experiment, "--corpus", str(tmp_path / "corpus"), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err, err
        assert not out.exists()


def test_a_folder_refused_before_training_takes_the_corrected_command(small_corpus, tmp_path):
    out = tmp_path / "fim"
    common.prepare(out, "fim-rate", replace(CFG, minutes=8), small_corpus, min_held_out=1)
    (out / "stages" / "plan.json").write_text('{"steps": 99}')  # planned for 8 minutes, then stopped
    tokenizer = (out / "tokenizer" / "tokenizer.json").stat().st_mtime_ns
    common.prepare(out, "fim-rate", CFG, small_corpus, min_held_out=1)  # minutes 1: accepted, nothing trained yet
    assert json.loads((out / "settings.json").read_text())["minutes"] == 1
    assert not (out / "stages" / "plan.json").exists()  # planned again for the new budget
    assert (out / "tokenizer" / "tokenizer.json").stat().st_mtime_ns == tokenizer  # the corpus and tokenizer kept
