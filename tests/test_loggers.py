"""`--logger tensorboard|wandb`: the values of metrics.jsonl, at the same steps, where people watch
a run; a missing package is refused before the run folder exists."""

import json
import shutil
import struct
import sys

import pytest

from conftest import QUICK_TRAIN
from dscoder import config as config_lib
from dscoder.cli import main
from dscoder.errors import UserError
from dscoder.train import loggers, recipes, settings


def pretrain(run, corpus, tokenizer, *flags):
    return main(
        [
            "train",
            "pretrain",
            "--data",
            str(corpus),
            "--tokenizer",
            str(tokenizer),
            "--preset",
            "tiny",
            "--out",
            str(run),
            *QUICK_TRAIN,
            "--max-steps",
            "8",
            *flags,
        ]
    )


def expected_charts(run) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as charts: {tag: [(step, value), ...]}."""
    charts: dict[str, list] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key != "step":
                charts.setdefault(loggers.TAGS[key], []).append((record["step"], value))
    return charts


def tensorboard_charts(folder) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows for the event files in `folder` (restarts purged as it does)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_same_charts(shown, expected, rel):
    assert sorted(shown) == sorted(expected)
    for tag, points in expected.items():
        assert [step for step, _ in shown[tag]] == [step for step, _ in points], tag
        assert [value for _, value in shown[tag]] == pytest.approx([value for _, value in points], rel=rel), tag


def test_tensorboard_shows_the_metrics_and_a_resume_replaces_the_steps_it_recomputes(
    small_corpus, trained_tokenizer_dir, tmp_path
):
    run = tmp_path / "run"
    assert pretrain(run, small_corpus, trained_tokenizer_dir, "--logger", "tensorboard") == 0
    expected = expected_charts(run)
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm", "train/tokens", "eval/loss"} == set(
        expected
    )
    assert [step for step, _ in expected["eval/loss"]] == [6, 8]
    assert_same_charts(tensorboard_charts(run / "tensorboard"), expected, rel=1e-6)  # float32 in the event file

    # stopped after the checkpoint of step 4 (as if killed) and resumed: steps 5-8 are logged again
    shutil.rmtree(run / "checkpoints" / "step-0000008")
    shutil.rmtree(run / "final")
    assert pretrain(run, small_corpus, trained_tokenizer_dir, "--logger", "tensorboard", "--resume") == 0
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert [step for step, _ in expected_charts(run)["train/loss"]] == list(range(1, 9))
    assert_same_charts(tensorboard_charts(run / "tensorboard"), expected_charts(run), rel=1e-6)


def wandb_records(path):
    """The records of a W&B run file (`run-ID.wandb`: LevelDB's log format, 32 KiB blocks of
    chunks with a 7-byte header, after a 7-byte file header), parsed with wandb's own protobuf."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunk, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No W&B settings of the machine's user; W&B's own files in tmp_path."""
    for name in (
        "WANDB_MODE",
        "WANDB_DIR",
        "WANDB_PROJECT",
        "WANDB_NAME",
        "WANDB_RUN_ID",
        "WANDB_RESUME",
        "WANDB_API_KEY",
        "WANDB_CONSOLE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))


def offline_run(run):
    (folder,) = (run / "wandb").glob("offline-run-*")
    (file,) = folder.glob("run-*.wandb")
    records = wandb_records(file)
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            history[r.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
    (start,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    (end,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    return start, history, end


def test_wandb_keeps_an_offline_run_with_the_metrics_and_the_settings(
    small_corpus, trained_tokenizer_dir, tmp_path, wandb_env
):
    run = tmp_path / "run"
    assert pretrain(run, small_corpus, trained_tokenizer_dir, "--logger", "wandb") == 0
    start, history, end = offline_run(run)
    assert (start.project, start.display_name, end.exit_code) == ("dscoder", "run", 0)
    config = {u.key: json.loads(u.value_json) for u in start.config.update if u.key != "_wandb"}
    assert config == json.loads((run / "config.json").read_text())
    assert config["loop"]["logger"] == "wandb"
    expected = expected_charts(run)
    shown = {}
    for step, values in sorted(history.items()):
        for tag, value in values.items():
            shown.setdefault(tag, []).append((step, value))
    assert_same_charts(shown, expected, rel=1e-12)
    assert [step for step, _ in shown["eval/loss"]] == [6, 8]


def test_a_run_that_stops_on_an_error_ends_its_wandb_run_as_failed(
    small_corpus, trained_tokenizer_dir, tmp_path, wandb_env, monkeypatch, capsys
):
    import torch
    import wandb

    from dscoder.train.loop import Trainer

    step = Trainer.train_step

    def out_of_memory_at_step_4(self):
        if self.step == 3:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", out_of_memory_at_step_4)
    run = tmp_path / "run"
    assert pretrain(run, small_corpus, trained_tokenizer_dir, "--logger", "wandb") == 2
    assert "out of memory" in capsys.readouterr().err
    _, history, end = offline_run(run)
    assert end.exit_code == 1 and sorted(history) == [1, 2, 3]
    assert wandb.run is None  # finished: the next run in this process starts a new one


def test_wandb_mode_set_by_the_user_wins(tmp_path, wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = loggers.start("wandb", tmp_path, 0)
    logger.log({"step": 1, "loss": 2.0})
    logger.close()
    assert not list(tmp_path.rglob("offline-run-*"))


@pytest.mark.parametrize(
    "kind, environ, message",
    [
        ("tensorboard", {}, "--logger tensorboard needs the tensorboard package (pip install tensorboard)"),
        ("wandb", {}, "--logger wandb needs the wandb package (pip install wandb)"),
        (
            "wandb",
            {"WANDB_MODE": "ofline"},
            "--logger wandb: WANDB_MODE='ofline' is not one of offline, online, disabled, dryrun, run, shared",
        ),
    ],
)
def test_a_logger_that_cannot_work_is_refused_before_the_run_folder_exists(
    kind, environ, message, small_corpus, trained_tokenizer_dir, tmp_path, monkeypatch, capsys
):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    if not environ:
        monkeypatch.setitem(sys.modules, kind, None)  # `import KIND` fails as if not installed
    run = tmp_path / "run"
    assert pretrain(run, small_corpus, trained_tokenizer_dir, "--logger", kind) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"dscoder: error: {message}"]
    assert not run.exists()


def test_a_run_resumes_with_another_logger(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config_lib.to_dict(settings.resolve("instruct", None, {}))))
    recipes.check_run(run, settings.resolve("instruct", None, {"loop.logger": "tensorboard"}), resume=True, force=False)
    with pytest.raises(UserError, match="other settings"):
        recipes.check_run(run, settings.resolve("instruct", None, {"loop.batch_size": 2}), resume=True, force=False)
