"""Signed artifacts (OpenSSF model-signing, local elliptic-curve keys): export signs, and every command given
--verify-key refuses an unsigned folder, any changed or added file, and another signer's folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pih2t_deploy.artifact import read_manifest, write_manifest
from pih2t_deploy.export.exporter import export_checkpoint
from pih2t_deploy.export.options import ExportOptions
from pih2t_deploy.provenance import SignatureError, verify_folder
from tests import images
from tests.helpers import run_cli


def key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A fresh P-256 key pair as PEM files: (private, public)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


@pytest.fixture(scope="module")
def signed(digits_artifact, tmp_path_factory):
    """(signed artifact, its public key, another signer's public key)."""
    root = tmp_path_factory.mktemp("signed")
    private, public = key_pair(root, "ours")
    _, stranger = key_pair(root, "theirs")
    export_checkpoint(digits_artifact[0], ExportOptions(output=root / "artifact", sign_key=private))
    return root / "artifact", public, stranger


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_a_signed_export_verifies_and_any_change_breaks_it(signed, tmp_path):
    artifact, public, stranger = signed
    assert sorted(p.name for p in artifact.iterdir()) == [
        "README.md",
        "labels.txt",
        "model.json",
        "model.onnx",
        "model.sig",
    ]
    verify_folder(artifact, public)
    with pytest.raises(SignatureError, match="fails its signature check"):
        verify_folder(artifact, stranger)
    # model.json rewritten with consistent digests: passes the sha256 check, not the signature
    relabelled = copy_of(artifact, tmp_path)
    (relabelled / "labels.txt").write_text((relabelled / "labels.txt").read_text().replace("0\n1\n", "1\n0\n", 1))
    write_manifest(relabelled, read_manifest(relabelled))
    with pytest.raises(SignatureError, match=r"Hash mismatch for 'labels\.txt'$"):
        verify_folder(relabelled, public)
    added = copy_of(artifact, tmp_path / "b")
    (added / "extra.onnx").write_bytes(b"x")
    with pytest.raises(SignatureError, match=r"Extra files found in model 'copy': extra\.onnx"):
        verify_folder(added, public)
    unsigned = copy_of(artifact, tmp_path / "c")
    (unsigned / "model.sig").unlink()
    with pytest.raises(SignatureError, match="is not signed"):
        verify_folder(unsigned, public)


def test_commands_with_verify_key_serve_only_what_the_key_signed(signed, tmp_path):
    artifact, public, stranger = signed
    sample = str(images.SAMPLES / "digit_3.png")
    good = run_cli(
        "predict",
        "--model",
        str(artifact),
        "--input",
        sample,
        "-o",
        str(tmp_path / "ok.jsonl"),
        "--verify-key",
        str(public),
    )
    assert good.returncode == 0, good.stderr
    assert json.loads((tmp_path / "ok.jsonl").read_text())["labels"][0] == "3"
    for command in (
        ["predict", "--model", str(artifact), "--input", sample, "-o", str(tmp_path / "no.jsonl")],
        ["serve", "--model", str(artifact), "--port", "9"],
        ["demo", "--model", str(artifact), "--port", "9"],
        ["triton", "build", "--model", str(artifact), "--repo", str(tmp_path / "repo")],
    ):
        done = run_cli(*command, "--verify-key", str(stranger))
        assert done.returncode == 2 and "fails its signature check" in done.stderr, (command, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "no.jsonl").exists() and not (tmp_path / "repo").exists()


def test_export_force_replaces_a_signed_artifact_and_a_missing_key_is_one_line(signed, digits_artifact, tmp_path):
    artifact, _, _ = signed
    again = copy_of(artifact, tmp_path)
    export_checkpoint(digits_artifact[0], ExportOptions(output=again, force=True))  # model.sig is ours to replace
    assert not (again / "model.sig").exists()
    done = run_cli("export", "--ckpt", str(digits_artifact[0]), "-o", str(tmp_path / "x"), "--sign-key", "/no/key.pem")
    assert done.returncode == 2 and done.stderr.strip() == "error: --sign-key /no/key.pem: no such private key file"
