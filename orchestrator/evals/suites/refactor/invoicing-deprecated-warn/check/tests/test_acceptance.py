import logging
import warnings
from decimal import Decimal

from invoicing.totals import apply_discount


def test_an_invalid_discount_is_logged_without_deprecated_calls(caplog):
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert apply_discount(Decimal("10"), Decimal("150")) == Decimal("10")
    assert "ignored" in caplog.text
