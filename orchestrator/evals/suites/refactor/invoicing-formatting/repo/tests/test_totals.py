from decimal import Decimal

from invoicing.models import Invoice, LineItem
from invoicing.totals import apply_discount, round_money, subtotal, tax, total


def _invoice() -> Invoice:
    invoice = Invoice("2024-001", "ACME")
    invoice.add(LineItem("Widget", 3, Decimal("9.99")))
    invoice.add(LineItem("Setup", 1, Decimal("120")))
    return invoice


def test_subtotal_sums_line_amounts():
    assert subtotal(_invoice()) == Decimal("149.97")


def test_round_money_rounds_half_up():
    assert round_money(Decimal("0.125")) == Decimal("0.13")


def test_discount_and_tax():
    assert apply_discount(Decimal("100"), Decimal("15")) == Decimal("85.00")
    assert tax(Decimal("85.00"), Decimal("0.20")) == Decimal("17.00")


def test_total_includes_tax():
    assert total(_invoice()) == Decimal("179.96")
    assert total(_invoice(), Decimal("10")) == Decimal("161.96")
