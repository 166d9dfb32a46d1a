"""The method on structures in the tests: the serial (published) and batched engines."""

from __future__ import annotations

from phononbench.compute.engines import BatchedEngine, SerialEngine
from phononbench.compute.method import compute


def published(item, potential, protocol):
    """One structure the published scripts' way: the serial engine."""
    return compute([item], SerialEngine(potential), protocol)[0]


def batched(items, potential, protocol):
    """Structures through the batched engine, in one chunk."""
    return compute(items, BatchedEngine(potential), protocol)
