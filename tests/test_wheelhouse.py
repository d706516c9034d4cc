"""Test environments from a local wheelhouse or package index the user names: offline, mounted read-only."""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from orchestrator.store.setup import add_repo
from orchestrator.store.workspace import Workspace
from tests.conftest import MakeRepo, converge

pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)


def _wheel(folder: Path, name: str, version: str, module: str) -> Path:
    """A minimal pure-Python wheel holding ``<name>/__init__.py`` (what `pip wheel` would build)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": module,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: converge-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for rel, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(path, "w") as zf:
        for rel, text in files.items():
            zf.writestr(rel, text)
    return path


def _repo_needing(make_repo: MakeRepo, dep: str) -> Path:
    return make_repo(
        {
            "requirements.txt": f"{dep}\n",
            "slug.py": f"import {dep}\n\n\ndef slug(text):\n    return {dep}.lower(text).replace(' ', '-')\n",
            "tests/test_slug.py": "from slug import slug\n\n\ndef test_slug():\n    assert slug('A B') == 'a-b'\n",
        },
        name="needs-wheel",
    )


@pytest.mark.docker
def test_a_dependency_missing_here_comes_from_the_named_wheelhouse_offline(
    ws: Workspace, make_repo: MakeRepo, tmp_path: Path
) -> None:
    add_repo(ws, str(_repo_needing(make_repo, "tinycase")), name="slugs")
    refused = converge("-w", str(ws.root), "sandbox", "run", "slugs", "--", "python", "-m", "pytest", "-q")
    assert refused.returncode != 0 and "find_links" in refused.stderr and "tinycase" in refused.stderr

    wheels = tmp_path / "wheelhouse"
    _wheel(wheels, "tinycase", "1.0", "def lower(text):\n    return text.lower()\n")
    config = ws.state / "converge.toml"
    config.write_text(config.read_text() + f'\n[sandbox]\nfind_links = ["{wheels}"]\n')
    proc = converge("-w", str(ws.root), "sandbox", "run", "slugs", "--", "python", "-m", "pytest", "-q")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "1 passed" in proc.stdout
    [manifest] = (ws.cache / "envs").glob("*/converge-env.json")
    assert json.loads(manifest.read_text())["installed"] == ["tinycase"]


@pytest.mark.docker
def test_a_named_wheelhouse_that_is_not_a_directory_is_named(ws: Workspace, make_repo: MakeRepo) -> None:
    add_repo(ws, str(_repo_needing(make_repo, "tinycase")), name="slugs")
    config = ws.state / "converge.toml"
    config.write_text(config.read_text() + '\n[sandbox]\nfind_links = ["no/such/dir"]\n')
    proc = converge("-w", str(ws.root), "sandbox", "run", "slugs", "--", "true")
    assert proc.returncode != 0 and "sandbox.find_links[0]" in proc.stderr and "not a directory" in proc.stderr
