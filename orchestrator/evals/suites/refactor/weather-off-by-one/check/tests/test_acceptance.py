from weather.readings import moving_average


def test_every_window_is_averaged():
    assert moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 3) == [2.0, 3.0, 4.0]


def test_a_window_as_long_as_the_values():
    assert moving_average([2.0, 4.0], 2) == [3.0]
