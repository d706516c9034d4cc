import inspect
from datetime import UTC, datetime, timedelta

from weather import readings


def test_no_utcnow():
    assert "utcnow" not in inspect.getsource(readings)


def test_age_of_a_fresh_reading():
    taken = datetime.now(UTC) - timedelta(seconds=60)
    reading = readings.Reading("OSL", taken, 1.0, 2.0)
    assert 55 < readings.age_seconds(reading) < 120


def test_age_with_an_explicit_now():
    reading = readings.Reading("OSL", datetime(2024, 1, 1, tzinfo=UTC), 1.0, 2.0)
    assert readings.age_seconds(reading, datetime(2024, 1, 1, 0, 1, tzinfo=UTC)) == 60
