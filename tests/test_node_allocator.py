"""The learner's allocator keeps freed memory: a block freed and allocated again is not faulted in anew."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import resource, sys
import numpy as np
from ploutos.node.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults_of_a_reused_block():
    block = np.ones(2**23)  # 64 MiB: above glibc's mmap threshold by default
    del block
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(2**23)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_reused_block()
print(faults_of_a_reused_block())
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def test_a_freed_block_is_reused_without_page_faults():
    default, kept = _faults("default"), _faults("keep")
    assert default >= 16, f"glibc's default should fault a fresh 64 MiB block in, saw {default} faults"
    assert kept <= default // 8, f"{kept} page faults with freed memory kept, {default} without"
