"""`converge stats`: every figure checked against real runs (real git, Docker sandbox, policy; a scripted model)."""

from __future__ import annotations

import json

import pytest

from orchestrator.loop.driver import start_run
from orchestrator.loop.state import Deps
from orchestrator.ops import stats
from orchestrator.store import generations, runs
from orchestrator.store.workspace import Workspace
from tests.conftest import converge
from tests.scripted import ScriptedBackend, edit, plan

pytestmark = pytest.mark.docker

STOCK = "inventory/stock.py"
STEP = ("Drop os and sys from stock.py", "coder", [STOCK])
UNUSED = "import os\nimport sys\n"
SECRET = edit(STOCK, UNUSED, 'API_KEY = "abcdefghijklmnopqrstuvwxyz0123456789"\n')
BREAKING = edit(STOCK, 'replace(" ", "-")', 'replace(" ", "_")')
SLOW_TESTS = edit("tests/test_stock.py", "import pytest\n", "import time\n\nimport pytest\n\ntime.sleep(2.5)\n")


def _run(ws: Workspace, step: tuple[str, str, list[str]], answers: list[dict[str, object]]) -> runs.RunRecord:
    model = ScriptedBackend([plan(step)], list(answers))
    return start_run(Deps(ws=ws, model_for=model.factory()), "sample", step[0], auto_approve=True).record


def test_stats_of_passing_failing_and_rolled_back_runs(sample_ws: Workspace) -> None:
    ws = sample_ws
    config = ws.state / "converge.toml"
    config.write_text(config.read_text().replace("[run]\n", "[run]\nreproducibility_check = true\n", 1))
    assert ws.config().run.reproducibility_check
    # 1: the first attempt leaks a secret (policy rejects), the second is promoted -> generation 1
    first = _run(ws, STEP, [SECRET, edit(STOCK, UNUSED, "")])
    assert (first.status, first.steps[0].attempts) == ("completed", 2), first.reason
    # 2: three attempts break a test -> the run fails
    failed = _run(ws, ("Use underscores in skus", "coder", [STOCK]), [BREAKING] * 3)
    assert failed.status == "failed"
    # 3: tests become slower -> generation 2, then rolled back
    slow = _run(ws, ("Slow the tests down", "coder", ["tests/test_stock.py"]), [SLOW_TESTS])
    assert slow.status == "completed", slow.reason
    generations.rollback(ws, "sample")

    found = stats.compute(ws)

    assert found["runs"] == {"total": 3, "finished": 3, "completed": 2, "success_rate": 0.6667}
    assert found["steps"] == {
        "total": 3,
        "promoted": 2,
        "outcomes": {"failed": 1, "promoted": 2},
        "success_rate": 0.6667,
    }
    # verified attempts: 2 (run 1) + 3 (run 2) + 1 (run 3); the full suite ran twice for the three that
    # passed their selected tests (run 2's attempts stopped at the failing selected tests)
    assert found["reproducible_builds"] == {"verified": 6, "checked": 3, "identical": 3, "rate": 1.0}
    repro = sorted(p.name for p in (ws.cache / "runs" / first.id).glob("*.repro.json"))
    assert repro == ["1-1.repro.json", "1-2.repro.json"]
    assert set(found["policy_rejections"]) == {"secret"}
    assert found["policy_rejections"]["secret"]["reject"] >= 1
    assert found["policy_rejections"]["secret"]["review"] == 0
    assert found["rollbacks"] == {"sample": 1}

    per_step = found["time_per_step"]
    assert per_step["steps_measured"] == 3
    total_run_seconds = first.seconds + failed.seconds + slow.seconds
    assert 0 < per_step["mean_seconds"] * 3 <= total_run_seconds + 3

    trend = found["test_time_trend"]["sample"]
    assert [(p["generation"], p["status"]) for p in trend["points"]] == [(1, "current"), (2, "rolled-back")]
    assert [p["changeset"] for p in trend["points"]] == [first.changesets[0], slow.changesets[0]]
    gen1, gen2 = (p["seconds"] for p in trend["points"])
    assert gen2 > gen1 + 2.0, "the 2.5 s sleep shows in the test time"
    assert trend["change"] == pytest.approx((gen2 - gen1) / gen1, abs=1e-3)
    assert trend["regression"] is True

    # the command prints the same document, and a table for people
    out = converge("-w", str(ws.root), "stats", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["runs"] == found["runs"]
    text = converge("-w", str(ws.root), "stats")
    assert text.returncode == 0, text.stderr
    assert "2/3 finished runs completed" in text.stdout and "REGRESSION" in text.stdout


def test_stats_of_a_workspace_without_runs(sample_ws: Workspace) -> None:
    found = stats.compute(sample_ws)
    assert found["runs"]["success_rate"] is None and found["steps"]["success_rate"] is None
    assert found["reproducible_builds"]["rate"] is None
    assert found["time_per_step"] == {"steps_measured": 0, "mean_seconds": None}
    assert found["test_time_trend"]["sample"] == {
        "points": [],
        "median_seconds": None,
        "change": None,
        "regression": False,
    }
    assert found["rollbacks"] == {"sample": 0} and found["policy_rejections"] == {}
