"""Who proposed a change and under which key: the values every stage of the gate is handed.

``AttemptKey`` names one attempt (run, step, attempt); it keys the candidate worktree, the
sandbox label and the changeset id, so a resumed run finds what it already made.
"""

from __future__ import annotations

from dataclasses import dataclass

SUBMIT_RUN = "submit"


@dataclass(frozen=True)
class AttemptKey:
    """One attempt: a loop's ``(run, step, attempt)``, or ``("submit", <changeset id>, 1)`` for a person's patch."""

    run: str
    step: int | str
    attempt: int

    @property
    def label(self) -> str:
        """The sandbox label of this attempt."""
        return f"{self.run}-{self.step}-{self.attempt}"

    @property
    def changeset_key(self) -> str:
        """What makes a model's changeset id unique on its base."""
        return f"{self.run}/{self.step}/{self.attempt}"


@dataclass(frozen=True)
class Provenance:
    """Who proposed the change and with what: a person, or an agent card and its model."""

    author: str = "human"
    agent_card_sha256: str | None = None
    model_sha256: str | None = None
    run: str | None = None
    step: int | None = None
    attempt: int | None = None

    @property
    def is_human(self) -> bool:
        return self.author == "human"
