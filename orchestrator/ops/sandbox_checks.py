"""The sandbox's checks for `converge doctor`: engine, image, orphans, loosened items."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from orchestrator.config import SandboxConfig
from orchestrator.errors import SandboxError
from orchestrator.ops.doctor import Check, DoctorContext, register_check
from orchestrator.sandbox.base import orphaned
from orchestrator.sandbox.docker_backend import DockerBackend, connect
from orchestrator.sandbox.image import image_present, resolve
from orchestrator.store import diskimage, worktrees
from orchestrator.store.worktrees import stale_worktrees


def _config(ctx: DoctorContext) -> SandboxConfig:
    return ctx.ws.config().sandbox if ctx.ws is not None else SandboxConfig()


@register_check("sandbox.engine")
def engine(ctx: DoctorContext) -> Check:
    """The backend named by the config, and whether its engine answers."""
    cfg = _config(ctx)
    if cfg.backend != "docker":
        return Check(
            "sandbox.engine",
            "missing",
            f"sandbox.backend = {cfg.backend!r} is not available",
            'set sandbox.backend = "docker"',
        )
    try:
        client = connect()
    except SandboxError as exc:
        detail, _, fix = str(exc).partition("; ")
        return Check("sandbox.engine", "missing", detail, fix or None)
    with contextlib.closing(client):
        return Check("sandbox.engine", "ready", f"docker {client.version().get('Version', '?')}")


@register_check("sandbox.image")
def image(ctx: DoctorContext) -> Check:
    """The base image of the current recipe (built offline on first use)."""
    spec = resolve(ctx.ws)
    try:
        client = connect()
    except SandboxError:
        return Check("sandbox.image", "missing", f"{spec.tag}: no engine to hold it", "start the engine first")
    with contextlib.closing(client):
        present = image_present(client, spec)
    if not present:
        return Check(
            "sandbox.image",
            "missing",
            f"{spec.tag} (recipe {spec.recipe_path}) not built yet",
            "run `converge sandbox image` (offline, seconds); `converge sandbox run` builds it too",
        )
    missing = [m for m in spec.mounts if not Path(m).exists()]
    if missing:
        return Check("sandbox.image", "missing", f"host toolchain paths gone: {', '.join(missing)}", "reinstall them")
    return Check("sandbox.image", "ready", f"{spec.tag}, toolchain {spec.python}")


@register_check("sandbox.orphans")
def orphans(ctx: DoctorContext) -> Check:
    """Containers and temporary worktrees left by crashed runs; removed with --clean."""
    try:
        client = connect()
    except SandboxError:
        return Check("sandbox.orphans", "warning", "engine not reachable: orphans not checked", "start the engine")
    with contextlib.closing(client):
        return _orphans(ctx, client)


def _orphans(ctx: DoctorContext, client: Any) -> Check:
    backend = DockerBackend(client)
    stale = stale_worktrees(ctx.ws) if ctx.ws is not None else []
    if ctx.clean:
        removed = backend.reap(None)
        for path, repo_dir in stale:
            worktrees.remove_worktree(repo_dir, path)
        ctx.cleaned += [f"container {cid}" for cid in removed] + [f"worktree {p}" for p, _ in stale]
        return Check("sandbox.orphans", "ready", f"removed {len(removed)} container(s), {len(stale)} worktree(s)")
    count = sum(
        1
        for c in client.containers.list(all=True, ignore_removed=True, filters={"label": ["converge.sandbox=1"]})
        if _dead(c)
    )
    if count or stale:
        return Check(
            "sandbox.orphans",
            "warning",
            f"{count} orphan container(s), {len(stale)} stale sandbox worktree(s)",
            "run `converge doctor --clean`",
        )
    return Check("sandbox.orphans", "ready", "none")


def _dead(container: object) -> bool:
    return orphaned(getattr(container, "labels", {}))


@register_check("sandbox.policy")
def loosened(ctx: DoctorContext) -> list[Check]:
    """Hardening items a config loosens, one line per repo, so nobody loosens silently."""
    cfg = _config(ctx)
    found = [
        Check(
            f"sandbox.allow.{repo}",
            "warning",
            f"repo {repo}: {', '.join(items)} (network during dependency setup only)",
            f"remove [sandbox.allow] {repo} from converge.toml to harden it again",
        )
        for repo, items in sorted(cfg.allow.items())
        if items
    ]
    return found or [Check("sandbox.policy", "ready", "fully hardened: nothing loosened")]


@register_check("sandbox.disk")
def disk(ctx: DoctorContext) -> Check:
    """The size limit of the tree a sandbox writes, and whether this machine can enforce it."""
    cfg = _config(ctx)
    size = diskimage.parse_size(cfg.disk)
    if size == 0:
        return Check("sandbox.disk", "warning", "no limit (sandbox.disk = 0)", 'set sandbox.disk, e.g. "4g"')
    why = diskimage.enforced()
    if why is not None:
        return Check("sandbox.disk", "warning", f"{cfg.disk} asked, not enforced: {why}", "run Converge as root")
    return Check("sandbox.disk", "ready", f"{cfg.disk} per sandbox tree (its own filesystem)")
