"""The demo end to end on a small slice of this machine's Python code."""

import json

from dscoder.cli import main


def test_quickstart_builds_loads_and_completes_then_reuses_stages(capsys, tmp_path):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--corpus-mb", "2"]) == 0
    stdout, stderr = capsys.readouterr()
    assert "completion:" in stdout and "model-untrained" in stdout
    assert json.loads((out / "tokenizer" / "dscoder.json").read_text())["kind"] == "tokenizer"
    assert (out / "model-untrained" / "model.safetensors").is_file()
    weights = (out / "model-untrained" / "model.safetensors").stat().st_mtime_ns

    assert main(["quickstart", "--out", str(out), "--corpus-mb", "2"]) == 0
    stdout, stderr = capsys.readouterr()
    assert "reusing" in stderr and "completion:" in stdout
    assert (out / "model-untrained" / "model.safetensors").stat().st_mtime_ns == weights
