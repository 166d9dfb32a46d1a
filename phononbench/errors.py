"""Errors that stop a run, and the one way a structure's failure is put into words.

Structure-level failures never raise out of the method: they become a status and a reason on a row.
"""

from __future__ import annotations


class SetupError(RuntimeError):
    """The run cannot start or go on (missing checkpoint, bad setting, unreadable output folder).

    The message says what to do in the library's words; ``setting`` names the setting at fault, so the
    command line can point at its own option for it.
    """

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


class RunAborted(SetupError):
    """The run stopped for a reason that is not a structure's (a bug, a worker that cannot start); what was
    written is kept and the same command resumes once the cause is fixed (the message says so)."""

    def __init__(self, message: str):
        super().__init__(f"{message}; rows written so far are kept and the same command resumes the run")


class IncompleteRun(SetupError):
    """A run folder whose rows cannot all be read (a part file missing or damaged): every reader says so,
    naming the file, instead of counting what is left."""


def reason(exc: BaseException, limit: int = 500) -> str:
    """A structure's failure as one line: the exception's type and message, white space folded."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}"[:limit] if message else type(exc).__name__
