import typing

from textstats import counts


def test_word_frequencies_is_annotated():
    hints = typing.get_type_hints(counts.word_frequencies)
    assert {"text", "skip_stopwords", "return"} <= set(hints)


def test_top_n_is_annotated():
    assert {"frequencies", "n", "return"} <= set(typing.get_type_hints(counts.top_n))
