"""Invoice data: line items and invoices."""

from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(frozen=True)
class LineItem:
    """One billed product or service."""

    description: str
    quantity: int
    unit_price: Decimal

    @property
    def amount(self) -> Decimal:
        return self.unit_price * self.quantity


@dataclass
class Invoice:
    """An invoice for one customer."""

    number: str
    customer: str
    items: list[LineItem] = field(default_factory=list)
    tax_rate: Decimal = Decimal("0.20")

    def add(self, item: LineItem) -> None:
        self.items.append(item)
