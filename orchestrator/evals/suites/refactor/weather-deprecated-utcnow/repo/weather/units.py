"""Unit conversions for weather readings."""

KMH_PER_MS = 3.6


def celsius_to_fahrenheit(celsius: float) -> float:
    """Degrees Celsius to degrees Fahrenheit."""
    return celsius * 9 / 5 + 32


def high_low_fahrenheit(high: float, low: float) -> tuple[float, float]:
    """A day's high and low (Celsius) in Fahrenheit."""
    return celsius_to_fahrenheit(high), celsius_to_fahrenheit(low)


def wind_chill_fahrenheit(celsius: float, wind_ms: float) -> float:
    """A rough felt temperature in Fahrenheit: colder the more wind there is."""
    return celsius_to_fahrenheit(celsius - 0.7 * wind_ms)


def ms_to_kmh(speed: float) -> float:
    """Metres per second to kilometres per hour."""
    return speed * KMH_PER_MS


def describe_wind(speed_ms: float) -> str:
    """A word for a wind speed in m/s, after the Beaufort scale."""
    if speed_ms < 0.5:
        return "calm"
    if speed_ms < 5.5:
        return "breeze"
    if speed_ms < 13.9:
        return "wind"
    return "gale"


def station_label(station: str, speed_ms: float) -> str:
    """A label such as ``OSL: breeze, 14 km/h``."""
    return f"{station}: {describe_wind(speed_ms)}, {ms_to_kmh(speed_ms):.0f} km/h"
