"""One machine's memory shared by several training processes (the protocol's one-thread lanes): their
largest forward and backward passes take turns.

A LoRA fine-tune of SmolLM2-135M on Yelp's ~1300-token prompts holds ~17 GB at its peak, mostly eager
attention's scores and their gradients; two lanes at that peak at once would exceed a 24 GB machine,
and beside the other lane and a CI run the kernel's OOM killer ended one (stop 35). With
RECALL_MEMORY_LOCK set to a file path that those processes share, a pass whose attention alone would
take more than a quarter of the machine's memory holds an exclusive lock on that file (flock) while it
runs; smaller passes never wait. Unset: no lock. The lock
changes when a pass runs, never what it computes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

LOCK_ENV = "RECALL_MEMORY_LOCK"
# Eager attention keeps, per layer and head, float32 scores, probabilities and their dropout or gradient.
BYTES_PER_CELL = 3 * 4


def total_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def attention_bytes(rows: int, width: int, layers: int, heads: int) -> int:
    """What a forward and backward pass's attention holds at once: (rows, heads, width, width) per layer."""
    return rows * width * width * layers * heads * BYTES_PER_CELL


@contextlib.contextmanager
def large_pass(rows: int, width: int, layers: int, heads: int) -> Iterator[None]:
    """Hold the RECALL_MEMORY_LOCK file's lock while a pass this large runs, if it is set and the pass is
    larger than a quarter of the machine's memory; else run at once."""
    path = os.environ.get(LOCK_ENV)
    if not path or attention_bytes(rows, width, layers, heads) <= total_memory() // 4:
        yield
        return
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the pass raises
        yield
