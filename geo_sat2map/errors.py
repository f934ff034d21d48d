"""Exceptions that mean "the user asked for something we cannot do".

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (file, option, data), with a message that says what to do."""


class CheckpointError(UserError):
    """A weights file that cannot be loaded as any supported generator checkpoint."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (errors must stay one line), else its type name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
