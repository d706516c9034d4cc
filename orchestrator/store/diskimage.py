"""Size-limited trees: a scratch worktree on a filesystem of its own, so a sandbox cannot fill the host's disk.

The filesystem is a sparse ext4 image beside the worktree (``<tree>.img``), loop-mounted on it: it
takes only the space written, never more than its size. It needs root, ``mkfs.ext4`` and loop
devices; without them trees are plain directories and :func:`enforced` says why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from orchestrator.errors import ConfigError, SandboxError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
FULL_MARGIN = 1 << 20  # free bytes below which a limited tree counts as full


def parse_size(text: str, key: str = "sandbox.disk") -> int:
    """``"4g"`` -> bytes (binary units; ``0`` means no limit); a ConfigError naming ``key`` otherwise."""
    found = _SIZE.match(text)
    if not found:
        raise ConfigError(f"converge.toml: {key}: {text!r} is not a size (like 512m or 4g; 0 for no limit)")
    return int(float(found[1]) * _UNITS[found[2].lower()])


def enforced() -> str | None:
    """None when limits can be enforced here, else why not."""
    if os.geteuid() != 0:
        return "not running as root (a loop mount needs it)"
    missing = [tool for tool in ("mkfs.ext4", "mount", "umount") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control)"
    return None


def image_of(tree: Path) -> Path:
    return tree.with_name(tree.name + ".img")


def mount_limited(tree: Path, size: int) -> bool:
    """Make ``tree`` (new or empty) a filesystem of ``size`` bytes; False (a plain directory) when not enforced."""
    tree.mkdir(parents=True, exist_ok=True)
    if size <= 0 or enforced() is not None:
        return False
    image = image_of(tree)
    try:
        with image.open("wb") as handle:
            handle.truncate(size)
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1", str(image)])
        _run(["mount", "-o", "loop,noatime,nodev,nosuid", str(image), str(tree)])
    except (OSError, SandboxError):
        image.unlink(missing_ok=True)
        raise
    (tree / "lost+found").rmdir()  # git puts a worktree only into an empty directory
    return True


def unmount(tree: Path) -> None:
    """Undo :func:`mount_limited`: unmount ``tree`` and delete its image (idempotent)."""
    if os.path.ismount(tree):
        _run(["umount", str(tree)])
    image_of(tree).unlink(missing_ok=True)


def is_full(tree: Path) -> bool:
    """Whether ``tree`` is a limited filesystem that is (nearly) full: what a failed write there means."""
    return os.path.ismount(tree) and shutil.disk_usage(tree).free < FULL_MARGIN


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise SandboxError(f"{argv[0]}: {detail[-1] if detail else f'exit {proc.returncode}'}")
