from textstats.counts import lexical_density, top_n, word_frequencies
from textstats.report import summary

TEXT = "the cat sat on the mat and the cat slept"


def test_frequencies_skip_stopwords():
    found = word_frequencies(TEXT)
    assert found["cat"] == 2
    assert "the" not in found


def test_frequencies_can_keep_stopwords():
    assert word_frequencies(TEXT, skip_stopwords=False)["the"] == 3


def test_top_n_puts_the_most_frequent_first():
    assert top_n({"cat": 2, "mat": 1, "sat": 1}, 5)[0] == ("cat", 2)


def test_density():
    assert lexical_density("a a b b") == 0.5
    assert lexical_density("") == 0.0


def test_summary_starts_with_the_counts():
    assert summary(TEXT).startswith("5 distinct words")
