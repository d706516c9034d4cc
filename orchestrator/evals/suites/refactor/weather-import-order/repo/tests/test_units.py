from weather.units import (
    celsius_to_fahrenheit,
    describe_wind,
    high_low_fahrenheit,
    station_label,
    wind_chill_fahrenheit,
)


def test_freezing_and_boiling():
    assert celsius_to_fahrenheit(0) == 32
    assert celsius_to_fahrenheit(100) == 212


def test_high_low():
    assert high_low_fahrenheit(30, 10) == (86, 50)


def test_wind_chill_is_colder_with_wind():
    assert wind_chill_fahrenheit(10, 10) < wind_chill_fahrenheit(10, 0) == 50


def test_wind_words():
    assert [describe_wind(s) for s in (0, 3, 10, 20)] == ["calm", "breeze", "wind", "gale"]


def test_label():
    assert station_label("OSL", 4) == "OSL: breeze, 14 km/h"
