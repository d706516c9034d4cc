"""Path globs of the policy: the paths protected whatever a policy file says, the test paths, and globs as regexes."""

from __future__ import annotations

import functools
import re

# Paths that stay protected whatever a policy file says (files can only add to them).
CORE_PROTECTED = (
    "policies/**",
    "agents/**",
    ".converge/**",
    ".ci/**",
    ".github/**",
    ".gitlab-ci.yml",
    ".githooks/**",
    ".husky/**",
    ".pre-commit-config.yaml",
    "tools/sandbox/**",
)
CORE_SELF_PROTECTED = ("orchestrator/**",)
CORE_TEST_PATHS = ("tests/**", "test/**", "**/test_*.py", "**/*_test.py", "**/conftest.py")


def glob_to_regex(pattern: str) -> str:
    """A path glob as a regex: ``**`` spans directories, ``*`` and ``?`` stay within one, ``dir/**`` matches ``dir``."""
    if pattern.endswith("/"):
        pattern += "**"
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("/**", i) and i + 3 == len(pattern):
            out += "(?:/.*)?"
            i += 3
        elif pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return out


@functools.lru_cache(maxsize=64)
def compile_globs(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One case-insensitive regex matching any of ``patterns`` (never matches when empty)."""
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("^(?:" + "|".join(glob_to_regex(p) for p in patterns) + ")$", re.IGNORECASE)
