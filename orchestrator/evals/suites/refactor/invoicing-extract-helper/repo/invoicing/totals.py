"""Money arithmetic for invoices: subtotals, discounts and tax."""

import logging
from decimal import ROUND_HALF_UP, Decimal

from invoicing.models import Invoice

logger = logging.getLogger(__name__)

CENT = Decimal("0.01")


def round_money(amount: Decimal) -> Decimal:
    """Round to whole cents, halves away from zero."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def subtotal(invoice: Invoice) -> Decimal:
    """Sum of the line amounts, before discount and tax."""
    return round_money(sum((item.amount for item in invoice.items), Decimal("0")))


def apply_discount(amount: Decimal, percent: Decimal) -> Decimal:
    """``amount`` less ``percent`` per cent, in cents; a percent out of range is ignored."""
    if percent < 0 or percent > 100:
        logger.warning("discount of %s%% ignored", percent)
        return amount
    return round_money(amount * (100 - percent) / 100)


def tax(amount: Decimal, rate: Decimal) -> Decimal:
    """Tax due on ``amount`` at ``rate`` (0.2 for 20%)."""
    return round_money(amount * rate)


def total(invoice: Invoice, discount_percent: Decimal = Decimal("0")) -> Decimal:
    """What the customer pays: the discounted subtotal plus tax."""
    net = apply_discount(subtotal(invoice), discount_percent)
    return net + tax(net, invoice.tax_rate)
