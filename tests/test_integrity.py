"""The gate keeps the tests honest, in the real sandbox on the sample repo: forged runs, hidden, renamed,
skipped and deselected tests, collection config and harness patches (tests/corpus/integrity/), each
judged as a person's submission and as a model's proposal; and `converge submit` end to end."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.gate.apply import apply_patch, candidate, commit_signed
from orchestrator.gate.judge import Judgement, judge
from orchestrator.gate.provenance import AttemptKey, Provenance
from orchestrator.gate.verify import Verification, verify
from orchestrator.store import generations
from orchestrator.store.setup import add_repo, init_workspace
from orchestrator.store.workspace import Workspace
from tests.conftest import SAMPLE, converge, git

pytestmark = pytest.mark.docker

CORPUS = Path(__file__).resolve().parent / "corpus" / "integrity"
PATCHES = sorted(CORPUS.glob("*.patch"))
MODEL = Provenance(author="coder", agent_card_sha256="1" * 64, model_sha256="0" * 64)


@dataclass(frozen=True)
class Expected:
    """A corpus patch's header: the verdicts for a person and for a model, rules that fire, names shown."""

    human: str
    model: str
    rules: set[str]
    names: list[str]

    @classmethod
    def of(cls, patch: Path) -> Expected:
        head = dict(line[2:].split(": ", 1) for line in patch.read_text().splitlines()[:4])
        rules = {r for r in head["rules"].strip().split(",") if r}
        names = [n for n in head["names"].strip().split(",") if n]
        return cls(head["human"].strip(), head["model"].strip(), rules, names)


def _sample_workspace(root: Path) -> Workspace:
    src = root / "sample-src"
    shutil.copytree(SAMPLE, src, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    git(src, "init", "-q", "-b", "main")
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", "initial")
    ws = init_workspace(root / "ws")
    add_repo(ws, str(src), name="sample")
    return ws


@pytest.fixture(scope="module")
def corpus_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """One workspace for the corpus: every patch goes onto generation 0 (the base runs once, then is cached)."""
    return _sample_workspace(tmp_path_factory.mktemp("integrity"))


def _through_the_gate(ws: Workspace, patch: Path, attempt: int = 1) -> tuple[Verification, Judgement, Judgement]:
    """Apply, verify (real sandbox), and judge ``patch`` twice: as a person's and as a model's change."""
    base = generations.current(ws, "sample").commit
    key = AttemptKey("corpus", patch.stem.replace("_", "-"), attempt)
    with candidate(ws, "sample", key, base) as cand:
        apply_patch(cand, patch.read_bytes(), patch.name)
        commit = commit_signed(ws, cand, patch.stem)
        cand.keep("candidates")
    found = verify(ws, "sample", base, commit, key)
    human = judge(ws, "sample", base, commit, found.report, who=Provenance(author="human"), baseline=found.baseline)
    model = judge(ws, "sample", base, commit, found.report, who=MODEL, baseline=found.baseline)
    return found, human, model


def _fired(judgement: Judgement) -> set[str]:
    return {r["rule"] for r in judgement.detail["reasons"] if r["decision"] != "approve"}


def test_the_corpus_covers_every_class() -> None:
    hostile = [p for p in PATCHES if p.name.startswith("i")]
    assert len(hostile) >= 15 and len(PATCHES) - len(hostile) >= 5
    rules = set().union(*(Expected.of(p).rules for p in hostile))
    assert {"baseline", "collection", "tampered", "harness", "test-weakening"} <= rules


@pytest.mark.parametrize("patch", PATCHES, ids=[p.stem for p in PATCHES])
def test_integrity_corpus(patch: Path, corpus_ws: Workspace) -> None:
    expected = Expected.of(patch)
    found, human, model = _through_the_gate(corpus_ws, patch)
    report = found.report
    assert report.witnessed and not report.broken, f"{patch.name}: {report.summary} {report.tampered}"
    verdicts = (str(human.decision), str(model.decision))
    assert verdicts == (expected.human, expected.model), f"{patch.name}: {human.reasons} / {model.reasons}"
    assert expected.rules <= _fired(human) | _fired(model), f"{patch.name}: {_fired(human) | _fired(model)}"
    said = "\n".join(human.reasons + model.reasons)
    for name in expected.names:
        assert name in said, f"{patch.name}: {name} not named in {said}"
    if expected.human == "approve":
        assert human.reasons == [] and found.baseline is not None and not found.baseline.weakened


def test_the_base_runs_once_per_environment(corpus_ws: Workspace) -> None:
    _found, _human, _model = _through_the_gate(corpus_ws, CORPUS / "b01_add_test.patch", attempt=2)
    base = generations.current(corpus_ws, "sample").commit
    kept = list((corpus_ws.cache / "reference" / "sample").glob(f"{base}-*.json"))
    assert len(kept) == 1  # every corpus patch above was compared with this one run of the base
    at_base = json.loads(kept[0].read_text())
    assert at_base["witnessed"] and len(at_base["passed"]) == 5 and not at_base["tampered"]


def test_a_changed_assertion_is_shown_with_its_hunk(corpus_ws: Workspace) -> None:
    _found, human, _model = _through_the_gate(corpus_ws, CORPUS / "b04_flaky_assertion_fixed.patch", attempt=2)
    changed = [r for r in human.detail["reasons"] if r["rule"] == "test-changed"]
    assert [r["message"] for r in changed] == ["test changed: tests/test_stock.py::test_value_sums_prices"]
    assert "+    assert stock.value() == pytest.approx(2.5, abs=1e-9)" in changed[0]["excerpt"]


# --- `converge submit`, end to end ------------------------------------------------------------------


def _submit(ws: Workspace, name: str) -> tuple[int, dict[str, object]]:
    proc = converge("-w", str(ws.root), "submit", "sample", "--patch", str(CORPUS / name), "--auto-approve", "--json")
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_submit_stops_hidden_and_forged_tests_and_names_them(tmp_path: Path) -> None:
    ws = _sample_workspace(tmp_path)
    for name, status, code in (
        ("i01_conftest_deselect.patch", "pending", 0),
        ("i02_rename_hidden.patch", "pending", 0),
        ("i03_addopts_deselect.patch", "pending", 0),
        ("i13_forged_junit.patch", "rejected", 1),
    ):
        exit_code, cs = _submit(ws, name)
        assert (exit_code, cs["status"], cs["generation"]) == (code, status, None), cs
        assert cs["verdict"] != "approve" and cs["risk"] == "high"
        reasons = "\n".join(str(r) for r in cs["reasons"])  # type: ignore[union-attr]
        assert "tests/test_stock.py::test_value_sums_prices" in reasons, reasons
        shown = converge("-w", str(ws.root), "changeset", "show", str(cs["id"]), check=True).stdout
        assert "test_value_sums_prices" in shown
    assert generations.current(ws, "sample").number == 0  # --auto-approve promoted none of them
    exit_code, added = _submit(ws, "b01_add_test.patch")
    assert (exit_code, added["status"], added["verdict"], added["generation"]) == (0, "approved", "approve", 1)
    # generation 1 is the commit whose full run was just judged: that run is its base run from now on
    kept = list((ws.cache / "reference" / "sample").glob(f"{added['commit']}-*.json"))
    assert len(kept) == 1 and len(json.loads(kept[0].read_text())["passed"]) == 6


def test_changeset_show_prints_a_changed_test_with_its_diff(tmp_path: Path) -> None:
    ws = _sample_workspace(tmp_path)
    _code, cs = _submit(ws, "b04_flaky_assertion_fixed.patch")
    assert cs["verdict"] == "approve"
    shown = converge("-w", str(ws.root), "changeset", "show", str(cs["id"]), check=True).stdout
    assert "test changed: tests/test_stock.py::test_value_sums_prices" in shown
    assert "-    assert stock.value() == pytest.approx(2.5)" in shown
    data = json.loads(converge("-w", str(ws.root), "changeset", "show", str(cs["id"]), "--json", check=True).stdout)
    assert data["tests_changed"][0]["test"] == "tests/test_stock.py::test_value_sums_prices"
