from datetime import date

import pytest

from todo.store import Store


def test_tasks_survive_a_reload(tmp_path):
    store = Store(tmp_path / "tasks.json")
    store.add("write report", ["work"], date(2024, 5, 1))
    store.add("buy milk")
    again = Store(tmp_path / "tasks.json")
    assert [t.title for t in again.list_tasks()] == ["write report", "buy milk"]
    assert again.get(1).due == date(2024, 5, 1)


def test_complete_marks_done(tmp_path):
    store = Store(tmp_path / "tasks.json")
    task = store.add("call bank")
    store.complete(task.id)
    assert Store(tmp_path / "tasks.json").get(task.id).done


def test_unknown_id(tmp_path):
    with pytest.raises(KeyError, match="no task 7"):
        Store(tmp_path / "tasks.json").get(7)
