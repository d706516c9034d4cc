import inspect

from todo.store import Store


def test_add_is_documented():
    doc = inspect.getdoc(Store.add) or ""
    assert len(doc.split()) >= 3, doc
