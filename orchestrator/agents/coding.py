"""What the coder sees, fitted to its model's real context window: the step's files, then the repo map.

The answer's tokens and the fixed parts of the prompt are set aside first; the files the step
changes get most of what is left (a file too large for its share is shown as a window of whole
lines around what the step is about), the repo map the rest. The text shown of each file is also
what its search texts are grounded in (:func:`~orchestrator.agents.grounding.edits_grammar`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.agents.cards import AgentCard, PlanStep
from orchestrator.agents.edits import MAX_FILE_BYTES, normal_path
from orchestrator.agents.ranking import goal_words
from orchestrator.agents.repomap import RepoMap
from orchestrator.errors import EditError
from orchestrator.store import gitops
from orchestrator.store.workspace import Workspace

MAX_FILES = 4
UNRANKED_FILES = 2  # files shown when a step names none
MAP_SHARE = 4  # the map gets at most 1/MAP_SHARE of the window
MARGIN = 64  # tokens kept free for the chat template's own tokens


def tokens(text: str) -> int:
    """A token estimate on the safe side for code (small models' tokenizers make ~3.5-4.5 characters a token)."""
    return math.ceil(len(text) / 3)


@dataclass(frozen=True)
class Shown:
    """A file as the coder is shown it: all of it, or lines ``first``..``last`` (1-based) of ``total``."""

    path: str
    text: str
    first: int
    last: int
    total: int

    def note(self) -> str:
        part = (
            "" if self.first == 1 and self.last == self.total else f" (lines {self.first}-{self.last} of {self.total})"
        )
        end = "" if self.text.endswith("\n") else "\n"
        return f"Current content of {self.path}{part}:\n```\n{self.text}{end}```"


@dataclass(frozen=True)
class CoderView:
    """The coder's prompt material: the map, the files shown (what search texts may copy), files to create."""

    repo_map: str
    files: tuple[Shown, ...]
    creates: tuple[str, ...]

    @property
    def notes(self) -> list[str]:
        return [f.note() for f in self.files]


def coder_view(
    ws: Workspace,
    repo: str,
    commit: str,
    rmap: RepoMap,
    card: AgentCard,
    *,
    goal: str,
    step: PlanStep,
    feedback: Sequence[str],
    window: int,
) -> CoderView:
    """The map and files for ``step`` on ``commit``, within ``window`` tokens once the answer is set aside."""
    fixed = sum(tokens(t) for t in (card.system, goal, step.title, *step.acceptance, *feedback, card.prompt.answer))
    room = max(0, window - card.sampling.max_tokens - fixed - MARGIN - 40 * len(step.targets))
    paths = [p for p in _names(step.targets) if p in rmap.files]
    if not paths and not step.creates:
        paths = [p for p, _ in rmap.rank(f"{goal}\n{step.title}") if p.endswith(".py")][:UNRANKED_FILES]
    found = read_texts(ws, repo, commit, paths[:MAX_FILES])
    focus = goal_words(f"{step.title} {goal}")
    map_room = min(window // MAP_SHARE, room // MAP_SHARE)
    share = (room - map_room) // max(1, len(found))
    shown = tuple(_fit(path, text, share, focus) for path, text in found.items())
    used = sum(tokens(f.note()) for f in shown)
    map_budget = max(0, room - used)
    map_budget = min(map_budget, window // MAP_SHARE)
    repo_map = rmap.render(f"{goal}\n{step.title}", map_budget, tokens) if map_budget > 64 else ""
    creates = tuple(p for p in _names(step.creates) if p not in rmap.files)
    return CoderView(repo_map=repo_map, files=shown, creates=creates)


def _names(paths: Sequence[str]) -> list[str]:
    """Normalised, deduplicated paths (a path that cannot be one is dropped: apply would refuse it, saying why)."""
    found = []
    for path in paths:
        try:
            found.append(normal_path(path))
        except EditError:
            continue
    return list(dict.fromkeys(found))


def read_texts(ws: Workspace, repo: str, commit: str, paths: Sequence[str]) -> dict[str, str]:
    """The UTF-8 text files among ``paths`` as ``commit`` has them (the files edits apply to), in order."""
    repo_path = ws.repo_path(repo)
    found = gitops.read_batch(repo_path, commit, [f"{commit}:{p}" for p in paths]) if paths else {}
    texts = {}
    for path in paths:
        data = found.get(f"{commit}:{path}")
        if data is None or len(data) > MAX_FILE_BYTES or b"\0" in data:
            continue
        try:
            texts[path] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def _fit(path: str, text: str, budget: int, focus: set[str]) -> Shown:
    """All of ``text``, or the window of whole lines that fits ``budget`` tokens, starting two lines before the
    first line that names what the step is about."""
    lines = text.splitlines(keepends=True)
    if tokens(text) <= budget or not lines:
        return Shown(path, text, 1, len(lines), len(lines))
    start = 0
    for number, line in enumerate(lines):
        if focus & goal_words(line):
            start = max(0, number - 2)
            break
    end, size = start, 0
    while end < len(lines) and size + tokens(lines[end]) <= budget:
        size += tokens(lines[end])
        end += 1
    while start > 0 and size + tokens(lines[start - 1]) <= budget:  # room left near the end: show earlier lines
        start -= 1
        size += tokens(lines[start])
    return Shown(path, "".join(lines[start:end]), start + 1, end, len(lines))
