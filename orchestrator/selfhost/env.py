"""An environment running one commit of Converge: a venv over this Python whose path holds the commit's
exported source first and this environment's site-packages second — no network, no build step.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

from orchestrator.errors import ConflictError, VerificationFailed
from orchestrator.store import changesets
from orchestrator.store.storage import atomic_write, atomic_write_json
from orchestrator.store.workspace import Workspace


def _deps_site() -> Path:
    """The site-packages that holds Converge's dependencies (shared by every installation, read-only)."""
    import typer  # noqa: PLC0415  lazy: only to find the shared site-packages

    return Path(typer.__file__).resolve().parent.parent


def build_env(
    ws: Workspace,
    repo: str,
    commit: str,
    target: Path,
    *,
    generation: int | None = None,
    probe: str = "orchestrator.cli",
) -> Path:
    """A venv at ``target`` whose path holds ``commit``'s exported source first, then this environment's deps."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit], cwd=ws.repo_path(repo), capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise ConflictError(f"git archive of {commit[:12]} failed: {archive.stderr.decode(errors='replace')}")
    venv.EnvBuilder(symlinks=True, with_pip=False, clear=True).create(tmp)  # first: clear=True empties tmp
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tmp / "src", filter="data")
    site = tmp / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    # .pth lines are added in file-name order: the commit's source first, so it wins over any other copy
    atomic_write(site / "00-converge-src.pth", f"{target / 'src'}\n")
    atomic_write(site / "zz-converge-deps.pth", f"{_deps_site()}\n")
    atomic_write_json(
        tmp / "install.json",
        {"commit": commit, "generation": generation, "created": changesets.now(), "path": str(target)},
    )
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)
    code = f"import {probe}; import orchestrator; print(orchestrator.__file__)"
    found = subprocess.run(
        [str(target / "bin" / "python"), "-I", "-c", code],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0 or not found.stdout.strip().startswith(str(target / "src")):
        shutil.rmtree(target, ignore_errors=True)
        detail = (found.stderr.strip().splitlines() or [found.stdout.strip()])[-1]
        raise VerificationFailed(f"install of {commit[:12]} does not import its own source: {detail}")
    return target
