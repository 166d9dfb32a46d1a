"""Where chunks of structures are evaluated: in this process, or as Ray tasks on a local Ray or a cluster.

The science does not know which. An executor receives a ``WorkerSpec`` (everything needed to build the
potential and run the protocol, all picklable) and chunks of ``InputStructure``, and yields lists of
``StructureResult`` as chunks complete, in any order.

Faults, with Ray's own mechanisms: a task whose worker process dies (kill -9, out of memory) is retried
by Ray (``max_retries``) on a fresh worker. A chunk that still fails, or outlives its deadline
(``timeout_per_structure_s`` times its size; the task is force-cancelled, which kills its worker), is
split into single structures, each with its own retries and deadline; a single structure that times out
or keeps killing its worker gets status ``timeout`` or ``worker_crashed`` and is not tried again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from phononbench.ingest import InputStructure
from phononbench.records import Status, StructureResult
from phononbench.settings import Protocol


@dataclass(frozen=True)
class WorkerSpec:
    model: str
    device: str
    checkpoint: str | None
    max_atoms_per_batch: int | None
    protocol: Protocol
    engine: str = "batched"  # or "serial"
    threads: int | None = None  # torch threads per worker


_POTENTIALS: dict = {}  # one potential per worker process, loaded on its first chunk


def _potential_for(spec: WorkerSpec):
    from phononbench.potentials import load_potential

    key = (spec.model, spec.device, spec.checkpoint, spec.max_atoms_per_batch)
    if key not in _POTENTIALS:
        if spec.threads:
            import torch

            torch.set_num_threads(spec.threads)
        _POTENTIALS[key] = load_potential(spec.model, spec.device, spec.checkpoint, spec.max_atoms_per_batch)
    return _POTENTIALS[key]


def evaluate_chunk(spec: WorkerSpec, chunk: list[InputStructure], potential=None) -> list[StructureResult]:
    """The science for one chunk (no Ray here)."""
    from phononbench.pipeline import evaluate, evaluate_batch

    potential = potential or _potential_for(spec)
    if spec.engine == "serial":
        return [evaluate(item, potential, spec.protocol) for item in chunk]
    return evaluate_batch(chunk, potential, spec.protocol)


def failed_result(item: InputStructure, status: Status, reason: str) -> StructureResult:
    from phononbench.pipeline import base_result

    result = base_result(item)
    result.status, result.error = status, reason
    return result


class InProcessExecutor:
    """Chunks one after the other in this process: tests, notebooks, a single structure."""

    def __init__(self, potential=None):
        self.potential = potential

    def map(self, spec: WorkerSpec, chunks: list[list[InputStructure]]) -> Iterator[list[StructureResult]]:
        for chunk in chunks:
            yield evaluate_chunk(spec, chunk, self.potential)

    def describe(self) -> dict:
        return {"executor": "in-process"}


class RayExecutor:
    """Chunks as Ray tasks, as many in flight as there are worker slots.

    ``address``: None starts a local Ray (or joins the one this process has); "auto" or "HOST:PORT"
    joins a cluster. GPU workers take ``gpus_per_worker`` (fractional shares a GPU between workers).
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        timeout_per_structure_s: float | None = None,
        max_retries: int = 2,
        poll_s: float = 1.0,
        grace_s: float = 60.0,
    ):
        self.address = address
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.timeout_per_structure_s = timeout_per_structure_s
        self.max_retries = max_retries
        self.poll_s = poll_s
        self.grace_s = grace_s  # on top of each deadline: a worker loads its potential on its first chunk

    def describe(self) -> dict:
        return {"executor": "ray", "address": self.address, "workers": self.workers,
                "cpus_per_worker": self.cpus_per_worker, "gpus_per_worker": self.gpus_per_worker,
                "timeout_per_structure_s": self.timeout_per_structure_s, "max_retries": self.max_retries}

    def _start_ray(self):
        import ray

        if not ray.is_initialized():
            # workers import phononbench (and any plugin potential) from this environment
            env = {"PYTHONPATH": os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)}
            kwargs = dict(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=os.cpu_count(), **kwargs)
        slots = self.workers
        if not slots:
            resources = ray.cluster_resources()
            if self.gpus_per_worker:
                slots = int(resources.get("GPU", 0) / self.gpus_per_worker)
            else:
                slots = int(resources.get("CPU", 1) / self.cpus_per_worker)
        return ray, max(1, slots)

    def map(self, spec: WorkerSpec, chunks: list[list[InputStructure]]) -> Iterator[list[StructureResult]]:
        if not chunks:
            return
        ray, slots = self._start_ray()
        threads = spec.threads or max(1, int(self.cpus_per_worker))
        spec = WorkerSpec(**{**spec.__dict__, "threads": threads})
        task = ray.remote(evaluate_chunk).options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_retries=self.max_retries,
            retry_exceptions=False,
        )
        spec_ref = ray.put(spec)
        queue = _rechunk_for(chunks, slots)[::-1]
        running: dict = {}  # ref -> (chunk, submitted_at)
        while queue or running:
            while queue and len(running) < slots:
                chunk = queue.pop()
                running[task.remote(spec_ref, chunk)] = (chunk, time.monotonic())
            done, _ = ray.wait(list(running), num_returns=1, timeout=self.poll_s)
            for ref in done:
                chunk, _ = running.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # retries exhausted: the worker kept dying, or the task raised
                    yield from self._split_or_fail(queue, chunk, Status.WORKER_CRASHED, _reason(exc))
            if self.timeout_per_structure_s:
                now = time.monotonic()
                for ref, (chunk, submitted) in list(running.items()):
                    if now - submitted > self.timeout_per_structure_s * len(chunk) + self.grace_s:
                        ray.cancel(ref, force=True)  # kills the worker process running it
                        running.pop(ref)
                        reason = f"took longer than {self.timeout_per_structure_s:g} s per structure"
                        yield from self._split_or_fail(queue, chunk, Status.TIMEOUT, reason)

    @staticmethod
    def _split_or_fail(queue, chunk, status, reason) -> Iterator[list[StructureResult]]:
        """A failed chunk goes back as single structures; a single one fails for good."""
        if len(chunk) > 1:
            queue.extend([[item] for item in chunk][::-1])
            return
        yield [failed_result(chunk[0], status, reason)]


def _rechunk_for(chunks: list[list[InputStructure]], slots: int) -> list[list[InputStructure]]:
    """Smaller chunks when there are too few to keep every worker busy (a small run, many workers)."""
    items = [item for chunk in chunks for item in chunk]
    if len(chunks) >= 2 * slots or not items:
        return [list(c) for c in chunks]
    size = max(1, -(-len(items) // (2 * slots)))
    return [items[k:k + size] for k in range(0, len(items), size)]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]
