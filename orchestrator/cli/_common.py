"""What every command shares: the workspace, error mapping to exit codes, and JSON-or-human output."""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.cli import OPTIONS
from orchestrator.errors import BadInput, ConvergeError, DiskFull, Refused, SandboxError, translate
from orchestrator.store.workspace import Workspace, find_workspace

P = ParamSpec("P")
R = TypeVar("R")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]

# What the command exits with for each kind of error (errors.py draws the tree); the first match wins.
EXIT_CODES: tuple[tuple[type[ConvergeError], int], ...] = (
    (Refused, 1),  # the operation ran and said no
    (BadInput, 2),  # fix the command, file or config named
    (DiskFull, 74),  # sysexits' EX_IOERR
    (SandboxError, 125),  # like `docker run`: the wrapper failed, not the command it runs
)
INTERRUPTED = 130  # 128 + SIGINT

err_console = Console(stderr=True, soft_wrap=True)  # log lines stay whole when stderr is a file


def exit_code(exc: ConvergeError) -> int:
    """The exit code of a command that failed with ``exc``."""
    return next((code for kind, code in EXIT_CODES if isinstance(exc, kind)), 2)


def workspace() -> Workspace:
    """The workspace this invocation works in (-w, $CONVERGE_WORKSPACE, or a parent)."""
    ws = find_workspace(OPTIONS.workspace)
    ws.config()  # a damaged converge.toml is reported before any work starts
    return ws


def handled(func: Callable[P, R]) -> Callable[P, R]:
    """Map ConvergeError (and OSError, through errors.translate) to its exit code and a one-line message."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = bool(kwargs.get("json_out"))
        try:
            return func(*args, **kwargs)
        except ConvergeError as exc:
            fail(exc, as_json)
        except OSError as exc:  # a file the command read or wrote: named; a full disk is DiskFull
            fail(translate(exc, "os"), as_json)
        except KeyboardInterrupt:
            print("converge: interrupted", file=sys.stderr)
            raise typer.Exit(INTERRUPTED) from None

    return wrapper


def fail(exc: ConvergeError, as_json: bool = False) -> NoReturn:
    """Report ``exc`` on one line of stderr (a traceback too with --debug) and exit with its code.

    With ``--json``, stdout gets one document too, unless the command printed its own already:
    ``{"error": {"message": ..., "exit": ..., "kind": ...}}``.
    """
    if OPTIONS.debug:
        traceback.print_exc()
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    print(f"converge: error: {message}", file=sys.stderr)
    code = exit_code(exc)
    if as_json and not _EMITTED:
        emit_json({"error": {"message": message, "exit": code, "kind": type(exc).__name__}})
    raise typer.Exit(code) from None


_EMITTED: list[bool] = []  # whether this command printed its JSON document (at most one is printed)


def emit_json(value: Any) -> None:
    """Print one JSON document on stdout."""
    _EMITTED.append(True)
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
