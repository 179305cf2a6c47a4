import os
import platform
import subprocess
import sys

import pytest

from dscoder import allocator

PROBE = """
import resource
import torch
from dscoder import allocator
took = allocator.keep_freed_memory()
head = torch.nn.Linear(128, 8000)
x, y = torch.randn(2048, 128), torch.randint(0, 8000, (2048,))
def step():  # a language-model head's training step: (2048, 8000) logits, 64 MiB, made and freed
    torch.nn.functional.cross_entropy(head(x), y).backward()
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(env: dict) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=os.environ | env
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    took, kept = _page_faults({})
    off, default = _page_faults({allocator.DISABLE_ENV: "0"})
    assert (took, off) == ("True", "False")
    # glibc's defaults fault every large block in again each step (about 1.3M faults here)
    assert default > 200_000
    assert kept < default / 5
