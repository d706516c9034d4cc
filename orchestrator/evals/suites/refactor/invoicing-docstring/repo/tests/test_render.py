from decimal import Decimal

from invoicing.models import Invoice, LineItem
from invoicing.render import render


def test_render_shows_lines_and_totals():
    invoice = Invoice("2024-002", "Globex")
    invoice.add(LineItem("Consulting", 2, Decimal("1000")))
    text = render(invoice)
    assert text.splitlines()[0] == "Invoice 2024-002"
    assert "2 x Consulting" in text
    assert text.splitlines()[-1].endswith("EUR 2,400.00")
