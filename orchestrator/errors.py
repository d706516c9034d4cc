"""The errors Converge raises, and the loop signals that are not errors.

    ConvergeError                 exit 2 unless a subclass says otherwise
    ├── UsageError                bad flags, unknown names, paths that do not exist
    ├── ConfigError               a bad converge.toml, agent card or policy file
    ├── WorkspaceError            no workspace here, a foreign directory, a bad layout
    ├── RepoError                 not a git repo, unknown or duplicate repo name
    ├── GitError                  git refused (translated from GitPython / git)
    ├── EditError                 a search/replace edit that cannot apply
    ├── ModelError                a missing or unloadable model, malformed output
    │   └── EndpointUnavailable   a model server that is down or died mid-call (a pool fails over)
    ├── SandboxError              no engine, no image, a container that failed to start
    ├── ScaleError                a Ray cluster that does not answer, a job lost with its node
    ├── SignatureError            exit 1: a signature or attestation does not verify
    ├── PolicyViolation           exit 1: policy said no
    ├── VerificationFailed        exit 1: build or tests failed
    └── ConflictError             exit 1: another process holds the lock or won the CAS

Third-party exceptions (git, docker, llama.cpp) are translated at the boundary with
``raise ... from exc`` so the command line can map every failure to an exit code and
a one-line message.
"""

from __future__ import annotations


class ConvergeError(Exception):
    """Base of every error Converge reports to a user."""

    exit_code: int = 2


class UsageError(ConvergeError):
    """The command was given something it cannot use."""


class ConfigError(ConvergeError):
    """A configuration, agent card or policy file is invalid."""


class WorkspaceError(ConvergeError):
    """The workspace is missing, foreign or damaged."""


class RepoError(ConvergeError):
    """A repository is not usable: not git, unknown, or a duplicate name."""


class GitError(ConvergeError):
    """Git refused an operation."""


class EditError(ConvergeError):
    """An edit cannot be applied; the message is written for the model."""


class ModelError(ConvergeError):
    """A model is missing, cannot load, or answered with malformed output."""


class EndpointUnavailable(ModelError):
    """A model server did not answer (refused, reset, timed out, 5xx): the call may go elsewhere."""


class SandboxError(ConvergeError):
    """The sandbox engine or image is not available, or a container failed."""


class ScaleError(ConvergeError):
    """The executor cannot run a job: its cluster does not answer, or the job was lost with its node."""


class SignatureError(ConvergeError):
    """A signature or attestation does not verify."""

    exit_code = 1


class PolicyViolation(ConvergeError):
    """Policy rejected a change."""

    exit_code = 1


class VerificationFailed(ConvergeError):
    """Build or tests failed."""

    exit_code = 1


class ConflictError(ConvergeError):
    """Another process holds the lock or changed the refs first."""

    exit_code = 1


class LoopSignal(Exception):
    """Base of control-flow signals of the refinement loop (not errors)."""


class BudgetExhausted(LoopSignal):
    """A step or run used up its budget."""


class NeedsReview(LoopSignal):
    """A changeset waits for a human decision."""
