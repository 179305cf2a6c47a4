"""Reading source trees: skips are counted, text is never silently lost."""

import os
from collections import Counter

from dscoder.repo.languages import detect_language
from dscoder.texts import iter_files


def test_language_by_extension_name_and_shebang():
    assert detect_language("a/b/model.py") == "python"
    assert detect_language("Main.java") == "java"
    assert detect_language("x.HPP") == "cpp"
    assert detect_language("Makefile") == "makefile"
    assert detect_language("tool", "#!/usr/bin/env python3") == "python"
    assert detect_language("run", "#!/bin/bash -e") == "shell"
    assert detect_language("README") is None


def test_walk_counts_every_skip(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("import os\n")
    (repo / "pkg" / "b.py").write_bytes("x = 'ol\xe9'\n".encode("latin-1"))
    (repo / "data.bin").write_bytes(b"\x00" * 10)
    (repo / "image.py").write_bytes(b"\x89PNG\x00\x00")
    (repo / "big.py").write_text("x = 1\n" * 1000)
    (repo / "script").write_text("#!/bin/sh\necho hi\n")
    (repo / "node_modules").mkdir()
    (repo / "node_modules" / "dep.js").write_text("module.exports = 1\n")
    (tmp_path / "secret.py").write_text("KEY = 1\n")
    os.symlink(tmp_path / "secret.py", repo / "link.py")
    os.symlink(repo / "pkg" / "a.py", repo / "inside.py")

    skips = Counter()
    files = {f.path: f for f in iter_files([repo], skips, max_file_bytes=1000)}
    assert sorted(files) == ["inside.py", "pkg/a.py", "pkg/b.py", "script"]
    assert files["pkg/b.py"].text == "x = 'olé'\n"
    assert files["script"].language == "shell"
    assert skips == Counter(
        binary=1, too_large=1, symlink_outside=1, unknown_language=1, non_utf8_decoded_latin1=1, vendored_dir=1
    )


import io
import subprocess
import tarfile
import zipfile

from conftest import PYTHON_REPO, write_tree
from dscoder.repo.collect import CollectConfig, read_repository, repository_name

CFG = CollectConfig()


def test_tar_archive_strips_the_top_folder_and_refuses_unsafe_members(tmp_path):
    archive = tmp_path / "demo-main.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for rel, text in PYTHON_REPO.items():
            data = text.encode()
            info = tarfile.TarInfo(f"demo-main/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        evil = tarfile.TarInfo("demo-main/../../etc/evil.py")
        evil.size = 3
        tar.addfile(evil, io.BytesIO(b"x=1"))
        link = tarfile.TarInfo("demo-main/link.py")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    skips = Counter()
    repo = read_repository(archive, CFG, skips)
    assert repo.name == "demo-main"
    assert sorted(f.path for f in repo.files) == sorted(PYTHON_REPO)
    assert skips == Counter(unsafe_path=1, symlink=1)


def test_zip_archive(tmp_path):
    archive = tmp_path / "lib.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("lib/core.py", "def f():\n    return 1\n")
        z.writestr("lib/node_modules/dep/index.js", "module.exports = 1\n")
        z.writestr("lib/app.min.js", "var a=1;")
    skips = Counter()
    repo = read_repository(archive, CFG, skips)
    assert [f.path for f in repo.files] == ["core.py"]
    assert skips == Counter(vendored=1, minified=1)


def test_git_repository_reads_tracked_files_at_head(tmp_path):
    root = write_tree(tmp_path / "proj", {"a.py": "A = 1\n", "b.py": "B = 2\n"})
    git = ["git", "-C", str(root), "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "init"], check=True)
    (root / "a.py").write_text("A = 'edited, not committed'\n")
    (root / "untracked.py").write_text("U = 1\n")
    repo = read_repository(root, CFG, Counter())
    assert {f.path: f.text for f in repo.files} == {"a.py": "A = 1\n", "b.py": "B = 2\n"}


def test_unreadable_and_empty_repositories_are_counted(tmp_path):
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"\x1f\x8b this is not gzip")
    empty_git = tmp_path / "empty"
    empty_git.mkdir()
    subprocess.run(["git", "-C", str(empty_git), "init", "-q"], check=True)
    skips = Counter()
    assert read_repository(bad, CFG, skips) is None
    assert read_repository(empty_git, CFG, skips).files == []
    assert skips == Counter(unreadable_repository=1, empty_repository=1)


def test_repository_names():
    from pathlib import Path

    assert repository_name(Path("/x/flask-2.0.tar.gz")) == "flask-2.0"
    assert repository_name(Path("/x/repo/")) == "repo"
