"""Reading source trees: skips are counted, text is never silently lost."""

import os
from collections import Counter

from dscoder.data.languages import detect_language
from dscoder.data.sources import iter_files


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
    assert skips == Counter(binary=1, too_large=1, symlink_outside=1, unknown_language=1,
                            non_utf8_decoded_latin1=1)
