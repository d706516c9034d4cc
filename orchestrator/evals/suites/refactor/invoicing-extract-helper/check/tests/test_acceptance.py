import inspect
from decimal import Decimal

from invoicing import render


def test_format_money():
    assert render.format_money(Decimal("1234.5")) == "EUR 1,234.50"


def test_the_format_is_written_once():
    assert inspect.getsource(render).count(",.2f") == 1


def test_both_places_call_the_helper():
    assert "format_money(" in inspect.getsource(render.render_line)
    assert "format_money(" in inspect.getsource(render._row)
