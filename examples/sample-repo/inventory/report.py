"""Price reports over a stock."""

import json
import math


def format_sku(sku):
    return sku.strip().upper().replace(" ", "-")


def price_report(stock, currency="EUR"):
    lines = []
    for sku in sorted(stock.counts):
        item = stock.items[sku]
        count = stock.counts[sku]
        lines.append(f"{format_sku(sku)}: {count} x {item.unit_price:.2f} {currency}")
    lines.append(f"total: {stock.value():.2f} {currency}")
    return "\n".join(lines)


def cheapest(stock):
    if not stock.items:
        return None
    return min(stock.items.values(), key=lambda item: item.unit_price)
