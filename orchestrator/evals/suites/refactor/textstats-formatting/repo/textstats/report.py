"""A short plain-text report on a document."""

from textstats.counts import lexical_density, top_n, word_frequencies


def summary(text: str, n: int = 5) -> str:
    """Distinct words, lexical density and the ``n`` most common words."""
    frequencies = word_frequencies(text)
    lines = [f"{len(frequencies)} distinct words, density {lexical_density(text):.2f}"]
    lines += [f"{word}: {count}" for word, count in top_n(frequencies, n)]
    return "\n".join(lines)
