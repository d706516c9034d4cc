"""Finding tasks: by tag, by due date, overdue ones, a page at a time."""

from datetime import date

from todo.model import Task


def parse_date(text: str) -> date:
    """An ISO date (``2024-02-03``) or a European one (``03.02.2024``)."""
    text = text.strip()
    if "." in text:
        day, month, year = (int(part) for part in text.split("."))
        return date(year, month, day)
    return date.fromisoformat(text)


def with_tag(tasks: list[Task], tag: str) -> list[Task]:
    """Tasks carrying ``tag`` (case-insensitive)."""
    wanted = tag.lower()
    return [task for task in tasks if wanted in (t.lower() for t in task.tags)]


def overdue(tasks: list[Task], today: date) -> list[Task]:
    """Open tasks whose due date has passed."""
    return [task for task in tasks if not task.done and task.due is not None and task.due < today]


def due_before(tasks: list[Task], text: str) -> list[Task]:
    """Tasks due before the date in ``text``."""
    limit = parse_date(text)
    return [task for task in tasks if task.due is not None and task.due < limit]


def due_after(tasks: list[Task], text: str) -> list[Task]:
    """Tasks due after the date in ``text``."""
    limit = parse_date(text)
    return [task for task in tasks if task.due is not None and task.due > limit]


def paginate(tasks: list[Task], page: int, per_page: int = 10) -> list[Task]:
    """Page ``page`` of ``tasks``; the first page is page 1."""
    if page < 1 or per_page < 1:
        raise ValueError("page and per_page start at 1")
    start = (page - 1) * per_page
    return tasks[start : start + per_page]
