"""A small stock-keeping library."""

from inventory.stock import Item, Stock
from inventory.report import price_report

__all__ = ["Item", "Stock", "price_report"]
