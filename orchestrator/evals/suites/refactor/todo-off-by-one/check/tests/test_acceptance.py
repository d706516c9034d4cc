from todo.model import Task
from todo.query import paginate

TASKS = [Task(n, f"task {n}") for n in range(1, 26)]


def test_the_first_page_starts_at_the_first_task():
    assert [task.id for task in paginate(TASKS, 1)] == list(range(1, 11))


def test_the_last_page_is_short():
    assert [task.id for task in paginate(TASKS, 3)] == list(range(21, 26))
