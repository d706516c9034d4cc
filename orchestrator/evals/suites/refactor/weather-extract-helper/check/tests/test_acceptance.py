import inspect

from weather import units


def test_the_helper_converts():
    assert units.celsius_to_fahrenheit(0) == 32
    assert units.celsius_to_fahrenheit(100) == 212


def test_the_formula_is_written_once():
    source = inspect.getsource(units)
    assert source.count("9 / 5") + source.count("9/5") + source.count("1.8") == 1, source


def test_the_other_functions_use_the_helper():
    for func in (units.high_low_fahrenheit, units.wind_chill_fahrenheit):
        assert "celsius_to_fahrenheit(" in inspect.getsource(func)
    assert units.high_low_fahrenheit(30, 10) == (86, 50)
