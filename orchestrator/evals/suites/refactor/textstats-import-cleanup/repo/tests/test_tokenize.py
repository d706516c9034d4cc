from textstats.tokenize import normalise, words


def test_words_are_lower_case():
    assert words("The cat, the HAT.") == ["the", "cat", "the", "hat"]


def test_accents_are_stripped():
    assert normalise("Caf\u00e9") == "cafe"


def test_apostrophes_stay_inside_words():
    assert words("don't stop") == ["don't", "stop"]
