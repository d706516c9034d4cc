"""Content scanners for added lines: secrets (detect-secrets, offline) and hidden/confusable Unicode.

Both run only on lines a change adds. Secrets: a few high-signal regexes and detect-secrets'
plugins (offline; no verification) each run once over a file's added lines joined together,
and what they find is mapped back to its line, where detect-secrets' heuristic filters
(indirect references, templates, UUIDs, ...) drop the false positives. That keeps a
5,000-line diff well under the time budget.
detect-secrets' inline allowlist comments (``pragma: allowlist secret``) are deliberately not
honoured: text in the repo cannot switch a rule off.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.filters import heuristic
from detect_secrets.plugins.keyword import DENYLIST
from detect_secrets.settings import transient_settings

# --- secrets ------------------------------------------------------------------------------

# name -> (regex, needles): the regex runs only where one of the (lower-case) needles occurs.
HIGH_SIGNAL: dict[str, tuple[str, tuple[str, ...]]] = {
    "private key": (r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----", ("private key",)),
    "AWS access key id": (r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?![0-9A-Za-z])", ("akia", "asia", "abia", "acca")),
    "AWS secret access key": (
        r"(?i)aws_?secret_?(?:access_?)?key\W{0,5}[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])",
        ("secret",),
    ),
    "GitHub token": (
        r"gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    "Slack token": (r"xox[abposr]-[A-Za-z0-9-]{10,}", ("xox",)),
    "Stripe live key": (r"[sr]k_live_[0-9A-Za-z]{20,}", ("k_live_",)),
    "Google API key": (r"AIza[0-9A-Za-z_-]{35}", ("aiza",)),
}

# detect-secrets plugins left out: public IPs are not credentials.
_SKIPPED_PLUGINS = {"IPPublicDetector"}
# What every match of a slow detect-secrets plugin must contain (from the plugin's own regexes);
# those plugins run only on the lines that hold it.
_TRIGGERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Base64HighEntropyString": (r"""["'][A-Za-z0-9+/=_-]{20,}""", ()),
    "HexHighEntropyString": (r"""["'][0-9a-f]{9,}""", ()),
    "ArtifactoryDetector": (r"AKC|AP[0-9A-F]", ("akc", "ap")),
    "MailchimpDetector": (r"-us[0-9]", ("-us",)),
    "IbmCloudIamDetector": (r"key|pwd|pass|token", ("key", "pwd", "pass", "token")),
    "IbmCosHmacDetector": (r"secret", ("secret",)),
    "CloudantDetector": (r"key|pw|pass|token|cloudant", ("key", "pw", "pass", "token", "cloudant")),
    "SoftlayerDetector": (r"key|pwd|pass|token|softlayer", ("key", "pwd", "pass", "token", "softlayer")),
    "KeywordDetector": ("", ("key", "pass", "pwd", "secret", "contrase")),  # regex: detect-secrets' DENYLIST
}


@dataclass(frozen=True)
class Hit:
    """Something a scanner found on an added line."""

    kind: str
    file: str
    line: int


class SecretScanner:
    """High-signal regexes plus detect-secrets' plugins, prepared once and reused."""

    def __init__(self, extra: dict[str, str] | None = None, use_detect_secrets: bool = True) -> None:
        patterns = {**HIGH_SIGNAL, **{name: (rx, ()) for name, rx in (extra or {}).items()}}
        self._patterns = [(name, re.compile(rx), needles) for name, (rx, needles) in patterns.items()]
        self._plugins = _detect_secrets_plugins() if use_detect_secrets else ()

    def scan(self, files: Iterable[tuple[str, Sequence[tuple[int, str]]]]) -> list[Hit]:
        """Secrets on the (line number, text) pairs of each (path, lines) given, at most one per line."""
        hits: list[Hit] = []
        with _settings(bool(self._plugins)):
            for path, lines in files:
                if lines:
                    hits += self._scan_file(path, _Text(lines))
        return hits

    def _scan_file(self, path: str, text: _Text) -> list[Hit]:
        # Each regex and plugin runs once over the file's added lines joined: far cheaper than per line.
        found: dict[int, Hit] = {}
        for name, pattern, needles in self._patterns:
            if needles and not text.has_any(needles):
                continue
            for match in pattern.finditer(text.joined):
                number, _ = text.line_at(match.start())
                found.setdefault(number, Hit(name, path, number))
        if not self._plugins:
            return list(found.values())
        for plugin, trigger, needles in self._plugins:
            # Slow plugins only see the lines that hold what any of their matches must contain.
            if needles and not text.has_any(needles):
                continue
            scope = text if trigger is None else text.subset(trigger)
            if scope is None:
                continue
            for secret in plugin.analyze_line(filename=path, line=scope.joined, line_number=0):
                value = secret.secret_value or ""
                for number, line in scope.lines_with(value):
                    if number in found or heuristic.is_indirect_reference(line):
                        continue
                    if not _heuristically_benign(heuristic, plugin, value, line):
                        found[number] = Hit(str(secret.type), path, number)
        return sorted(found.values(), key=lambda h: h.line)


class _Text:
    """Added lines joined by newlines, with offset -> line lookups."""

    def __init__(self, lines: Sequence[tuple[int, str]]) -> None:
        self.lines = lines
        self.joined = "\n".join(t for _, t in lines)
        self.starts = list(itertools.accumulate((len(t) + 1 for _, t in lines[:-1]), initial=0))
        self._lower: str | None = None

    def has_any(self, needles: tuple[str, ...]) -> bool:
        """Whether any lower-case needle occurs in the text, case-insensitively."""
        if self._lower is None:
            self._lower = self.joined.lower()
        return any(needle in self._lower for needle in needles)

    def subset(self, trigger: re.Pattern[str]) -> _Text | None:
        """Only the lines where ``trigger`` matches, or None when it matches nowhere."""
        picked = sorted({bisect.bisect_right(self.starts, m.start()) - 1 for m in trigger.finditer(self.joined)})
        if not picked:
            return None
        return _Text([self.lines[i] for i in picked])

    def line_at(self, offset: int) -> tuple[int, str]:
        return self.lines[bisect.bisect_right(self.starts, offset) - 1]

    def lines_with(self, value: str) -> Iterator[tuple[int, str]]:
        if not value:
            return
        offset = self.joined.find(value)
        while offset != -1:
            yield self.line_at(offset)
            offset = self.joined.find(value, offset + 1)


@contextlib.contextmanager
def _settings(active: bool) -> Iterator[None]:
    """detect-secrets' settings for one scan: an explicit, empty filter list means no network verification."""
    if not active:
        yield
        return
    with transient_settings({"plugins_used": [], "filters_used": []}):
        yield


@functools.cache
def _detect_secrets_plugins() -> tuple[tuple[Any, re.Pattern[str] | None, tuple[str, ...]], ...]:
    """Every detect-secrets plugin but the skipped ones, with its line trigger (None: all lines) and needles."""
    plugins = []
    classes: list[Any] = list(get_mapping_from_secret_type_to_class().values())
    for cls in classes:
        if cls.__name__ in _SKIPPED_PLUGINS:
            continue
        regex, needles = _TRIGGERS.get(cls.__name__, (None, ()))
        if cls.__name__ == "KeywordDetector":
            regex = "|".join(DENYLIST)
        plugins.append((cls(), re.compile(regex, re.IGNORECASE) if regex else None, needles))
    return tuple(plugins)


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
