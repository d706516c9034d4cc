"""Start-up time of the listing commands, beside an empty Python and a bare Typer app in the same run.

Each command runs as a subprocess (`python -m orchestrator ...`) against a real workspace in a temp
directory with one registered repo; runs are interleaved, the figure is the median of --rounds.
`typer_floor` is what any such listing pays before Converge's own code: a Typer app with the same
global option that validates one pydantic model and prints a rich table.
Prints `name: value` lines: `<name>_s` (seconds), `<name>_ratio` (over `python_pass_s`) and
`cli_max_s` (the slowest command; target <= 0.25). Usage: python bench/cli.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "GIT_AUTHOR_NAME": "b",
    "GIT_AUTHOR_EMAIL": "b@b",
    "GIT_COMMITTER_NAME": "b",
    "GIT_COMMITTER_EMAIL": "b@b",
}
FLOOR_APP = """
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table


class Record(BaseModel):
    name: str


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.callback()
def _global(workspace: Annotated[Path | None, typer.Option("--workspace", "-w")] = None) -> None:
    pass


@app.command("list")
def list_(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    table = Table(title="records")
    table.add_column("name")
    table.add_row(Record.model_validate({"name": "a"}).name)
    Console().print(table)


app()
"""
COMMANDS = {
    "help": ["--help"],
    "repos": ["repos"],
    "runs": ["runs"],
    "generation_list": ["generation", "list", "demo"],
    "changeset_list": ["changeset", "list"],
}


def run(args: list[str], cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, env=ENV, check=True, capture_output=True)


def make_workspace(tmp: Path) -> Path:
    """A workspace with one registered repo, made through the CLI itself."""
    src = tmp / "demo"
    src.mkdir()
    (src / "app.py").write_text("def answer() -> int:\n    return 42\n")
    run(["git", "init", "-q", "-b", "main"], src)
    run(["git", "add", "-A"], src)
    run(["git", "commit", "-q", "-m", "start"], src)
    ws = tmp / "ws"
    run([sys.executable, "-m", "orchestrator", "init", str(ws)], tmp)
    run([sys.executable, "-m", "orchestrator", "-w", str(ws), "add", str(src), "--name", "demo"], tmp)
    return ws


def timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    run(args, cwd)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="converge-bench-cli-") as tmp:
        ws = make_workspace(Path(tmp))
        floor_app = Path(tmp) / "floor_app.py"
        floor_app.write_text(FLOOR_APP)
        argvs = {
            "python_pass": [sys.executable, "-c", "pass"],
            "typer_floor": [sys.executable, str(floor_app), "list"],
            **{name: [sys.executable, "-m", "orchestrator", "-w", str(ws), *args] for name, args in COMMANDS.items()},
        }
        times: dict[str, list[float]] = {name: [] for name in argvs}
        for _ in range(rounds):  # interleaved, so a busy moment of the machine hits every command alike
            for name, argv in argvs.items():
                times[name].append(timed(argv, ws))
        medians = {name: statistics.median(found) for name, found in times.items()}
        base = medians["python_pass"]
        for name, seconds in medians.items():
            print(f"{name}_s: {seconds:.3f}")
            if name != "python_pass":
                print(f"{name}_ratio: {seconds / base:.1f}")
        print(f"cli_max_s: {max(medians[name] for name in COMMANDS):.3f}")


if __name__ == "__main__":
    main()
