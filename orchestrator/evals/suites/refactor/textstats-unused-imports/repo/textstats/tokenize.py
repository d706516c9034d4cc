"""Splitting text into words."""

import re
import string
import sys
import unicodedata

WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def normalise(text: str) -> str:
    """Lower-case and strip accents, so that accented and plain spellings count as one word."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def words(text: str) -> list[str]:
    """The words of ``text``, normalised, in order."""
    return WORD.findall(normalise(text))
