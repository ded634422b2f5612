"""A dependency-free progress bar and a parallel map that reports through it."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor


class Progress:
    """Print ``desc: done/total (rate/s, eta)`` on one line, at most every ``every`` seconds."""

    def __init__(self, total: int, desc: str = "", stream=None, every: float = 0.5, enabled=True):
        self.total, self.desc, self.every = int(total), desc, every
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def update(self, n: int = 1):
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.every or self.done >= self.total):
            self._last = now
            elapsed = max(now - self.start, 1e-9)
            rate = self.done / elapsed
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.stream.write(f"\r{self.desc}: {self.done}/{self.total} ({rate:.1f}/s, eta {eta:.0f}s)")
            if self.done >= self.total:
                self.stream.write("\n")
            self.stream.flush()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def parallel_map(fn, items, workers: int | None = None, desc: str = "", progress: bool = True):
    """``[fn(x) for x in items]`` over a process pool, in order, with a progress bar.

    ``fn`` must be a module-level function. ``workers=1`` runs in this process (no pool).
    """
    items = list(items)
    workers = default_workers() if workers is None else max(1, int(workers))
    bar = Progress(len(items), desc, enabled=progress and len(items) > 0)
    if workers == 1 or len(items) <= 1:
        out = []
        for x in items:
            out.append(fn(x))
            bar.update()
        return out
    chunk = max(1, len(items) // (workers * 8))
    out = []
    # spawn, not fork: forking a process that has started TensorFlow's threads can deadlock.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for result in pool.map(fn, items, chunksize=chunk):
            out.append(result)
            bar.update()
    return out
