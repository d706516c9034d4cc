"""Choosing the executor: the one ``[scale]`` in converge.toml names, for every caller alike.

    with closing(executor_for(ws, workers=4)) as ex:   # candidates of a step, trials of an eval
        futures = [ex.submit(fn, job) for job in jobs]

``engine = "local"`` (the default): threads of this process, as many as asked for but no more
than the cores and the sandboxes that fit in memory; they share this process's resident models.
``engine = "ray"``: tasks on the Ray cluster at ``address``, which carry what they need.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from orchestrator.scale.base import Executor
from orchestrator.scale.local import LocalExecutor, bounded_workers, parse_size
from orchestrator.store.workspace import Workspace

J = TypeVar("J")
R = TypeVar("R")


def executor_for(ws: Workspace, workers: int | None = None, *, local: bool = False) -> Executor:
    """The executor ``[scale]`` names; ``workers``: how many jobs at once the caller wants (local engine).
    ``local``: this machine's whatever ``[scale]`` says (jobs that hold live objects)."""
    cfg = ws.config()
    if cfg.scale.engine == "ray" and not local:
        from orchestrator.scale.ray_executor import RayExecutor  # noqa: PLC0415  lazy: importing ray takes seconds

        scale = cfg.scale
        return RayExecutor(
            scale.address, resources=scale.resources, retries=scale.retries, connect_timeout=scale.connect_timeout
        )
    wanted = workers or (cfg.scale.workers if cfg.scale.workers != "auto" else os.cpu_count() or 1)
    return LocalExecutor(bounded_workers(wanted, parse_size(cfg.sandbox.memory)))


def is_remote(executor: Executor) -> bool:
    """Whether ``executor``'s jobs run elsewhere (they must carry their commits, not read the workspace)."""
    return bool(getattr(executor, "remote", False))


class Deferred:
    """The executor ``[scale]`` names, made on first use: a run that never needs one never starts threads
    or joins a cluster. Closing closes what was made."""

    def __init__(self, ws: Workspace, workers: int | None = None) -> None:
        self._ws = ws
        self._wanted = workers
        self._made: Executor | None = None

    @property
    def remote(self) -> bool:
        return (self._made is not None and is_remote(self._made)) or self._ws.config().scale.engine == "ray"

    @property
    def workers(self) -> int:
        return self._get().workers

    def submit(self, fn: Callable[[J], R], job: J) -> Future[R]:
        return self._get().submit(fn, job)

    def close(self, wait: bool = True) -> None:
        if self._made is not None:
            self._made.close(wait)

    def _get(self) -> Executor:
        if self._made is None:
            self._made = executor_for(self._ws, self._wanted)
        return self._made
