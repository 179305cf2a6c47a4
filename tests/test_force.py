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
        [
            "train",
            "pretrain",
            "--model",
            str(tiny_base_model),
            "--data",
            str(small_corpus),
            "--out",
            str(folder),
            *QUICK_TRAIN,
            "--force",
        ],
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
    assert (
        main(["model", "quantize", "--model", str(tiny_base_model), "--bits", "4", "--out", str(out), "--force"]) == 0
    )
    assert '"bits": 4' in (out / "config.json").read_text()


def test_the_advice_for_an_existing_output_works_when_followed(tiny_base_model, tmp_path, capsys):
    """Each refusal names what works: a folder where a file goes is not fixed by --force, and a
    user's folder is never offered --force."""
    folder = tmp_path / "model.gguf"
    folder.mkdir()
    export = ["model", "export-gguf", "--model", str(tiny_base_model), "--out", str(folder)]
    for argv in (export, [*export, "--force"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is a folder; give the name of a file to write" in err and "--force" not in err
    mine = users_folder(tmp_path)
    assert main(["model", "quantize", "--model", str(tiny_base_model), "--bits", "8", "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "was not written by dscoder" in err and "use --force" not in err
    made = tmp_path / "made"
    assert main(["model", "quantize", "--model", str(tiny_base_model), "--bits", "8", "--out", str(made)]) == 0
    assert main(["model", "quantize", "--model", str(tiny_base_model), "--bits", "8", "--out", str(made)]) == 2
    assert "already exists (use --force to replace it)" in capsys.readouterr().err
