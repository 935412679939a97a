"""Signing an artifact folder and verifying its signature, with the OpenSSF ``model-signing`` package.

``pih2t-export --sign-key KEY`` signs the finished folder (every file, model.json included) with a local
elliptic-curve private key (PEM; no network, no certificate authority) and writes the signature to
``model.sig`` inside it, before the folder is renamed into place. ``--verify-key PUB`` on serve, predict, demo
and triton build checks that signature against the public key before anything else in the folder is read, and
refuses an unsigned folder, a changed or added file, or a signature made with another key (exit 2).

The sha256 digests in model.json (checked on every load) catch a file changed by accident or by someone who
did not also rewrite model.json; the signature also covers model.json itself, so only the holder of the
private key can produce a folder that passes. Key handling: docs/security.md.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from pih2t_deploy.errors import UserError, first_line

SIGNATURE_FILE = "model.sig"
MISSING = "signing needs the signing extra: pip install 'pih2t-deploy[signing]'"


class SignatureError(UserError):
    """An artifact that is unsigned, altered, or signed with another key than the one given (exit 2)."""


def _model_signing() -> Any:
    try:
        import model_signing
    except ImportError:
        raise UserError(MISSING) from None
    return model_signing


def _hashing(folder: Path) -> Any:
    """Hash every file of ``folder`` but the signature (which cannot cover itself)."""
    return _model_signing().hashing.Config().set_ignored_paths(paths=[folder / SIGNATURE_FILE], ignore_git_paths=False)


def _readable(path: Path, what: str, option: str) -> None:
    if not Path(path).is_file():
        raise UserError(f"{option} {path}: no such {what} file")


def sign_folder(folder: Path, private_key: Path) -> Path:
    """Sign every file of ``folder`` with the PEM elliptic-curve ``private_key``; returns the signature file."""
    _readable(private_key, "private key", "--sign-key")
    signing = _model_signing().signing
    try:
        config = signing.Config().set_hashing_config(_hashing(folder))
        config.use_elliptic_key_signer(private_key=private_key).sign(folder, folder / SIGNATURE_FILE)
    except (ValueError, TypeError) as exc:
        raise UserError(f"--sign-key {private_key} is not a usable elliptic-curve private key (PEM): {exc}") from None
    return folder / SIGNATURE_FILE


def verify_folder(folder: Path, public_key: Path) -> None:
    """SignatureError unless ``folder/model.sig`` is a signature of exactly the files of ``folder`` by the
    private key of the PEM ``public_key``."""
    _readable(public_key, "public key", "--verify-key")
    if not (folder / SIGNATURE_FILE).is_file():
        raise SignatureError(
            f"{folder} is not signed (no {SIGNATURE_FILE}); export it with --sign-key, or serve it without --verify-key"
        )
    verifying = _model_signing().verifying
    try:
        config = verifying.Config().set_hashing_config(_hashing(folder))
        config.use_elliptic_key_verifier(public_key=public_key).verify(folder, folder / SIGNATURE_FILE)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{folder} fails its signature check against {public_key}: {_first_reason(exc)}") from None


def _first_reason(exc: Exception) -> str:
    """The first of the problems model-signing lists (``Signature mismatch: ['...', ...]``), cut short."""
    text = first_line(exc)
    _, _, listed = text.partition(": ")
    try:
        problems = ast.literal_eval(listed)
    except (ValueError, SyntaxError):
        return text[:160]
    first = problems[0] if isinstance(problems, list) and problems else text
    return str(first).split(": Expected")[0][:160]
