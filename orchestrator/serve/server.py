"""Starting the review app: bind the socket, print the tokened URL, serve with uvicorn until stopped.

The socket is bound before the URL is printed, so ``--port 0`` prints the port the system
chose and a script that reads the first line of stdout can open the page at once.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable

import uvicorn

from orchestrator.errors import UsageError
from orchestrator.serve import security
from orchestrator.serve.actions import Resumer
from orchestrator.serve.app import build_app
from orchestrator.store.workspace import Workspace


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there: {exc.strerror}") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(host: str, port: int, token: str) -> str:
    """The URL a person opens (IPv6 hosts in brackets)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/?{security.TOKEN_PARAM}={token}"


def serve(
    ws: Workspace,
    host: str,
    port: int,
    allow_remote: bool,
    announce: Callable[[str], None],
    warn: Callable[[str], None],
) -> None:
    """Serve ``ws`` on ``host``:``port`` until interrupted; ``announce`` receives the tokened URL."""
    warning = security.check_bind(host, allow_remote)
    sock = _bind(host, port)
    token = security.new_token()
    actual = sock.getsockname()[1]
    resumer = Resumer()
    app = build_app(ws, token, actual, resumer)
    if warning:
        warn(warning)
    announce(url_of(host, actual, token))
    sys.stdout.flush()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        for run_id in resumer.running():  # daemon threads end with the process; the checkpoint stays
            warn(f"run {run_id} was resuming and stops here; `converge resume {run_id}` continues it")
