"""One repository through the per-file steps and into samples (data/steps.py)."""

from collections import Counter

from conftest import write_tree
from dscoder import formats
from dscoder.data.stats import Stats
from dscoder.data.steps import BuildConfig, process_repository
from dscoder.repo.collect import read_repository

DOCS = "Usage\n=====\n\nCall ``scale`` with a number and a factor to get their product back.\n"


def test_every_sample_heads_its_files_with_their_paths(tmp_path):
    repo = write_tree(
        tmp_path / "tool",
        {
            "docs/x.rst": DOCS,
            "tool/scale.py": "def scale(value, factor):\n    return value * factor\n",
            "tool/cli.py": "from tool.scale import scale\n\n\ndef main():\n    print(scale(2, 3))\n",
        },
    )
    samples, rejects = process_repository(
        read_repository(repo, BuildConfig().collect, Counter()), BuildConfig(), None, Stats()
    )
    assert rejects == []
    texts = {tuple(s["paths"]): s["text"] for s in samples}
    assert texts[("docs/x.rst",)] == formats.file_header("docs/x.rst") + DOCS == "#docs/x.rst\n" + DOCS
    assert texts[("tool/scale.py", "tool/cli.py")].startswith("#tool/scale.py\ndef scale(")
    for s in samples:  # every sample splits back into its files by their headers
        assert [path for path, _ in formats.split_repo_sample(s["text"], s["paths"])] == s["paths"]
