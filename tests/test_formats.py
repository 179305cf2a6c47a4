"""Golden strings for the shared DeepSeek-Coder formats: FIM, repository samples, chat."""

import pytest

from conftest import SHARED, need_shared
from dscoder import formats

DEFAULT_SYSTEM = (
    "You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek "
    "Company, and you only answer questions related to computer science. For politically sensitive "
    "questions, security and privacy issues, and other non-computer science questions, you will "
    "refuse to answer"
)


def test_special_token_strings_use_the_released_characters():
    assert formats.FIM_BEGIN == "<\uff5cfim\u2581begin\uff5c>"
    assert formats.FIM_HOLE == "<\uff5cfim\u2581hole\uff5c>"
    assert formats.FIM_END == "<\uff5cfim\u2581end\uff5c>"
    assert formats.BOS == "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
    assert formats.EOS == "<\uff5cend\u2581of\u2581sentence\uff5c>"
    assert formats.EOT == "<|EOT|>"  # ASCII bars
    assert [t.content for t in formats.ADDED_TOKENS if t.special] == [formats.BOS, formats.EOS]


def test_psm_prompt_is_the_released_layout():
    prompt = formats.fim_prompt("def f(x):\n    ", "\n    return y\n")
    assert prompt == "<｜fim▁begin｜>def f(x):\n    <｜fim▁hole｜>\n    return y\n<｜fim▁end｜>"


def test_spm_puts_the_suffix_first_and_the_middle_continues_the_prefix():
    doc = formats.fim_document("a = 1\n", "b = 2\n", "c = 3\n", mode="spm")
    assert doc == "<｜fim▁begin｜><｜fim▁hole｜>c = 3\n<｜fim▁end｜>a = 1\nb = 2\n"
    psm = formats.fim_document("a = 1\n", "b = 2\n", "c = 3\n", mode="psm")
    assert psm == "<｜fim▁begin｜>a = 1\n<｜fim▁hole｜>c = 3\n<｜fim▁end｜>b = 2\n"


def test_unknown_fim_mode_is_refused():
    with pytest.raises(ValueError, match="psm"):
        formats.fim_prompt("a", "b", mode="pms")


def test_repo_sample_heads_each_file_with_its_path():
    sample = formats.repo_sample([("utils.py", "import torch\n"), ("model.py", "class M:\n    pass")])
    assert sample == "#utils.py\nimport torch\n#model.py\nclass M:\n    pass\n"


def test_split_repo_sample_undoes_repo_sample_despite_comments():
    files = [("a.py", "# a comment\nx = 1\n#b.py is not a header here\n"), ("b.py", ""), ("c/d.py", "y = 2\n")]
    sample = formats.repo_sample(files)
    assert formats.split_repo_sample(sample, [p for p, _ in files]) == files
    with pytest.raises(ValueError, match="e.py"):
        formats.split_repo_sample(sample, ["a.py", "e.py"])


def test_repo_prompt_ends_at_the_cursor():
    prompt = formats.repo_prompt([("utils.py", "def load():\n    pass\n")], "main.py", "from utils import load\nlo")
    assert prompt == "#utils.py\ndef load():\n    pass\n#main.py\nfrom utils import load\nlo"


def test_chat_template_is_byte_identical_to_the_released_one():
    released = need_shared(SHARED / "reference" / "deepseek-coder-instruct.chat_template.jinja")
    assert formats.chat_template().encode("utf-8") == released.read_bytes()


def test_chat_without_system_uses_the_default_system_prompt():
    text = formats.render_chat([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text == formats.BOS + DEFAULT_SYSTEM + "\n### Instruction:\nhi\n### Response:\n"


def test_multi_turn_chat_with_system_message():
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Write hello world in C."},
        {"role": "assistant", "content": 'puts("hi");'},
        {"role": "user", "content": "Now in Go."},
    ]
    # The released template puts no newline after a system message: reproduced, not fixed.
    expected = (
        formats.BOS + "You are terse.### Instruction:\nWrite hello world in C.\n"
        '### Response:\nputs("hi");\n<|EOT|>\n### Instruction:\nNow in Go.\n'
    )
    assert formats.render_chat(messages) == expected
    assert formats.render_chat(messages, add_generation_prompt=True) == expected + "### Response:\n"


def test_chat_rejects_unknown_roles():
    with pytest.raises(ValueError, match="role"):
        formats.render_chat([{"role": "tool", "content": "x"}])
