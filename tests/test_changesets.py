"""The gate end to end (real git, real sandbox, real policy, real ssh-keygen) and every tamper case."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.errors import EditError, SignatureError, VerificationFailed
from orchestrator.gate import audit, review, submit
from orchestrator.signing import keys
from orchestrator.store import changesets, generations, keyfiles
from orchestrator.store.changesets import Changeset
from orchestrator.store.setup import add_repo, init_workspace
from orchestrator.store.workspace import Workspace
from tests.conftest import SAMPLE, converge, git

REPORT_PY = "inventory/report.py"

# The Docker SDK's exec streams (inside the sandbox backend) leave their unix socket to the
# garbage collector; that ResourceWarning is the backend's to fix, not a failure of the gate.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f", str(path)], check=True)
    return path


def _sample_source(root: Path) -> Path:
    src = root / "sample-src"
    shutil.copytree(SAMPLE, src)
    git(src, "init", "-q", "-b", "main")
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", "initial")
    return src


def _patch(src: Path, rel: str, old: str, new: str, out: Path) -> Path:
    """A unified diff of one replacement in ``src`` (the source is left unchanged)."""
    target = src / rel
    original = target.read_text()
    assert old in original
    target.write_text(original.replace(old, new, 1))
    out.write_text(git(src, "diff") + "\n")
    target.write_text(original)
    return out


def _doc_patch(src: Path, out: Path, text: str = "The item with the lowest unit price, or None.") -> Path:
    return _patch(src, REPORT_PY, "def cheapest(stock):\n", f'def cheapest(stock):\n    """{text}"""\n', out)


def _setup(root: Path) -> tuple[Workspace, Path]:
    ws = init_workspace(root / "ws")
    user_key = _keygen(root / "alice_ed25519")
    cfg = ws.state / "converge.toml"
    cfg.write_text(cfg.read_text() + f'\n[signing]\nuser_key = "{user_key}"\nuser_principal = "alice@example.com"\n')
    src = _sample_source(root)
    add_repo(ws, str(src), "sample")
    return ws, src


@dataclass
class Signed:
    """A workspace holding two pending changesets of the sample repo, made by the real gate."""

    root: Path
    a: str
    b: str

    def copy(self, dest: Path) -> Workspace:
        shutil.copytree(self.root, dest, symlinks=True, ignore=shutil.ignore_patterns("cache"))
        return Workspace(dest / "ws")


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Signed:
    root = tmp_path_factory.mktemp("signed")
    ws, src = _setup(root)
    a = submit.submit(ws, "sample", _doc_patch(src, root / "a.diff"), "document cheapest")
    b = submit.submit(ws, "sample", _doc_patch(src, root / "b.diff", "Cheapest item."), "document cheapest briefly")
    assert a.status == b.status == "pending"
    return Signed(root, a.id, b.id)


def _fields(ws: Workspace, cs_id: str) -> set[str]:
    return {p.field for p in audit.check(ws, changesets.load(ws, cs_id))}


# --- the gate --------------------------------------------------------------------------------


@pytest.mark.docker
def test_submit_verify_approve_rollback_from_the_command_line(tmp_path: Path) -> None:
    ws, src = _setup(tmp_path)
    w = ["-w", str(ws.root)]
    patch = _doc_patch(src, tmp_path / "doc.diff")
    out = converge(*w, "submit", "sample", "--patch", str(patch), "-m", "document cheapest", "--json", check=True)
    cs = json.loads(out.stdout)
    for key in ("id", "repo", "run", "status", "commit", "base", "generation", "risk", "verdict", "attestation"):
        assert key in cs
    assert (cs["status"], cs["verdict"], cs["generation"]) == ("pending", "approve", None)
    assert cs["base"] == generations.current(ws, "sample").commit

    # the same patch again is the same changeset, not a second one
    again = converge(*w, "submit", "sample", "--patch", str(patch), "--json", check=True)
    assert json.loads(again.stdout)["commit"] == cs["commit"]
    assert len(changesets.list_changesets(ws)) == 1

    # plain git accepts the signature in the registered repo
    verified = subprocess.run(
        ["git", "verify-commit", cs["commit"]], cwd=ws.src / "sample", capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stderr
    assert 'Good "git" signature for converge@workspace' in verified.stderr
    assert converge(*w, "changeset", "verify", cs["id"]).returncode == 0

    listed = json.loads(converge(*w, "changeset", "list", "--status", "pending", "--json", check=True).stdout)
    assert [c["id"] for c in listed] == [cs["id"]]
    shown = json.loads(converge(*w, "changeset", "show", cs["id"][:8], "--json", check=True).stdout)
    assert '+    """The item with the lowest unit price' in shown["diff"]
    assert [s["principal"] for s in shown["signatures"]] == ["converge@workspace"]
    text = converge(*w, "changeset", "show", cs["id"], check=True).stdout
    assert f"reviewer signature: none yet (pending review: converge changeset approve {cs['id']})" in text

    approved = json.loads(converge(*w, "changeset", "approve", cs["id"], "--json", check=True).stdout)
    assert (approved["status"], approved["generation"], approved["decided_by"]) == ("approved", 1, "alice@example.com")
    assert converge(*w, "changeset", "verify", cs["id"]).returncode == 0
    shown = json.loads(converge(*w, "changeset", "show", cs["id"], "--json", check=True).stdout)
    assert sorted(s["principal"] for s in shown["signatures"]) == ["alice@example.com", "converge@workspace"]

    # the generation's SBOM is written and the attestation carries its digest
    sbom = ws.root / "sbom" / "sample" / "gen-1.cdx.json"
    doc = json.loads(sbom.read_text())
    assert doc["bomFormat"] == "CycloneDX" and doc["metadata"]["component"]["name"] == "inventory"
    env = json.loads((ws.root / cs["attestation"]).read_text())
    statement = json.loads(base64.b64decode(env["payload"]))
    assert statement["predicate"]["sbom"]["sha256"] == hashlib.sha256(sbom.read_bytes()).hexdigest()
    assert statement["subject"][0]["digest"]["gitCommit"] == cs["commit"]
    assert git(ws.src / "sample", "rev-parse", "HEAD") == cs["commit"]

    gens = json.loads(converge(*w, "generation", "list", "sample", "--json", check=True).stdout)
    assert [(g["number"], g["changesets"]) for g in gens] == [(0, []), (1, [cs["id"]])]
    back = converge(*w, "rollback", "sample", "--json", check=True)
    assert json.loads(back.stdout)["number"] == 0
    assert git(ws.src / "sample", "rev-parse", "HEAD") == cs["base"]
    # the changeset stays approved, and says that its generation was rolled back
    [undone] = json.loads(converge(*w, "changeset", "list", "--json", check=True).stdout)
    assert (undone["status"], undone["generation_status"]) == ("approved", "rolled-back")
    table = converge(*w, "changeset", "list", env={"COLUMNS": "200"}, check=True).stdout
    assert "approved (rolled-back)" in table
    assert "status: approved (rolled-back)" in converge(*w, "changeset", "show", cs["id"], check=True).stdout


@pytest.mark.docker
def test_policy_reject_keeps_the_commit_under_failed(tmp_path: Path) -> None:
    ws, src = _setup(tmp_path)
    secret = 'API_KEY = "Zx81bQ2LmN4pR7sT9vW3yA6cE0gH5jK8"\n'
    patch = _patch(src, REPORT_PY, "import math\n", "import math\n\n" + secret, tmp_path / "secret.diff")
    cs = submit.submit(ws, "sample", patch, "add a key")
    assert (cs.status, cs.verdict, cs.decided_by) == ("rejected", "reject", "policy")
    assert cs.reason and "secret" in cs.reason.lower()
    assert git(ws.src / "sample", "rev-parse", f"refs/converge/failed/cs-{cs.id}") == cs.commit
    assert audit.check(ws, cs) == []  # rejected, but still attested and verifiable
    refused = converge("-w", str(ws.root), "changeset", "approve", cs.id)
    assert refused.returncode == 2 and "rejected" in refused.stderr
    assert generations.current(ws, "sample").number == 0


@pytest.mark.docker
def test_failing_tests_make_no_changeset_and_auto_approve_promotes(tmp_path: Path) -> None:
    ws, src = _setup(tmp_path)
    broken = _patch(
        src, REPORT_PY, "key=lambda item: item.unit_price", "key=lambda item: -item.unit_price", tmp_path / "b.diff"
    )
    with pytest.raises(VerificationFailed, match="failed"):
        submit.submit(ws, "sample", broken, "break cheapest")
    assert changesets.list_changesets(ws) == []
    kept = gitops_refs(ws.src / "sample", "refs/converge/failed/")
    assert len(kept) == 1  # the candidate is kept, never deleted

    cs = submit.submit(ws, "sample", _doc_patch(src, tmp_path / "doc.diff"), "doc", auto_approve=True)
    assert (cs.status, cs.generation, cs.decided_by) == ("approved", 1, changesets.AUTO)
    assert audit.check(ws, cs) == []


@pytest.mark.docker
def test_resubmitting_after_a_failure_or_a_rollback_goes_through_the_gate_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Ada Person")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "ada@example.com")
    ws, src = _setup(tmp_path)
    broken = _patch(
        src, REPORT_PY, "key=lambda item: item.unit_price", "key=lambda item: -item.unit_price", tmp_path / "b.diff"
    )
    for _ in range(2):  # the second try meets the first one's kept candidate, and still says why it fails
        proc = converge("-w", str(ws.root), "submit", "sample", "--patch", str(broken), "--json")
        assert proc.returncode == 1 and "tests do not pass" in proc.stderr, proc.stderr
        assert json.loads(proc.stdout)["error"]["exit"] == 1, "--json: one document on stdout, even on failure"
    assert len(gitops_refs(ws.src / "sample", "refs/converge/failed/")) == 2

    doc = _doc_patch(src, tmp_path / "doc.diff")
    first = submit.submit(ws, "sample", doc, "doc", auto_approve=True)
    assert (first.status, first.generation) == ("approved", 1)
    author = git(ws.src / "sample", "log", "-1", "--format=%an <%ae> / %cn", first.commit)
    assert author == "Ada Person <ada@example.com> / Converge", "a person's change keeps their name"
    generations.rollback(ws, "sample")
    again = submit.submit(ws, "sample", doc, "doc", auto_approve=True)
    assert again.id != first.id and (again.status, again.generation) == ("approved", 2)
    assert generations.current(ws, "sample").number == 2


def gitops_refs(repo: Path, prefix: str) -> list[str]:
    return [line for line in git(repo, "for-each-ref", "--format=%(refname)", prefix).splitlines() if line]


def test_a_patch_that_does_not_apply_is_bad_input(ws: Workspace, tmp_path: Path) -> None:
    add_repo(ws, str(_sample_source(tmp_path)), "sample")
    bad = tmp_path / "bad.diff"
    bad.write_text("--- a/nope.py\n+++ b/nope.py\n@@ -1 +1 @@\n-x\n+y\n")
    with pytest.raises(EditError, match="does not apply"):
        submit.submit(ws, "sample", bad)
    proc = converge("-w", str(ws.root), "submit", "sample", "--patch", str(bad))
    assert proc.returncode == 2 and "bad.diff" in proc.stderr
    missing = converge("-w", str(ws.root), "submit", "sample", "--patch", str(tmp_path / "none.diff"))
    assert missing.returncode == 2 and "none.diff" in missing.stderr


@pytest.mark.docker
def test_reject_by_a_person_records_the_reason(signed: Signed, tmp_path: Path) -> None:
    ws = signed.copy(tmp_path / "copy")
    proc = converge("-w", str(ws.root), "changeset", "reject", signed.b, "--reason", "too terse", "--json", check=True)
    data = json.loads(proc.stdout)
    assert (data["status"], data["reason"], data["decided_by"]) == ("rejected", "too terse", "alice@example.com")
    assert git(ws.src / "sample", "rev-parse", f"refs/converge/failed/cs-{signed.b}") == data["commit"]
    assert [c.id for c in changesets.list_changesets(ws, status="rejected")] == [signed.b]


# --- tampering: every case is caught by verify, and promotion refuses it ----------------------


def _rewrite(ws: Workspace, cs: Changeset, sign: bool) -> None:
    """Replace the changeset's commit by another with the same tree and parent (signed or not)."""
    repo = ws.src / "sample"
    args = keys.git_sign_config(keys.workspace_signer(ws), keyfiles.allowed_signers_path(ws)) if sign else []
    new = git(repo, *args, "commit-tree", *(["-S"] if sign else []), cs.tree, "-p", cs.base, "-m", "rewritten")
    changesets.save(ws, cs.model_copy(update={"commit": new}))


def _edit_envelope(ws: Workspace, cs: Changeset, change: Callable[[dict[str, object]], None]) -> None:
    path = ws.root / cs.attestation
    env = json.loads(path.read_text())
    change(env)
    path.write_text(json.dumps(env))


def _edit_payload(env: dict[str, object]) -> None:
    statement = json.loads(base64.b64decode(str(env["payload"])))
    statement["predicate"]["tests"]["summary"] = "100 passed"
    env["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()


def _flip_signature(env: dict[str, object]) -> None:
    sigs = env["signatures"]
    assert isinstance(sigs, list)
    raw = bytearray(base64.b64decode(sigs[0]["sig"]))
    raw[-1] ^= 0x80
    sigs[0]["sig"] = base64.b64encode(bytes(raw)).decode()


def _edit_report(ws: Workspace, cs: Changeset) -> None:
    path = changesets.artifact_path(ws, cs.id, changesets.REPORT)
    report = json.loads(path.read_text())
    report["failed"] = ["tests/test_report.py::test_cheapest"]
    path.write_text(json.dumps(report, indent=2))


def _swap_allowed_signers(ws: Workspace, cs: Changeset) -> None:
    other = _keygen(ws.root.parent / "intruder")
    path = keyfiles.allowed_signers_path(ws)
    workspace_key = keyfiles.public_key_of(keys.workspace_signer(ws).key)
    path.write_text(path.read_text().replace(workspace_key, keyfiles.public_key_of(other)))


def _move_attestation(ws: Workspace, cs: Changeset, other: str) -> None:
    shutil.copyfile(ws.root / changesets.load(ws, other).attestation, ws.root / cs.attestation)


TAMPER = {
    "rewritten commit": (lambda ws, cs, other: _rewrite(ws, cs, sign=True), "commit"),
    "edited attestation payload": (
        lambda ws, cs, other: _edit_envelope(ws, cs, _edit_payload),
        "attestation signature",
    ),
    "flipped signature bytes": (lambda ws, cs, other: _edit_envelope(ws, cs, _flip_signature), "attestation signature"),
    "edited test report": (lambda ws, cs, other: _edit_report(ws, cs), "test_report"),
    "swapped allowed-signers key": (lambda ws, cs, other: _swap_allowed_signers(ws, cs), "commit signature"),
    "unsigned commit": (lambda ws, cs, other: _rewrite(ws, cs, sign=False), "commit signature"),
    "attestation moved to another changeset": (_move_attestation, "changeset"),
}


@pytest.mark.docker
@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampering_is_detected_and_promotion_fails_closed(signed: Signed, tmp_path: Path, case: str) -> None:
    ws = signed.copy(tmp_path / "copy")
    assert audit.check(ws, changesets.load(ws, signed.a)) == []
    tamper, field = TAMPER[case]
    tamper(ws, changesets.load(ws, signed.a), signed.b)
    assert field in _fields(ws, signed.a)
    with pytest.raises(SignatureError, match=field):
        review.approve(ws, signed.a)
    assert generations.current(ws, "sample").number == 0
    assert changesets.load(ws, signed.a).status == "pending"


@pytest.mark.docker
def test_verify_command_names_the_field_and_exits_1(signed: Signed, tmp_path: Path) -> None:
    ws = signed.copy(tmp_path / "copy")
    _edit_report(ws, changesets.load(ws, signed.a))
    proc = converge("-w", str(ws.root), "changeset", "verify", signed.a, "--json")
    assert proc.returncode == 1
    assert "test_report" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is False and [p["field"] for p in result["problems"]] == ["test_report"]
    assert converge("-w", str(ws.root), "changeset", "verify", signed.b).returncode == 0


@pytest.mark.docker
def test_a_patch_the_policy_rejects_exits_1_with_its_json(tmp_path: Path) -> None:
    ws, src = _setup(tmp_path)
    key = 'AWS_KEY = "AKIAQWERTYUIOPASDFGH"\n'
    patch = _patch(src, REPORT_PY, "def cheapest(stock):\n", f"{key}\n\ndef cheapest(stock):\n", tmp_path / "key.diff")
    proc = converge("-w", str(ws.root), "submit", "sample", "--patch", str(patch), "--json")
    assert proc.returncode == 1, proc.stderr
    cs = json.loads(proc.stdout)
    assert (cs["status"], cs["verdict"]) == ("rejected", "reject")
    assert generations.current(ws, "sample").number == 0
