"""Task suites: the on-disk contract (DESIGN, "Evaluation tasks") read into typed tasks.

A suite is a directory; each sub-directory is a task: ``task.toml`` (``goal`` required;
``timeout``, ``max_steps``, ``tags``, ``check``; any other key is an error), ``repo/`` (the
start tree) and optionally ``check/`` (files overlaid on the final tree for the check only).
A broken task becomes a :class:`BrokenTask` naming the task and the key; the others still load.
"""

from __future__ import annotations

import hashlib
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import ConfigError, UsageError
from orchestrator.store.workspace import Workspace

BUILTIN = "refactor"
TASK_FILE = "task.toml"
DEFAULT_CHECK = "python -m pytest -q"
_HERE = Path(__file__).resolve().parent
SKIPPED = ("__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".git")  # never part of a task


class TaskError(ConfigError):
    """A task of a suite cannot be used; the message names the task and the key."""


class TaskSpec(BaseModel):
    """The keys of ``task.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    goal: str = Field(description="what the run is asked to do, in words")
    timeout: float = Field(default=900.0, gt=0, description="seconds the task may take")
    max_steps: int = Field(default=3, gt=0, description="plan steps the run may execute")
    tags: list[str] = Field(default_factory=list, description="labels for --tag and per-tag solve rates")
    check: str = Field(default=DEFAULT_CHECK, description="the command that decides success, run in the sandbox")

    @field_validator("goal")
    @classmethod
    def _goal_has_words(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("check")
    @classmethod
    def _check_is_a_command(cls, value: str) -> str:
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"not a command line: {exc}") from exc
        if not argv:
            raise ValueError("must name a command")
        return value


@dataclass(frozen=True)
class Task:
    """One task of a suite, validated."""

    name: str
    root: Path
    spec: TaskSpec
    digest: str  # of task.toml, repo/ and check/: results name what they measured

    @property
    def repo_dir(self) -> Path:
        return self.root / "repo"

    @property
    def check_dir(self) -> Path | None:
        path = self.root / "check"
        return path if path.is_dir() else None

    @property
    def check_argv(self) -> list[str]:
        return shlex.split(self.spec.check)


@dataclass(frozen=True)
class BrokenTask:
    """A task that cannot run, and why (one line naming the task and the key)."""

    name: str
    error: str


@dataclass(frozen=True)
class Suite:
    """The tasks of one suite directory, in name order, and the ones that are broken."""

    name: str
    path: Path
    builtin: bool
    tasks: tuple[Task, ...]
    broken: tuple[BrokenTask, ...]

    def select(self, tags: list[str]) -> tuple[Task, ...]:
        """The tasks carrying every one of ``tags`` (all of them when none are given)."""
        return tuple(t for t in self.tasks if all(tag in t.spec.tags for tag in tags))


def builtin_path() -> Path:
    """The built-in suite shipped inside the package."""
    return _HERE / "suites" / BUILTIN


def answers_path(suite: str = BUILTIN) -> Path:
    """The reference answers of a shipped suite: one replay script per task (``replay:`` this directory)."""
    return _HERE / "answers" / suite


def load_task(root: Path) -> Task:
    """Read and validate one task directory (TaskError naming the task and the key)."""
    name = root.name
    toml_path = root / TASK_FILE
    if not toml_path.is_file():
        raise TaskError(f"task {name}: {TASK_FILE} missing ({toml_path})")
    try:
        data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TaskError(f"task {name}: {TASK_FILE}: not valid TOML: {exc}") from exc
    try:
        spec = TaskSpec.model_validate(data)
    except ValidationError as exc:
        raise TaskError(f"task {name}: {TASK_FILE}: {_describe(exc)}") from exc
    if not (root / "repo").is_dir():
        raise TaskError(f"task {name}: repo/ missing: put the start tree of the task in {root / 'repo'}")
    if not any(_files(root / "repo")):
        raise TaskError(f"task {name}: repo/ is empty: put the start tree of the task in it")
    check_dir = root / "check"
    if "check" not in data and not check_dir.is_dir():
        raise TaskError(
            f"task {name}: check missing: give `check` in {TASK_FILE} or hidden tests in check/ "
            "(the repo's own tests alone cannot tell a solved task)"
        )
    if check_dir.is_dir() and (check_dir / ".git").exists():
        raise TaskError(f"task {name}: check/.git: the check may not overlay git's own files")
    return Task(name=name, root=root.resolve(), spec=spec, digest=task_digest(root))


def _describe(exc: ValidationError) -> str:
    """``goal: Field required``; an unknown key also lists the known ones."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = f"unknown key (known: {', '.join(TaskSpec.model_fields)})"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{key}: {message}{more}"


def load_suite(path: Path, name: str | None = None, builtin: bool = False) -> Suite:
    """Every task of the suite at ``path``; a broken one is listed, not raised, so the others still run."""
    if not path.is_dir():
        raise UsageError(f"{path}: no such suite directory; `converge eval list` shows the known suites")
    tasks: list[Task] = []
    broken: list[BrokenTask] = []
    for root in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        try:
            tasks.append(load_task(root))
        except TaskError as exc:
            broken.append(BrokenTask(root.name, str(exc)))
    return Suite(name or path.name, path.resolve(), builtin, tuple(tasks), tuple(broken))


def resolve(ws: Workspace, suite: str) -> Suite:
    """``SUITE`` as the command line takes it: ``refactor`` (built in), ``test`` (the workspace's), or a path."""
    if suite in (BUILTIN, "builtin"):
        return load_suite(builtin_path(), BUILTIN, builtin=True)
    if suite == "test":
        return load_suite(ws.root / "test", "test")
    return load_suite(Path(suite).expanduser().absolute())


def known(ws: Workspace) -> list[Suite]:
    """The suites `converge eval list` shows: the built-in one, and the workspace's ``test/``."""
    found = [load_suite(builtin_path(), BUILTIN, builtin=True)]
    if (ws.root / "test").is_dir():
        found.append(load_suite(ws.root / "test", "test"))
    return found


def task_digest(root: Path) -> str:
    """sha256 over the task's files (paths and bytes); caches and byte code left out."""
    digest = hashlib.sha256()
    for path in sorted(_files(root)):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and not any(_skipped(part) for part in p.relative_to(root).parts) and p.suffix != ".pyc"
    ]


def _skipped(name: str) -> bool:
    return name in SKIPPED
