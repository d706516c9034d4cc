"""Content scanners for added lines: secrets (detect-secrets, offline) and hidden/confusable Unicode.

Both run only on lines a change adds. Secrets: a few high-signal regexes run on every added
line; detect-secrets' plugins run on the lines a cheap prefilter lets through (a long token,
a quoted string, a credential keyword), which keeps a 5,000-line diff well under the budget.
detect-secrets' inline allowlist comments (``pragma: allowlist secret``) are deliberately not
honoured: text in the repo cannot switch a rule off.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

# --- secrets ------------------------------------------------------------------------------

HIGH_SIGNAL: dict[str, str] = {
    "private key": r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
    "AWS access key id": r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
    "AWS secret access key": r"(?i)aws_?secret_?(?:access_?)?key\W{0,5}[A-Za-z0-9/+=]{40}\b",
    "GitHub token": r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b",
    "Slack token": r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    "Stripe live key": r"\b[sr]k_live_[0-9A-Za-z]{20,}",
    "Google API key": r"\bAIza[0-9A-Za-z_-]{35}\b",
}

# Lines worth handing to detect-secrets: long tokens, quoted strings, credential words, URLs with a password.
_PREFILTER = re.compile(
    r"""[A-Za-z0-9+/_=\-]{20,}|["'`][^"'`\s]{8,}|://[^/\s:@]+:[^/\s@]+@"""
    r"|(?i:pass|pwd|secret|token|key|auth|cred|private|bearer|api)"
)
# detect-secrets plugins left out: public IPs are not credentials.
_SKIPPED_PLUGINS = {"IPPublicDetector"}


@dataclass(frozen=True)
class Hit:
    """Something a scanner found on an added line."""

    kind: str
    file: str
    line: int


class SecretScanner:
    """High-signal regexes plus detect-secrets' plugins, prepared once and reused."""

    def __init__(self, extra: dict[str, str] | None = None, use_detect_secrets: bool = True) -> None:
        patterns = {**HIGH_SIGNAL, **(extra or {})}
        self._patterns = [(name, re.compile(rx)) for name, rx in patterns.items()]
        self._plugins = _detect_secrets_plugins() if use_detect_secrets else ()

    def scan(self, files: Iterable[tuple[str, Iterable[tuple[int, str]]]]) -> list[Hit]:
        """Secrets on the (line number, text) pairs of each (path, lines) given."""
        hits: list[Hit] = []
        candidates: list[tuple[str, int, str]] = []
        for path, lines in files:
            for number, text in lines:
                found = False
                for name, pattern in self._patterns:
                    if pattern.search(text):
                        found = True
                        hits.append(Hit(name, path, number))
                if not found and self._plugins and _PREFILTER.search(text):
                    candidates.append((path, number, text))
        if candidates:
            hits += self._detect_secrets(candidates)
        return hits

    def _detect_secrets(self, candidates: list[tuple[str, int, str]]) -> Iterator[Hit]:
        from detect_secrets.filters import heuristic
        from detect_secrets.settings import transient_settings

        # An explicit, empty filter list keeps detect-secrets from verifying anything over the network.
        with transient_settings({"plugins_used": [], "filters_used": []}):
            found = []
            for path, number, line in candidates:
                if heuristic.is_indirect_reference(line):
                    continue
                kind = _first_secret(heuristic, self._plugins, path, line)
                if kind:
                    found.append(Hit(kind, path, number))
        return iter(found)


@functools.cache
def _detect_secrets_plugins() -> tuple[Any, ...]:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    return tuple(
        cls() for cls in get_mapping_from_secret_type_to_class().values() if cls.__name__ not in _SKIPPED_PLUGINS
    )


def _first_secret(heuristic: Any, plugins: tuple[Any, ...], path: str, line: str) -> str | None:
    for plugin in plugins:
        for secret in plugin.analyze_line(filename=path, line=line, line_number=0):
            value = secret.secret_value or ""
            if not _heuristically_benign(heuristic, plugin, value, line):
                return str(secret.type)
    return None


def _heuristically_benign(heuristic: Any, plugin: Any, value: str, line: str) -> bool:
    limit = getattr(plugin, "entropy_limit", None)
    if limit is not None and plugin.calculate_shannon_entropy(value) <= limit:
        return True
    return bool(
        heuristic.is_sequential_string(value)
        or heuristic.is_potential_uuid(value)
        or heuristic.is_likely_id_string(value, line, plugin)
        or heuristic.is_templated_secret(value)
        or heuristic.is_prefixed_with_dollar_sign(value)
        or heuristic.is_not_alphanumeric_string(value)
    )


# --- Unicode ------------------------------------------------------------------------------

# Bidirectional controls (Trojan Source), zero-width and invisible characters, tag characters.
HIDDEN = re.compile(
    "[\u202a-\u202e\u2066-\u2069\u200b-\u200f\u2028\u2029\u2060-\u2064\u206a-\u206f\ufeff\u00ad\u034f"
    "\u115f\u1160\u180e\u3164\uffa0\U000e0000-\U000e007f]"
)
_WORD = re.compile(r"\w+")
_SCRIPT_CACHE: dict[str, str] = {}
# Scripts whose letters are mistaken for one another; CJK scripts mix legitimately.
_CONFUSABLE_SCRIPTS = {"LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC"}
# Cyrillic and Greek letters that look like Latin ones.
_HOMOGLYPHS = set("аеорсухіјѕԁԛԝһӏɡАВЕКМНОРСТХІЈЅԌαοινρτυχΑΒΕΖΗΙΚΜΝΟΡΤΥΧ")


def _script(ch: str) -> str:
    if ch < "\x80":
        return "LATIN" if ch.isalpha() else ""
    script = _SCRIPT_CACHE.get(ch)
    if script is None:
        name = unicodedata.name(ch, "")
        script = name.split(" ", 1)[0] if ch.isalpha() and name else ""
        _SCRIPT_CACHE[ch] = script
    return script


def hidden_characters(text: str) -> list[str]:
    """Names of hidden or bidirectional control characters in ``text``."""
    if text.isascii():
        return []
    return [unicodedata.name(m[0], f"U+{ord(m[0]):04X}") for m in HIDDEN.finditer(text)]


def confusable_identifiers(text: str, code: bool) -> list[str]:
    """Words mixing look-alike scripts; in code also homoglyph-only and NFKC-changing identifiers."""
    if text.isascii():
        return []
    found = []
    for match in _WORD.finditer(text):
        word = match[0]
        if word.isascii():
            continue
        scripts = {_script(ch) for ch in word} & _CONFUSABLE_SCRIPTS
        if len(scripts) > 1:
            found.append(f"{word!r} mixes {' and '.join(sorted(scripts))} letters")
        elif code and len(word) > 1 and all(ch in _HOMOGLYPHS or ch.isdigit() or ch == "_" for ch in word):
            found.append(f"{word!r} is spelled with {next(iter(scripts), 'non-Latin')} look-alikes of Latin letters")
        elif code and unicodedata.normalize("NFKC", word) != word:
            found.append(f"{word!r} is read as {unicodedata.normalize('NFKC', word)!r} by compilers")
    return found
