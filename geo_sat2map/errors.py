"""Exceptions that mean "the user asked for something we cannot do".

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (file, option, data), with a message that says what to do."""


class CheckpointError(UserError):
    """A weights file that cannot be loaded as any supported generator checkpoint."""


# Stop signals handled like Ctrl-C: what timeout, systemd, cluster schedulers and torchrun (stopping its ranks)
# send, and what a closed terminal sends. Names; the platform may lack some (Windows has no SIGHUP).
STOP_SIGNALS = ("SIGTERM", "SIGHUP")


def stop_signals() -> list[int]:
    """The numbers of this platform's STOP_SIGNALS."""
    import signal

    return [getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)]


class Interrupted(KeyboardInterrupt):
    """A stop signal other than Ctrl-C (SIGTERM, SIGHUP), raised where Ctrl-C's KeyboardInterrupt would be so that
    the same clean-up runs. ``exit_code`` is 128 + the signal number, what a shell reports for a process it ends."""

    def __init__(self, signal_name: str, signal_number: int) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = 128 + signal_number


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (errors must stay one line), else its type name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
