"""Invoices: line items, totals and plain-text rendering."""
