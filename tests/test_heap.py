"""heap.trim hands the pages glibc keeps after frees back to the system (the PPO loop calls it between phases)."""

import subprocess
import sys

import pytest

from rlhf_recipes.train import heap

# In a fresh process, so that the test's own heap is what it measures: a freed 16 MiB block raises glibc's mmap
# threshold, the 2 MiB blocks after it come from the heap, and the last one stays allocated so that free() cannot
# shrink the heap from its top. What is left resident after the frees is what trim() gives back.
PROGRAM = """
import torch
from rlhf_recipes.train import heap

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

del_me = torch.ones(16 * 2**20 // 4)
del del_me
blocks = [torch.ones(2 * 2**20 // 4) for _ in range(200)]
last = blocks[-1]
del blocks
before = rss()
trimmed = heap.trim()
print(before, rss(), trimmed)
"""


@pytest.mark.skipif(heap._libc() is None, reason="no glibc: trim() is a no-op there")
def test_trim_gives_freed_heap_pages_back():
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True).stdout.split()
    before, after, trimmed = float(out[0]), float(out[1]), out[2] == "True"
    assert trimmed
    assert before - after > 300, f"RSS {before:.0f} -> {after:.0f} MiB: the ~400 MiB freed stayed resident"


def test_trim_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(heap, "_libc", lambda: None)
    assert heap.trim() is False
