"""Agent cards (``agents/<name>.toml``): loading, prompt assembly, output validation, tool agents.

A card names a role (planner, coder, reviewer, tool), a kind (``model`` or ``tool``), the
model or model role it runs on, its system prompt and prompt pieces, sampling, the schema
its answer must match (``plan``, ``edits``, ``review``), allowed tools and budgets. Tool
agents name a command instead (``ruff check --fix``): it runs in the sandbox on a
candidate worktree and its changes come back as an :class:`EditProposal`, so they pass the
same apply/verify/judge path as a model's edits. A tool card may also name a dry run (what
it would change, read as findings by rule and file) and the kinds of change it makes
(``[[changes]]``: a family in words, its rule codes, the goals it serves).

Shipped cards live in ``agents/`` of Converge's source; a workspace's ``agents/`` overrides
or adds cards by name. A bad card is a ConfigError reading ``agents/x.toml: key: problem``.
"""

from __future__ import annotations

import hashlib
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.agents.edits import EditProposal
from orchestrator.config import format_validation_error
from orchestrator.errors import ConfigError, UsageError
from orchestrator.store.workspace import NAME_RE, Workspace, source_root

Role = Literal["planner", "coder", "reviewer", "tool"]
Kind = Literal["model", "tool"]
SchemaName = Literal["plan", "edits", "review"]
Severity = Literal["info", "warning", "error"]
ReportFormat = Literal["ruff-check", "ruff-format"]


# --- what agents answer -------------------------------------------------------------------


class PlanStep(BaseModel):
    """One step of a plan: what to do, which agent does it, where, and how to tell it is done."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(description="what this step changes, in one sentence")
    agent: str = Field(description="name of the agent card that carries out the step")
    targets: list[str] = Field(default_factory=list, description="files the step is expected to change")
    creates: list[str] = Field(default_factory=list, description="new files the step creates")
    acceptance: list[str] = Field(default_factory=list, description="checks that show the step is done")


class Plan(BaseModel):
    """The planner's answer: the goal and ordered steps."""

    model_config = ConfigDict(extra="forbid")

    goal: str = Field(description="the goal, restated in one sentence")
    steps: list[PlanStep] = Field(min_length=1, description="ordered steps, smallest useful first")


class Finding(BaseModel):
    """One remark of a reviewer."""

    model_config = ConfigDict(extra="forbid")

    severity: Severity = Field(description="info: a remark; warning: should change; error: must not merge")
    path: str | None = Field(default=None, description="file the finding is about, if any")
    message: str = Field(description="what is wrong and what to do about it")


class Review(BaseModel):
    """The reviewer's answer: a summary and findings with severity."""

    model_config = ConfigDict(extra="forbid")

    summary: str = Field(description="one or two sentences on the change")
    findings: list[Finding] = Field(default_factory=list)

    @property
    def blocking(self) -> bool:
        """True when any finding is an error."""
        return any(f.severity == "error" for f in self.findings)


SCHEMAS: dict[str, type[BaseModel]] = {"plan": Plan, "edits": EditProposal, "review": Review}


# --- the card ------------------------------------------------------------------------------

_PIECE_FIELDS: dict[str, tuple[str, ...]] = {
    "context": ("repo_map",),
    "agents": ("agents",),
    "task": ("goal",),
    "step": ("title", "agent", "targets", "acceptance"),
    "files": ("files",),
    "feedback": ("feedback",),
    "answer": ("schema",),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sampling(_Strict):
    """How the model samples."""

    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=1024, gt=0, le=32768)
    seed: int = Field(default=0, ge=0)
    lookup: int = Field(default=0, ge=0, le=32, description="draft tokens by prompt lookup (greedy only; 0: off)")


class Budgets(_Strict):
    """What one step may spend on this agent."""

    attempts: int = Field(default=3, gt=0, le=20, description="proposals per step")
    tokens: int = Field(default=16000, gt=0, description="tokens generated per step")


class PromptPieces(_Strict):
    """Templates of the prompt, each with its own placeholders (see ``_PIECE_FIELDS``)."""

    context: str = "Repository map:\n{repo_map}"
    agents: str = "Agents that can do a step, and what the tool agents would change now:\n{agents}"
    task: str = "Goal: {goal}"
    step: str = "Step: {title}\nTarget files: {targets}\nDone when: {acceptance}"
    files: str = "{files}"
    feedback: str = "Your previous attempt was rejected:\n{feedback}\nFix exactly that and answer again."
    answer: str = "Answer with one JSON object that matches the schema."


class ChangeFamily(_Strict):
    """A kind of change a tool agent makes: in words, by rule code, and the goals it serves."""

    family: str = Field(min_length=1, description="the kind of change in words, e.g. 'unused imports'")
    rules: list[str] = Field(default_factory=list, description="the tool's rule codes for it, e.g. ['F401']")
    goals: list[str] = Field(
        default_factory=list, description="phrases of goals it serves, e.g. 'unused import' (every word must occur)"
    )
    cleanup: list[str] = Field(
        default_factory=list,
        description="rule codes fixed along with it, never used to find files: what its fix leaves behind, e.g. "
        "the imports a rewrite of annotations leaves unused",
    )


class AgentCard(_Strict):
    """One agent card, as read from ``agents/<name>.toml``."""

    name: str = Field(pattern=NAME_RE.pattern, description="the card's name; equals the file name")
    role: Role
    kind: Kind
    description: str = ""
    model: str | None = Field(default=None, description="a registered model name; excludes model_role")
    model_role: str | None = Field(default=None, description="the model role to run on; default: the card's role")
    system: str = Field(default="", description="the system prompt")
    prompt: PromptPieces = Field(default_factory=PromptPieces)
    sampling: Sampling = Field(default_factory=Sampling)
    output: SchemaName | None = Field(default=None, description="schema of the answer: plan, edits or review")
    tools: list[str] = Field(default_factory=list, description="tools the agent may use")
    budgets: Budgets = Field(default_factory=Budgets)
    command: list[str] | None = Field(default=None, description="tool agents: argv run in the sandbox")
    dry_run: list[str] | None = Field(default=None, description="tool agents: argv that reports without changing")
    report: ReportFormat | None = Field(default=None, description="tool agents: how the dry run's output reads")
    rule_option: str | None = Field(default=None, description="tool agents: the option that selects rule codes")
    changes: list[ChangeFamily] = Field(default_factory=list, description="tool agents: the kinds of change made")
    goals: list[str] = Field(default_factory=list, description="tool agents: phrases of goals asking for all of them")

    def binding(self) -> tuple[Literal["model", "role"], str]:
        """What the card runs on: ``("model", name)`` or ``("role", role)``."""
        if self.model is not None:
            return "model", self.model
        return "role", self.model_role or self.role

    @property
    def output_model(self) -> type[BaseModel]:
        """The pydantic model answers must match (tool agents: edits)."""
        return SCHEMAS[self.output or "edits"]


def _problems(card: AgentCard, stem: str) -> list[tuple[str, str]]:
    """What a schema-valid card still gets wrong, as (key, problem); empty when it is fine."""
    found: list[tuple[str, str]] = []
    if card.name != stem:
        found.append(("name", f"{card.name!r} differs from the file name; use {stem!r}"))
    if (card.kind == "tool") != (card.role == "tool"):
        found.append(("kind", f"kind {card.kind!r} does not fit role {card.role!r}; tool agents have both 'tool'"))
    found += _tool_problems(card) if card.kind == "tool" else _model_problems(card)
    return found + _template_problems(card.prompt)


def _tool_problems(card: AgentCard) -> list[tuple[str, str]]:
    found = []
    if not card.command:
        found.append(("command", 'a tool agent needs a command, e.g. ["ruff", "check", "--fix", "."]'))
    if card.model or card.model_role:
        found.append(("model", "a tool agent runs a command, not a model; remove model/model_role"))
    if card.output not in (None, "edits"):
        found.append(("output", "a tool agent's output is always 'edits'"))
    if (card.dry_run is None) != (card.report is None):
        found.append(("report", "a dry run needs a report format (ruff-check, ruff-format), and the other way round"))
    return found


def _model_problems(card: AgentCard) -> list[tuple[str, str]]:
    found = []
    if card.command or card.dry_run or card.changes or card.goals:
        found.append(
            ("command", "only tool agents run a command; remove command, dry_run, changes or set kind = 'tool'")
        )
    if card.model and card.model_role:
        found.append(("model", "give model or model_role, not both"))
    if not card.system.strip():
        found.append(("system", "a model agent needs a system prompt"))
    if card.output is None:
        found.append(("output", "a model agent needs an output schema: plan, edits or review"))
    return found


def _template_problems(pieces: PromptPieces) -> list[tuple[str, str]]:
    found = []
    for piece, allowed in _PIECE_FIELDS.items():
        template = getattr(pieces, piece)
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as exc:
            found.append((f"prompt.{piece}", f"bad template: {exc}"))
            continue
        unknown = sorted(n for n in names if n not in allowed)
        if unknown:
            choices = ", ".join("{" + a + "}" for a in allowed)
            found.append((f"prompt.{piece}", f"unknown placeholder {{{unknown[0]}}}; use {choices}"))
    return found


@dataclass(frozen=True)
class LoadedCard:
    """A validated card with where it came from and the digest attestations record."""

    card: AgentCard
    path: Path
    digest: str  # sha256 of the file's bytes

    @property
    def name(self) -> str:
        return self.card.name


def load_card(path: Path, label: str | None = None) -> LoadedCard:
    """Read and validate one card; errors read ``agents/<file>: key: problem``."""
    label = label or f"agents/{path.name}"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label}: not valid TOML: {exc}") from exc
    try:
        card = AgentCard.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(label, exc)) from exc
    problems = _problems(card, path.stem)
    if problems:
        key, problem = problems[0]
        raise ConfigError(f"{label}: {key}: {problem}")
    return LoadedCard(card=card, path=path, digest=hashlib.sha256(raw).hexdigest())


def card_dirs(ws: Workspace | None) -> list[Path]:
    """Where cards come from, lowest precedence first: shipped, then the workspace's."""
    dirs = [source_root() / "agents"]
    if ws is not None:
        dirs.append(ws.root / "agents")
    return [d for d in dirs if d.is_dir()]


def load_cards(ws: Workspace | None = None) -> dict[str, LoadedCard]:
    """Every card by name; a workspace card replaces a shipped one of the same name."""
    cards: dict[str, LoadedCard] = {}
    for folder in card_dirs(ws):
        for path in sorted(folder.glob("*.toml")):
            loaded = load_card(path)
            cards[loaded.name] = loaded
    return cards


def get_card(cards: dict[str, LoadedCard], name: str) -> LoadedCard:
    """One card by name, or a UsageError listing the known ones."""
    if name not in cards:
        raise UsageError(f"unknown agent {name!r} (known: {', '.join(sorted(cards)) or 'none'})")
    return cards[name]
