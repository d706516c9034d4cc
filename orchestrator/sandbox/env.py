"""A repo's test environment, built once per requirements digest and mounted read-only.

``<workspace>/cache/envs/<digest>/`` is a Python virtual environment over the host's base interpreter
(the one the sandbox mounts), composed without running anything from the repository on the host
(:func:`ensure_env`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import sys
import tomllib
import venv
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.requirements import InvalidRequirement, Requirement

from orchestrator.errors import SandboxError
from orchestrator.store import gitops
from orchestrator.store.sbom import REQUIREMENT_FILES, dependency_blobs
from orchestrator.store.storage import atomic_write_json, file_lock
from orchestrator.store.workspace import Workspace

if TYPE_CHECKING:
    from orchestrator.sandbox.base import SandboxBackend, SandboxSpec

ENV_VERSION = 3  # bump when what goes into an environment changes (3: extras of requirements count)
SEED = ("pytest", "ruff")  # the test runner, and the linter the ruff-fix/ruff-format tool agents run
EXTRAS = ("test", "tests", "testing", "dev")
MANIFEST = "converge-env.json"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_requirements(worktree: Path) -> list[str]:
    """The requirement lines a repo declares, sorted and deduplicated."""

    def read(name: str) -> str | None:
        path = worktree / name
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None

    return _requirements(read, str(worktree / "pyproject.toml"))


def requirements_at(repo_path: Path, commit: str) -> list[str]:
    """:func:`declared_requirements` of ``commit``'s files, read from git (one ``cat-file``), not a checkout.

    Only regular files count; a symlinked requirements file (which a checkout would follow)
    counts as absent here, so a sandbox spec made from this may differ from one made from the
    checkout: callers compare the two (see ``sandbox_pool``).
    """
    blobs = dependency_blobs(repo_path, commit)
    tree = blobs[f"{commit}^{{tree}}"] or b""
    regular = {n for mode, n in gitops.tree_entries(tree, len(commit) // 2) if mode in REGULAR}

    def read(name: str) -> str | None:
        blob = blobs.get(f"{commit}:{name}") if name in regular else None
        return blob.decode("utf-8", errors="replace") if blob is not None else None

    return _requirements(read, f"{repo_path}: pyproject.toml of {commit[:12]}")


REGULAR = ("100644", "100755")


def _requirements(read: Callable[[str], str | None], pyproject_name: str) -> list[str]:
    found: set[str] = set()
    for name in REQUIREMENT_FILES:
        text = read(name)
        if text is not None:
            for raw in text.splitlines():
                line = raw.split(" #", 1)[0].strip()
                if line and not line.startswith(("#", "-", ".", "/")):
                    found.add(line)
    pyproject = read("pyproject.toml")
    if pyproject is not None:
        try:
            project = tomllib.loads(pyproject).get("project", {})
        except tomllib.TOMLDecodeError as exc:
            raise SandboxError(f"{pyproject_name}: not valid TOML: {exc}") from exc
        found.update(project.get("dependencies", []))
        extras = project.get("optional-dependencies", {})
        for extra in EXTRAS:
            found.update(extras.get(extra, []))
        own = _norm(str(project.get("name", "")))
        found = {r for r in found if _parse(r) is None or _norm(_parse(r).name) != own}  # type: ignore[union-attr]
    return sorted(found)


def _parse(line: str) -> Requirement | None:
    try:
        return Requirement(line)
    except InvalidRequirement:
        return None


def _applies(req: Requirement, extras: frozenset[str] = frozenset()) -> bool:
    """Whether ``req`` holds here, for a distribution asked for with ``extras`` (``pkg[server]``)."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": extra}) for extra in {"", *extras})


def host_closure(names: list[str]) -> tuple[dict[str, md.Distribution], list[str]]:
    """Distributions of Converge's environment for ``names`` and their dependencies; what is absent.

    Extras count: ``llama-cpp-python[server]`` brings the server's own dependencies, even
    when the plain ``llama-cpp-python`` was met first. A version pin is enforced for what
    ``names`` asks for; a dependency's dependency is taken as installed here, since that is
    the set this environment runs with (pip may have installed it past a stale pin).
    Answers are remembered until a directory on ``sys.path`` changes (an install or upgrade
    adds a ``.dist-info`` there): a run asks for every sandbox it starts.
    """
    found, missing = _closure(tuple(names), _path_stamp())
    return dict(found), list(missing)


@functools.lru_cache(maxsize=512)
def _version(dist: md.Distribution) -> str:
    """A distribution's version (read from its metadata file, so remembered with the closure that found it)."""
    return str(dist.version)


def _path_stamp() -> tuple[int, ...]:
    stamps = []
    for entry in sys.path:
        with contextlib.suppress(OSError):
            stamps.append(Path(entry or ".").stat().st_mtime_ns)
    return tuple(stamps)


@functools.lru_cache(maxsize=32)
def _closure(names: tuple[str, ...], _stamp: tuple[int, ...]) -> tuple[dict[str, md.Distribution], list[str]]:
    found: dict[str, md.Distribution] = {}
    extras_of: dict[str, frozenset[str]] = {}
    missing: list[str] = []
    top = set(names)
    todo: list[tuple[str, frozenset[str]]] = [(line, frozenset()) for line in names]
    while todo:
        line, context = todo.pop()
        req = _parse(line)
        if req is None or not _applies(req, context):
            continue
        key = _norm(req.name)
        wanted = frozenset(req.extras)
        if key in found:
            new = wanted - extras_of[key]
            if new:
                extras_of[key] |= new
                todo.extend((dep, new) for dep in found[key].requires or [])
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            missing.append(line)
            continue
        if line in top and req.specifier and not req.specifier.contains(dist.version, prereleases=True):
            missing.append(line)
            continue
        found[key] = dist
        extras_of[key] = wanted
        todo.extend((dep, wanted) for dep in dist.requires or [])
    return found, sorted(set(missing))


def env_digest(requirements: list[str], seeded: dict[str, str], allow_network: bool, sources: str = "") -> str:
    """sha256 of what the environment is made from.

    It covers the interpreter, the seeded versions and the declared requirements, so an unchanged
    repo reuses its environment and a changed lock file gets a new one.
    """
    doc = {
        "sources": sources,
        "version": ENV_VERSION,
        "python": sys.version,
        "base": sys.base_prefix,
        "requirements": requirements,
        "seeded": seeded,
        "network": allow_network,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _site_packages(env: Path) -> Path:
    return env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def copy_distribution(dist: md.Distribution, site: Path) -> None:
    """Copy one installed distribution's files into ``site``, and its compiled executables into ``bin/``.

    Console-script wrappers are left out: their shebang names the host's interpreter, which the
    sandbox does not have at that path (``python -m`` works instead). Compiled executables such
    as ruff's are self-contained and go to the environment's ``bin/``, which is on PATH.
    """
    for rel in dist.files or []:
        if rel.parts and rel.parts[0] == "..":
            source = Path(str(dist.locate_file(rel)))
            if len(rel.parts) >= 2 and rel.parts[-2] == "bin" and _is_compiled(source):
                target = site.parent.parent.parent / "bin" / rel.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
            continue
        source = Path(str(dist.locate_file(rel)))
        if not source.is_file():
            continue  # compiled files come along (copy2 keeps mtimes, so they stay valid)
        target = site / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def _is_compiled(path: Path) -> bool:
    """An ELF executable (not a script with a shebang)."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


def ensure_env(
    ws: Workspace,
    repo: str,
    spec: SandboxSpec,
    backend: SandboxBackend,
    *,
    allow_network: bool,
    requirements: list[str] | None = None,
) -> Path:
    """The test environment of the worktree in ``spec`` (or of ``requirements``): built now if its digest is new.

    1. the venv skeleton is written by the standard library (``venv``, no pip, no scripts);
    2. pytest and its dependencies are copied file by file from Converge's own environment;
    3. the repo's declared dependencies (``requirements*.txt``, ``[project] dependencies`` and
       the ``test``/``tests``/``dev`` extras) are copied the same way when this host has them;
       what is still missing is installed by pip *inside a sandbox*, and only when
       ``sandbox.allow.<repo>`` grants ``network-deps``; otherwise a SandboxError names the
       missing packages and the setting.
    """
    if requirements is None:
        requirements = declared_requirements(spec.worktree)
    seed, seed_missing = host_closure(list(SEED))
    if seed_missing:
        raise SandboxError(f"cannot seed test environments: {', '.join(seed_missing)} missing here; reinstall Converge")
    wanted, missing = host_closure(requirements)
    dists = {**seed, **wanted}
    seeded = {key: _version(dist) for key, dist in sorted(dists.items())}
    local = local_sources(ws) if missing else LocalSources()
    if missing and not allow_network and not local.mounts:
        raise SandboxError(
            f"repo {repo}: dependencies {', '.join(missing)} are not available offline; name a wheelhouse "
            f'(`[sandbox] find_links = ["DIR"]`) or a local index (`index_url`), or allow network for dependency '
            f'setup with `[sandbox.allow] {repo} = ["network-deps"]`, in .converge/converge.toml'
        )
    digest = env_digest(requirements, seeded, allow_network and bool(missing), local.digest())
    final = ws.cache / "envs" / digest[:16]
    if (final / MANIFEST).is_file():
        return final
    with file_lock(ws.state / "locks" / f"env-{digest[:16]}.lock", "the test environment build", wait=True):
        if (final / MANIFEST).is_file():
            return final
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        venv.EnvBuilder(symlinks=True, with_pip=False, clear=True).create(tmp)
        site = _site_packages(tmp)
        for dist in dists.values():
            copy_distribution(dist, site)
        if missing:
            _pip_install(tmp, missing, spec, backend, repo, local, network=allow_network and not local.mounts)
        atomic_write_json(
            tmp / MANIFEST,
            {"digest": digest, "requirements": requirements, "copied": seeded, "installed": missing},
        )
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
    return final


@dataclass(frozen=True)
class LocalSources:
    """Wheelhouses and a local index the user named, as pip options and read-only mounts of the sandbox."""

    pip_args: tuple[str, ...] = ()
    mounts: tuple[tuple[Path, str], ...] = ()

    def digest(self) -> str:
        """What the sources hold (names and sizes of their files): a changed wheelhouse makes a new environment."""
        listing = [f"{p.relative_to(src)}:{p.stat().st_size}" for src, _ in self.mounts for p in sorted(src.rglob("*"))]
        return hashlib.sha256("\n".join([*self.pip_args, *listing]).encode()).hexdigest() if self.mounts else ""


def local_sources(ws: Workspace) -> LocalSources:
    """``[sandbox] find_links`` and ``index_url``: each must be a directory; pip then uses nothing else."""
    cfg = ws.config().sandbox
    args: list[str] = []
    mounts: list[tuple[Path, str]] = []
    named = [(f"find_links[{i}]", d) for i, d in enumerate(cfg.find_links)] + [("index_url", cfg.index_url)]
    for key, value in named:
        if not value:
            continue
        path = Path(value.removeprefix("file://")).expanduser()
        path = path if path.is_absolute() else ws.root / path
        if not path.is_dir():
            raise SandboxError(f"converge.toml: sandbox.{key}: {path} is not a directory of packages")
        inside = f"/packages/{len(mounts)}"
        mounts.append((path, inside))
        args += ["--index-url", f"file://{inside}"] if key == "index_url" else ["--find-links", inside]
    if mounts and not cfg.index_url:
        args.insert(0, "--no-index")
    return LocalSources(tuple(args), tuple(mounts))


def _pip_install(
    env: Path,
    missing: list[str],
    spec: SandboxSpec,
    backend: SandboxBackend,
    repo: str,
    local: LocalSources,
    *,
    network: bool,
) -> None:
    """pip, inside a sandbox, into the env mounted writable: from the local sources the user named (no
    network), else with network (the one loosened item)."""
    (env / "converge-requirements.txt").write_text("\n".join(missing) + "\n", encoding="utf-8")
    if os.getuid() == 0:
        for top, _dirs, files in os.walk(env):
            os.chown(top, spec.image.uid, spec.image.gid)
            for name in files:
                os.lchown(Path(top) / name, spec.image.uid, spec.image.gid)
    build = replace(
        spec, env_dir=env, env_writable=True, network=network, worktree_writable=False, extra_mounts=local.mounts
    )
    session = backend.start(build)
    try:
        for argv in (
            ["/env/bin/python", "-m", "ensurepip", "--default-pip"],
            [
                "/env/bin/python",
                "-m",
                "pip",
                "install",
                "--no-cache-dir",
                "--disable-pip-version-check",
                *local.pip_args,
                "-r",
                "/env/converge-requirements.txt",
            ],
        ):
            result = session.exec(argv, spec.limits.timeout, 20_000)
            if not result.ok:
                tail = (result.stderr_tail or result.stdout_tail).strip().splitlines()
                raise SandboxError(f"repo {repo}: dependency setup failed: {tail[-1] if tail else result.exit_code}")
    finally:
        session.close()
        if os.getuid() == 0:
            for top, _dirs, files in os.walk(env):
                os.chown(top, 0, 0)
                for name in files:
                    os.lchown(Path(top) / name, 0, 0)
