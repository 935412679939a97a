"""Shared console objects and option parsing helpers for the CLI."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from pih2t_deploy.errors import ConfigError

# Not a terminal (a pipe, a file, CI): no hard wrap at 80 columns; tables get COLUMNS, else 200 characters
_PIPED_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200
console = Console(soft_wrap=True, width=_PIPED_WIDTH)
err_console = Console(stderr=True, soft_wrap=True)
LOG_LEVELS = ("debug", "info", "warning", "error")
LIBRARY_LOGGER = "pih2t_deploy"


def configure_logging(level: str) -> None:
    """Show the package's log records at ``level`` and above on stderr, and nothing of other libraries:
    rich formatting on a terminal, plain message lines otherwise (pipes, CI logs). Only the commands call
    this; an application that imports pih2t_deploy configures logging itself."""
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(f"unknown log level {level!r}; choose one of: {', '.join(LOG_LEVELS)}")
    if err_console.is_terminal:
        handler: logging.Handler = RichHandler(
            console=err_console, show_time=False, show_path=False, show_level=False, markup=False
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(LIBRARY_LOGGER)
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def log(message: str) -> None:
    """A progress line of a command (an INFO record of the ``pih2t_deploy.cli`` logger)."""
    logging.getLogger("pih2t_deploy.cli").info(message)


def parse_int_list(text: str | None, option: str) -> list[int] | None:
    """Parse ``"1,2,3"`` into ints; a clear ConfigError naming ``option`` otherwise."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated whole numbers, got {text!r}") from None


def parse_str_list(text: str | None) -> list[str] | None:
    """Parse ``"a,b,c"`` into stripped strings."""
    if text is None:
        return None
    return [part.strip() for part in text.split(",")]


VERIFY_KEY_HELP = "PEM public key: refuse the artifact unless its model.sig (pih2t-export --sign-key) verifies with it"


def verify_signature(model: Path, verify_key: Path | None) -> None:
    """With ``--verify-key``: SignatureError (exit 2) unless ``model`` (an artifact folder) is signed by the
    matching private key, checked before anything else in the folder is read."""
    if verify_key is None:
        return
    from pih2t_deploy.provenance import verify_folder

    verify_folder(model if model.is_dir() else model.parent, verify_key)
