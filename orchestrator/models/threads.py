"""How many CPU threads a model gets: the cores nothing else is using, decided at each call.

llama.cpp's threads meet at a barrier after every operation, so one thread sharing its core with a busy
process holds all of them back; ``auto`` (the default of ``threads`` and ``threads_batch``) leaves the
cores of other runnable threads to them. A number in the config is used as is.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SAMPLES = 6
SAMPLE_GAP = 0.002  # seconds between samples: the whole look stays short beside a call
SHARE_THRESHOLD = 0.3  # another process busy less than this share of the time leaves its core to us
PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")


def usable_cores(cgroup: Path = CGROUP) -> int:
    """Cores this process may run on: its affinity, capped by a cgroup CPU quota (a container's --cpus)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _procs_running(proc: Path) -> int:
    for line in (proc / "stat").read_text().splitlines():
        if line.startswith("procs_running "):
            return int(line.split()[1])
    return 0


def _own_running(proc: Path) -> int:
    """Threads of this process that are runnable now (the one reading, and any llama.cpp worker spinning)."""
    running = 0
    for task in (proc / "self" / "task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended while we looked
        if stat[stat.rindex(")") + 2] == "R":
            running += 1
    return running


def others_busy(proc: Path = PROC, samples: int = SAMPLES) -> float:
    """Average number of other processes' threads that were runnable, over a few samples ~2 ms apart.

    ``procs_running`` counts the whole machine; when this process may use only some of its cores,
    the count is scaled to the share of them it may use.
    """
    try:
        counts = []
        for i in range(samples):
            if i:
                time.sleep(SAMPLE_GAP)
            counts.append(max(0, _procs_running(proc) - _own_running(proc)))
    except OSError:
        return 0.0  # no /proc (another OS): assume a quiet machine
    online = os.cpu_count() or 1
    return sum(counts) / len(counts) * min(1.0, usable_cores() / online)


def fit_threads(cores: int, busy: float) -> int:
    """Threads for ``cores`` usable cores while ``busy`` other threads want to run: one per free core, >= 1."""
    taken = math.ceil(max(0.0, busy - SHARE_THRESHOLD))
    return max(1, cores - taken)


@dataclass(frozen=True)
class ThreadCounts:
    """What llama.cpp is told: threads generating tokens and threads evaluating a prompt."""

    threads: int
    threads_batch: int


def decide(threads: int | str, threads_batch: int | str, proc: Path = PROC, samples: int = SAMPLES) -> ThreadCounts:
    """Counts for this call: numbers are kept, ``auto`` fits the cores free right now (looked at once).

    No fixed count wins both on a busy machine and a quiet one (on 2 cores beside a test suite, 2 threads
    generate much slower than 1; on a quiet machine 2 are faster), so ``auto`` counts the other runnable
    threads (``procs_running`` of /proc/stat, less this process's own) just before each call.
    """
    free = 1
    if not (isinstance(threads, int) and isinstance(threads_batch, int)):
        free = fit_threads(usable_cores(), others_busy(proc, samples))
    return ThreadCounts(
        threads=threads if isinstance(threads, int) else free,
        threads_batch=threads_batch if isinstance(threads_batch, int) else free,
    )


class Refit:
    """Called once per generated token: every ``every`` tokens, fits ``auto`` threads to the cores free then
    and hands changed counts to ``apply`` (a test suite that starts mid-answer takes its core back)."""

    def __init__(
        self, threads: int | str, threads_batch: int | str, apply: Callable[[ThreadCounts], None], every: int = 16
    ) -> None:
        self.threads, self.threads_batch = threads, threads_batch
        self.apply = apply
        self.every = every
        self.tokens = 0
        self.auto = not (isinstance(threads, int) and isinstance(threads_batch, int))

    def __call__(self, *_: object) -> bool:
        """A stopping criterion of llama-cpp-python that never stops: the per-token hook it offers."""
        self.tokens += 1
        if self.auto and self.tokens % self.every == 0:
            self.apply(decide(self.threads, self.threads_batch, samples=2))
        return False
