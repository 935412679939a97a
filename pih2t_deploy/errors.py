"""Errors that reach a user: each carries one line saying what is wrong and how to fix it."""


class UserError(Exception):
    """A problem with the user's input (file, option, data): the CLI prints it as one line, exit status 2."""

    exit_code = 2


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, unsafe or not in a format this package knows."""


class ConfigError(UserError):
    """A setting that is unknown, out of range or inconsistent with the others."""


class DataError(UserError):
    """A data set, folder or image that cannot be used as given."""


class VerificationError(Exception):
    """A numerical check (fold parity, export parity) exceeded its tolerance: exit status 1."""

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when the message is empty), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
