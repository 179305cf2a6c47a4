"""Files and folders written whole or not at all, with ordinary permissions."""

import json
import os
import stat

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dscoder import artifacts
from dscoder.errors import UserError


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "results.jsonl"
    artifacts.write_text(path, "old\n")
    with pytest.raises(RuntimeError):
        with artifacts.output_file(path, force=True) as f:
            f.write("half of the new ")
            raise RuntimeError("killed")
    assert path.read_text() == "old\n" and leftovers(tmp_path) == []
    with pytest.raises(UserError, match="already exists"):
        with artifacts.output_file(path):
            pass
    with artifacts.output_file(path, force=True) as f:
        f.write("new\n")
    assert path.read_text() == "new\n" and leftovers(tmp_path) == []


def test_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        artifacts.write_json(tmp_path / "a.json", {"x": 1})
        with artifacts.output_dir(tmp_path / "folder") as out:
            artifacts.write_text(out / "b.txt", "b")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "folder" / "b.txt").stat().st_mode) == 0o644


def test_a_folder_is_replaced_only_once_the_new_one_is_complete(tmp_path):
    target = tmp_path / "model"
    with artifacts.output_dir(target) as out:
        artifacts.write_text(out / "weights", "v1")
    with pytest.raises(RuntimeError):
        with artifacts.output_dir(target, force=True) as out:
            artifacts.write_text(out / "weights", "v2 cut short")
            raise RuntimeError("killed")
    assert (target / "weights").read_text() == "v1" and leftovers(tmp_path) == []
    with pytest.raises(UserError, match="already exists"):
        with artifacts.output_dir(target):
            pass
    with artifacts.output_dir(target, force=True) as out:
        artifacts.write_text(out / "weights", "v2")
    assert (target / "weights").read_text() == "v2" and leftovers(tmp_path) == []


def test_arrays_tables_and_figures_round_trip(tmp_path):
    artifacts.write_array(tmp_path / "a.npy", np.arange(5))
    artifacts.write_arrays(tmp_path / "b.npz", x=np.ones(3), y=np.zeros(2))
    artifacts.write_table(tmp_path / "c.parquet", pa.table({"text": ["a", "b"]}))
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2, 3, 4]
    with np.load(tmp_path / "b.npz") as data:
        assert data["x"].tolist() == [1, 1, 1] and data["y"].tolist() == [0, 0]
    assert pq.read_table(tmp_path / "c.parquet").column("text").to_pylist() == ["a", "b"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    artifacts.write_figure(tmp_path / "d.png", fig)
    plt.close(fig)
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    assert leftovers(tmp_path) == []


def test_copy_tokenizer_can_end_sequences_with_another_token(tmp_path, trained_tokenizer_dir):
    artifacts.copy_tokenizer(trained_tokenizer_dir, tmp_path / "copy", eos_token="<|EOT|>")
    config = json.loads((tmp_path / "copy" / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|EOT|>"
    assert (tmp_path / "copy" / "tokenizer.json").read_bytes() == (
        trained_tokenizer_dir / "tokenizer.json"
    ).read_bytes()
    with pytest.raises(UserError, match="cannot read its tokenizer file tokenizer.json"):
        artifacts.copy_tokenizer(tmp_path / "nowhere", tmp_path / "other")
