"""The errors Converge raises, grouped by what the caller does about them, and the one table
that turns docker, git and llama.cpp exceptions into them.

    ConvergeError
    ├── BadInput                  exit 2: fix the command, file or config the message names
    │   ├── UsageError            bad flags, unknown names, paths that do not exist
    │   ├── ConfigError           a bad converge.toml, agent card or policy file
    │   ├── WorkspaceError        no workspace here, a foreign directory, a damaged state file
    │   ├── RepoError             not a git repo, unknown or duplicate repo name
    │   ├── GitError              git refused: a commit, ref or worktree is not what the command needs
    │   ├── EditError             a patch or search/replace edit that cannot apply
    │   ├── ModelError            a missing, damaged or oversized model, or no valid answer from it
    │   │   └── EndpointUnavailable  a model server that is down or died mid-call (a pool fails over)
    │   └── ScaleError            a Ray cluster that does not answer, a job lost with its node
    ├── Refused                   exit 1: the operation ran and said no
    │   ├── VerificationFailed    build or tests failed
    │   ├── PolicyViolation       policy said no
    │   ├── SignatureError        a signature or attestation does not verify
    │   └── ConflictError         another process holds the lock or won the compare-and-swap
    ├── SandboxError              exit 125: the sandbox engine, image or a container failed (`converge doctor`)
    └── DiskFull                  exit 74: no space left on a device (ENOSPC, EDQUOT); free space, retry

The exit codes are the CLI's (``cli._common.EXIT_CODES``). 125 is what ``docker run`` and
``timeout`` exit with when they themselves fail, apart from the codes ``converge sandbox run``
passes through; 74 is sysexits' EX_IOERR. Third-party exceptions are translated at their
boundary with ``raise translate(exc, boundary, doing) from exc``.
"""

from __future__ import annotations

import errno
import subprocess
from typing import Literal, NamedTuple


class ConvergeError(Exception):
    """Base of every error Converge reports to a user."""


class BadInput(ConvergeError):
    """The caller gave something Converge cannot use; the message names it and the fix."""


class UsageError(BadInput):
    """The command was given something it cannot use.

    Bad flags, unknown names, paths that do not exist.
    """


class ConfigError(BadInput):
    """A configuration, agent card or policy file is invalid."""


class WorkspaceError(BadInput):
    """The workspace is missing, foreign or damaged."""


class RepoError(BadInput):
    """A repository is not usable: not git, unknown, or a duplicate name."""


class GitError(BadInput):
    """Git refused an operation on the workspace's repositories."""


class EditError(BadInput):
    """An edit cannot be applied; the message is written for the model."""


class ModelError(BadInput):
    """A model is missing, cannot load, or answered with malformed output."""


class EndpointUnavailable(ModelError):
    """A model server did not answer (refused, reset, timed out, 5xx): the call may go elsewhere."""


class ScaleError(BadInput):
    """The executor cannot run a job: its cluster does not answer, or the job was lost with its node."""


class Refused(ConvergeError):
    """The operation ran and said no."""


class VerificationFailed(Refused):
    """Build or tests failed."""


class PolicyViolation(Refused):
    """Policy rejected a change."""


class SignatureError(Refused):
    """A signature or attestation does not verify."""


class ConflictError(Refused):
    """Another process holds the lock or changed the refs first."""


class SandboxError(ConvergeError):
    """The sandbox engine or image is not available, or a container failed.

    Exit 125: what ``docker run`` and ``timeout`` exit with when they themselves fail, apart from
    the codes ``converge sandbox run`` passes through; ``converge doctor`` says what is wrong.
    """


class DiskFull(ConvergeError):
    """A write failed for lack of space or quota.

    ENOSPC or EDQUOT: free space and retry. Exit 74, sysexits' EX_IOERR.
    """


Boundary = Literal["docker", "git", "llama", "os"]


class Rule(NamedTuple):
    """One row of the table: what an exception raised at a boundary becomes."""

    boundary: Boundary
    raised: str  # the third-party class by import path: named, not imported, so the CLI starts without it
    becomes: type[ConvergeError]
    says: str = ""  # said instead of the exception's own text when that is only a path or a repr
    fix: str = ""


ENGINE_FIX = "run `make setup` (installs docker.io and starts dockerd) or start dockerd yourself"
_REPO_FIX = "give the top directory of a git repository"
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_FULL_TEXT = ("No space left on device", "Disk quota exceeded")

# The first rule whose class is in the exception's MRO wins; each boundary ends with its catch-all.
TABLE: tuple[Rule, ...] = (
    Rule("docker", "docker.errors.APIError", SandboxError, fix="see `converge doctor` and the engine's log"),
    Rule("docker", "docker.errors.DockerException", SandboxError, fix=ENGINE_FIX),
    Rule("docker", "requests.exceptions.RequestException", SandboxError, fix=ENGINE_FIX),
    Rule("docker", "builtins.Exception", SandboxError),
    Rule("git", "git.exc.InvalidGitRepositoryError", RepoError, "not a git repository", _REPO_FIX),
    Rule("git", "git.exc.NoSuchPathError", RepoError, "no such path", _REPO_FIX),
    Rule("git", "git.exc.GitCommandError", GitError),
    Rule("git", "subprocess.CalledProcessError", GitError),
    Rule("git", "builtins.Exception", GitError),
    # llama-cpp-python raises builtins (ValueError, RuntimeError): only its boundary knows they are the model's
    Rule("llama", "jinja2.exceptions.TemplateError", ModelError, fix="fix the model's chat template"),
    Rule("llama", "builtins.Exception", ModelError),
    Rule("os", "builtins.Exception", UsageError),
)


def translate(exc: Exception, boundary: Boundary, doing: str = "") -> ConvergeError:
    """The ConvergeError for ``exc`` raised at ``boundary`` while ``doing`` (a phrase naming the object).

    The message is one line: ``doing: what failed; the fix``. A full disk is DiskFull wherever it happens.
    """
    detail = _detail(exc)
    where = f"{doing}: " if doing else ""
    if getattr(exc, "errno", None) in _FULL or any(text in detail for text in _FULL_TEXT):
        return DiskFull(f"{where}{detail}; free space on that device, then run the command again")
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}
    for rule in TABLE:
        if rule.boundary == boundary and rule.raised in names:
            return rule.becomes(f"{where}{rule.says or detail}" + (f"; {rule.fix}" if rule.fix else ""))
    raise AssertionError(f"no catch-all rule for boundary {boundary!r}")  # each boundary ends with one


def _detail(exc: Exception) -> str:
    """The line of ``exc`` worth showing: a command's last stderr line, the OS's reason, else its first line."""
    stderr = getattr(exc, "stderr", None)
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    if isinstance(stderr, str):
        # GitPython's reads "stderr: 'Cloning...\nfatal: ...\n'"
        lines = [line.strip().removeprefix("stderr: ").strip("'").strip() for line in stderr.splitlines()]
        if found := [line for line in lines if line]:
            return found[-1]
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    if isinstance(exc, subprocess.CalledProcessError):
        return f"exit {exc.returncode}"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
