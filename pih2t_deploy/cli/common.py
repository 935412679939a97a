"""Shared console objects and option parsing helpers for the CLI."""

from __future__ import annotations

from rich.console import Console

from pih2t_deploy.errors import ConfigError

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def log(message: str) -> None:
    """A progress line on stderr (plain text: no rich markup is interpreted)."""
    err_console.print(message, markup=False)


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
