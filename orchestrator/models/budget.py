"""The model memory budget shared by every process of a workspace: a small ledger file.

``.converge/models-resident.json`` lists what each live process has loaded, read and written only under
``.converge/locks/models-resident.lock`` (``flock``: a killed holder never leaves it stuck). A process
reserves a model's bytes before loading it (:func:`reserve`) and releases them when it evicts it (:func:`release`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from orchestrator.errors import ModelError
from orchestrator.store.storage import atomic_write_json, file_lock, pid_alive, read_json

LEDGER = "models-resident.json"
WAIT_SECONDS = 600.0
POLL_SECONDS = 0.25


class Entry(BaseModel):
    """One model resident in one process.

    The ledger holds ``{"entries": [{"pid": 4242, "model": "<sha256>", "bytes": ..., "shared": ...}]}``.
    Entries of processes that are gone are dropped whenever the ledger is read, so a SIGKILLed loop frees
    its share by dying. ``shared`` is the part that processes loading the same file share (weights are
    mmap'd read-only, so the page cache holds them once): it is charged once per model, the rest (KV
    cache, scratch) once per process.
    """

    pid: int
    model: str = Field(description="sha256 of the model file")
    bytes: int = Field(ge=0, description="estimated bytes it occupies in that process")
    shared: int = Field(default=0, ge=0, description="part of ``bytes`` shared by processes loading the same file")


class _Ledger(BaseModel):
    entries: list[Entry] = Field(default_factory=list)


@dataclass(frozen=True)
class Reservation:
    """A granted reservation; pass it to :func:`release`."""

    state_dir: Path
    pid: int
    model: str
    bytes: int


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _paths(state_dir: Path) -> tuple[Path, Path]:
    return state_dir / LEDGER, state_dir / "locks" / "models-resident.lock"


def _read(path: Path) -> _Ledger:
    """The ledger without the entries of dead processes."""
    ledger = _Ledger.model_validate(read_json(path)) if path.exists() else _Ledger()
    return _Ledger(entries=[e for e in ledger.entries if pid_alive(e.pid)])


def charged(entries: list[Entry]) -> int:
    """Bytes the entries occupy together: per-process parts, plus each model's shared part once."""
    shared: dict[str, int] = {}
    total = 0
    for e in entries:
        total += e.bytes - e.shared
        shared[e.model] = max(shared.get(e.model, 0), e.shared)
    return total + sum(shared.values())


def holders(state_dir: Path) -> list[Entry]:
    """Live entries of the ledger (what `converge doctor` or an error message can show)."""
    path, lock = _paths(state_dir)
    with file_lock(lock, "the model ledger", wait=True):
        return _read(path).entries


def _describe(entries: list[Entry]) -> str:
    return ", ".join(f"pid {e.pid} holds model {e.model[:12]} ({_gib(e.bytes)})" for e in entries) or "nobody"


def _try(state_dir: Path, entry: Entry, budget: int) -> list[Entry] | None:
    """Add ``entry`` if it fits; None when it did, else the other holders."""
    path, lock = _paths(state_dir)
    with file_lock(lock, "the model ledger", wait=True):
        ledger = _read(path)
        others = [e for e in ledger.entries if (e.pid, e.model) != (entry.pid, entry.model)]
        if charged([*others, entry]) <= budget:
            atomic_write_json(path, _Ledger(entries=[*others, entry]).model_dump())
            return None
        atomic_write_json(path, ledger.model_dump())  # dead entries dropped
        return others


def reserve(
    state_dir: Path,
    pid: int,
    model_sha: str,
    nbytes: int,
    budget: int,
    *,
    shared: int = 0,
    wait: float = WAIT_SECONDS,
) -> Reservation:
    """Reserve ``nbytes`` for model ``model_sha`` in process ``pid``; wait up to ``wait`` seconds for room.

    A reservation that can never fit (its own bytes exceed the budget) is refused at once; one that
    does not fit *now* waits for other processes to release, then fails with a ModelError naming the
    holders.
    """
    entry = Entry(pid=pid, model=model_sha, bytes=nbytes, shared=min(shared, nbytes))
    if nbytes > budget:
        raise ModelError(
            f"model {model_sha[:12]} needs about {_gib(nbytes)}, more than the shared memory budget of "
            f"{_gib(budget)} ([models] memory_budget); it can never be loaded under it"
        )
    deadline = time.monotonic() + wait
    while True:
        others = _try(state_dir, entry, budget)
        if others is None:
            return Reservation(state_dir, pid, model_sha, nbytes)
        if time.monotonic() >= deadline:
            raise ModelError(
                f"model {model_sha[:12]} needs about {_gib(nbytes)} but the shared memory budget of {_gib(budget)} "
                f"stayed taken for {wait:.0f}s by other loops ({_describe(others)}); "
                f"wait for them to finish or raise [models] memory_budget"
            )
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def release(reservation: Reservation) -> None:
    """Give a reservation back (idempotent)."""
    path, lock = _paths(reservation.state_dir)
    with file_lock(lock, "the model ledger", wait=True):
        ledger = _read(path)
        kept = [e for e in ledger.entries if (e.pid, e.model) != (reservation.pid, reservation.model)]
        atomic_write_json(path, _Ledger(entries=kept).model_dump())
