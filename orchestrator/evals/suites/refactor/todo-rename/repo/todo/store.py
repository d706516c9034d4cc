"""Tasks kept in a JSON file."""

import json
from dataclasses import asdict
from datetime import date
from pathlib import Path

from todo.model import Task


class Store:
    """Tasks kept in one JSON file: loaded on creation, saved on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tasks: dict[int, Task] = {}
        if path.exists():
            for raw in json.loads(path.read_text()):
                due = date.fromisoformat(raw["due"]) if raw.get("due") else None
                task = Task(raw["id"], raw["title"], raw["tags"], due, raw["done"])
                self._tasks[task.id] = task

    def add(self, title: str, tags: list[str] | None = None, due: date | None = None) -> Task:
        """Create a task with the next free id, save, and return it."""
        task = Task(max(self._tasks, default=0) + 1, title, list(tags or []), due)
        self._tasks[task.id] = task
        self._save()
        return task

    def get(self, task_id: int) -> Task:
        """One task by id (KeyError naming the id if there is none)."""
        if task_id not in self._tasks:
            raise KeyError(f"no task {task_id}")
        return self._tasks[task_id]

    def get_all(self) -> list[Task]:
        """Every task, by id."""
        return [self._tasks[key] for key in sorted(self._tasks)]

    def complete(self, task_id: int) -> None:
        """Mark a task done, and save."""
        task = self.get(task_id)
        task.done = True
        self._save()

    def _save(self) -> None:
        rows = [
            asdict(task) | {"due": task.due.isoformat() if task.due else None}
            for task in self.get_all()
        ]
        self.path.write_text(json.dumps(rows, indent=2))
