"""Errors that stop a run. Structure-level failures never raise: they become a status on a row."""


class SetupError(RuntimeError):
    """The run cannot start or go on (missing checkpoint, bad option, unreadable output folder).

    The message says what to do; the CLI prints it as one line.
    """
