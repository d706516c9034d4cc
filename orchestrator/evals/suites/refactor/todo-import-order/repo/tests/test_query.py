from datetime import date

import pytest

from todo.model import Task
from todo.query import due_after, due_before, overdue, paginate, with_tag

TASKS = [
    Task(1, "report", ["Work"], date(2024, 5, 1)),
    Task(2, "milk", ["home"], date(2024, 4, 1), done=True),
    Task(3, "taxes", ["home", "money"], date(2024, 4, 15)),
]


def test_with_tag_ignores_case():
    assert [t.id for t in with_tag(TASKS, "work")] == [1]


def test_overdue_skips_done_tasks():
    assert [t.id for t in overdue(TASKS, date(2024, 4, 20))] == [3]


def test_due_before_and_after():
    assert [t.id for t in due_before(TASKS, "2024-04-20")] == [2, 3]
    assert [t.id for t in due_after(TASKS, "10.04.2024")] == [1, 3]


def test_paginate_rejects_page_zero():
    with pytest.raises(ValueError):
        paginate(TASKS, 0)
