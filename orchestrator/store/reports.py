"""Typed results that pass between pieces: command results and test reports.

The sandbox produces them, policy and signing read them; they are stored as JSON beside
changesets, so their serialised form (``model_dump_json``) is part of what is signed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CommandResult(BaseModel):
    """One command run in a sandbox."""

    model_config = ConfigDict(frozen=True)

    argv: list[str]
    exit_code: int
    duration: float = Field(description="wall-clock seconds")
    timed_out: bool = False
    oom_killed: bool = False
    stdout_tail: str = ""
    stderr_tail: str = ""
    truncated: bool = Field(default=False, description="output went past the size cap")
    witness: str | None = Field(
        default=None, exclude=True, description="a test run's witness events (JSON lines); not stored"
    )

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.oom_killed


class TestReport(BaseModel):
    """What the tests of a candidate did: outcomes as Converge's witness saw them, cross-checked with JUnit.

    ``tampered`` lists what only code inside the test process explains (a rewritten JUnit file, an
    early exit, outcomes changed on their way to the reporters); a tampered report is never ok.
    """

    __test__ = False  # not a pytest test class
    model_config = ConfigDict(frozen=True)

    ran: bool = Field(description="false when no test command was run at all")
    passed: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)
    errored: list[str] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    command: CommandResult | None = None
    selection: Literal["all", "selected"] = "all"
    collected: list[str] | None = Field(default=None, description="test ids after deselection (None: not witnessed)")
    deselected: list[str] = Field(default_factory=list)
    witnessed: bool = Field(default=False, description="outcomes come from Converge's witness, not the JUnit file")
    tampered: list[str] = Field(default_factory=list, description="evidence that the test process forged its results")

    @property
    def ok(self) -> bool:
        """Tests ran, at least one passed, none failed or errored, the command succeeded, nothing was forged."""
        cmd_ok = self.command is None or self.command.ok
        clean = not self.failed and not self.errored and not self.tampered
        return self.ran and cmd_ok and clean and bool(self.passed)

    @property
    def no_tests(self) -> bool:
        """The suite collected no test at all (pytest's exit 5): nothing failed, and nothing showed the change works."""
        cmd = self.command
        quiet = cmd is not None and cmd.exit_code == 5 and not cmd.timed_out and not cmd.oom_killed
        return self.ran and quiet and not (self.passed or self.failed or self.errored or self.tampered)

    @property
    def broken(self) -> bool:
        """What sends a candidate back: tests failed, errored, timed out or did not run. A repo without
        tests is not broken, nor is a forged run: the policy judges both (a forgery is rejected)."""
        return not self.ok and not self.no_tests and not self.tampered

    @property
    def summary(self) -> str:
        if self.no_tests:
            return "no tests collected"
        cmd = self.command
        if cmd is not None and cmd.timed_out:
            return f"tests timed out after {cmd.duration:.0f}s"
        if cmd is not None and cmd.oom_killed:
            return "tests killed: out of memory"
        if not self.ran:
            return "tests not run"
        counts = (len(self.passed), len(self.failed), len(self.errored), len(self.skipped))
        text = "{} passed, {} failed, {} errors, {} skipped".format(*counts)
        return f"{text} (tampered)" if self.tampered else text
