"""Keys, SSH commit signing, DSSE envelopes over in-toto statements, and their verification.

Two signers take part:

- the **workspace** key (``.converge/keys/workspace_ed25519``, principal ``converge@workspace``)
  signs every changeset commit (git's own SSH signing) and its attestation;
- the **user** key (``[signing] user_key``/``user_principal`` in ``converge.toml``, else a
  per-user key created once under ``.converge/keys/user_ed25519``) adds a human signature to
  the attestation when a person approves a changeset.

Both public keys are listed in ``.converge/allowed_signers`` (the format of ``ssh-keygen -Y``
and of git's ``gpg.ssh.allowedSignersFile``), so ``git verify-commit`` in a registered repo and
``ssh-keygen -Y verify`` need nothing else. Signatures are OpenSSH's SSHSIG, made and checked
in-process for Ed25519 key files (:mod:`orchestrator.sshsig`) and by ``ssh-keygen`` otherwise:
a key path ending in ``.pub`` means "the private half is in ssh-agent", which ``ssh-keygen``
signs through. Commit signatures are exactly git's (``gpgsig`` header, namespace ``git``).

An attestation is a DSSE envelope: the signatures cover the pre-authentication encoding
``DSSEv1 <len> <type> <len> <payload>`` of an in-toto Statement v1, never the JSON around it.
Each DSSE signature is the binary SSHSIG blob (base64), with the key's SHA256 fingerprint as
``keyid``.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import gitops, sshsig
from orchestrator.errors import ConfigError, SignatureError
from orchestrator.storage import atomic_write
from orchestrator.workspace import Workspace

WORKSPACE_PRINCIPAL = "converge@workspace"
DSSE_NAMESPACE = "converge-dsse"
GIT_NAMESPACE = "git"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://converge.dev/changeset/v1"
ALLOWED_SIGNERS = "allowed_signers"
WORKSPACE_KEY = "workspace_ed25519"
USER_KEY = "user_ed25519"


@dataclass(frozen=True)
class Signer:
    """A key that signs, and the principal it signs as in ``allowed_signers``."""

    key: Path
    principal: str

    @property
    def public_key(self) -> str:
        """The ``ssh-ed25519 AAAA...`` line of this key (comment dropped)."""
        return public_key_of(self.key)

    @property
    def keyid(self) -> str:
        """The key's ``SHA256:...`` fingerprint, as ``ssh-keygen -l`` prints it."""
        return fingerprint(self.public_key)


def _ssh_keygen(args: list[str], stdin: bytes | None = None, what: str = "ssh-keygen") -> bytes:
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
        text = _ssh_keygen(["-y", "-f", str(key)], what=f"reading {key}").decode().split()
    if len(text) < 2:
        raise ConfigError(f"{pub}: not an SSH public key")
    return f"{text[0]} {text[1]}"


def fingerprint(public_key: str) -> str:
    """``SHA256:<base64 without padding>`` of an ``ssh-<type> AAAA...`` public key."""
    blob = base64.b64decode(public_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _generate(path: Path, comment: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    _ssh_keygen(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], what=f"creating {path}")
    path.chmod(0o600)


def allowed_signers_path(ws: Workspace) -> Path:
    """The workspace's allowed-signers file."""
    return ws.state / ALLOWED_SIGNERS


def _signers_line(principal: str, public_key: str) -> str:
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


def _ensure_listed(ws: Workspace, signer: Signer) -> None:
    """Add ``signer`` to allowed_signers if its principal is not there yet (never rewrites a line)."""
    path = allowed_signers_path(ws)
    if signer.principal in read_allowed_signers(path):
        return
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    atomic_write(path, existing + _signers_line(signer.principal, signer.public_key))


def ensure_workspace_key(ws: Workspace) -> Signer:
    """Create the workspace's ed25519 key and allowed_signers if missing (idempotent); return its signer."""
    configured = ws.config().signing.key
    key = _resolve(ws, configured) if configured else ws.state / "keys" / WORKSPACE_KEY
    if not configured and not key.exists():
        _generate(key, f"converge@{ws.root}")
    signer = Signer(key, WORKSPACE_PRINCIPAL)
    _ensure_listed(ws, signer)
    return signer


def workspace_signer(ws: Workspace) -> Signer:
    """The workspace's signer; a missing key is an error, not silently recreated."""
    configured = ws.config().signing.key
    key = _resolve(ws, configured) if configured else ws.state / "keys" / WORKSPACE_KEY
    if not key.exists():
        raise ConfigError(f"{key}: workspace signing key missing; run `converge init {ws.root}` to create it")
    return Signer(key, WORKSPACE_PRINCIPAL)


def user_signer(ws: Workspace) -> Signer:
    """The human reviewer's signer: ``[signing] user_key`` if set, else a per-user key in ``.converge/keys/``.

    The fallback key is created on first use and listed in allowed_signers; its principal is
    ``<login>@reviewer`` unless ``user_principal`` says otherwise.
    """
    cfg = ws.config().signing
    principal = cfg.user_principal or f"{getpass.getuser() or 'user'}@reviewer"
    if principal == WORKSPACE_PRINCIPAL:
        raise ConfigError(f"converge.toml: signing.user_principal: must differ from {WORKSPACE_PRINCIPAL!r}")
    if cfg.user_key:
        key = _resolve(ws, cfg.user_key)
        if not key.exists():
            raise ConfigError(f"converge.toml: signing.user_key: {key} does not exist")
    else:
        key = ws.state / "keys" / USER_KEY
        if not key.exists():
            _generate(key, principal)
    signer = Signer(key, principal)
    if signer.keyid == workspace_signer(ws).keyid:
        raise ConfigError("converge.toml: signing.user_key: is the workspace key; a human must sign with their own key")
    _ensure_listed(ws, signer)
    return signer


def _resolve(ws: Workspace, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else ws.root / path


# --- git commit signing ------------------------------------------------------------------


def git_sign_config(signer: Signer, allowed_signers: Path) -> list[str]:
    """``-c`` options that make ``git commit -S`` sign with ``signer`` over SSH."""
    return [
        "-c",
        "gpg.format=ssh",
        "-c",
        f"user.signingkey={signer.key}",
        "-c",
        f"gpg.ssh.allowedSignersFile={allowed_signers}",
    ]


def commit_signature(signer: Signer, text: bytes) -> str:
    """The armored SSH signature of a commit's text, as git's SSH signing makes it (namespace ``git``)."""
    return sshsig.armor(sign_bytes(signer, text, GIT_NAMESPACE))


def verify_commit(repo: Path, commit: str, allowed_signers: Path, principal: str = WORKSPACE_PRINCIPAL) -> None:
    """Check ``commit`` carries a good SSH signature by ``principal``; SignatureError otherwise.

    Checked in-process when the signature and ``principal``'s allowed keys are plain Ed25519
    ones (what Converge makes); anything else goes to ``git verify-commit``, which agrees.
    """
    text = gitops.commit_text(repo, commit)
    if text is None:
        raise SignatureError(f"commit {commit[:12]}: not a commit in {repo}")
    signed = sshsig.split_commit_signature(text.encode("utf-8", "surrogateescape"))
    if signed is None:
        raise SignatureError(f"commit {commit[:12]}: signature does not verify: commit is not signed")
    keys = sshsig.allowed_keys(allowed_signers, principal, GIT_NAMESPACE)
    payload, armored = signed
    if keys is not None:
        try:
            blob = sshsig.dearmor(armored)
        except SignatureError as exc:
            raise SignatureError(f"commit {commit[:12]}: signature does not verify: {exc}") from None
        good = sshsig.verify(blob, payload, GIT_NAMESPACE, keys)
        if good:
            return
        if good is False:
            signed_by = sshsig.signature_key(blob)
            if signed_by is None or signed_by in keys:
                raise SignatureError(f"commit {commit[:12]}: signature does not verify: bad signature")
            raise SignatureError(f"commit {commit[:12]}: signed, but not by {principal}")
    _git_verify_commit(repo, commit, allowed_signers, principal)


def _git_verify_commit(repo: Path, commit: str, allowed_signers: Path, principal: str) -> None:
    proc = subprocess.run(
        ["git", "-c", f"gpg.ssh.allowedSignersFile={allowed_signers}", "verify-commit", "--raw", commit],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    detail = proc.stderr.strip()
    if proc.returncode != 0:
        last = detail.splitlines()[-1] if detail else f"exit {proc.returncode}"
        if "no signature" in detail.lower() or not detail:
            last = "commit is not signed"
        raise SignatureError(f"commit {commit[:12]}: signature does not verify: {last}")
    if f" for {principal} with " not in detail:
        raise SignatureError(f"commit {commit[:12]}: signed, but not by {principal} ({detail.splitlines()[0]})")


# --- DSSE ---------------------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: ``DSSEv1 <len> <type> <len> <payload>``."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def sign_bytes(signer: Signer, data: bytes, namespace: str = DSSE_NAMESPACE) -> bytes:
    """The binary SSHSIG blob of ``data``: made in-process for a plain Ed25519 key file, else by
    ``ssh-keygen -Y sign`` (keys in ssh-agent, passphrases, other key types)."""
    key = sshsig.load_key(signer.key)
    if key is not None:
        return sshsig.sign(key, data, namespace)
    armored = _ssh_keygen(["-Y", "sign", "-n", namespace, "-f", str(signer.key)], stdin=data, what="signing")
    return sshsig.dearmor(armored.decode())


def verify_bytes(
    allowed_signers: Path, principal: str, data: bytes, sig: bytes, namespace: str = DSSE_NAMESPACE
) -> bool:
    """True when ``sig`` is ``principal``'s signature of ``data`` per ``allowed_signers``.

    Checked in-process for Ed25519 signatures and plain allowed-signers lines; anything else
    (certificates, validity windows, other key types) by ``ssh-keygen -Y verify``.
    """
    keys = sshsig.allowed_keys(allowed_signers, principal, namespace)
    if keys is not None:
        good = sshsig.verify(sig, data, namespace, keys)
        if good is not None:
            return good
    with tempfile.NamedTemporaryFile("w", suffix=".sig", delete=False) as handle:
        handle.write(sshsig.armor(sig))
    try:
        proc = subprocess.run(
            [
                "ssh-keygen",
                "-Y",
                "verify",
                "-f",
                str(allowed_signers),
                "-I",
                principal,
                "-n",
                namespace,
                "-s",
                handle.name,
            ],
            input=data,
            capture_output=True,
            check=False,
        )
    finally:
        Path(handle.name).unlink()
    return proc.returncode == 0


def statement(subjects: list[dict[str, Any]], predicate: dict[str, Any]) -> dict[str, Any]:
    """An in-toto Statement v1 with the changeset predicate type."""
    return {"_type": STATEMENT_TYPE, "subject": subjects, "predicateType": PREDICATE_TYPE, "predicate": predicate}


def canonical(value: Any) -> bytes:
    """The exact bytes signed for a JSON value: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def envelope(payload: bytes, signer: Signer, payload_type: str = PAYLOAD_TYPE) -> dict[str, Any]:
    """A DSSE envelope over ``payload`` with one signature by ``signer``."""
    sig = sign_bytes(signer, pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": signer.keyid, "sig": base64.b64encode(sig).decode()}],
    }


def add_signature(env: dict[str, Any], signer: Signer) -> dict[str, Any]:
    """A copy of ``env`` with ``signer``'s signature over the same PAE added (replacing an earlier one by that key)."""
    payload = payload_of(env)
    sig = sign_bytes(signer, pae(str(env["payloadType"]), payload))
    kept = [s for s in env["signatures"] if s.get("keyid") != signer.keyid]
    return {**env, "signatures": [*kept, {"keyid": signer.keyid, "sig": base64.b64encode(sig).decode()}]}


def payload_of(env: dict[str, Any]) -> bytes:
    """The raw payload bytes of a DSSE envelope."""
    try:
        return base64.b64decode(str(env["payload"]), validate=True)
    except (KeyError, ValueError) as exc:
        raise SignatureError("attestation: envelope has no valid base64 payload") from exc


def verify_envelope(env: dict[str, Any], allowed_signers: Path, principal: str) -> None:
    """Check ``env`` holds a valid signature by ``principal``'s key in ``allowed_signers``."""
    keys = read_allowed_signers(allowed_signers).get(principal)
    if not keys:
        raise SignatureError(f"attestation signature: {principal} is not in {allowed_signers}")
    ids = {fingerprint(k) for k in keys}
    mine = [s for s in env.get("signatures", []) if s.get("keyid") in ids]
    if not mine:
        raise SignatureError(f"attestation signature: no signature by {principal}'s key ({', '.join(sorted(ids))})")
    data = pae(str(env.get("payloadType")), payload_of(env))
    for sig in mine:
        try:
            blob = base64.b64decode(str(sig.get("sig")), validate=True)
        except ValueError:
            continue
        if verify_bytes(allowed_signers, principal, data, blob):
            return
    raise SignatureError(f"attestation signature: {principal}'s signature does not verify over the payload")
