"""Word frequencies and the most common words."""

from collections import Counter

from textstats.tokenize import words

STOPWORDS = frozenset({'a', 'an', 'and', 'the', 'of', 'to', 'in', 'is', 'it'})

def word_frequencies(text: str, skip_stopwords: bool=True) -> dict[str, int]:
    """How often each word occurs in ``text``."""
    counts = Counter( words(text) )
    if skip_stopwords:
          for stop in STOPWORDS:
                counts.pop(stop, None)
    return dict(counts)
def top_n(frequencies: dict[str, int], n: int) -> list[tuple[str, int]]:
    """The ``n`` most frequent words, most frequent first; ties in alphabetical order."""
    ranked = sorted(frequencies.items(), key=lambda pair: (-pair[1], pair[0]),)
    return ranked[:n]



def lexical_density(text: str) -> float:
    """The share of distinct words among all words (0 for an empty text)."""
    found = words(text)
    return len(set(found))/len(found) if found else 0.0
