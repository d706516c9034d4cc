"""Prompts that fit the model's context window: the stable prefix (the repo map) is cut, said so,
never silently truncated (:func:`fit`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from orchestrator.errors import ModelError
from orchestrator.models.backends import CompletionRequest

CUT_NOTE = "[{cut} more lines cut to fit the model's context window of {window} tokens]"


@dataclass(frozen=True)
class Fitted:
    """The request as sent, its prompt tokens, and how many prefix lines were cut for it."""

    request: CompletionRequest
    tokens: int
    lines_cut: int = 0


def fit(
    request: CompletionRequest,
    window: int,
    count: Callable[[CompletionRequest], int],
    what: str,
    raise_hint: str,
) -> Fitted:
    """``request`` cut to ``window`` tokens (prompt + ``max_tokens``), counted by ``count``.

    ``what`` names the model in messages; ``raise_hint`` says where its window is set.

    A request's ``prefix`` is ranked best first (the repo map is rendered that way), so the prefix
    keeps as many leading lines as fit and ends with a line saying how many were cut. If even an
    empty prefix does not fit, the call is refused with a message naming the window and where to
    raise it.
    """
    tokens = count(request)
    if tokens + request.max_tokens <= window:
        return Fitted(request, tokens)
    lines = request.prefix.splitlines()
    empty = _cut(request, lines, 0, window)
    empty_tokens = count(empty)
    if not lines or empty_tokens + request.max_tokens > window:
        least = empty_tokens if lines else tokens
        raise ModelError(
            f"prompt of {least} tokens{' without the repo map' if lines else ''} + {request.max_tokens} to generate "
            f"exceeds the context window of {window} tokens of {what}; shorten the task or {raise_hint}"
        )
    # Binary search for the most leading lines that fit: the count grows with the lines kept.
    low, high = 1, len(lines) - 1
    kept, best, best_tokens = 0, empty, empty_tokens
    while low <= high:
        mid = (low + high) // 2
        candidate = _cut(request, lines, mid, window)
        n = count(candidate)
        if n + request.max_tokens <= window:
            low, kept, best, best_tokens = mid + 1, mid, candidate, n
        else:
            high = mid - 1
    return Fitted(best, best_tokens, len(lines) - kept)


def _cut(request: CompletionRequest, lines: list[str], keep: int, window: int) -> CompletionRequest:
    note = CUT_NOTE.format(cut=len(lines) - keep, window=window)
    return replace(request, prefix="\n".join([*lines[:keep], note]))
