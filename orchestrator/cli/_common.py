"""What every command shares: global options, error mapping, and JSON-or-human output."""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.errors import ConvergeError
from orchestrator.store.workspace import Workspace, find_workspace

P = ParamSpec("P")
R = TypeVar("R")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]

err_console = Console(stderr=True, soft_wrap=True)  # log lines stay whole when stderr is a file


@dataclass
class GlobalOptions:
    """Options given before the command name."""

    workspace: Path | None = None
    debug: bool = False


OPTIONS = GlobalOptions()


def workspace() -> Workspace:
    """The workspace this invocation works in (-w, $CONVERGE_WORKSPACE, or a parent)."""
    ws = find_workspace(OPTIONS.workspace)
    ws.config()  # a damaged converge.toml is reported before any work starts
    return ws


def handled(func: Callable[P, R]) -> Callable[P, R]:
    """Map ConvergeError to its exit code and a one-line message (a traceback only with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except ConvergeError as exc:
            if OPTIONS.debug:
                traceback.print_exc()
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"converge: error: {message}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            # a path the user gave that cannot be read or written: bad input, named, one line
            if OPTIONS.debug:
                traceback.print_exc()
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"converge: error: {where}{exc.strerror or exc}", file=sys.stderr)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print("converge: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def emit_json(value: Any) -> None:
    """Print one JSON document on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def emit_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a table for people."""
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console().print(table)


def say(text: str) -> None:
    """A line for people, on stdout (only when not in --json mode)."""
    Console(highlight=False, soft_wrap=True).print(text, markup=False)


def progress(text: str) -> None:
    """Progress and logs: always stderr, so stdout stays one JSON document."""
    err_console.print(text, highlight=False, markup=False)
