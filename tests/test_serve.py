"""`converge serve`: the review app through an in-process client, and in a real headless Chromium.

The session token and CSRF checks, hostile content shown as text, run progress as server-sent
events, and approve / reject / rollback doing what the CLI does on real workspaces (real git,
the Docker sandbox through `converge submit`'s gate, real signing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from starlette.routing import Route
from starlette.testclient import TestClient

from orchestrator.errors import UsageError
from orchestrator.gate import audit
from orchestrator.loop.driver import start_run
from orchestrator.loop.state import Deps
from orchestrator.serve import diffs, security
from orchestrator.serve.actions import Resumer
from orchestrator.serve.app import build_app
from orchestrator.store import changesets, generations, runs
from orchestrator.store.changesets import Changeset
from orchestrator.store.reports import CommandResult, TestReport
from orchestrator.store.workspace import Workspace
from tests.conftest import GIT_ENV, ROOT, MakeRepo, converge, git
from tests.scripted import ScriptedBackend, edit, plan
from tests.test_changesets import Signed, signed  # noqa: F401  (the module fixture: two pending changesets)

TOKEN = "test-token-0123456789"
PORT = 8750
BASE = f"http://127.0.0.1:{PORT}"
ARTIFACTS = ROOT / "build" / "test-artifacts"
BIDI = "\u202e"
SCRIPT = "<script>alert('xss')</script>"

# The Docker SDK's exec streams leave their unix socket to the garbage collector (see test_changesets).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)


def _client(ws: Workspace, resumer: Resumer | None = None, login: bool = True) -> TestClient:
    client = TestClient(build_app(ws, TOKEN, PORT, resumer, stream_seconds=0), base_url=BASE)
    if login:
        assert client.get(f"/?token={TOKEN}", follow_redirects=False).status_code == 303
    return client


def _csrf() -> str:
    return security.csrf_token(TOKEN)


# --- the session ------------------------------------------------------------------------------


def test_every_request_needs_the_token(sample_ws: Workspace) -> None:
    client = _client(sample_ws, login=False)
    for path in ("/", "/changesets", "/runs", "/runs/events", "/repos/sample", "/stats", "/static/app.js"):
        assert client.get(path).status_code == 401, path
    assert client.post("/repos/sample/rollback", data={"csrf": _csrf(), "to": "0"}).status_code == 401
    assert client.get("/changesets?token=wrong").status_code == 401
    assert client.get("/changesets", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/changesets", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200

    first = client.get(f"/changesets?token={TOKEN}&x=1", follow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"] == "/changesets?x=1"  # the token leaves the address bar
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"converge-session-{PORT}={TOKEN};")
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    page = client.get("/changesets")  # the cookie is enough from now on
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert client.get("/static/app.js").status_code == 200
    away = client.get(f"{BASE}//evil.example/?token={TOKEN}", follow_redirects=False)
    assert away.headers["location"] == "/evil.example/"  # a path, never another host


def test_a_post_without_the_csrf_token_is_refused(sample_ws: Workspace) -> None:
    client = _client(sample_ws)
    app = client.app
    posts = [r.path for r in app.routes if isinstance(r, Route) and "POST" in (r.methods or ())]  # type: ignore[attr-defined]
    assert sorted(posts) == ["/changesets/{cs_id}/approve", "/changesets/{cs_id}/reject", "/repos/{repo}/rollback"]
    for path in ("/changesets/abcd/approve", "/changesets/abcd/reject", "/repos/sample/rollback"):
        fields = {"reason": "no", "to": "0", "confirm": "yes"}
        assert client.post(path, data=fields).status_code == 403, path
        assert client.post(path, data={**fields, "csrf": "0" * 64}).status_code == 403, path
        cross = client.post(path, data={**fields, "csrf": _csrf()}, headers={"origin": "http://evil.example"})
        assert cross.status_code == 403, path
    assert "CSRF" in client.post("/changesets/abcd/approve").text
    # with the token the request reaches the library, which answers as the CLI would
    unknown = client.post("/changesets/abcd/approve", data={"csrf": _csrf()})
    assert unknown.status_code == 404 and "unknown changeset" in unknown.text


def test_only_loopback_unless_allowed(ws: Workspace) -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert security.check_bind(host, allow_remote=False) is None
    with pytest.raises(UsageError, match="--allow-remote"):
        security.check_bind("0.0.0.0", allow_remote=False)
    warning = security.check_bind("0.0.0.0", allow_remote=True)
    assert warning is not None and "not loopback" in warning
    proc = converge("-w", str(ws.root), "serve", "--host", "0.0.0.0")
    assert proc.returncode == 2 and "pass --allow-remote" in proc.stderr


# --- hostile content ----------------------------------------------------------------------------


def _hostile_changeset(ws: Workspace, make_repo: MakeRepo) -> Changeset:
    """A changeset record whose every text is an attack, over a real git diff with a bidi file name."""
    repo = make_repo({"ok.py": "x = 1\n"}, name="hostile")
    (repo / f"evil{BIDI}yp.txt").write_text(f"{SCRIPT}\n<img src=x onerror=alert(1)>\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "hostile")
    diff = git(repo, "-c", "core.quotepath=false", "diff", "HEAD~1", "HEAD") + "\n"
    assert BIDI in diff and SCRIPT in diff
    cs = Changeset(
        id="0123456789abcdef",
        repo="sample",
        commit="1" * 40,
        base="2" * 40,
        verdict="review",
        risk="high",
        attestation="proofs/sample/0123456789abcdef.dsse.json",
        base_generation=0,
        tree="3" * 40,
        message=f"{SCRIPT} {BIDI}fixed",
        author=SCRIPT,
        reasons=[SCRIPT],
        tests="0 passed, 1 failed, 0 errors, 0 skipped",
        created=changesets.now(),
    )
    report = TestReport(
        ran=True,
        failed=[f"tests/test_x.py::test_{SCRIPT}"],
        command=CommandResult(argv=["pytest", SCRIPT], exit_code=1, duration=0.5, stdout_tail=f"</pre>{SCRIPT}"),
    )
    reason = {"rule": SCRIPT, "message": f"{BIDI}{SCRIPT}", "file": f"evil{BIDI}yp.txt", "line": 1}
    verdict = {"decision": "review", "risk": "high", "reasons": [SCRIPT], "detail": {"reasons": [reason]}}
    changesets.write_artifact(ws, cs.id, changesets.DIFF, diff.encode())
    changesets.write_artifact(ws, cs.id, changesets.REPORT, report.model_dump_json().encode())
    changesets.write_artifact(ws, cs.id, changesets.VERDICT, json.dumps(verdict).encode())
    changesets.save(ws, cs)
    return cs


def test_hostile_content_is_shown_as_text(sample_ws: Workspace, make_repo: MakeRepo) -> None:
    cs = _hostile_changeset(sample_ws, make_repo)
    client = _client(sample_ws)
    for path in (f"/changesets/{cs.id}", "/changesets", f"/changesets/{cs.id}/verify"):
        page = client.get(path)
        assert page.status_code == 200, path
        html = page.text
        assert "<script>alert" not in html and "<img src=x" not in html, path
        assert BIDI not in html, path  # never a raw override: it would reorder what the reviewer reads
    html = client.get(f"/changesets/{cs.id}").text
    assert "&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt;" in html
    assert "evil\u27e8U+202E\u27e9yp.txt" in html  # the file name, its override made visible
    assert "&lt;/pre&gt;&lt;script&gt;" in html  # failing output
    assert "attestation:" in html  # the missing attestation is named, the rest still shown
    # only the page's own script tag is there
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/app.js" defer>']
    gone = client.get("/changesets/zzzz/verify")  # a fragment for the page, not a whole error page
    assert gone.status_code == 200 and "unknown changeset" in gone.text and "<html" not in gone.text
    raw = client.get(f"/changesets/{cs.id}/diff.patch")
    assert raw.headers["content-type"].startswith("text/plain") and "sandbox" in raw.headers["content-security-policy"]


def test_diff_names_and_line_numbers() -> None:
    assert diffs.unquote('"b/evil\\342\\200\\256yp.txt"') == f"b/evil{BIDI}yp.txt"
    assert diffs.unquote('"a/tab\\there"') == "a/tab\there"
    text = "diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n@@ -3,2 +3,3 @@\n x = 1\n-y = 2\n+y = 3\n+z = 4\n"
    (found,) = diffs.highlight(text).files
    assert (found.name, found.added, found.removed) == ("m.py", 2, 1)
    rows = re.findall(r'<tr class="(\w+)"><td class="ln">(\d*)</td><td class="ln">(\d*)</td>', found.rows)
    assert rows == [("ctx", "3", "3"), ("del", "4", ""), ("add", "", "4"), ("add", "", "5")]


# --- runs ----------------------------------------------------------------------------------------


def _events(body: str) -> list[dict[str, object]]:
    return [json.loads(line.removeprefix("data: ")) for line in body.splitlines() if line.startswith("data: ")]


def test_run_progress_streams_as_server_sent_events(sample_ws: Workspace) -> None:
    ws = sample_ws
    record = runs.RunRecord(id="r-live", repo="sample", goal="speed up", pid=os.getpid(), steps_planned=2)
    runs.save(ws, record.model_copy(update={"started": runs.now()}))
    runs.run_log(ws, record.id, "model", agent="coder", step=1, attempt=2, tokens_in=90, tokens_out=120, seconds=4.0)
    runs.run_log(ws, record.id, "tests", step=1, attempt=2, summary="7 passed, 1 failed, 0 errors, 0 skipped")
    client = _client(ws)

    stream = client.get("/runs/events")
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.text.startswith("retry: ")
    (event,) = _events(stream.text)
    assert {k: event[k] for k in ("id", "status", "stage", "step", "attempt", "tokens_per_second", "tests")} == {
        "id": "r-live",
        "status": "running",
        "stage": "verify",
        "step": 1,
        "attempt": 2,
        "tokens_per_second": 30.0,
        "tests": "7 passed, 1 failed, 0 errors, 0 skipped",
    }
    listing = client.get("/runs").text
    assert 'data-run="r-live"' in listing and "7 passed, 1 failed" in listing and "30.0" in listing
    detail = client.get("/runs/r-live").text
    assert "coder: 120 tokens out in 4.0s" in detail
    assert client.get("/runs/r-nope").status_code == 404


def test_models_and_stats_pages(sample_ws: Workspace) -> None:
    client = _client(sample_ws)
    models = client.get("/models").text
    assert "Memory budget" in models and ("GiB" in models or "MiB" in models)
    stats = client.get("/stats").text
    assert "<svg" in stats and "rolled-back generations by repo" in stats
    assert client.get("/repos").status_code == 200
    assert 'generation <span id="current-generation">0</span>' in client.get("/repos/sample").text


# --- decisions on real changesets (the gate ran in the Docker sandbox) ----------------------------------


@pytest.mark.docker
def test_approve_from_the_page_signs_and_promotes(signed: Signed, tmp_path: Path) -> None:  # noqa: F811
    ws = signed.copy(tmp_path / "copy")
    client = _client(ws)
    page = client.get(f"/changesets/{signed.a}").text
    assert 'id="approve"' in page and "pending" in page
    assert "Verified now" in client.get(f"/changesets/{signed.a}/verify").text
    done = client.post(f"/changesets/{signed.a}/approve", data={"csrf": _csrf()}, follow_redirects=False)
    assert (done.status_code, done.headers["location"]) == (303, f"/changesets/{signed.a}")
    cs = changesets.load(ws, signed.a)
    assert (cs.status, cs.generation, cs.decided_by) == ("approved", 1, "alice@example.com")
    assert audit.check(ws, cs) == []  # the person's signature is on the attestation, as with the CLI
    assert generations.current(ws, "sample").number == 1
    shown = client.get(f"/changesets/{signed.a}").text
    assert "alice@example.com" in shown and 'id="approve"' not in shown
    # the other one was built on generation 0: the CLI's refusal, on the page
    stale = client.post(f"/changesets/{signed.b}/approve", data={"csrf": _csrf()})
    assert stale.status_code == 409 and "rebase it" in stale.text
    assert changesets.load(ws, signed.b).status == "pending"


@pytest.mark.docker
def test_reject_needs_a_reason(signed: Signed, tmp_path: Path) -> None:  # noqa: F811
    ws = signed.copy(tmp_path / "copy")
    client = _client(ws)
    empty = client.post(f"/changesets/{signed.a}/reject", data={"csrf": _csrf(), "reason": "  "})
    assert empty.status_code == 400 and "give a --reason" in empty.text
    assert changesets.load(ws, signed.a).status == "pending"
    client.post(f"/changesets/{signed.a}/reject", data={"csrf": _csrf(), "reason": "docstring says too little"})
    cs = changesets.load(ws, signed.a)
    assert (cs.status, cs.reason, cs.decided_by) == ("rejected", "docstring says too little", "alice@example.com")
    again = client.post(f"/changesets/{signed.a}/approve", data={"csrf": _csrf()})
    assert again.status_code == 400 and "cannot be approved" in again.text


@pytest.mark.docker
def test_rollback_after_a_confirmation(signed: Signed, tmp_path: Path) -> None:  # noqa: F811
    ws = signed.copy(tmp_path / "copy")
    client = _client(ws)
    client.post(f"/changesets/{signed.a}/approve", data={"csrf": _csrf()})
    timeline = client.get("/repos/sample").text
    assert 'href="/repos/sample/rollback?to=0"' in timeline
    confirm = client.get("/repos/sample/rollback?to=0").text
    assert "Make generation 0 of sample current?" in confirm and 'id="confirm-rollback"' in confirm
    unconfirmed = client.post("/repos/sample/rollback", data={"csrf": _csrf(), "to": "0"})
    assert unconfirmed.status_code == 400
    assert generations.current(ws, "sample").number == 1
    client.post("/repos/sample/rollback", data={"csrf": _csrf(), "to": "0", "confirm": "yes"})
    assert generations.current(ws, "sample").number == 0
    statuses = {g.number: g.status for g in generations.lineage(ws, "sample")}
    assert statuses == {0: "current", 1: "rolled-back"}
    assert "Roll forward to 1" in client.get("/repos/sample").text


@pytest.mark.docker
def test_approving_resumes_the_paused_run(sample_ws: Workspace) -> None:
    model = ScriptedBackend(
        [plan(("Remove unused imports", "coder", ["inventory/stock.py"]))],
        [edit("inventory/stock.py", "import os\nimport sys\n", "")],
    )
    deps = Deps(ws=sample_ws, model_for=model.factory())
    paused = start_run(deps, "sample", "drop os and sys from stock.py").record
    assert paused.status == "waiting_review" and paused.waiting_on
    resumer = Resumer(deps_for=lambda ws: Deps(ws=ws, model_for=model.factory()))
    client = _client(sample_ws, resumer)
    assert "waiting_review" in client.get("/runs").text
    client.post(f"/changesets/{paused.waiting_on}/approve", data={"csrf": _csrf()})
    resumer.wait(timeout=120)
    done = runs.load(sample_ws, paused.id)
    assert (done.status, done.steps[0].generation) == ("completed", 1), done.reason
    assert generations.current(sample_ws, "sample").number == 1
    (event,) = _events(client.get("/runs/events").text)
    assert (event["status"], event["stage"]) == ("completed", "done")


# --- in a real browser ---------------------------------------------------------------------------


@pytest.fixture
def served(signed: Signed, tmp_path: Path) -> Iterator[tuple[Workspace, str]]:  # noqa: F811
    """`converge serve --port 0` over a copy of the signed workspace, as a subprocess; yields its URL."""
    ws = signed.copy(tmp_path / "copy")
    env = {k: v for k, v in os.environ.items() if k != "CONVERGE_WORKSPACE"} | GIT_ENV
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "-w", str(ws.root), "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
    assert proc.stdout is not None
    try:
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[\w-]+", url), f"{url!r}; {log.read_text()}"
        yield ws, url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()


def _chromium(profile: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"]
    for flag in [*flags, "--window-size=1280,1400"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)


@pytest.mark.docker
@pytest.mark.browser
def test_a_person_approves_in_chromium(served: tuple[Workspace, str], tmp_path: Path) -> None:
    ws, url = served
    browser = _chromium(Path(tempfile.mkdtemp(dir=tmp_path, prefix="chromium-")))
    try:
        browser.get(url)
        assert browser.current_url.endswith("/changesets")  # the token traded for the cookie
        browser.find_element(By.LINK_TEXT, _pending(ws)).click()
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: "done" in b.find_element(By.ID, "verify").get_attribute("class"))
        assert "Verified now" in browser.find_element(By.ID, "verify").text
        _screenshot(browser, tmp_path, "review-page.png")

        browser.find_element(By.ID, "approve").click()
        wait.until(lambda b: b.find_elements(By.ID, "cs-status") or b.find_elements(By.ID, "error"))
        assert not browser.find_elements(By.ID, "error"), browser.find_element(By.ID, "error").text
        assert browser.find_element(By.ID, "cs-status").text == "approved"
        assert browser.find_element(By.ID, "cs-generation").text == "1"
        assert generations.current(ws, "sample").number == 1
        browser.get(url.split("?")[0] + "repos/sample")
        assert browser.find_element(By.ID, "current-generation").text == "1"
        _screenshot(browser, tmp_path, "generations-page.png")
    finally:
        browser.quit()


def _pending(ws: Workspace) -> str:
    return next(c.id for c in changesets.list_changesets(ws, status="pending"))


def _screenshot(browser: webdriver.Chrome, tmp_path: Path, name: str) -> None:
    """A test artifact: in the test's directory and under build/test-artifacts/."""
    assert browser.save_screenshot(str(tmp_path / name))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / name, ARTIFACTS / name)
