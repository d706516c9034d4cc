"""`converge watch`: keep repo maps fresh and run task files dropped into `spec/inbox/`."""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Annotated

import typer

from orchestrator.cli._common import JsonFlag, emit_json, handled, progress, say, workspace
from orchestrator.watch.watcher import Watcher, WatchReport, default_deps_factory


def _render(report: WatchReport, json_out: bool, once: bool) -> None:
    if json_out:
        emit_json(report.model_dump())
    else:
        for repo, files in sorted(report.maps.items()):
            changed = report.refreshed.get(repo, [])
            say(f"map {repo}: {files} files" + (f", {len(changed)} refreshed" if changed else ""))
        for task in report.tasks:
            run = f" run {task.run_id} ({task.run_status})" if task.run_id else ""
            say(f"task {task.task}: {task.status}{run}" + (f": {task.reason}" if task.reason else ""))
    if once and any(t.status == "failed" for t in report.tasks):  # a script's one pass: say no
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `converge watch` to ``app``."""

    @app.command("watch")
    @handled
    def watch(
        once: Annotated[
            bool, typer.Option("--once", help="Process the inbox once, refresh the maps, then exit.")
        ] = False,
        polling: Annotated[
            bool, typer.Option("--polling", help="Poll for file changes instead of inotify (network filesystems).")
        ] = False,
        json_out: JsonFlag = False,
    ) -> None:
        """Keep repo maps fresh and run task files dropped into spec/inbox/ (until SIGINT/SIGTERM)."""
        ws = workspace()
        with Watcher(ws, default_deps_factory(progress), log=progress, polling=polling) as watcher:
            if once:
                report = watcher.run_once()
            else:
                stops = {"n": 0}

                def on_signal(signum: int, _frame: FrameType | None) -> None:
                    stops["n"] += 1
                    if stops["n"] > 1:  # a second signal: quit now; the task in flight resumes next start
                        signal.signal(signum, signal.SIG_DFL)
                        os.kill(os.getpid(), signum)
                    progress(
                        "watch: stopping; the run in progress stops at its next checkpoint (signal again to quit now)"
                    )
                    watcher.stop()

                signal.signal(signal.SIGINT, on_signal)
                signal.signal(signal.SIGTERM, on_signal)
                report = watcher.run_forever()
        _render(report, json_out, once)
