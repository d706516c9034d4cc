"""A sandbox cannot fill the host's disk: the tree it writes is a filesystem of ``sandbox.disk`` bytes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.store import diskimage
from orchestrator.store.workspace import Workspace
from tests.conftest import converge

pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)


def test_sizes_are_read_in_binary_units_and_bad_ones_are_named() -> None:
    assert diskimage.parse_size("4g") == 4 << 30 and diskimage.parse_size("512M") == 512 << 20
    assert diskimage.parse_size("0") == 0
    with pytest.raises(ConfigError, match=r"sandbox\.disk: 'lots' is not a size"):
        diskimage.parse_size("lots")


@pytest.mark.docker
@pytest.mark.skipif(diskimage.enforced() is not None, reason=f"disk limits not enforceable: {diskimage.enforced()}")
def test_a_runaway_write_stops_at_the_limit_and_says_so(sample_ws: Workspace) -> None:
    config = sample_ws.state / "converge.toml"
    config.write_text(config.read_text().replace("[run]\n", '[sandbox]\ndisk = "64m"\n\n[run]\n', 1))
    free_before = shutil.disk_usage(sample_ws.root).free
    proc = converge(
        "-w", str(sample_ws.root), "sandbox", "run", "sample", "--", "dd", "if=/dev/zero", "of=/src/big", "bs=1M",
        "count=2048",
    )  # fmt: skip
    assert proc.returncode != 0
    assert "sandbox disk limit reached" in proc.stderr and "No space left" in proc.stderr
    assert free_before - shutil.disk_usage(sample_ws.root).free < 256 << 20, "the host kept its disk"
    worktrees = sample_ws.cache / "worktrees"
    assert not list(worktrees.glob("*.img")) and not any(Path(p).is_mount() for p in worktrees.glob("*"))
    fine = converge("-w", str(sample_ws.root), "sandbox", "run", "sample", "--", "python", "-m", "pytest", "-q")
    assert fine.returncode == 0, fine.stderr  # the tests of the repo still run in a limited tree


def test_doctor_shows_the_disk_limit(sample_ws: Workspace) -> None:
    proc = converge("-w", str(sample_ws.root), "doctor", "--json")
    [check] = [c for c in json.loads(proc.stdout)["checks"] if c["name"] == "sandbox.disk"]
    assert "4g" in check["detail"]
