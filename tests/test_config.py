"""Defaults, TOML and `--section.key=value` flags, with clear errors."""

from dataclasses import dataclass, field

import pytest

from dscoder import config
from dscoder.errors import UserError


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.95)


@dataclass(frozen=True)
class Root:
    seed: int = 0
    mode: str = "psm"
    compile: bool = False
    limit: int | None = None
    optim: Optim = field(default_factory=Optim)


def test_toml_then_flags_win(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("seed = 3\n[optim]\nlr = 0.5\nbetas = [0.8, 0.9]\n")
    cfg = config.load(Root(), path, config.parse_overrides(["--optim.lr=0.25", "--optim.betas", "0.7,0.8"]))
    assert cfg == Root(seed=3, optim=Optim(lr=0.25, betas=(0.7, 0.8)))


def test_optional_values_and_lists_from_flags():
    cfg = config.apply_overrides(Root(), {"limit": "7", "optim.betas": "0.5,0.6"})
    assert cfg.limit == 7 and cfg.optim.betas == (0.5, 0.6)
    assert config.apply_overrides(cfg, {"limit": "none"}).limit is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sed": "1"}, "unknown setting 'sed'"),
        ({"optim.lrr": "1"}, "unknown setting 'optim.lrr'"),
        ({"seed": "1.5"}, "seed: expected int"),
        ({"compile": "maybe"}, "compile: expected true or false"),
        ({"optim": "1"}, "optim: expected a section"),
    ],
)
def test_bad_settings_name_the_field(overrides, message):
    with pytest.raises(UserError, match=message):
        config.apply_overrides(Root(), overrides)


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = = 1")
    with pytest.raises(UserError, match="not valid TOML"):
        config.load(Root(), bad)
    with pytest.raises(UserError, match="not found"):
        config.load(Root(), tmp_path / "none.toml")


def test_flag_parsing():
    assert config.parse_overrides(["--a.b=1", "--c.d", "2"]) == {"a.b": "1", "c.d": "2"}
    with pytest.raises(UserError, match="needs a value"):
        config.parse_overrides(["--a.b"])
    with pytest.raises(UserError, match="unrecognized"):
        config.parse_overrides(["stray"])


def test_shipped_training_configs_resolve():
    from pathlib import Path

    from dscoder.train.settings import resolve

    stages = {"pretrain-1.3b": "pretrain", "extend-16k": "extend", "instruct": "instruct"}
    folder = Path(__file__).resolve().parents[1] / "configs"
    assert sorted(p.stem for p in folder.glob("*.toml")) == sorted(stages)
    for name, stage in stages.items():
        cfg = resolve(stage, folder / f"{name}.toml", {})
        assert cfg.stage == stage
    assert resolve("pretrain", folder / "pretrain-1.3b.toml", {}).data.seq_len == 4096


def test_a_whole_number_setting_refuses_a_fraction(tmp_path):
    from dscoder.errors import UserError
    from dscoder.train.settings import resolve

    toml = tmp_path / "t.toml"
    toml.write_text("[loop]\nbatch_size = 1.5\n")
    with pytest.raises(UserError, match="loop.batch_size: expected int, got 1.5"):
        resolve("pretrain", toml, {})
    toml.write_text("[loop]\nbatch_size = 4.0\n")
    assert resolve("pretrain", toml, {}).loop.batch_size == 4
