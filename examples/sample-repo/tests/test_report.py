from inventory import Item, Stock, price_report
from inventory.report import cheapest


def test_report_lists_items_and_total():
    stock = Stock()
    stock.add(Item("a 1", "bolt", 0.5), 2)
    text = price_report(stock)
    assert "A-1: 2 x 0.50 EUR" in text
    assert text.endswith("total: 1.00 EUR")


def test_cheapest():
    stock = Stock()
    stock.add(Item("a", "bolt", 0.5))
    stock.add(Item("b", "nut", 0.2))
    assert cheapest(stock).name == "nut"
    assert cheapest(Stock()) is None
