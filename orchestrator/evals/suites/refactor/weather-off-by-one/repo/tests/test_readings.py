from datetime import UTC, datetime

import pytest

from weather.readings import daily_extremes, moving_average, parse_csv, parse_timestamp

CSV = """station,taken_at,celsius,wind_ms
OSL,2024-03-01T06:00:00,-2.5,3.0
OSL,2024-03-01T14:00:00,4.0,6.5
OSL,2024-03-02T06:00:00,-4.0,1.0
"""


def test_parse_csv():
    readings = parse_csv(CSV)
    assert len(readings) == 3
    assert readings[0].celsius == -2.5
    assert readings[0].taken_at == datetime(2024, 3, 1, 6, tzinfo=UTC)


def test_timestamps_keep_their_zone():
    assert parse_timestamp("2024-03-01T06:00:00+01:00").utcoffset().total_seconds() == 3600


def test_daily_extremes():
    assert daily_extremes(parse_csv(CSV))["2024-03-01"] == (-2.5, 4.0)


def test_moving_average_first_value():
    assert moving_average([2.0, 4.0, 6.0, 8.0], 2)[0] == 3.0


def test_moving_average_needs_a_window():
    with pytest.raises(ValueError):
        moving_average([1.0], 0)
