"""Plain-text rendering of invoices."""

from decimal import Decimal

from invoicing.models import Invoice, LineItem
from invoicing.totals import subtotal, tax, total

WIDTH = 48


def format_money(amount: Decimal) -> str:
    """``Decimal("1234.5")`` -> ``EUR 1,234.50``."""
    return f"EUR {amount:,.2f}"


def render_line(item: LineItem) -> str:
    """One line item, its amount right-aligned."""
    label = f"{item.quantity} x {item.description}"
    money = format_money(item.amount)
    return label.ljust(WIDTH - len(money)) + money


def render(invoice: Invoice) -> str:
    """The whole invoice as text."""
    lines = [f"Invoice {invoice.number}", f"Customer: {invoice.customer}", ""]
    lines += [render_line(item) for item in invoice.items]
    net = subtotal(invoice)
    lines += [
        "",
        _row("Subtotal", net),
        _row("Tax", tax(net, invoice.tax_rate)),
        _row("Total", total(invoice)),
    ]
    return "\n".join(lines) + "\n"


def _row(label: str, amount: Decimal) -> str:
    money = format_money(amount)
    return label.ljust(WIDTH - len(money)) + money
