"""The sandbox base image: its recipe, its digest, and building it offline.

No image registry is reachable, so the image is a ``docker import`` of a tiny root
filesystem written from the recipe (``tools/sandbox/recipe.toml`` of the workspace, else
the one in ``workspace_template/``): a directory skeleton, ``/etc/passwd`` naming one
unprivileged user, merged-/usr links. The toolchain comes from the host, bind-mounted
read-only (``/usr`` and the Python at ``sys.base_prefix``). The recipe is *resolved* for
this host (uid, which paths exist, Python prefix) and the image is tagged with the digest
of the resolved recipe, so it is rebuilt exactly when something it depends on changes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.config import format_validation_error, read_toml
from orchestrator.errors import ConfigError, SandboxError, translate
from orchestrator.store.storage import file_lock
from orchestrator.store.workspace import Workspace, template_dir

IMAGE_REPO = "converge-sandbox"
RECIPE_FILE = Path("tools") / "sandbox" / "recipe.toml"
BUILDER_VERSION = 1  # bump when the tar layout written below changes


@functools.cache
def runner_source() -> str:
    """The source of the in-container runner (``runner.py``), read once, on first use."""
    return (Path(__file__).parent / "runner.py").read_text(encoding="utf-8")


class Recipe(BaseModel):
    """``recipe.toml``: what the base image holds and what every container sees."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    user: str = Field(default="sandbox", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    uid: int = Field(default=65532, gt=0)
    gid: int = Field(default=65532, gt=0)
    dirs: list[str] = Field(default_factory=list)
    links: dict[str, str] = Field(default_factory=dict)
    host_mounts: list[str] = Field(default_factory=list)
    init: str | None = Field(default=None, description="ignored since Converge's runner became PID 1")
    env: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class ImageSpec:
    """A recipe resolved for this host: everything the image and its containers depend on."""

    uid: int
    gid: int
    user: str
    dirs: tuple[str, ...]
    links: dict[str, str]
    mounts: tuple[str, ...]  # host paths, bind-mounted read-only at the same path
    env: dict[str, str]
    recipe_path: Path = field(compare=False)

    @property
    def digest(self) -> str:
        """sha256 of everything above (and the tar layout version), hex."""
        doc = {
            "builder": BUILDER_VERSION,
            "uid": self.uid,
            "gid": self.gid,
            "user": self.user,
            "dirs": list(self.dirs),
            "links": self.links,
            "mounts": list(self.mounts),
            "python": str(self.python),
            "env": self.env,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    @property
    def tag(self) -> str:
        return f"{IMAGE_REPO}:{self.digest[:12]}"

    @property
    def keepalive(self) -> list[str]:
        """The command of PID 1: Converge's command runner, isolated from the sandbox's environment."""
        return [str(self.python), "-I", "-S", "-c", runner_source()]

    @property
    def python(self) -> Path:
        """The host interpreter the sandbox runs (read-only mounted at the same path)."""
        return Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"


def recipe_path(ws: Workspace | None) -> Path:
    """The workspace's recipe if it has one, else the template's."""
    if ws is not None and (ws.root / RECIPE_FILE).is_file():
        return ws.root / RECIPE_FILE
    return template_dir() / RECIPE_FILE


def load_recipe(path: Path) -> Recipe:
    """Parse and validate ``recipe.toml``."""
    try:
        return Recipe.model_validate(read_toml(path))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc)) from exc


def resolve(ws: Workspace | None) -> ImageSpec:
    """The recipe of ``ws`` resolved for this host (uid, existing mounts, Python prefix)."""
    path = recipe_path(ws)
    recipe = load_recipe(path)
    host_uid, host_gid = os.getuid(), os.getgid()
    # A non-root host user runs as itself, so files it creates in the worktree stay its own.
    uid, gid = (host_uid, host_gid) if host_uid != 0 else (recipe.uid, recipe.gid)
    links: dict[str, str] = {}
    dirs = list(recipe.dirs)
    mounts: list[str] = []
    for name, target in recipe.links.items():
        host = Path("/") / name
        if host.is_dir() and not host.is_symlink():
            dirs.append(name)  # not merged-/usr here: mount the real directory instead
            mounts.append(str(host))
        else:
            links[name] = target
    mounts += [m for m in recipe.host_mounts if Path(m).exists()]
    prefix = Path(sys.base_prefix).resolve()
    if not any(prefix.is_relative_to(m) for m in mounts):
        mounts.append(str(prefix))
    return ImageSpec(
        uid=uid,
        gid=gid,
        user=recipe.user,
        dirs=tuple(dict.fromkeys(dirs)),
        links=links,
        mounts=tuple(dict.fromkeys(mounts)),
        env=dict(recipe.env),
        recipe_path=path,
    )


def rootfs_tar(spec: ImageSpec) -> bytes:
    """The image's root filesystem as an uncompressed tar (deterministic: mtime 0)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made: set[str] = set()

        def add_dir(name: str, mode: int = 0o755, owner: int = 0) -> None:
            parts = Path(name).parts
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                if sub in made:
                    continue
                made.add(sub)
                info = tarfile.TarInfo(sub)
                info.type = tarfile.DIRTYPE
                info.mode = mode if i == len(parts) else 0o755
                info.uid = info.gid = owner if i == len(parts) else 0
                tar.addfile(info)

        for name in spec.dirs:
            mode = 0o1777 if name in ("tmp", "var/tmp") else 0o755
            add_dir(name.strip("/"), mode, spec.uid if name.startswith("home/") else 0)
        for name, target in sorted(spec.links.items()):
            info = tarfile.TarInfo(name.strip("/"))
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
        home = f"/home/{spec.user}"
        files = {
            "etc/passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"{spec.user}:x:{spec.uid}:{spec.gid}:Converge sandbox:{home}:/bin/sh\n",
            "etc/group": f"root:x:0:\n{spec.user}:x:{spec.gid}:\n",
            "etc/hosts": "127.0.0.1 localhost\n",
            "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
        }
        add_dir("etc")
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_present(client: Any, spec: ImageSpec) -> bool:
    """Whether the engine already holds the image of this recipe."""
    try:
        client.images.get(spec.tag)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.DockerException as exc:
        raise translate(exc, "docker", "docker engine refused to list images") from exc
    return True


def ensure_image(client: Any, spec: ImageSpec, lock_dir: Path | None = None) -> str:
    """Build the image of ``spec`` unless the engine has it; return its tag. Offline, ~1 s."""
    if image_present(client, spec):
        return spec.tag
    lock_path = (lock_dir or Path(os.environ.get("TMPDIR", "/tmp"))) / f"converge-image-{spec.digest[:12]}.lock"
    with file_lock(lock_path, "the sandbox image build", wait=True):
        if image_present(client, spec):
            return spec.tag
        repo, _, tag = spec.tag.partition(":")
        changes = [f"USER {spec.uid}:{spec.gid}", f"LABEL converge.recipe={spec.digest}", "WORKDIR /src"]
        try:
            client.api.import_image_from_data(rootfs_tar(spec), repository=repo, tag=tag, changes=changes)
        except docker.errors.DockerException as exc:
            building = f"cannot build the sandbox image {spec.tag} from {spec.recipe_path}"
            raise translate(exc, "docker", building) from exc
    if not image_present(client, spec):
        raise SandboxError(f"docker import did not produce {spec.tag}; check `docker images` and the engine log")
    return spec.tag
