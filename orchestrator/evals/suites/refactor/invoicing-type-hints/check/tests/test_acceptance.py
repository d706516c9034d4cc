import typing

from invoicing import totals


def _hints(func: object) -> dict[str, object]:
    return typing.get_type_hints(func)


def test_subtotal_is_annotated():
    assert {"invoice", "return"} <= set(_hints(totals.subtotal))


def test_apply_discount_is_annotated():
    assert {"amount", "percent", "return"} <= set(_hints(totals.apply_discount))
