import inspect

from invoicing.totals import apply_discount


def test_apply_discount_is_documented():
    doc = inspect.getdoc(apply_discount) or ""
    assert len(doc.split()) >= 4, doc
