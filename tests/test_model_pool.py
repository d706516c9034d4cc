"""A pool of model servers: two real llama_cpp.server processes on loopback serving the embedded model,
least-busy routing, failover when one is killed mid-call, the server's window, and `converge model list`."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.errors import EndpointUnavailable
from orchestrator.models import runtime
from orchestrator.models.backends import CallLog, Completion, CompletionRequest, Recorded
from orchestrator.models.openai import OpenAIBackend
from orchestrator.models.pool import FAILOVER_KIND, EndpointPool
from orchestrator.models.registry import embedded_model_path
from orchestrator.store.workspace import Workspace
from tests.conftest import converge

pytestmark = pytest.mark.model

STORY = CompletionRequest(
    system="You are a storyteller.", user="Tell a long story about a ship in a storm.", max_tokens=200
)


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(log: Path, n_ctx: int) -> Server:
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()), "--n_ctx", str(n_ctx)]
    cmd += ["--n_threads", "1", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=sink)
    return Server(f"http://127.0.0.1:{port}", proc)


def _wait_up(server: Server, log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{server.url}/v1/models", timeout=1):
                return
        except OSError:
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"llama_cpp.server did not start: {log.read_text()[-500:]}") from None
            time.sleep(0.2)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    logs = [tmp_path / f"server{i}.log" for i in range(2)]
    started = [_start(log, 1024) for log in logs]
    try:
        for server, log in zip(started, logs, strict=True):
            _wait_up(server, log)
        yield started
    finally:
        for server in started:
            if server.proc.poll() is None:
                server.proc.terminate()
                server.proc.wait(timeout=10)


def test_calls_go_to_the_least_busy_server_and_fail_over_when_one_dies_mid_call(
    servers: list[Server], tmp_path: Path
) -> None:
    log = CallLog(tmp_path / "calls.jsonl")
    pool = EndpointPool([OpenAIBackend(s.url, timeout=120) for s in servers], log=log)
    backend = Recorded(pool, log)
    answers: dict[int, Completion] = {}

    def call(i: int) -> None:
        answers[i] = backend.complete(STORY)

    both = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in both:
        t.start()
    for t in both:
        t.join(timeout=300)
    assert {answers[0].endpoint, answers[1].endpoint} == {s.url for s in servers}, "one call each"

    # One long call; kill the server it went to while it is generating.
    doomed: list[Completion] = []
    caller = threading.Thread(target=lambda: doomed.append(backend.complete(STORY)))
    caller.start()
    while not any(e.in_flight for e in pool.endpoints):
        time.sleep(0.01)
    busy = next(e for e in pool.endpoints if e.in_flight)
    time.sleep(0.5)  # well into the generation
    victim = next(s for s in servers if s.url == busy.url)
    victim.kill()
    caller.join(timeout=300)
    [answer] = doomed
    survivor = next(s.url for s in servers if s is not victim)
    assert answer.endpoint == survivor and answer.tokens_out > 0
    entries = [json.loads(line) for line in log.path.read_text().splitlines()]
    calls = [e for e in entries if e.get("kind", "call") == "call"]
    failures = [e for e in entries if e.get("kind") == FAILOVER_KIND]
    assert len(calls) == 3, "three calls, three answers: the failed-over one was answered once"
    assert [f["endpoint"] for f in failures] == [victim.url]
    assert pool.health() == {victim.url: False, survivor: True}

    # Nothing left: a clear error naming the pool, not a hang.
    next(s for s in servers if s is not victim).kill()
    with pytest.raises(EndpointUnavailable, match=r"no endpoint of the pool openai:http://127\.0\.0\.1:\d+,"):
        pool.complete(STORY)


def test_a_server_s_window_is_learned_and_the_map_cut_to_it(servers: list[Server]) -> None:
    backend = OpenAIBackend(servers[0].url, timeout=120)
    assert backend.window() is None, "llama_cpp.server does not say its window until it refuses a prompt"
    repo_map = "\n".join(f"src/pkg/module_{i}.py: def function_{i}(x: int) -> int" for i in range(150))
    done = backend.complete(CompletionRequest(system="s", prefix=repo_map, user="Which module?", max_tokens=16))
    assert backend.window() == 1024
    assert done.lines_cut > 0 and done.tokens_in + 16 <= 1024


def test_model_list_shows_each_endpoint_s_health_latency_and_speed(servers: list[Server], ws: Workspace) -> None:
    env = {"CONVERGE_WORKSPACE": str(ws.root)}
    binding = ",".join(f"openai:{s.url}" for s in servers)
    converge("model", "use", binding, "--role", "coder", env=env, check=True)
    coder = runtime.backend_for_role(ws, "coder")
    for _ in range(2):
        coder.complete(CompletionRequest(system="Be brief.", user="Name a fruit.", max_tokens=8))
    servers[1].kill()
    listing = json.loads(converge("model", "list", "--json", env=env, check=True).stdout)
    assert listing["roles"]["coder"] == binding
    by_url = {e["url"]: e for e in listing["endpoints"]}
    up, down = by_url[servers[0].url], by_url[servers[1].url]
    assert (up["up"], down["up"]) == (True, False) and up["roles"] == ["coder"]
    assert up["calls"] + down["calls"] == 2
    answered = up if up["calls"] else down
    assert answered["latency_s"] > 0 and answered["tokens_per_s"] > 0
    text = converge("model", "list", env={**env, "COLUMNS": "200"}, check=True).stdout
    assert "endpoints" in text and "down" in text and "up" in text
