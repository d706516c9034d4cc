"""OpenSSH SSHSIG signatures (``ssh-keygen -Y sign/verify``) made and checked in-process for Ed25519 keys.

Spawning ``ssh-keygen`` for each of a step's signatures costs more than signing here with ``cryptography``.
Anything this module does not handle (agent keys, passphrases, other key types, certificates, wildcard
principals, validity windows) returns None, and the caller falls back to ``ssh-keygen``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key

from orchestrator.errors import SignatureError

_MAGIC = b"SSHSIG"
_VERSION = 1
_ED25519 = b"ssh-ed25519"
_HASHES = frozenset({b"sha256", b"sha512"})
_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_END = "-----END SSH SIGNATURE-----"
_WRAP = 70
_GPGSIG = b"gpgsig "
# The one option handled here; ssh-keygen matches option names case-insensitively.
_NAMESPACES = re.compile(r'namespaces="([^"\\]*)"', re.IGNORECASE)


def load_key(key: Path) -> Ed25519PrivateKey | None:
    """The Ed25519 key in the unencrypted private key file ``key``, or None when ssh-keygen must sign."""
    if key.name.endswith(".pub"):
        return None  # the private half is in ssh-agent
    try:
        path = key.resolve(strict=True)
        st = path.stat()
        # ssh-keygen ignores a private key others can read; let it refuse rather than sign here.
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            return None
        return _load(path, st.st_mtime_ns, st.st_size)
    except OSError:
        return None


@functools.lru_cache(maxsize=32)
def _load(path: Path, mtime_ns: int, size: int) -> Ed25519PrivateKey | None:
    # mtime_ns and size only key the cache, so an edited file is parsed again.
    data = path.read_bytes()
    loaded: object
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            loaded = load_ssh_private_key(data, password=None)
        else:
            loaded = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: it needs a passphrase
        return None
    return loaded if isinstance(loaded, Ed25519PrivateKey) else None


def sign(key: Ed25519PrivateKey, data: bytes, namespace: str) -> bytes:
    """The binary SSHSIG blob of ``data`` (sha512), as ``ssh-keygen -Y sign -n namespace`` makes it."""
    public = _string(_ED25519) + _string(key.public_key().public_bytes_raw())
    signature = key.sign(_signed_data(namespace.encode(), b"sha512", data))
    return (
        _MAGIC
        + _VERSION.to_bytes(4, "big")
        + _string(public)
        + _string(namespace.encode())
        + _string(b"")
        + _string(b"sha512")
        + _string(_string(_ED25519) + _string(signature))
    )


def armor(blob: bytes) -> str:
    """``blob`` in the armor ``ssh-keygen -Y sign`` writes (base64 wrapped at 70 columns)."""
    text = base64.b64encode(blob).decode()
    lines = [text[i : i + _WRAP] for i in range(0, len(text), _WRAP)]
    return "\n".join([_BEGIN, *lines, _END]) + "\n"


def dearmor(text: str) -> bytes:
    """The binary blob inside an armored SSH signature."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if not lines or lines[0] != _BEGIN:
        raise SignatureError(f"SSH signature: the armor does not start with {_BEGIN}")
    if len(lines) < 2 or lines[-1] != _END:
        raise SignatureError(f"SSH signature: the armor does not end with {_END}")
    body = "".join(lines[1:-1])
    if not body:
        raise SignatureError("SSH signature: the armor holds no base64 between its BEGIN and END lines")
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error as exc:
        raise SignatureError(f"SSH signature: the armor body is not valid base64 ({exc})") from exc


def verify(blob: bytes, data: bytes, namespace: str, public_keys: Sequence[str]) -> bool | None:
    """Whether ``blob`` is a valid signature of ``data`` in ``namespace`` by one of ``public_keys``.

    None when the signing key is listed but is not Ed25519: only ssh-keygen can tell then.
    """
    sig = _parse(blob)
    if sig is None or sig.namespace != namespace.encode() or sig.hash_alg not in _HASHES:
        return False
    if sig.key_blob not in {_key_blob(line) for line in public_keys}:
        return False
    if sig.key_type != _ED25519:
        return None
    raw_key = _ed25519_field(sig.key_blob, 32)
    raw_sig = _ed25519_field(sig.signature, 64)
    if raw_key is None or raw_sig is None:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(raw_key).verify(raw_sig, _signed_data(sig.namespace, sig.hash_alg, data))
    except InvalidSignature:
        return False
    return True


def signature_key(blob: bytes) -> str | None:
    """The ``<type> <base64>`` public key that made the SSHSIG ``blob``, or None when it is malformed."""
    sig = _parse(blob)
    if sig is None:
        return None
    return f"{sig.key_type.decode(errors='replace')} {base64.b64encode(sig.key_blob).decode()}"


def allowed_keys(path: Path, principal: str, namespace: str) -> list[str] | None:
    """The ``<type> <base64>`` keys the allowed_signers file ``path`` lets ``principal`` use for ``namespace``.

    None when the file holds what only ssh-keygen understands (wildcard or negated principals, options
    other than ``namespaces``, a malformed line for ``principal``) or cannot be read.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    keys: list[str] = []
    for line in text.splitlines():
        fields = line.split(None, 1)
        if not fields or fields[0].startswith("#"):
            continue
        principals = fields[0].split(",")
        if fields[0].startswith('"') or any(p.startswith("!") or "*" in p or "?" in p for p in principals):
            return None
        if principal not in principals:
            continue
        entry = _signer_entry(fields[1] if len(fields) > 1 else "")
        if entry is None:
            return None
        key, namespaces = entry
        # Like ssh-keygen, any line naming the principal and key may allow it.
        if (namespaces is None or namespace in namespaces) and key not in keys:
            keys.append(key)
    return keys


def signed_commit(payload: bytes, armored: str) -> bytes:
    """The commit object ``payload`` with ``armored`` in a ``gpgsig`` header, as ``git commit -S`` writes it.

    The format is OpenSSH's PROTOCOL.sshsig; the commit helpers follow git's SSH commit signing,
    which signs the commit object text with namespace ``git`` and stores the armor in this header.
    """
    end = payload.find(b"\n\n")
    at = len(payload) if end < 0 else end + 1
    header = b"gpgsig" + b"".join(b" " + line for line in armored.encode().splitlines(keepends=True))
    return payload[:at] + header + payload[at:]


def split_commit_signature(raw: bytes) -> tuple[bytes, str] | None:
    """The commit object ``raw`` without its ``gpgsig`` header, and that header's armored signature."""
    end = raw.find(b"\n\n")
    head, body = (raw, b"") if end < 0 else (raw[: end + 1], raw[end + 1 :])
    payload: list[bytes] = []
    signature: list[bytes] = []
    in_signature = False
    for line in head.splitlines(keepends=True):
        if line.startswith(_GPGSIG):
            in_signature = True
            signature.append(line[len(_GPGSIG) :])
        elif in_signature and line.startswith(b" "):
            signature.append(line[1:])
        else:
            in_signature = False
            payload.append(line)
    if not signature:
        return None
    return b"".join(payload) + body, b"".join(signature).decode(errors="replace")


@dataclass(frozen=True)
class _Sshsig:
    """The fields of an SSHSIG blob that verification needs."""

    key_blob: bytes
    key_type: bytes
    namespace: bytes
    hash_alg: bytes
    signature: bytes


class _Reader:
    """SSH wire-format fields read in order; running past the end raises ValueError."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, size: int) -> bytes:
        if self._pos + size > len(self._data):
            raise ValueError("truncated")
        self._pos += size
        return self._data[self._pos - size : self._pos]

    def string(self) -> bytes:
        return self.take(int.from_bytes(self.take(4), "big"))

    def done(self) -> bool:
        return self._pos == len(self._data)


def _parse(blob: bytes) -> _Sshsig | None:
    reader = _Reader(blob)
    try:
        if reader.take(len(_MAGIC)) != _MAGIC or int.from_bytes(reader.take(4), "big") != _VERSION:
            return None
        key_blob, namespace, _reserved, hash_alg, signature = (reader.string() for _ in range(5))
        key_type = _Reader(key_blob).string()
    except ValueError:
        return None
    if not reader.done():
        return None
    return _Sshsig(key_blob, key_type, namespace, hash_alg, signature)


def _ed25519_field(blob: bytes, size: int) -> bytes | None:
    """The ``size``-byte value of an ``ssh-ed25519`` key or signature blob, or None if malformed."""
    reader = _Reader(blob)
    try:
        if reader.string() != _ED25519:
            return None
        value = reader.string()
    except ValueError:
        return None
    return value if len(value) == size and reader.done() else None


def _signed_data(namespace: bytes, hash_alg: bytes, data: bytes) -> bytes:
    # ssh-keygen always verifies against an empty reserved field, whatever the blob carries.
    digest = hashlib.new(hash_alg.decode(), data).digest()
    return _MAGIC + _string(namespace) + _string(b"") + _string(hash_alg) + _string(digest)


def _string(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def _key_blob(line: str) -> bytes | None:
    """The decoded key blob of a ``<type> <base64> [comment]`` line, or None if it is not one."""
    fields = line.split()
    if len(fields) < 2:
        return None
    try:
        blob = base64.b64decode(fields[1], validate=True)
        key_type = _Reader(blob).string()
    except (binascii.Error, ValueError):
        return None
    return blob if key_type == fields[0].encode() else None


def _signer_entry(rest: str) -> tuple[str, frozenset[str] | None] | None:
    """``[options] keytype base64 [comment]`` as (``<type> <base64>``, namespaces or None for all), if handled."""
    if _key_blob(rest) is not None:
        return " ".join(rest.split()[:2]), None
    options, key = _split_options(rest)
    match = _NAMESPACES.fullmatch(options)
    if match is None or _key_blob(key) is None:
        return None
    namespaces = frozenset(match.group(1).split(","))
    if any(n.startswith("!") or "*" in n or "?" in n for n in namespaces):
        return None  # a pattern list: ssh-keygen matches it
    return " ".join(key.split()[:2]), namespaces


def _split_options(rest: str) -> tuple[str, str]:
    """The options field (up to the first whitespace outside quotes) and what follows it."""
    quoted = False
    i = 0
    while i < len(rest) and (quoted or rest[i] not in " \t"):
        if rest[i] == "\\" and rest[i + 1 : i + 2] == '"':
            i += 1
        elif rest[i] == '"':
            quoted = not quoted
        i += 1
    return rest[:i], rest[i:].lstrip()
