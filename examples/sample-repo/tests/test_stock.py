import pytest

from inventory import Item, Stock


def test_add_and_count_normalises_sku():
    stock = Stock()
    stock.add(Item(" ab 1", "bolt", 0.25), 4)
    assert stock.count("AB-1") == 4


def test_remove_more_than_stocked_fails():
    stock = Stock()
    stock.add(Item("x", "nut", 0.1), 1)
    with pytest.raises(ValueError, match="only 1"):
        stock.remove("x", 2)


def test_value_sums_prices():
    stock = Stock()
    stock.add(Item("a", "bolt", 0.5), 4)
    stock.add(Item("b", "nut", 0.25), 2)
    assert stock.value() == pytest.approx(2.5)
