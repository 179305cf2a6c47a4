"""`--force` replaces what dscoder wrote, never a user's own folder."""

from conftest import QUICK_TRAIN
from dscoder.cli import main


def users_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    return folder


def test_force_never_deletes_a_folder_dscoder_did_not_write(tiny_base_model, small_corpus, tmp_path, capsys):
    folder = users_folder(tmp_path)
    commands = [
        ["model", "quantize", "--model", str(tiny_base_model), "--bits", "8", "--out", str(folder), "--force"],
        ["train", "pretrain", "--model", str(tiny_base_model), "--data", str(small_corpus), "--out", str(folder),
         *QUICK_TRAIN, "--force"],
        ["data", "build", str(small_corpus.parent), "--out", str(folder), "--force"],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "was not written by dscoder" in err and len(err.strip().splitlines()) == 1, err
        assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_force_replaces_what_dscoder_wrote(tiny_base_model, tmp_path):
    out = tmp_path / "q"
    assert main(["model", "quantize", "--model", str(tiny_base_model), "--bits", "8", "--out", str(out)]) == 0
    assert main(["model", "quantize", "--model", str(tiny_base_model), "--bits", "4", "--out", str(out), "--force"]) == 0
    assert '"bits": 4' in (out / "config.json").read_text()
