"""How a stage spreads its tasks: ``slots``, ``share`` and ``map_tasks``. ``LocalTasks`` runs them one after
another in this process (the default of the stages that spread work: ingest, dedup); the executors
(``running/executors.py``) run them in the workers of a Ray cluster with the same three calls."""

from __future__ import annotations

from collections.abc import Callable, Iterator


class LocalTasks:
    """Tasks one after another in this process: the ``map_tasks`` of an in-process run (and the default of
    the stages that spread work: ingest, dedup)."""

    def slots(self) -> int:
        return 1

    def share(self, value):
        """A handle to pass as ``shared`` to several ``map_tasks`` calls (here: the value itself)."""
        return value

    def map_tasks(self, function: Callable, arguments, shared=None) -> Iterator:
        """``function(*a)`` for each ``a`` of ``arguments`` (``shared`` first when given), in order."""
        for a in arguments:
            yield function(shared, *a) if shared is not None else function(*a)
