"""Weather station readings: parsing, units and statistics."""
