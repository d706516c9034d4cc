"""The built-in suite: every task loads, every check fails on its start tree, and its reference answers solve it."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from orchestrator.agents.cards import Plan, load_cards
from orchestrator.evals.runner import EvalRequest, start_eval
from orchestrator.evals.suite import BUILTIN, answers_path, builtin_path, load_suite
from orchestrator.store.workspace import Workspace

KINDS = {"unused-imports", "import-order", "formatting", "lint"}  # tool-solvable
MODEL_KINDS = {"type-hints", "extract-helper", "rename", "deprecated", "docstring", "off-by-one"}


def test_every_builtin_task_loads_with_its_reference_answers() -> None:
    suite = load_suite(builtin_path(), BUILTIN, builtin=True)
    assert suite.broken == ()
    assert len(suite.tasks) >= 24
    tags = Counter(tag for task in suite.tasks for tag in task.spec.tags)
    assert set(tags) >= KINDS | MODEL_KINDS, tags
    assert tags["tool"] >= 8 and tags["model"] >= 12
    for task in suite.tasks:
        assert {"tool", "model"} & set(task.spec.tags), task.name
    packages = {next(p.name for p in t.repo_dir.iterdir() if (p / "__init__.py").is_file()) for t in suite.tasks}
    assert len(packages) >= 3, packages
    agents = set(load_cards())
    for task in suite.tasks:
        lines = (answers_path() / f"{task.name}.jsonl").read_text().splitlines()
        plan = Plan.model_validate_json(json.loads(lines[0])["text"])
        assert {step.agent for step in plan.steps} <= agents, task.name
        tool = "tool" in task.spec.tags
        assert (len(lines) == 1) == tool, f"{task.name}: tool tasks need no edits, model tasks do"


@pytest.mark.docker
@pytest.mark.slow
def test_every_check_fails_on_its_start_tree_and_the_reference_answers_pass_it(ws: Workspace) -> None:
    """The whole built-in suite through the full gate with the reference answers as the replay model."""
    binding = f"replay:{answers_path()}"
    suite = load_suite(builtin_path(), BUILTIN, builtin=True)
    outcome = start_eval(ws, EvalRequest(suite=suite, models={"planner": binding, "coder": binding}, parallel=2))
    invalid = [r.task for r in outcome.results if r.invalid]
    assert invalid == [], f"checks that already pass on the start tree: {invalid}"
    unsolved = {r.task: f"{r.failure}: {r.reason}" for r in outcome.results if not r.solved}
    assert unsolved == {}
    assert outcome.summary.rate.rate == 1.0 and outcome.summary.valid == len(suite.tasks)
