"""The dependencies rule: packages a change adds or bumps (pyproject.toml, requirements files), checked
against the policy's allowed packages and licenses.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from typing import Any

from orchestrator.policy.change import ChangeInput
from orchestrator.policy.model import Policy, normalise_name
from orchestrator.policy.verdict import Decision, Reason, Risk

_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _requirement(spec: str) -> tuple[str, str] | None:
    match = _REQ_NAME.match(spec)
    if not match:
        return None
    return normalise_name(match[1]), re.sub(r"\s+", "", spec)


def _pyproject_deps(text: str) -> dict[str, str]:
    data = tomllib.loads(text)
    specs: list[str] = []
    project = data.get("project", {})
    specs += project.get("dependencies", [])
    for group in project.get("optional-dependencies", {}).values():
        specs += group
    for group in data.get("dependency-groups", {}).values():
        specs += [s for s in group if isinstance(s, str)]
    specs += data.get("build-system", {}).get("requires", [])
    poetry = data.get("tool", {}).get("poetry", {})
    tables: list[dict[str, Any]] = [poetry.get("dependencies", {}), poetry.get("dev-dependencies", {})]
    tables += [g.get("dependencies", {}) for g in poetry.get("group", {}).values()]
    for table in tables:
        specs += [f"{name}{value!s}" for name, value in table.items() if name.lower() != "python"]
    return dict(r for r in map(_requirement, (s for s in specs if isinstance(s, str))) if r)


def _requirements_deps(text: str) -> dict[str, str]:
    deps: dict[str, str] = {}
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        if line.startswith("-") or "://" in line.split("@")[0]:
            deps[f"option {line}"] = line  # index URLs, includes, direct URLs: where packages come from
            continue
        req = _requirement(line)
        if req:
            deps[req[0]] = req[1]
    return deps


def _deps(path: str, text: str | None) -> dict[str, str]:
    if text is None:
        return {}
    return _pyproject_deps(text) if path.endswith("pyproject.toml") else _requirements_deps(text)


def _license_allowed(expression: str, allowed: set[str]) -> bool:
    """``A OR B`` needs one allowed alternative; ``A AND B`` needs all."""
    return any(
        all(part.strip().strip("()").lower() in allowed for part in re.split(r"\s+AND\s+", alt))
        for alt in re.split(r"\s+OR\s+", expression)
    )


def dependencies(change: ChangeInput, policy: Policy) -> Iterator[Reason]:
    """New or changed dependencies must be on the allow list with an allowed license."""
    rule = policy.dependencies
    allowed = {lic.lower() for lic in rule.allowed_licenses}
    for path, (old_text, new_text) in sorted(change.manifests.items()):
        try:
            old, new = _deps(path, old_text), _deps(path, new_text)
        except (tomllib.TOMLDecodeError, AttributeError, TypeError) as exc:
            yield Reason(
                rule="dependency",
                message=f"cannot read the dependencies: {exc}",
                file=path,
                decision=Decision(rule.unknown),
                risk=Risk.MEDIUM,
            )
            continue
        for name, spec in sorted(new.items()):
            if old.get(name) == spec:
                continue
            verb = "changed" if name in old else "added"
            license_ = rule.known.get(name)
            if name.startswith("option ") or license_ is None:
                what = spec if name.startswith("option ") else name
                yield Reason(
                    rule="dependency",
                    message=f"{verb} {what!r}: not on the allow list (license unknown offline)",
                    file=path,
                    decision=Decision(rule.unknown),
                    risk=Risk.MEDIUM,
                )
            elif not _license_allowed(license_, allowed):
                yield Reason(
                    rule="dependency-license",
                    message=f"{verb} {name!r}: license {license_} is not allowed",
                    file=path,
                    decision=Decision(rule.disallowed_license),
                    risk=Risk.HIGH,
                )
