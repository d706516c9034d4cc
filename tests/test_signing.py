"""Keys, SSH commit signatures and DSSE envelopes, with the real ssh-keygen and git."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError, SignatureError
from orchestrator.signing import keys, sshsig
from orchestrator.store import keyfiles
from orchestrator.store.sbom import declared_dependencies
from orchestrator.store.setup import init_workspace
from orchestrator.store.workspace import Workspace
from tests.conftest import MakeRepo, git


def _keygen(path: Path, comment: str = "someone") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


def _configure_user(ws: Workspace, key: Path, principal: str = "alice@example.com") -> None:
    config = ws.state / "converge.toml"
    config.write_text(config.read_text() + f'\n[signing]\nuser_key = "{key}"\nuser_principal = "{principal}"\n')


def test_init_creates_a_private_workspace_key_and_allowed_signers(ws: Workspace) -> None:
    key = ws.state / "keys" / keyfiles.WORKSPACE_KEY
    assert key.exists()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.with_name(key.name + ".pub").read_text().startswith("ssh-ed25519 ")
    allowed = keyfiles.read_allowed_signers(keyfiles.allowed_signers_path(ws))
    assert allowed[keyfiles.WORKSPACE_PRINCIPAL] == [keyfiles.public_key_of(key)]
    before = key.read_bytes(), keyfiles.allowed_signers_path(ws).read_text()
    init_workspace(ws.root)  # idempotent: the same key, the same file
    assert (key.read_bytes(), keyfiles.allowed_signers_path(ws).read_text()) == before


def test_pae_matches_the_dsse_spec() -> None:
    assert keys.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_fingerprint_matches_ssh_keygen(ws: Workspace) -> None:
    signer = keys.workspace_signer(ws)
    listed = subprocess.run(["ssh-keygen", "-lf", f"{signer.key}.pub"], capture_output=True, text=True, check=True)
    assert listed.stdout.split()[1] == signer.keyid


def test_envelope_verifies_and_ssh_keygen_agrees(ws: Workspace, tmp_path: Path) -> None:
    signer = keys.workspace_signer(ws)
    payload = keys.canonical(keys.statement([{"name": "x", "digest": {"gitCommit": "0" * 40}}], {"a": 1}))
    env = keys.envelope(payload, signer)
    assert env["payloadType"] == "application/vnd.in-toto+json"
    assert json.loads(base64.b64decode(env["payload"]))["_type"] == "https://in-toto.io/Statement/v1"
    allowed = keyfiles.allowed_signers_path(ws)
    keys.verify_envelope(env, allowed, keyfiles.WORKSPACE_PRINCIPAL)
    # the signature is an ordinary SSHSIG over the PAE: ssh-keygen verifies it on its own
    sig = tmp_path / "sig"
    sig.write_text(sshsig.armor(base64.b64decode(env["signatures"][0]["sig"])))
    proc = subprocess.run(
        [
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            str(allowed),
            "-I",
            keyfiles.WORKSPACE_PRINCIPAL,
            "-n",
            "converge-dsse",
            "-s",
            str(sig),
        ],
        input=keys.pae(env["payloadType"], payload),
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_tampered_envelopes_do_not_verify(ws: Workspace, tmp_path: Path) -> None:
    signer = keys.workspace_signer(ws)
    allowed = keyfiles.allowed_signers_path(ws)
    env = keys.envelope(b'{"verdict":"approve"}', signer)

    edited = {**env, "payload": base64.b64encode(b'{"verdict":"reject"}').decode()}
    with pytest.raises(SignatureError, match="does not verify"):
        keys.verify_envelope(edited, allowed, keyfiles.WORKSPACE_PRINCIPAL)

    raw = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    raw[-5] ^= 0x01
    flipped = {**env, "signatures": [{**env["signatures"][0], "sig": base64.b64encode(bytes(raw)).decode()}]}
    with pytest.raises(SignatureError, match="does not verify"):
        keys.verify_envelope(flipped, allowed, keyfiles.WORKSPACE_PRINCIPAL)

    other = _keygen(tmp_path / "other")
    swapped = tmp_path / "allowed_signers"
    swapped.write_text(
        f'{keyfiles.WORKSPACE_PRINCIPAL} namespaces="git,converge-dsse" {keyfiles.public_key_of(other)}\n'
    )
    with pytest.raises(SignatureError, match="no signature by converge@workspace"):
        keys.verify_envelope(env, swapped, keyfiles.WORKSPACE_PRINCIPAL)


def test_human_signature_is_a_second_principal_over_the_same_payload(ws: Workspace, tmp_path: Path) -> None:
    _configure_user(ws, _keygen(tmp_path / "alice"))
    user = keys.user_signer(ws)
    assert user.principal == "alice@example.com"
    allowed = keyfiles.allowed_signers_path(ws)
    assert "alice@example.com" in keyfiles.read_allowed_signers(allowed)
    env = keys.envelope(b"payload", keys.workspace_signer(ws))
    with pytest.raises(SignatureError, match="no signature by alice"):
        keys.verify_envelope(env, allowed, user.principal)
    both = keys.add_signature(env, user)
    assert both["payload"] == env["payload"] and len(both["signatures"]) == 2
    keys.verify_envelope(both, allowed, user.principal)
    keys.verify_envelope(both, allowed, keyfiles.WORKSPACE_PRINCIPAL)
    assert keys.add_signature(both, user)["signatures"] == both["signatures"]  # ed25519: same sig, no duplicate


def test_user_key_must_not_be_the_workspace_key(ws: Workspace) -> None:
    _configure_user(ws, keys.workspace_signer(ws).key)
    with pytest.raises(ConfigError, match="workspace key"):
        keys.user_signer(ws)


def test_default_user_key_is_created_in_the_workspace(ws: Workspace) -> None:
    user = keys.user_signer(ws)
    assert user.key == ws.state / "keys" / keyfiles.USER_KEY
    assert stat.S_IMODE(user.key.stat().st_mode) == 0o600
    assert user.principal != keyfiles.WORKSPACE_PRINCIPAL
    assert user.principal in keyfiles.read_allowed_signers(keyfiles.allowed_signers_path(ws))


def test_git_signs_commits_that_plain_verify_commit_accepts(ws: Workspace, make_repo: MakeRepo) -> None:
    repo = make_repo({"a.txt": "one\n"})
    signer = keys.workspace_signer(ws)
    allowed = keyfiles.allowed_signers_path(ws)
    (repo / "a.txt").write_text("two\n")
    git(repo, *keys.git_sign_config(signer, allowed), "commit", "-q", "-S", "-am", "signed")
    signed = git(repo, "rev-parse", "HEAD")
    out = subprocess.run(
        ["git", "-c", f"gpg.ssh.allowedSignersFile={allowed}", "verify-commit", signed],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "converge@workspace" in out.stderr
    keys.verify_commit(repo, signed, allowed)

    unsigned = git(repo, "rev-parse", "HEAD~1")
    with pytest.raises(SignatureError, match="not signed"):
        keys.verify_commit(repo, unsigned, allowed)
    with pytest.raises(SignatureError, match="not by bob"):
        keys.verify_commit(repo, signed, allowed, principal="bob")


def test_sbom_reads_every_requirements_file_at_the_commit(make_repo) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo(
        {
            "pyproject.toml": '[project]\nname = "x"\nversion = "1"\ndependencies = ["pydantic>=2"]\n',
            "requirements.txt": "flask>=2\n",
            "requirements-docs.txt": "requests==2.31.0\n",
            "src/requirements.txt": "ignored==1\n",
        }
    )
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    project, deps = declared_dependencies(repo, commit)
    assert (project["name"], project["version"]) == ("x", "1")
    found = sorted((d.name, d.source) for d in deps)
    assert found == [
        ("flask", "requirements.txt"),
        ("pydantic", "pyproject.toml"),
        ("requests", "requirements-docs.txt"),
    ]
