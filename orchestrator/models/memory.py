"""Memory tiers a model can live in: NUMA nodes, their free memory, placement on one, and locking.

``numa = "distribute"`` or ``"isolate"`` is llama.cpp's own NUMA strategy; ``numa = N`` binds the
weights to node N (:func:`memory_on_node`), which is how weights land on a CXL memory card (a node
without CPUs). ``mlock`` limits are checked first (:func:`ensure_lockable`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ModelError

NODES = Path("/sys/devices/system/node")
MPOL_DEFAULT, MPOL_PREFERRED = 0, 1
SYS_SET_MEMPOLICY = {"x86_64": 238, "aarch64": 237}
CAP_IPC_LOCK = 14
# llama.cpp's ggml_numa_strategy values
NUMA_STRATEGIES = {"off": 0, "distribute": 1, "isolate": 2, "numactl": 3}


@dataclass(frozen=True)
class NumaNode:
    """One NUMA node: its CPUs (none for a memory-only node) and memory."""

    node: int
    cpus: str
    total: int
    free: int


def numa_nodes(root: Path = NODES) -> list[NumaNode]:
    """The machine's NUMA nodes with free memory, from /sys (empty where the kernel shows none)."""
    nodes = []
    for path in sorted(root.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        values: dict[str, int] = {}
        try:
            for line in (path / "meminfo").read_text().splitlines():
                parts = line.split()  # "Node 0 MemFree:  4906236 kB"
                if len(parts) >= 4:
                    values[parts[2].rstrip(":")] = int(parts[3]) * 1024
            cpus = (path / "cpulist").read_text().strip()
        except (OSError, ValueError):
            continue
        nodes.append(NumaNode(int(path.name[4:]), cpus, values.get("MemTotal", 0), values.get("MemFree", 0)))
    return nodes


def llama_numa(setting: str | int) -> int:
    """The strategy llama.cpp is given: a node number runs under numactl's (the CPUs it is allowed).

    One strategy per process: llama.cpp sets it up once.
    """
    return NUMA_STRATEGIES["numactl"] if isinstance(setting, int) else NUMA_STRATEGIES[setting]


@contextlib.contextmanager
def memory_on_node(node: int | None, root: Path = NODES) -> Iterator[None]:
    """Prefer node ``node`` for memory this thread allocates inside the block (nothing when None).

    ``set_mempolicy``, preferred, for the duration of the load, with mmap off so the pages are this
    process's and not the page cache's wherever it already was.
    """
    if node is None:
        yield
        return
    if not (root / f"node{node}").is_dir():
        known = ", ".join(str(n.node) for n in numa_nodes(root)) or "none"
        raise ModelError(f"numa = {node}: no NUMA node {node} on this machine (nodes: {known}); see `converge doctor`")
    mask = ctypes.c_ulong(1 << node)
    _set_mempolicy(MPOL_PREFERRED, ctypes.byref(mask), node + 2)
    try:
        yield
    finally:
        _set_mempolicy(MPOL_DEFAULT, None, 0)


def _set_mempolicy(mode: int, mask: object, maxnode: int) -> None:
    number = SYS_SET_MEMPOLICY.get(platform.machine())
    if number is None:
        raise ModelError(f"numa = N: binding memory to a node is not supported on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, mode, mask, ctypes.c_ulong(maxnode)) != 0:
        err = ctypes.get_errno()
        raise ModelError(f"set_mempolicy failed: {os.strerror(err)}")


def can_lock_any() -> bool:
    """True when this process may lock memory past RLIMIT_MEMLOCK (CAP_IPC_LOCK, e.g. root)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_IPC_LOCK & 1)
    except (OSError, ValueError):
        pass
    return False


def ensure_lockable(nbytes: int, what: str) -> None:
    """Make room under RLIMIT_MEMLOCK for ``nbytes`` more locked memory, or say how to allow it.

    Checked before loading so a limit too small is a clear error here instead of a warning
    llama.cpp prints and ignores.
    """
    if can_lock_any():
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    needed = locked_now() + nbytes
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard == resource.RLIM_INFINITY or hard >= needed:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))  # raising the soft limit needs no privilege
        return
    raise ModelError(
        f"{what}: mlock needs {_amount(needed)} locked but RLIMIT_MEMLOCK allows {_amount(hard)}; "
        "raise it (`ulimit -l unlimited`, memlock in /etc/security/limits.conf, `docker run --ulimit memlock=-1`) "
        "or set mlock = false for this model"
    )


def _amount(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n // 1024} KiB"


def locked_now() -> int:
    """Bytes this process has locked (VmLck)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmLck:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0
