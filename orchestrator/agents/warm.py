"""A registered repo's map built in the background when it is added, so the first run finds it cached.

``start`` spawns ``python -m orchestrator.agents.warm WORKSPACE REPO`` detached from the command that
registers the repo; it maps the repo's current generation under the map lock, which a run's own map
build waits for (one parse of each file, never two at once).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from orchestrator.agents.repomap import repo_map_at
from orchestrator.store import generations
from orchestrator.store.workspace import Workspace


def start(ws: Workspace, repo: str) -> None:
    """Build the map of ``repo``'s current generation in a process of its own (its output: a log file)."""
    log = ws.state / "logs" / f"map-{repo}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        subprocess.Popen(
            [sys.executable, "-m", "orchestrator.agents.warm", str(ws.root), repo],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # outlives `converge add`, and a Ctrl-C meant for it
        )


def build(ws: Workspace, repo: str) -> int:
    """Map ``repo``'s current generation (cached); the number of files mapped."""
    return len(repo_map_at(ws, repo, generations.current(ws, repo).commit).files)


if __name__ == "__main__":
    print(f"mapped {build(Workspace(Path(sys.argv[1])), sys.argv[2])} files", flush=True)
