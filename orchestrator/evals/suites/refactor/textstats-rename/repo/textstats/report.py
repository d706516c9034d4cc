"""A short plain-text report on a document."""

from textstats.counts import calc_freq, lexical_density, top_n


def summary(text: str, n: int = 5) -> str:
    """Distinct words, lexical density and the ``n`` most common words."""
    frequencies = calc_freq(text)
    lines = [f"{len(frequencies)} distinct words, density {lexical_density(text):.2f}"]
    lines += [f"{word}: {count}" for word, count in top_n(frequencies, n)]
    return "\n".join(lines)
