"""Keys, SSH commit signing, DSSE envelopes over in-toto statements, and their verification.

Two signers: the workspace key (:func:`workspace_signer`) signs every changeset commit and its
attestation; the user key (:func:`user_signer`) adds a human signature when a person approves.
Both are listed in ``.converge/allowed_signers``, so ``git verify-commit`` and ``ssh-keygen -Y verify``
need nothing else. An attestation is a DSSE envelope (:func:`envelope`).
"""

from __future__ import annotations

import base64
import getpass
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError, SignatureError
from orchestrator.signing import sshsig
from orchestrator.store import gitops, keyfiles
from orchestrator.store.workspace import Workspace

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://converge.dev/changeset/v1"


@dataclass(frozen=True)
class Signer:
    """A key that signs, and the principal it signs as in ``allowed_signers``."""

    key: Path
    principal: str

    @property
    def public_key(self) -> str:
        """The ``ssh-ed25519 AAAA...`` line of this key (comment dropped)."""
        return keyfiles.public_key_of(self.key)

    @property
    def keyid(self) -> str:
        """The key's ``SHA256:...`` fingerprint, as ``ssh-keygen -l`` prints it."""
        return keyfiles.fingerprint(self.public_key)


def workspace_signer(ws: Workspace) -> Signer:
    """The workspace's signer; a missing key is an error, not silently recreated.

    ``.converge/keys/workspace_ed25519``, principal ``converge@workspace``.
    """
    configured = ws.config().signing.key
    key = keyfiles.resolve(ws, configured) if configured else ws.state / "keys" / keyfiles.WORKSPACE_KEY
    if not key.exists():
        raise ConfigError(f"{key}: workspace signing key missing; run `converge init {ws.root}` to create it")
    return Signer(key, keyfiles.WORKSPACE_PRINCIPAL)


def user_signer(ws: Workspace) -> Signer:
    """The human reviewer's signer: ``[signing] user_key`` if set, else a per-user key in ``.converge/keys/``.

    The fallback key is created on first use and listed in allowed_signers; its principal is
    ``<login>@reviewer`` unless ``user_principal`` says otherwise.
    """
    cfg = ws.config().signing
    principal = cfg.user_principal or f"{getpass.getuser() or 'user'}@reviewer"
    if principal == keyfiles.WORKSPACE_PRINCIPAL:
        raise ConfigError(f"converge.toml: signing.user_principal: must differ from {keyfiles.WORKSPACE_PRINCIPAL!r}")
    if cfg.user_key:
        key = keyfiles.resolve(ws, cfg.user_key)
        if not key.exists():
            raise ConfigError(f"converge.toml: signing.user_key: {key} does not exist")
    else:
        key = ws.state / "keys" / keyfiles.USER_KEY
        if not key.exists():
            keyfiles.generate(key, principal)
    signer = Signer(key, principal)
    if signer.keyid == workspace_signer(ws).keyid:
        raise ConfigError("converge.toml: signing.user_key: is the workspace key; a human must sign with their own key")
    keyfiles.ensure_listed(ws, signer.principal, signer.key)
    return signer


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
    return sshsig.armor(sign_bytes(signer, text, keyfiles.GIT_NAMESPACE))


def verify_commit(
    repo: Path, commit: str, allowed_signers: Path, principal: str = keyfiles.WORKSPACE_PRINCIPAL
) -> None:
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
    keys = sshsig.allowed_keys(allowed_signers, principal, keyfiles.GIT_NAMESPACE)
    payload, armored = signed
    if keys is not None:
        try:
            blob = sshsig.dearmor(armored)
        except SignatureError as exc:
            raise SignatureError(f"commit {commit[:12]}: signature does not verify: {exc}") from None
        good = sshsig.verify(blob, payload, keyfiles.GIT_NAMESPACE, keys)
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


def sign_bytes(signer: Signer, data: bytes, namespace: str = keyfiles.DSSE_NAMESPACE) -> bytes:
    """The binary SSHSIG blob of ``data``: made in-process for a plain Ed25519 key file, else by
    ``ssh-keygen -Y sign`` (keys in ssh-agent, passphrases, other key types).

    A key path ending in ``.pub`` means "the private half is in ssh-agent", which ``ssh-keygen``
    signs through. Commit signatures are exactly git's (``gpgsig`` header, namespace ``git``).
    """
    key = sshsig.load_key(signer.key)
    if key is not None:
        return sshsig.sign(key, data, namespace)
    armored = keyfiles.ssh_keygen(["-Y", "sign", "-n", namespace, "-f", str(signer.key)], stdin=data, what="signing")
    return sshsig.dearmor(armored.decode())


def verify_bytes(
    allowed_signers: Path, principal: str, data: bytes, sig: bytes, namespace: str = keyfiles.DSSE_NAMESPACE
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
    """A DSSE envelope over ``payload`` with one signature by ``signer``.

    The signatures cover the pre-authentication encoding (:func:`pae`) of an in-toto Statement v1,
    never the JSON around it. Each DSSE signature is the binary SSHSIG blob (base64), with the key's
    SHA256 fingerprint as ``keyid``.
    """
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
    keys = keyfiles.read_allowed_signers(allowed_signers).get(principal)
    if not keys:
        raise SignatureError(f"attestation signature: {principal} is not in {allowed_signers}")
    ids = {keyfiles.fingerprint(k) for k in keys}
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
