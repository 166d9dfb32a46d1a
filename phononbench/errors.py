"""Errors that stop a run, the one way a structure's failure is put into words, and the one way a batched
call's failure is pinned on the structure that caused it.

Structure-level failures never raise out of the method: they become a status and a reason on a row.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


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


def isolating_failures(groups: list[list], call, what: str) -> list[list | Exception]:
    """``call`` (items -> one result per item) on every group's items at once, handed back group by group.
    If that call raises, or hands back another number of results than it was given items (they could not be
    matched to their items), one call per group, so only the group that causes it fails: its exception stands
    in its place and the others go on (a structure's supercells are one group; one structure is a group of
    one). An empty group gets no results and no call."""
    flat = [item for group in groups for item in group]
    try:
        results = _one_per_item(call, flat) if flat else []
        out, start = [], 0
        for group in groups:
            out.append(results[start:start + len(group)])
            start += len(group)
        return out
    except Exception as exc:
        if len(groups) == 1:
            return [exc]
        # a systematic bug here would otherwise be a silent slow path: say so
        log.warning("batched %s of %d structures failed (%s); retrying one structure at a time",
                    what, len(groups), exc, exc_info=True)
    out = []
    for group in groups:
        try:
            out.append(_one_per_item(call, group) if group else [])
        except Exception as exc:
            out.append(exc)
    return out


class ResultCountMismatch(RuntimeError):
    """A batched call handed back another number of results than it was given items."""


def _one_per_item(call, items: list) -> list:
    results = list(call(items))
    if len(results) != len(items):
        raise ResultCountMismatch(f"asked for {len(items)} results, got {len(results)}")
    return results
