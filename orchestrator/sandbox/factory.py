"""Opening a sandbox: the backend ``sandbox.backend`` names, and the spec a candidate gets (image,
test environment, limits, labels).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from orchestrator.config import SandboxConfig
from orchestrator.errors import SandboxError
from orchestrator.sandbox.base import LABEL, Limits, Sandbox, SandboxBackend, SandboxSpec
from orchestrator.sandbox.docker_backend import DockerBackend
from orchestrator.sandbox.image import ImageSpec, resolve
from orchestrator.store.workspace import Workspace


def environment(image: ImageSpec, cfg: SandboxConfig) -> dict[str, str]:
    """The complete environment of sandbox commands: the recipe's, then the config's extras."""
    return {**image.env, **cfg.env}


def labels(ws: Workspace, repo: str, label: str) -> dict[str, str]:
    """Labels that let orphans be found and reaped (owner pid and host)."""
    return {
        LABEL: "1",
        "converge.workspace": str(ws.root),
        "converge.repo": repo,
        "converge.candidate": label,
        "converge.pid": str(os.getpid()),
        "converge.host": socket.gethostname(),
    }


def backend_for(cfg: SandboxConfig) -> SandboxBackend:
    """The backend ``sandbox.backend`` names; only Docker gives every guarantee."""
    if cfg.backend == "docker":
        return DockerBackend()
    raise SandboxError(
        f"sandbox.backend = {cfg.backend!r}: not available (bubblewrap does not give the same guarantees "
        'here: no pids/memory limits without root cgroups); set sandbox.backend = "docker" in converge.toml'
    )


@contextlib.contextmanager
def open_sandbox(
    ws: Workspace,
    repo: str,
    worktree: Path,
    *,
    label: str,
    backend: SandboxBackend | None = None,
    config: SandboxConfig | None = None,
) -> Iterator[Sandbox]:
    """A sandbox over ``worktree`` (a candidate of ``repo``), removed when the block ends."""
    cfg = config or ws.config().sandbox
    chosen = backend or backend_for(cfg)
    worktree = worktree.absolute()
    if not worktree.is_dir():
        raise SandboxError(f"{worktree}: candidate worktree does not exist")
    try:
        chosen.reap(ws.root)
    except SandboxError:
        if backend is None:
            chosen.close()
        raise
    try:
        spec = sandbox_spec(ws, repo, worktree, label, cfg, chosen)
        session = chosen.start(spec)
        try:
            yield Sandbox(session, spec)
        finally:
            session.close()
    finally:
        if backend is None:
            chosen.close()


def sandbox_spec(
    ws: Workspace,
    repo: str,
    worktree: Path,
    label: str,
    cfg: SandboxConfig,
    backend: SandboxBackend,
    requirements: list[str] | None = None,
) -> SandboxSpec:
    """The sandbox a candidate of ``repo`` gets over ``worktree`` now: image, test environment, limits.

    ``requirements``: the ones the worktree declares, when they are known without reading it.
    """
    image = resolve(ws)
    base = SandboxSpec(
        image=image,
        worktree=worktree.absolute(),
        env_dir=None,
        limits=Limits.from_config(cfg),
        labels=labels(ws, repo, label),
        environment=environment(image, cfg),
    )
    allow_network = "network-deps" in cfg.allow.get(repo, [])
    env_dir = backend.prepare_env(ws, repo, base, allow_network=allow_network, requirements=requirements)
    return replace(base, env_dir=env_dir)
