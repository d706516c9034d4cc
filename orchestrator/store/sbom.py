"""CycloneDX SBOMs of a repo's declared dependencies, one per promoted generation.

The dependencies are read from the commit itself, never from a working tree, so the SBOM of a commit is a
pure function of it (:func:`build`): the attestation of a changeset can carry its digest before the
generation exists, and ``changeset verify`` recomputes it.
"""

from __future__ import annotations

import functools
import tomllib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cyclonedx.model import Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from orchestrator.errors import ConfigError
from orchestrator.store import gitops
from orchestrator.store.storage import atomic_write
from orchestrator.store.workspace import Workspace


@dataclass(frozen=True)
class Dependency:
    """One declared dependency."""

    name: str
    specifier: str
    source: str
    pinned: str | None = None
    scope: str = "required"


REQUIREMENT_FILES = ("requirements.txt", "requirements-dev.txt", "requirements-test.txt", "requirements_dev.txt")


def dependency_blobs(repo_path: Path, commit: str) -> dict[str, bytes | None]:
    """``commit``, its root tree and its usual dependency files (``<commit>:pyproject.toml``...), in one
    ``cat-file``: the one request both a sandbox's requirements and a commit's SBOM make, so it is read once."""
    names = ("pyproject.toml", *REQUIREMENT_FILES)
    return gitops.read_batch(repo_path, commit, [commit, f"{commit}^{{tree}}", *(f"{commit}:{n}" for n in names)])


def _parse(line: str, source: str, scope: str) -> Dependency | None:
    try:
        req = Requirement(line)
    except InvalidRequirement:
        return None
    spec = str(req.specifier)
    pins = [s.version for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
    return Dependency(canonicalize_name(req.name), spec, source, pins[0] if len(pins) == 1 else None, scope)


def _dependency_files(repo_path: Path, commit: str) -> tuple[dict[str, bytes | None], list[str], list[str]]:
    """The commit, its root entry names and its requirements*.txt names, with their blobs.

    One cat-file call reads the commit, its root tree and the usual dependency files; a second
    one only when the tree holds other requirements*.txt files.
    """
    blobs = dependency_blobs(repo_path, commit)
    names = [name for _, name in gitops.tree_entries(blobs[f"{commit}^{{tree}}"] or b"", len(commit) // 2)]
    reqs = sorted(n for n in names if n.startswith("requirements") and n.endswith(".txt"))
    others = [f"{commit}:{n}" for n in reqs if f"{commit}:{n}" not in blobs]
    if others:
        blobs.update(gitops.read_batch(repo_path, commit, others))
    return blobs, names, reqs


def declared_dependencies(repo_path: Path, commit: str) -> tuple[dict[str, str], list[Dependency]]:
    """The project's name/version (and the commit's ``_timestamp``) and its declared dependencies at ``commit``."""
    project: dict[str, str] = {}
    deps: list[Dependency] = []
    blobs, names, reqs = _dependency_files(repo_path, commit)
    committer = [
        ln for ln in (blobs[commit] or b"").decode(errors="replace").splitlines() if ln.startswith("committer ")
    ]
    project["_timestamp"] = committer[0].split()[-2] if committer else "0"
    text = (
        (blobs.get(f"{commit}:pyproject.toml") or b"").decode(errors="replace") if "pyproject.toml" in names else None
    )
    if text is not None:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"pyproject.toml at {commit[:12]}: not valid TOML: {exc}") from exc
        proj = data.get("project", {})
        project.update({k: str(proj[k]) for k in ("name", "version") if k in proj})
        for line in proj.get("dependencies", []):
            dep = _parse(str(line), "pyproject.toml", "required")
            if dep:
                deps.append(dep)
        for extra, lines in sorted(proj.get("optional-dependencies", {}).items()):
            for line in lines:
                dep = _parse(str(line), f"pyproject.toml[{extra}]", "optional")
                if dep:
                    deps.append(dep)
    for name in reqs:
        for raw in (blobs.get(f"{commit}:{name}") or b"").decode(errors="replace").splitlines():
            line = raw.split(" #", 1)[0].strip()
            if line and not line.startswith(("#", "-")):
                dep = _parse(line, name, "required")
                if dep:
                    deps.append(dep)
    return project, deps


def build(repo_path: Path, repo: str, commit: str) -> bytes:
    """The CycloneDX 1.6 JSON SBOM of ``repo`` at ``commit`` (deterministic bytes).

    For a full commit id the answer is remembered: it depends on that commit's objects alone,
    and a step builds it to sign, then again to verify before promoting.

    Dependencies are ``pyproject.toml``'s ``[project]`` dependencies and optional dependencies, and
    top-level ``requirements*.txt``; the serial number is derived from the repo and commit, the
    timestamp is the commit's.
    """
    if gitops.FULL_ID.match(commit):
        return _remembered(repo_path, repo, commit)
    return _build(repo_path, repo, commit)


def forget() -> None:
    """Drop the remembered SBOMs and git reads (for measuring a build as a new process makes it)."""
    _remembered.cache_clear()
    gitops.forget_reads()


@functools.lru_cache(maxsize=32)
def _remembered(repo_path: Path, repo: str, commit: str) -> bytes:
    return _build(repo_path, repo, commit)


def _build(repo_path: Path, repo: str, commit: str) -> bytes:
    project, deps = declared_dependencies(repo_path, commit)
    stamp = int(project.pop("_timestamp"))
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"converge:{repo}:{commit}"))
    bom.metadata.timestamp = datetime.fromtimestamp(stamp, UTC)
    root = Component(
        name=project.get("name", repo),
        version=project.get("version"),
        type=ComponentType.APPLICATION,
        bom_ref=f"repo:{repo}",
        properties=[Property(name="converge:commit", value=commit)],
    )
    bom.metadata.component = root
    components = []
    seen: set[str] = set()
    for dep in deps:
        ref = f"pkg:pypi/{dep.name}" + (f"@{dep.pinned}" if dep.pinned else "") + f"#{dep.source}"
        if ref in seen:
            continue
        seen.add(ref)
        props = [Property(name="converge:declared-in", value=dep.source)]
        if dep.specifier:
            props.append(Property(name="converge:specifier", value=dep.specifier))
        component = Component(
            name=dep.name,
            version=dep.pinned,
            type=ComponentType.LIBRARY,
            purl=PackageURL("pypi", name=dep.name, version=dep.pinned),
            bom_ref=ref,
            properties=props,
        )
        components.append(component)
        bom.components.add(component)
    bom.register_dependency(root, components)
    return JsonV1Dot6(bom).output_as_string(indent=2).encode() + b"\n"


def generation_path(ws: Workspace, repo: str, number: int) -> Path:
    """Where the SBOM of generation ``number`` of ``repo`` is kept."""
    return ws.sbom / repo / f"gen-{number}.cdx.json"


def write_generation(ws: Workspace, repo: str, number: int, data: bytes) -> Path:
    """Write a generation's SBOM atomically; return its path."""
    path = generation_path(ws, repo, number)
    atomic_write(path, data)
    return path
