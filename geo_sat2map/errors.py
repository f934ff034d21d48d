"""Exceptions that mean "the user asked for something we cannot do".

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (file, option, data), with a message that says what to do."""


class CheckpointError(UserError):
    """A weights file that cannot be loaded as any supported generator checkpoint."""
