"""The task record."""

from dataclasses import dataclass, field
from datetime import date


@dataclass
class Task:
    """One thing to do."""

    id: int
    title: str
    tags: list[str] = field(default_factory=list)
    due: date | None = None
    done: bool = False
