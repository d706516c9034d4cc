"""The edit format agents emit, and applying it to a worktree: all blocks or none.

An :class:`EditProposal` is a summary and a list of search/replace blocks. Its JSON schema
(``EditProposal.model_json_schema()``) constrains the coder's decoding. :func:`apply_edits`
checks every block against the files first (paths inside the worktree, no ``.git/``, no
symlink escapes, text files only, each search text found exactly once) and only then
writes; a failure raises :class:`EditError` with a short message written for the model:
which block, what failed, the nearest match with line numbers, and what did match. Its
class says which kind of failure it was (:func:`failure_of`): path unknown, search not
found, search ambiguous, or another edit problem.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import EditError
from orchestrator.store.runs import FailureClass
from orchestrator.store.storage import atomic_write

MAX_FILE_BYTES = 2_000_000
_CONTEXT_LINES = 12


class PathUnknown(EditError):
    """An edit names a file that does not exist (and does not create it)."""


class SearchNotFound(EditError):
    """A search text is not in its file."""


class SearchAmbiguous(EditError):
    """A search text is in its file more than once."""


def failure_of(exc: EditError) -> FailureClass:
    """The failure class of an edit that did not apply."""
    if isinstance(exc, PathUnknown):
        return FailureClass.PATH_UNKNOWN
    if isinstance(exc, SearchNotFound):
        return FailureClass.SEARCH_NOT_FOUND
    if isinstance(exc, SearchAmbiguous):
        return FailureClass.SEARCH_AMBIGUOUS
    return FailureClass.EDIT_INVALID


class EditBlock(BaseModel):
    """Replace the one occurrence of ``search`` in ``path`` by ``replace``; empty search creates the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="file path relative to the repository root, with forward slashes")
    search: str = Field(description="exact text to find in the file, found exactly once; empty to create a new file")
    replace: str = Field(description="text that takes its place (the whole content for a new file)")


class EditProposal(BaseModel):
    """A coder's answer: what it changes and why, as search/replace blocks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    summary: str = Field(description="one or two sentences: what the edits do and why")
    edits: list[EditBlock] = Field(description="search/replace blocks, applied in order")


@dataclass(frozen=True)
class AppliedEdits:
    """What :func:`apply_edits` wrote: changed and created paths, and notes for the model."""

    changed: tuple[str, ...]
    created: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path written, changed or created, sorted."""
        return tuple(sorted({*self.changed, *self.created}))


@dataclass
class Pending:
    """A file as the blocks so far leave it (in memory, nothing written yet)."""

    rel: str
    original: str | None  # None: the file does not exist yet
    text: str
    exists: bool = True  # in the base, or created by an earlier block


class Files(Protocol):
    """Where edits find their files: a worktree on disk, or a commit's objects (see ``commit_edits``)."""

    def check(self, path: str) -> str:
        """The normalised relative path of an edit target, or EditError saying why it cannot be one."""
        ...

    def read(self, rel: str) -> bytes | None:
        """The content of the file ``rel`` (None: it does not exist), or EditError for a directory."""
        ...


def apply_edits(worktree: Path, proposal: EditProposal) -> AppliedEdits:
    """Apply every block of ``proposal`` inside ``worktree``, or none of them (EditError for the model)."""
    root = worktree.resolve()
    pending, applied = plan_edits(_Worktree(root), proposal)
    _write_all(root, pending)
    return applied


def plan_edits(files: Files, proposal: EditProposal) -> tuple[list[Pending], AppliedEdits]:
    """Every file ``proposal`` changes, as its blocks leave it, without writing anything.

    Every block is checked first (paths, files, each search text found exactly once); a failure
    raises EditError with a message for the model. Files left as they were are not listed.
    """
    if not proposal.edits:
        raise EditError("Your answer has no edits. Give at least one search/replace block that changes a file.")
    pending: dict[str, Pending] = {}
    notes: list[str] = []
    seen: dict[tuple[str, str, str], int] = {}
    for number, block in enumerate(proposal.edits, start=1):
        first = seen.setdefault((block.path, block.search, block.replace), number)
        if first != number:  # a small model repeats a block: applying it twice would fail, once is what it meant
            notes.append(f"block {number} repeats block {first}; applied once")
            continue
        try:
            rel = files.check(block.path)
            state = pending.get(rel) or _load(files, rel)
            try:
                state.text, note = replace_once(state.text, block.search, block.replace, exists=state.exists)
            except SearchNotFound:
                if state.original and block.search and block.search in state.original:
                    raise EditError(
                        "its search text is in the file, but an earlier block already changed those lines; "
                        "give one block for each place, with no two blocks searching the same lines"
                    ) from None
                raise
            state.exists = True
        except EditError as exc:
            kind = type(exc) if type(exc) in (PathUnknown, SearchNotFound, SearchAmbiguous) else EditError
            raise kind(_failure(number, block.path, str(exc), len(proposal.edits), number - 1)) from exc
        pending[rel] = state
        if note:
            notes.append(f"block {number} ({rel}): {note}")
    changes = [state for state in pending.values() if state.text != state.original]
    if not changes:
        raise EditError(
            "Your edits change nothing: every replace text leaves its file as it was. "
            "Change the replace text so the file actually differs."
        )
    changed = tuple(sorted(p.rel for p in changes if p.original is not None))
    created = tuple(sorted(p.rel for p in changes if p.original is None))
    return changes, AppliedEdits(changed=changed, created=created, notes=tuple(notes))


def normal_path(path: str) -> str:
    """``path`` as a clean relative path (``a/b``), or EditError: empty, absolute, '..', inside .git/."""
    if not path or not path.strip():
        raise EditError("the path is empty; give a path relative to the repository root")
    if "\0" in path or "\\" in path:
        raise EditError(f"{path!r} contains a backslash or NUL byte; use forward slashes")
    pure = PurePosixPath(path)
    if pure.is_absolute() or (len(path) > 1 and path[1] == ":"):
        raise EditError(f"{path!r} is absolute; give a path relative to the repository root")
    parts = [p for p in pure.parts if p != "."]
    if ".." in parts:
        raise EditError(f"{path!r} uses '..'; paths must stay inside the repository")
    if not parts:
        raise EditError(f"{path!r} names the repository root, not a file")
    if any(p.lower() == ".git" for p in parts):
        raise EditError(f"{path!r} is inside .git/; edit the repository's files, not git's own")
    return "/".join(parts)


def check_path(root: Path, path: str) -> str:
    """The normalised relative path of an edit target inside ``root``, or EditError saying why not."""
    rel = normal_path(path)
    target = root / rel
    resolved = target.resolve()
    if not resolved.is_relative_to(root):
        raise EditError(f"{rel!r} goes through a symbolic link that leads outside the repository")
    if target.is_symlink():
        inside = resolved.relative_to(root).as_posix()
        raise EditError(f"{rel!r} is a symbolic link to {inside!r}; edit {inside!r} instead")
    real = resolved.relative_to(root)
    if any(p.lower() == ".git" for p in real.parts):
        raise EditError(f"{rel!r} leads into .git/ through a symbolic link")
    return real.as_posix()


@dataclass(frozen=True)
class _Worktree:
    """The files of a worktree on disk (symbolic links resolved, and refused when they lead out)."""

    root: Path

    def check(self, path: str) -> str:
        return check_path(self.root, path)

    def read(self, rel: str) -> bytes | None:
        target = self.root / rel
        if not target.exists():
            return None
        if not target.is_file():
            raise EditError(f"{rel!r} is a directory, not a file")
        return target.read_bytes()


def _load(files: Files, rel: str) -> Pending:
    raw = files.read(rel)
    if raw is None:
        return Pending(rel, None, "", exists=False)
    if len(raw) > MAX_FILE_BYTES:
        raise EditError(f"{rel!r} is too large to edit ({len(raw)} bytes)")
    if b"\0" in raw:
        raise EditError(f"{rel!r} is a binary file; only text files can be edited")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EditError(f"{rel!r} is not UTF-8 text; only UTF-8 files can be edited") from exc
    return Pending(rel, text, text)


def replace_once(text: str, search: str, replace: str, *, exists: bool = True) -> tuple[str, str | None]:
    """``text`` with the one occurrence of ``search`` replaced, and a note when a fallback was used."""
    if not search:
        if exists and text:
            raise EditError(
                "the search text is empty, which creates a new file, but the file already exists; "
                "to change it, copy the lines to change into the search text"
            )
        return replace, None
    if not exists:
        raise PathUnknown("the file does not exist; to create it, leave the search text empty")
    count = text.count(search)
    if count == 1:
        return text.replace(search, replace, 1), None
    if count > 1:
        whole = _whole_line_occurrences(text, search)
        if len(whole) == 1:  # once as whole lines (what a grounded search text is), elsewhere inside lines
            return text[: whole[0]] + replace + text[whole[0] + len(search) :], None
        lines = ", ".join(str(n) for n in _occurrence_lines(text, search)[:8])
        raise SearchAmbiguous(
            f"the search text was found {count} times (starting at lines {lines}); "
            "add surrounding lines to the search text so it matches exactly once"
        )
    return _replace_loose(text, search, replace)


def _whole_line_occurrences(text: str, search: str) -> list[int]:
    """Where ``search`` occurs starting a line and ending one (at a newline it holds, or the file's end)."""
    found, start = [], text.find(search)
    while start != -1:
        end = start + len(search)
        starts_line = start == 0 or text[start - 1] == "\n"
        ends_line = search.endswith("\n") or end == len(text) or text[end] == "\n"
        if starts_line and ends_line:
            found.append(start)
        start = text.find(search, start + 1)
    return found


def _occurrence_lines(text: str, search: str) -> list[int]:
    found, start = [], text.find(search)
    while start != -1:
        found.append(text.count("\n", 0, start) + 1)
        start = text.find(search, start + 1)
    return found


def _replace_loose(text: str, search: str, replace: str) -> tuple[str, str]:
    """Match line by line ignoring trailing whitespace only; otherwise report the nearest match."""
    lines = text.splitlines(keepends=True)
    wanted = [line.rstrip() for line in search.splitlines()]
    while wanted and not wanted[-1]:
        wanted.pop()
    stripped = [line.rstrip() for line in lines]
    size = len(wanted)
    starts = [i for i in range(len(lines) - size + 1) if size and stripped[i : i + size] == wanted]
    if len(starts) == 1:
        i = starts[0]
        middle = replace
        if replace and lines[i + size - 1].endswith("\n") and not replace.endswith("\n"):
            middle += "\n"  # the matched lines ended a line; keep the next line on its own
        new = "".join(lines[:i]) + middle + "".join(lines[i + size :])
        return new, "matched only after ignoring trailing whitespace; check the result"
    if len(starts) > 1:
        where = ", ".join(str(i + 1) for i in starts[:8])
        raise SearchAmbiguous(
            f"the search text (ignoring trailing whitespace) was found {len(starts)} times "
            f"(starting at lines {where}); add surrounding lines so it matches exactly once"
        )
    raise SearchNotFound("the search text was not found in the file." + nearest_match(lines, wanted))


def nearest_match(lines: list[str], wanted: list[str]) -> str:
    """A hint naming the most similar run of lines, with line numbers, or '' when nothing is close."""
    if not lines or not wanted:
        return ""
    size = len(wanted)
    target = "\n".join(wanted)
    best_ratio, best_start = 0.0, 0
    for start in range(max(1, len(lines) - size + 1)):
        chunk = "\n".join(line.rstrip() for line in lines[start : start + size])
        matcher = difflib.SequenceMatcher(None, chunk, target, autojunk=False)
        if matcher.real_quick_ratio() <= best_ratio or matcher.quick_ratio() <= best_ratio:
            continue
        ratio = matcher.ratio()
        if ratio > best_ratio:
            best_ratio, best_start = ratio, start
    if best_ratio < 0.5:
        return " No similar lines found; read the file again and copy the lines exactly."
    shown = lines[best_start : best_start + min(size, _CONTEXT_LINES)]
    numbered = "".join(f"{best_start + n + 1:>5} | {line.rstrip()}\n" for n, line in enumerate(shown))
    end = best_start + len(shown)
    return (
        f" The most similar lines are {best_start + 1}-{end} ({best_ratio:.0%} alike):\n{numbered}"
        "Copy the search text exactly from the file, including indentation."
    )


def _failure(number: int, path: str, reason: str, total: int, matched: int) -> str:
    done = (
        f"Blocks 1-{matched} matched, but nothing was written"
        if matched > 1
        else ("Block 1 matched, but nothing was written" if matched == 1 else "Nothing was written")
    )
    resend = "send all blocks again with this one fixed" if total > 1 else "send the block again, fixed"
    return f"Edit block {number} of {total} ({path}) failed: {reason}\n{done}: {resend}."


def _write_all(root: Path, pending: list[Pending]) -> None:
    """Write every pending file; if one write fails, put back what was already written."""
    written: list[Pending] = []
    current = ""
    try:
        for state in pending:
            current = state.rel
            target = root / state.rel
            mode = target.stat().st_mode & 0o7777 if state.original is not None else 0o644
            atomic_write(target, state.text, mode, durable=False)  # a candidate's: its commit keeps it
            written.append(state)
    except OSError as exc:
        _restore(root, written)
        raise EditError(f"cannot write {current!r}: {exc.strerror or exc}; nothing was changed") from exc
    except BaseException:
        _restore(root, written)
        raise


def _restore(root: Path, written: Iterable[Pending]) -> None:
    for state in written:
        if state.original is None:
            (root / state.rel).unlink()
        else:
            atomic_write(root / state.rel, state.original)


def proposal_from_files(summary: str, before: dict[str, str | None], after: dict[str, str]) -> EditProposal:
    """Whole-file blocks turning ``before`` into ``after`` (how tool agents' changes become edits)."""
    edits = []
    for path in sorted(after):
        old = before.get(path)
        if old == after[path]:
            continue
        edits.append(EditBlock(path=path, search=old or "", replace=after[path]))
    return EditProposal(summary=summary, edits=edits)
