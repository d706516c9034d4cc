"""Grounding: every name a model emits is one the repository has.

    ground = Ground(offered=("pkg/a.py", ...), known=frozenset(rmap.files))
    plan_schema(editors, 3, ground, forced)   the plan's targets an enumeration of map paths
    check_plan(plan, editors, ground)         steps that name what is not there, with feedback
    edits_grammar({"pkg/a.py": text}, [])     a coder's path one of the files shown, its search
                                              text a run of whole lines of that file

Plans are grounded by JSON schema (servers decode against it too); edits by a GBNF grammar,
which only the in-process backend reads (servers get :func:`edits_schema` and feedback).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.agents.cards import Plan, PlanStep
from orchestrator.agents.edits import EditProposal, normal_path
from orchestrator.errors import ConvergeError, EditError
from orchestrator.models.grammar import Grammar, alternatives, array, json_literal, obj

MAX_TARGETS = 4
MAX_CREATES = 2
MAX_EDITS = 6
MAX_SUMMARY = 200  # characters
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
# folders (dot folders too: .github), then a dot file or a name with a suffix; never `.` or `..`
NEW_FILE_PATTERN = rf"^([.]?{_NAME}/)*([.]{_NAME}|{_NAME}[.][A-Za-z0-9]+)$"


class PlanRejected(ConvergeError):
    """No step of the planner's plan can be carried out: the run fails, saying why."""

    exit_code = 1


@dataclass(frozen=True)
class Ground:
    """What a model may name: ``offered`` (ranked paths it is shown) and every file of the map."""

    offered: tuple[str, ...]
    known: frozenset[str]


@dataclass(frozen=True)
class ForcedStep:
    """A step the plan must begin with: a tool agent the goal asks for, on the files its dry run found."""

    agent: str
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckedPlan:
    """The plan's steps that can be carried out, and what was wrong with the others (for the planner)."""

    plan: Plan
    problems: list[str] = field(default_factory=list)


# --- plans -----------------------------------------------------------------------------------------


def plan_schema(
    editors: Sequence[str], max_steps: int, ground: Ground | None, forced: Sequence[ForcedStep] = ()
) -> dict[str, Any]:
    """The plan schema, bounded so constrained decoding always ends; targets are paths of the map offered
    by ``ground`` (None: any string, for checking an answer: :func:`check_plan` says what is wrong with a path).

    ``forced`` steps come first, with their agent fixed and their targets among their files; the
    planner may add free steps after them up to ``max_steps``.
    """
    offered = ground.offered if ground is not None else None
    free = _step_schema({"enum": list(editors)}, offered)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"goal": {"type": "string", "maxLength": 200}, "steps": {}},
        "required": ["goal", "steps"],
        "additionalProperties": False,
        "$defs": {"Step": free},
    }
    if not forced:
        schema["properties"]["steps"] = {
            "type": "array",
            "items": {"$ref": "#/$defs/Step"},
            "minItems": 1,
            "maxItems": max_steps,
        }
        return schema
    firsts = [_forced_schema(f, offered) for f in forced]
    shapes = []
    for length in range(len(firsts), max(max_steps, len(firsts)) + 1):
        items = [*firsts, *([{"$ref": "#/$defs/Step"}] * (length - len(firsts)))]
        shapes.append({"type": "array", "prefixItems": items, "items": False, "minItems": length, "maxItems": length})
    schema["properties"]["steps"] = shapes[0] if len(shapes) == 1 else {"anyOf": shapes}
    return schema


def _forced_schema(step: ForcedStep, offered: Sequence[str] | None) -> dict[str, Any]:
    """A forced step: its agent, and its targets the files its tool's dry run found (all of them: a tool's
    fix is safe, and a small planner picks a few at random), else any offered path."""
    schema = _step_schema({"const": step.agent}, offered)
    if step.targets and offered is not None:  # checking: any targets, :func:`with_forced_targets` sets them
        schema["properties"]["targets"] = {"const": list(step.targets)}
    return schema


def with_forced_targets(steps: Sequence[PlanStep], forced: Sequence[ForcedStep]) -> list[PlanStep]:
    """``steps`` with the forced tool steps' targets those their dry runs found, whatever the model named
    (a server that does not decode against the schema, a recorded answer from before the dry run changed)."""
    fixed = [
        step.model_copy(update={"targets": list(f.targets), "creates": []}) if f.targets else step
        for step, f in zip(steps, forced, strict=False)
    ]
    return [*fixed, *steps[len(fixed) :]]


def _step_schema(agent: dict[str, Any], paths: Sequence[str] | None) -> dict[str, Any]:
    targets: dict[str, Any] = {"type": "array", "maxItems": MAX_TARGETS if paths or paths is None else 0}
    if paths:
        targets["items"] = {"enum": list(paths)}
    elif paths is None:
        targets["items"] = {"type": "string", "maxLength": 200}
    return {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 120},
            "agent": agent,
            "targets": targets,
            "acceptance": {"type": "array", "items": {"type": "string", "maxLength": 160}, "maxItems": 3},
            "creates": {
                "type": "array",
                "items": {"type": "string", "pattern": NEW_FILE_PATTERN},
                "maxItems": MAX_CREATES,
            },
        },
        "required": ["title", "agent", "targets", "acceptance"],
        "additionalProperties": False,
    }


def check_plan(plan: Plan, editors: Sequence[str], ground: Ground) -> CheckedPlan:
    """Steps with targets cleaned (normalised, deduplicated, existing files out of ``creates``), and the
    steps that name an unknown agent or a file the repository lacks (not declared new) taken out, each
    with a sentence for the planner."""
    kept: list[PlanStep] = []
    problems: list[str] = []
    for number, step in enumerate(plan.steps, start=1):
        cleaned, problem = _check_step(step, editors, ground)
        if problem:
            problems.append(f"Step {number} ({step.title!r}) {problem}")
        else:
            kept.append(cleaned)
    return CheckedPlan(plan.model_copy(update={"steps": kept}), problems)


def _check_step(step: PlanStep, editors: Sequence[str], ground: Ground) -> tuple[PlanStep, str]:
    if step.agent not in editors:
        return step, f"names agent {step.agent!r}, which does not exist or cannot edit; choose one of: " + ", ".join(
            editors
        )
    targets: list[str] = []
    creates: list[str] = []
    for raw in [*step.targets, *step.creates]:
        try:
            path = normal_path(raw)
        except EditError as exc:
            return step, f"names a path that cannot be a file of the repository: {exc}"
        new = raw in step.creates and raw not in step.targets
        if path in ground.known:
            targets.append(path)
        elif new:
            creates.append(path)
        else:
            near = difflib.get_close_matches(path, list(ground.known), n=3, cutoff=0.5)
            hint = f" (nearest: {', '.join(near)})" if near else ""
            return step, (
                f"names {raw!r}, which is not a file of the repository{hint}; name files from the map, "
                "or list a file the step creates under creates"
            )
    update = {"targets": list(dict.fromkeys(targets)), "creates": list(dict.fromkeys(creates))}
    return step.model_copy(update=update), ""


def plan_feedback(problems: Sequence[str]) -> str:
    """The correction the planner is asked for."""
    return (
        "Your plan cannot be carried out as it is:\n- "
        + "\n- ".join(problems)
        + "\nAnswer again with the whole plan, every step naming only files of the repository map."
    )


# --- edits -----------------------------------------------------------------------------------------


def edits_schema(paths: Sequence[str]) -> dict[str, Any]:
    """The edit schema for servers: a bounded number of blocks, each path one of ``paths``.

    String lengths stay free: llama.cpp's grammar compiler unrolls each ``maxLength`` into nested rules.
    """
    schema = EditProposal.model_json_schema()
    schema["properties"]["edits"].update(minItems=1, maxItems=MAX_EDITS)
    if paths:
        schema["$defs"]["EditBlock"]["properties"]["path"] = {"enum": list(paths), "description": "the file"}
    return schema


def edits_grammar(files: Mapping[str, str], new_paths: Sequence[str]) -> str:
    """GBNF of an edit proposal whose blocks each name one of ``files`` with a search text that is a run of
    whole lines of the text shown of it, or one of ``new_paths`` with an empty search text (a creation)."""
    g = Grammar()
    search_key, replace_key = json_literal("search"), json_literal("replace")
    choices = []
    for number, (path, text) in enumerate(files.items()):
        search = g.line_run(f"file{number}", text)
        choices.append(f'{json_literal(path)} "," space {search_key} ":" space {search} "," space {replace_key}')
    for path in new_paths:
        choices.append(f'{json_literal(path)} "," space {search_key} ":" space "\\"\\"" space "," space {replace_key}')
    if not choices:
        raise ValueError("an edit grammar needs at least one file or new path")
    edit = f'"{{" space {json_literal("path")} ":" space ({alternatives(choices)}) ":" space string "}}" space'
    summary = g.rule("summary", f'"\\"" char{{0,{MAX_SUMMARY}}} "\\"" space')  # a small model rambles here
    g.rule("root", obj([("summary", summary), ("edits", array(g.rule("edit", edit), 1, MAX_EDITS))]))
    return g.text()
