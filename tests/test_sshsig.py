"""In-process SSHSIG signing and verification, checked against real ssh-keygen and git."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import SignatureError
from orchestrator.signing.sshsig import (
    allowed_keys,
    armor,
    dearmor,
    load_key,
    sign,
    signed_commit,
    split_commit_signature,
    verify,
)

DATA = b"the bytes being signed\n"
GIT_ENV = {"GIT_AUTHOR_NAME": "A", "GIT_AUTHOR_EMAIL": "a@a", "GIT_COMMITTER_NAME": "A", "GIT_COMMITTER_EMAIL": "a@a"}


def keygen(tmp_path: Path, name: str, *options: str) -> Path:
    """A new key made by real ssh-keygen (ed25519, no passphrase unless ``options`` say otherwise)."""
    path = tmp_path / name
    args = options or ("-t", "ed25519", "-N", "")
    subprocess.run(["ssh-keygen", "-q", *args, "-C", "c", "-f", str(path)], check=True, capture_output=True)
    return path


def public(key: Path) -> str:
    """The ``<type> <base64>`` line of ``key``'s public half."""
    return " ".join(key.with_name(key.name + ".pub").read_text().split()[:2])


def ssh_sign(key: Path, namespace: str, data: bytes, *options: str) -> str:
    """The armored signature real ``ssh-keygen -Y sign`` makes of ``data``."""
    proc = subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", namespace, *options],
        input=data,
        check=True,
        capture_output=True,
    )
    return proc.stdout.decode()


def ssh_verify(tmp_path: Path, allowed: str, principal: str, namespace: str, armored: str, data: bytes) -> bool:
    """Whether real ``ssh-keygen -Y verify`` accepts ``armored`` for ``principal`` per ``allowed``."""
    signers = tmp_path / "ssh_verify_signers"
    signers.write_text(allowed)
    sigfile = tmp_path / "ssh_verify.sig"
    sigfile.write_text(armored)
    proc = subprocess.run(
        ["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", principal, "-n", namespace, "-s", str(sigfile)],
        input=data,
        capture_output=True,
    )
    return proc.returncode == 0


def run_git(repo: Path, *args: str, stdin: bytes | None = None) -> bytes:
    """Real git in ``repo``; its stdout."""
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=repo, env=env, input=stdin, check=True, capture_output=True).stdout


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return keygen(tmp_path, "id_ed25519")


def test_signature_verifies_with_ssh_keygen(tmp_path: Path, key: Path) -> None:
    loaded = load_key(key)
    assert loaded is not None
    armored = armor(sign(loaded, DATA, "converge-dsse"))
    allowed = f'p namespaces="converge-dsse" {public(key)}\n'
    assert ssh_verify(tmp_path, allowed, "p", "converge-dsse", armored, DATA)
    assert not ssh_verify(tmp_path, allowed, "p", "converge-dsse", armored, DATA + b"x")


@pytest.mark.parametrize(
    ("namespace", "data"),
    [("git", DATA), ("converge-dsse", b""), ("n" * 39, DATA)],  # 39: the base64 fills its last line exactly
    ids=["git", "empty-data", "full-last-line"],
)
def test_armor_is_byte_identical_to_ssh_keygen(key: Path, namespace: str, data: bytes) -> None:
    loaded = load_key(key)
    assert loaded is not None
    ours = armor(sign(loaded, data, namespace))
    theirs = ssh_sign(key, namespace, data)
    assert ours.splitlines() == theirs.splitlines()
    assert all(len(line) <= 70 for line in ours.splitlines()[1:-1])
    assert ours == theirs
    assert dearmor(theirs) == sign(loaded, data, namespace)


@pytest.mark.parametrize("options", [(), ("-O", "hashalg=sha256")], ids=["sha512", "sha256"])
def test_verify_accepts_ssh_keygen_signature(key: Path, options: tuple[str, ...]) -> None:
    blob = dearmor(ssh_sign(key, "git", DATA, *options))
    assert verify(blob, DATA, "git", [public(key)]) is True


def test_verify_rejects(tmp_path: Path, key: Path) -> None:
    other = keygen(tmp_path, "other")
    loaded = load_key(key)
    assert loaded is not None
    blob = sign(loaded, DATA, "git")
    keys = [public(key)]
    assert verify(blob, DATA + b"!", "git", keys) is False
    assert verify(blob, DATA, "converge-dsse", keys) is False
    assert verify(blob, DATA, "git", [public(other)]) is False
    assert verify(blob, DATA, "git", []) is False
    assert verify(blob[:-10], DATA, "git", keys) is False
    assert verify(blob + b"\0", DATA, "git", keys) is False
    assert verify(b"not a signature at all", DATA, "git", keys) is False
    assert verify(blob[:6] + (2).to_bytes(4, "big") + blob[10:], DATA, "git", keys) is False
    flipped = blob[:-1] + bytes([blob[-1] ^ 1])
    assert verify(flipped, DATA, "git", keys) is False


def test_verify_leaves_rsa_to_ssh_keygen(tmp_path: Path) -> None:
    rsa = keygen(tmp_path, "id_rsa", "-t", "rsa", "-b", "2048", "-N", "")
    blob = dearmor(ssh_sign(rsa, "git", DATA))
    assert verify(blob, DATA, "git", [public(rsa)]) is None


def test_dearmor_names_what_is_wrong(key: Path) -> None:
    armored = ssh_sign(key, "git", DATA)
    lines = armored.splitlines()
    with pytest.raises(SignatureError, match="does not start with"):
        dearmor("\n".join(lines[1:]))
    with pytest.raises(SignatureError, match="does not end with"):
        dearmor("\n".join(lines[:-1]))
    with pytest.raises(SignatureError, match="no base64"):
        dearmor(f"{lines[0]}\n{lines[-1]}\n")
    with pytest.raises(SignatureError, match="not valid base64"):
        dearmor(f"{lines[0]}\n{lines[1][:-1]}!\n{lines[-1]}\n")
    assert dearmor(armored.replace("\n", "\r\n")) == dearmor(armored)


def test_load_key_leaves_other_keys_to_ssh_keygen(tmp_path: Path, key: Path) -> None:
    assert load_key(key.with_name(key.name + ".pub")) is None
    assert load_key(keygen(tmp_path, "locked", "-t", "ed25519", "-N", "secret")) is None
    assert load_key(keygen(tmp_path, "id_rsa", "-t", "rsa", "-b", "2048", "-N", "")) is None
    assert load_key(tmp_path / "missing") is None


def test_load_key_leaves_a_readable_key_to_ssh_keygen(tmp_path: Path) -> None:
    open_key = keygen(tmp_path, "open")
    open_key.chmod(0o644)
    assert load_key(open_key) is None
    refused = subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(open_key), "-n", "git"], input=DATA)
    assert refused.returncode != 0


def test_load_key_is_cached_until_the_file_changes(tmp_path: Path, key: Path) -> None:
    first = load_key(key)
    assert first is not None
    assert load_key(key) is first
    key.unlink()
    key.with_name(key.name + ".pub").unlink()
    keygen(tmp_path, key.name)
    again = load_key(key)
    assert again is not None
    assert again.public_key().public_bytes_raw() != first.public_key().public_bytes_raw()


def test_allowed_keys_respects_namespaces_and_principals(tmp_path: Path) -> None:
    a, b, c, d = (public(keygen(tmp_path, name)) for name in "abcd")
    signers = tmp_path / "allowed_signers"
    signers.write_text(
        "# converge signers\n"
        "\n"
        f"p {a} first\n"
        f'p,q namespaces="git,converge-dsse" {b}\n'
        f'  p  NAMESPACES="converge-dsse"  {c}\n'
        f"q {d}\n"
    )
    assert allowed_keys(signers, "p", "git") == [a, b]
    assert allowed_keys(signers, "p", "converge-dsse") == [a, b, c]
    assert allowed_keys(signers, "p", "other") == [a]
    assert allowed_keys(signers, "q", "converge-dsse") == [b, d]
    assert allowed_keys(signers, "nobody", "git") == []
    assert allowed_keys(tmp_path / "missing", "p", "git") is None


def test_allowed_keys_agrees_with_ssh_keygen(tmp_path: Path) -> None:
    keys = [keygen(tmp_path, name) for name in ("k1", "k2", "k3")]
    allowed = (
        f'p namespaces="a,git" {public(keys[0])}\n'
        f'p namespaces="a" {public(keys[1])}\n'
        f"p {public(keys[1])}\n"  # a second line for k2 allows it everywhere
        f'q namespaces="git" {public(keys[2])}\n'
    )
    signers = tmp_path / "allowed_signers"
    signers.write_text(allowed)
    assert allowed_keys(signers, "p", "git") == [public(keys[0]), public(keys[1])]
    for namespace in ("a", "git"):
        listed = allowed_keys(signers, "p", namespace)
        assert listed is not None
        for k in keys:
            armored = ssh_sign(k, namespace, DATA)
            assert (public(k) in listed) == ssh_verify(tmp_path, allowed, "p", namespace, armored, DATA)


@pytest.mark.parametrize(
    "line",
    [
        "p cert-authority {key}",
        'p valid-before="20300101" {key}',
        'p namespaces="git",valid-after="20200101" {key}',
        'p namespaces="git*" {key}',
        "p no-such-option {key}",
        "p ssh-ed25519 not-base64",
        "*@example.com {key}",
        "p,r? {key}",
        "!q {key}",
    ],
)
def test_allowed_keys_leaves_the_rest_to_ssh_keygen(tmp_path: Path, key: Path, line: str) -> None:
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"p {public(key)}\n" + line.format(key=public(key)) + "\n")
    assert allowed_keys(signers, "p", "git") is None


def test_allowed_keys_ignores_options_of_other_principals(tmp_path: Path, key: Path) -> None:
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"ca@example.com cert-authority {public(key)}\np {public(key)}\n")
    assert allowed_keys(signers, "p", "git") == [public(key)]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    run_git(path, "init", "-q", "-b", "main")
    (path / "file.txt").write_text("hello\n")
    run_git(path, "add", "file.txt")
    return path


def test_signed_commit_verifies_with_git(tmp_path: Path, key: Path, repo: Path) -> None:
    loaded = load_key(key)
    assert loaded is not None
    tree = run_git(repo, "write-tree").decode().strip()
    payload = (f"tree {tree}\nauthor A <a@a> 1700000000 +0000\ncommitter A <a@a> 1700000000 +0000\n\nmsg\n").encode()
    armored = armor(sign(loaded, payload, "git"))
    sha = run_git(repo, "hash-object", "-t", "commit", "-w", "--stdin", stdin=signed_commit(payload, armored))
    signers = tmp_path / "allowed_signers"
    signers.write_text(f'p namespaces="git" {public(key)}\n')
    check = subprocess.run(
        ["git", "-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", sha.decode().strip()],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    assert 'Good "git" signature for p' in check.stderr
    raw = run_git(repo, "cat-file", "commit", sha.decode().strip())
    assert split_commit_signature(raw) == (payload, armored)


def test_git_signed_commit_splits_and_verifies(key: Path, repo: Path) -> None:
    signing = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "-c", "commit.gpgsign=true"]
    run_git(repo, *signing, "commit", "-q", "-m", "x")
    raw = run_git(repo, "cat-file", "commit", "HEAD")
    split = split_commit_signature(raw)
    assert split is not None
    payload, armored = split
    assert b"gpgsig" not in payload
    assert verify(dearmor(armored), payload, "git", [public(key)]) is True
    assert signed_commit(payload, armored) == raw


def test_commit_without_signature_or_message(repo: Path) -> None:
    tree = run_git(repo, "write-tree").decode().strip()
    run_git(repo, "commit", "-q", "-m", "unsigned")
    assert split_commit_signature(run_git(repo, "cat-file", "commit", "HEAD")) is None
    header_only = f"tree {tree}\nauthor A <a@a> 1700000000 +0000\n".encode()
    armored = armor(b"\x01" * 100)
    signed = signed_commit(header_only, armored)
    assert signed.startswith(header_only + b"gpgsig -----BEGIN SSH SIGNATURE-----\n ")
    assert split_commit_signature(signed) == (header_only, armored)


def test_split_keeps_other_multiline_headers(key: Path) -> None:
    loaded = load_key(key)
    assert loaded is not None
    payload = b"tree 0\nmergetag object 1\n type commit\n \n body\ngpgsig-sha256 x\n y\n\nmsg\n\ngpgsig no\n"
    armored = armor(sign(loaded, payload, "git"))
    signed = signed_commit(payload, armored)
    assert split_commit_signature(signed) == (payload, armored)
