"""Items and the stock ledger."""

import os
import sys
from dataclasses import dataclass, field


@dataclass
class Item:
    sku: str
    name: str
    unit_price: float


def normalise_sku(sku):
    return sku.strip().upper().replace(" ", "-")


@dataclass
class Stock:
    items: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)

    def add(self, item, count=1):
        sku = normalise_sku(item.sku)
        if count <= 0:
            raise ValueError(f"count must be positive, got {count}")
        self.items[sku] = item
        self.counts[sku] = self.counts.get(sku, 0) + count

    def remove(self, sku, count=1):
        sku = normalise_sku(sku)
        have = self.counts.get(sku, 0)
        if count > have:
            raise ValueError(f"only {have} of {sku} in stock")
        self.counts[sku] = have - count

    def count(self, sku):
        return self.counts.get(normalise_sku(sku), 0)

    def value(self):
        return sum(self.items[s].unit_price * n for s, n in self.counts.items())
