"""The executor contract: submit a typed job, get a future of its typed result.

A future is ``concurrent.futures.Future``: what a thread pool returns, and what a Ray
``ObjectRef.future()`` gives, so callers wait with ``concurrent.futures.as_completed``
whatever runs the jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol, TypeVar

J = TypeVar("J")
R = TypeVar("R")


class Executor(Protocol):
    """Runs jobs somewhere, at most ``workers`` at a time."""

    @property
    def workers(self) -> int:
        """How many jobs run at once."""
        ...

    def submit(self, fn: Callable[[J], R], job: J) -> Future[R]:
        """Queue ``fn(job)``; its future holds the result, or the exception it raised."""
        ...

    def close(self, wait: bool = True) -> None:
        """Stop taking jobs; cancel the queued ones; with ``wait``, let the running ones finish first."""
        ...
