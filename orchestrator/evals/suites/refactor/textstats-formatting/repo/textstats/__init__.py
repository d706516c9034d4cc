"""Word counts and simple statistics of plain text."""
