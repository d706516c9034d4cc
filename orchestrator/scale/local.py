"""The local executor: jobs on a few threads of this process, as many as the machine can hold.

Threads, not processes: jobs share this process's resident models (one copy of the weights)
and spend their time waiting on sandboxes and model calls, not holding the GIL. The number
of workers is bounded by the cores and by how many job sandboxes fit in the memory available
now (``bounded_workers``). Workers are daemon threads, so an interrupted caller exits at
once instead of waiting for the running jobs; what they leave behind is the caller's to
clear (an eval's resume does).
"""

from __future__ import annotations

import os
import queue
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from orchestrator.errors import UsageError

J = TypeVar("J")
R = TypeVar("R")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_Item = tuple[Future[Any], Callable[[Any], Any], Any]


def parse_size(text: str) -> int:
    """``"2g"`` (Docker's notation) -> bytes."""
    m = _SIZE.match(text)
    if m is None:
        raise UsageError(f"{text!r}: not a size; write it like 512m or 2g")
    return int(float(m[1]) * _UNITS[m[2].lower()])


def available_memory() -> int:
    """Bytes of RAM available now (MemAvailable), or all physical pages where /proc is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def bounded_workers(requested: int, memory_per_job: int, cores: int | None = None, memory: int | None = None) -> int:
    """``requested``, but no more than the cores and the jobs whose memory limit fits in what is available."""
    if requested < 1:
        raise UsageError(f"--parallel {requested}: must be at least 1")
    cores = cores or os.cpu_count() or 1
    memory = available_memory() if memory is None else memory
    by_memory = memory // memory_per_job if memory_per_job > 0 else requested
    return max(1, min(requested, cores, by_memory))


class LocalExecutor:
    """Runs submitted jobs on ``workers`` daemon threads, first come first served."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise UsageError(f"workers {workers}: must be at least 1")
        self._workers = workers
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"scale-local-{n}", daemon=True) for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> int:
        return self._workers

    def submit(self, fn: Callable[[J], R], job: J) -> Future[R]:
        """Queue ``fn(job)``."""
        if self._closed:
            raise RuntimeError("executor is closed")
        future: Future[R] = Future()
        self._queue.put((future, fn, job))
        return future

    def close(self, wait: bool = True) -> None:
        """Cancel what has not started; with ``wait``, join the workers once the running jobs end."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(wait=exc is None)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, job = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(job)
            except BaseException as exc:  # the job's failure belongs to its future, not to this thread
                future.set_exception(exc)
            else:
                future.set_result(result)
