"""Station readings: parsing CSV, moving averages, daily extremes and the age of a reading."""

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Reading:
    """One observation of one station."""

    station: str
    taken_at: datetime
    celsius: float
    wind_ms: float


def parse_timestamp(text: str) -> datetime:
    """An ISO timestamp; one without a zone is UTC."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_csv(text: str) -> list[Reading]:
    """Readings from CSV text with the header ``station,taken_at,celsius,wind_ms``."""
    rows = csv.DictReader(io.StringIO(text))
    return [
        Reading(
            row["station"],
            parse_timestamp(row["taken_at"]),
            float(row["celsius"]),
            float(row["wind_ms"]),
        )
        for row in rows
    ]


def moving_average(values: list[float], window: int) -> list[float]:
    """The mean of every run of ``window`` consecutive values."""
    if window <= 0:
        raise ValueError("window must be positive")
    return [sum(values[i : i + window]) / window for i in range(len(values) - window + 1)]


def daily_extremes(readings: list[Reading]) -> dict[str, tuple[float, float]]:
    """Per day (ISO date): the lowest and the highest temperature."""
    days: dict[str, tuple[float, float]] = {}
    for reading in readings:
        day = reading.taken_at.date().isoformat()
        low, high = days.get(day, (reading.celsius, reading.celsius))
        days[day] = (min(low, reading.celsius), max(high, reading.celsius))
    return days


def age_seconds(reading: Reading, now: datetime | None = None) -> float:
    """How many seconds ago ``reading`` was taken."""
    current = now or datetime.now(UTC)
    return (current - reading.taken_at).total_seconds()
