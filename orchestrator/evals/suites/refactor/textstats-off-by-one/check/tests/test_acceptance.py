from textstats.counts import top_n


def test_top_n_returns_n_words():
    frequencies = {"cat": 3, "mat": 2, "sat": 1, "hat": 1}
    assert top_n(frequencies, 2) == [("cat", 3), ("mat", 2)]
    assert len(top_n(frequencies, 4)) == 4
    assert top_n(frequencies, 10) == [("cat", 3), ("mat", 2), ("hat", 1), ("sat", 1)]
