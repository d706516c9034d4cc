"""Saved KV states of prompt prefixes: ``cache/prompt-cache/``, bounded in bytes, least recently used out.

A state is the llama.cpp context after evaluating a stable prefix (system prompt + repo map);
restoring it skips that evaluation in a later process. Each file is named by the model, the
context size and the prefix's digest; using a file touches its modification time, and after
every write the oldest-used files go until the directory holds at most ``models.prompt_cache_bytes``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.store.storage import atomic_write

SUFFIX = ".state"


@dataclass(frozen=True)
class CacheUsage:
    """What the prompt cache holds now."""

    files: int
    bytes: int


def usage(directory: Path) -> CacheUsage:
    """Files and bytes of saved states under ``directory`` (zero when it does not exist)."""
    sizes = [_size(p) for p in directory.glob(f"*{SUFFIX}")] if directory.is_dir() else []
    return CacheUsage(len(sizes), sum(sizes))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0  # removed by another process meanwhile


class PromptCache:
    """The saved states of one workspace, at most ``max_bytes`` together."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def path(self, model_sha: str, n_ctx: int, key: str) -> Path:
        return self.directory / f"{model_sha[:16]}-{n_ctx}-{key}{SUFFIX}"

    def get(self, path: Path) -> bytes | None:
        """The state saved at ``path``, marked as just used; None when absent."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
        return data

    def put(self, path: Path, state: bytes) -> bool:
        """Save ``state`` (unless it alone passes the limit), then evict down to the limit; True if kept."""
        if len(state) > self.max_bytes:
            return False
        atomic_write(path, state)
        self.evict()
        return path.exists()

    def evict(self) -> list[Path]:
        """Remove the least recently used states until the rest fit ``max_bytes``; the removed paths."""
        entries = []
        for p in self.directory.glob(f"*{SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                entries.append((st.st_mtime_ns, st.st_size, p))
        entries.sort(key=lambda e: e[0])
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, p in entries:
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size
            removed.append(p)
        return removed


def snapshot(llm: Any) -> bytes:
    """The context's state (KV cache of the evaluated tokens) as bytes."""
    import llama_cpp  # noqa: PLC0415  lazy: the native library, loaded only with a model

    size = llama_cpp.llama_state_get_size(llm.ctx)
    buffer = (ctypes.c_uint8 * int(size))()
    written = llama_cpp.llama_state_get_data(llm.ctx, buffer, size)
    return ctypes.string_at(buffer, int(written))


def restore(llm: Any, tokens: list[int], state: bytes) -> bool:
    """Load a snapshot taken after evaluating ``tokens``; False if llama.cpp rejects it."""
    import llama_cpp  # noqa: PLC0415  lazy: the native library, loaded only with a model

    buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
    if llama_cpp.llama_state_set_data(llm.ctx, buffer, len(state)) != len(state):
        llm.reset()
        return False
    llm.input_ids[: len(tokens)] = tokens
    llm.n_tokens = len(tokens)
    # Restored logits are stale: llama-cpp-python must decode before it samples.
    llm._requires_eval = True
    return True
