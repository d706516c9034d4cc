from pathlib import Path

from todo.store import Store


def test_list_tasks(tmp_path):
    store = Store(tmp_path / "tasks.json")
    store.add("one")
    assert [task.title for task in store.list_tasks()] == ["one"]


def test_get_all_is_gone():
    assert not hasattr(Store, "get_all")
    left = [
        str(path)
        for path in Path(".").rglob("*.py")
        if "get_all" in path.read_text() and path.name != "test_acceptance.py"
    ]
    assert left == []
