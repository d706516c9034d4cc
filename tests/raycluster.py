"""A real Ray cluster on this machine for tests and benchmarks: a head and a worker node, each started by
``ray start --block`` in a session of its own, so that stopping one (or SIGKILLing a worker node
mid-task) touches only the processes it started, never another Ray on the machine."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

RAY = Path(sys.executable).parent / "ray"
# a node dead for a second is declared dead (default: about 15 s), so its tasks go elsewhere soon
FAST_HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 2, "health_check_timeout_ms": 500}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalCluster:
    """``with LocalCluster() as cluster:`` a head and one worker node, each with one CPU and ``docker``."""

    def __init__(self, head_cpus: int = 1, worker_cpus: int = 1) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp = Path(tempfile.mkdtemp(prefix="cvray-", dir="/tmp"))  # short: Ray's socket paths have a limit
        # No token authentication on this loopback-only cluster: Ray reads RAY_AUTH_MODE when it is
        # imported, and a test process imports it before any cluster exists (a real one: see the README).
        self.auth = {"RAY_AUTH_MODE": "disabled"}
        self.env = {**os.environ, **self.auth, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": ""}  # jobs ship code
        self.head = self._start(
            "--head",
            f"--port={self.port}",
            f"--num-cpus={head_cpus}",
            "--resources=" + json.dumps({"docker": head_cpus, "head_node": 1}),
            "--include-dashboard=false",
            "--system-config=" + json.dumps(FAST_HEALTH),
        )
        self._wait(self._answers, "the head")
        self.worker: subprocess.Popen[bytes] | None = None
        self.start_worker(worker_cpus)

    def start_worker(self, cpus: int = 1) -> None:
        """Start (again) the worker node and wait until the cluster counts it."""
        self.worker = self._start(
            f"--address={self.address}", f"--num-cpus={cpus}", "--resources=" + json.dumps({"docker": cpus})
        )
        self._wait(lambda: self._nodes() >= 2, "the worker node")

    def kill_worker(self) -> None:
        """SIGKILL the worker node: its raylet and every task it runs die at once."""
        if self.worker is not None:
            _kill(self.worker, signal.SIGKILL)
            self.worker = None

    def close(self) -> None:
        for proc in (self.worker, self.head):
            if proc is not None:
                _kill(proc, signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        argv = [str(RAY), "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1", *args]
        if "--head" in args:
            argv.append(f"--temp-dir={self.temp}")
        with (self.temp / f"start-{len(list(self.temp.glob('start-*')))}.log").open("wb") as log:
            return subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def _nodes(self) -> int:
        proc = subprocess.run(
            [str(RAY), "status", f"--address={self.address}"], env=self.env, capture_output=True, text=True, check=False
        )
        active = proc.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return sum(1 for line in active.splitlines() if "node_" in line)

    def _wait(self, ready: Callable[[], bool], what: str, patience: float = 90.0) -> None:
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.5)
        logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in self.temp.glob("start-*.log"))
        self.close()
        raise RuntimeError(f"Ray: {what} did not start within {patience:.0f}s:\n{logs}")


def _kill(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal every process of the node: ``ray start`` began a session, and Ray's task workers, in process
    groups of their own, stay in it."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getsid(int(entry.name)) == proc.pid:
                    os.kill(int(entry.name), sig)
    proc.wait()
