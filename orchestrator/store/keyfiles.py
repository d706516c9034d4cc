"""The workspace's key files: the workspace key, a person's fallback key, and the allowed-signers file.

Created with the workspace (``.converge/keys/``, ``.converge/allowed_signers``, in the format of
``ssh-keygen -Y`` and git's ``gpg.ssh.allowedSignersFile``); signing with them is
:mod:`orchestrator.signing`'s job.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path

from orchestrator.errors import ConfigError, SignatureError
from orchestrator.store.storage import atomic_write
from orchestrator.store.workspace import Workspace

WORKSPACE_PRINCIPAL = "converge@workspace"
DSSE_NAMESPACE = "converge-dsse"
GIT_NAMESPACE = "git"
ALLOWED_SIGNERS = "allowed_signers"
WORKSPACE_KEY = "workspace_ed25519"
USER_KEY = "user_ed25519"


def ssh_keygen(args: list[str], stdin: bytes | None = None, what: str = "ssh-keygen") -> bytes:
    try:
        proc = subprocess.run(["ssh-keygen", *args], input=stdin, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise SignatureError("ssh-keygen not found; install OpenSSH (>= 8.2) to sign changesets") from exc
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SignatureError(f"{what}: {detail[-1] if detail else f'ssh-keygen exit {proc.returncode}'}")
    return proc.stdout


def public_key_of(key: Path) -> str:
    """The public half of ``key`` (a private key file, or a ``.pub`` whose private half is in ssh-agent)."""
    pub = key if key.suffix == ".pub" else key.with_name(key.name + ".pub")
    if pub.exists():
        text = pub.read_text(encoding="utf-8").split()
    else:
        if not key.exists():
            raise ConfigError(f"{key}: signing key not found; fix [signing] in converge.toml")
        text = ssh_keygen(["-y", "-f", str(key)], what=f"reading {key}").decode().split()
    if len(text) < 2:
        raise ConfigError(f"{pub}: not an SSH public key")
    return f"{text[0]} {text[1]}"


def fingerprint(public_key: str) -> str:
    """``SHA256:<base64 without padding>`` of an ``ssh-<type> AAAA...`` public key."""
    blob = base64.b64decode(public_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def generate(path: Path, comment: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    ssh_keygen(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], what=f"creating {path}")
    path.chmod(0o600)


def allowed_signers_path(ws: Workspace) -> Path:
    """The workspace's allowed-signers file."""
    return ws.state / ALLOWED_SIGNERS


def signers_line(principal: str, public_key: str) -> str:
    return f'{principal} namespaces="{GIT_NAMESPACE},{DSSE_NAMESPACE}" {public_key}\n'


def read_allowed_signers(path: Path) -> dict[str, list[str]]:
    """Principal -> its public keys, as listed in an allowed-signers file."""
    found: dict[str, list[str]] = {}
    if not path.exists():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        keys = [f"{parts[i]} {parts[i + 1]}" for i in range(1, len(parts) - 1) if parts[i].startswith("ssh-")]
        for principal in parts[0].split(","):
            found.setdefault(principal, []).extend(keys)
    return found


def ensure_listed(ws: Workspace, principal: str, key: Path) -> None:
    """Add ``principal`` with ``key``'s public half to allowed_signers if not there yet (never rewrites a line)."""
    path = allowed_signers_path(ws)
    if principal in read_allowed_signers(path):
        return
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    atomic_write(path, existing + signers_line(principal, public_key_of(key)))


def resolve(ws: Workspace, value: str) -> Path:
    """A key path from ``converge.toml``: absolute, or relative to the workspace."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else ws.root / path


def workspace_key_path(ws: Workspace) -> Path:
    """``[signing] key`` if set, else the workspace's own key file."""
    configured = ws.config().signing.key
    return resolve(ws, configured) if configured else ws.state / "keys" / WORKSPACE_KEY


def ensure_workspace_key(ws: Workspace) -> Path:
    """Create the workspace's ed25519 key (unless one is configured) and list it (idempotent)."""
    key = workspace_key_path(ws)
    if not ws.config().signing.key and not key.exists():
        generate(key, f"converge@{ws.root}")
    ensure_listed(ws, WORKSPACE_PRINCIPAL, key)
    return key
