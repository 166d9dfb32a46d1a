"""Where workers run: in this process, or as Ray actors on a local Ray or a cluster.

An executor receives a ``WorkerSpec`` and chunks of ``InputStructure`` and yields lists of rows as
chunks complete, in any order. It knows nothing of the science: each worker (``worker.Worker``) is
built once per process and called on chunks, as Ray Data's ``map_batches(Worker)`` does.

Faults, with Ray's own mechanisms: an actor whose process dies (kill -9, out of memory) is restarted by
Ray and its chunk retried (``max_retries``). A chunk that still fails, or outlives its deadline
(``timeout_per_structure_s`` times its size; its actor is killed and replaced), is split into single
structures, each with its own retries and deadline; a single structure that times out or keeps killing
its worker gets status ``timeout`` or ``worker_crashed`` and is not tried again.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import os
import re
import time
from collections.abc import Iterator

from phononbench.errors import RunAborted, SetupError, reason
from phononbench.science.ingest import InputStructure
from phononbench.tasks import LocalTasks
from phononbench.compute.potentials import Potential, default_batch_atoms
from phononbench.records import Status, StructureResult
from phononbench.running.worker import Worker, WorkerSpec


class InProcessExecutor(LocalTasks):
    """One worker in this process, chunks one after the other: tests, notebooks, a single structure.

    ``potential``: an already loaded potential for the worker (saves loading it twice)."""

    def __init__(self, potential: Potential | None = None):
        self.potential = potential

    def slots(self) -> int:
        return 1

    def ensure_runnable(self, spec: WorkerSpec) -> None:
        """Nothing to ask of this process."""

    def worker_spec(self, spec: WorkerSpec) -> WorkerSpec:
        return spec

    def map(self, spec: WorkerSpec, chunks: list[list[InputStructure]]) -> Iterator[list[StructureResult]]:
        if not chunks:
            return
        worker = Worker(spec, self.potential)
        if worker.startup_error():
            raise RunAborted(f"the worker could not start: {worker.startup_error()}")
        for chunk in chunks:
            try:
                rows = worker(chunk)
            except Exception as exc:  # the method never raises for a structure's sake: this is a bug
                raise RunAborted(f"the worker failed on a chunk, not because of a structure ({reason(exc)})") from exc
            yield rows

    def describe(self) -> dict:
        return {"executor": "in-process"}


SHARE_GPUS = None  # gpus_per_worker: share each GPU among as many workers as its node has CPUs for (or as asked)
MOST_WORKERS_PER_GPU = 8


def workers_per_gpu(nodes: list[dict], cpus_per_worker: float) -> int:
    """How many workers share one GPU: a worker spends most of a structure's wall time on the CPU (symmetry,
    phonopy; about 0.6 CPU s a structure outside the model, benchmarks/simulated_device.py) and little on the
    GPU, so a GPU fed by one worker idles. Each GPU gets its node's CPUs (one left for Ray and the driver) in
    workers, at most 8 (each holds a CUDA context and a share of the GPU's memory); the least over the
    cluster's GPU nodes."""
    shares = [max(1, int((n.get("CPU", 0) / n["GPU"] - 1) // cpus_per_worker)) for n in nodes if n.get("GPU", 0)]
    return min(MOST_WORKERS_PER_GPU, min(shares, default=1))


class RayExecutor:
    """One ``Worker`` actor per slot, each fed one chunk at a time.

    ``address``: None starts a local Ray (or joins the one this process has); "auto" or "HOST:PORT"
    joins a cluster. GPU workers take ``gpus_per_worker`` (fractional shares a GPU between workers);
    ``SHARE_GPUS`` shares each GPU among as many workers as its node has CPUs for (``workers_per_gpu``), or
    among ``workers`` where they are given.
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float | None = 0.0,
        timeout_per_structure_s: float | None = None,
        max_retries: int = 2,
        poll_s: float = 1.0,
        grace_s: float = 60.0,
    ):
        for value, name, least in ((workers, "workers", 1), (cpus_per_worker, "cpus_per_worker", 1e-9),
                                   (timeout_per_structure_s, "timeout_per_structure_s", 1e-9),
                                   (max_retries, "max_retries", 0)):
            if value is not None and not value >= least:
                raise SetupError(f"{name} must be {'positive' if least else 'zero or more'} (got {value})",
                                 setting=name)
        if gpus_per_worker is not SHARE_GPUS and not gpus_per_worker >= 0:
            raise SetupError(f"gpus_per_worker must be zero or more (got {gpus_per_worker})", setting="gpus_per_worker")
        self.address = address
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.timeout_per_structure_s = timeout_per_structure_s
        self.max_retries = max_retries
        self.poll_s = poll_s
        self.grace_s = grace_s  # on top of each deadline: a fresh worker loads its potential first

    def describe(self) -> dict:
        return {"executor": "ray", "address": self.address, "workers": self.workers,
                "cpus_per_worker": self.cpus_per_worker,
                "gpus_per_worker": "shared" if self.gpus_per_worker is SHARE_GPUS else self.gpus_per_worker,
                **({"workers_per_gpu": math.floor(1 / self.gpus_per_worker + 1e-9)}
                   if self.gpus_per_worker and self.gpus_per_worker < 1 else {}),
                "timeout_per_structure_s": self.timeout_per_structure_s, "max_retries": self.max_retries}

    def _ray(self):
        import ray

        if not ray.is_initialized():
            # workers import phononbench (and any plugin potential) from this environment
            env = {"PYTHONPATH": os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)}
            kwargs = dict(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:  # a local Ray: the machine's CPUs, or only as many as the workers asked for use
                cpus = os.cpu_count() or 1
                if self.workers:
                    cpus = max(1, min(cpus, math.ceil(self.workers * self.cpus_per_worker)))
                ray.init(num_cpus=cpus, **kwargs)
        return ray

    def ensure_runnable(self, spec: WorkerSpec) -> None:
        """Refuse, before any work, a worker the cluster cannot place (it would wait forever)."""
        nodes = self._nodes()
        total = self._ray().cluster_resources()
        has = f"the cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs"
        if self._gpus_per_worker() is SHARE_GPUS:
            raise SetupError(f"GPU workers were asked for (--device cuda) but no node has a GPU ({has})",
                             setting="device")
        most_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
        most_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
        if self.cpus_per_worker > most_cpus:
            raise SetupError(f"a worker asks for {self.cpus_per_worker:g} CPUs but the largest node has "
                             f"{most_cpus:g} ({has})", setting="cpus_per_worker")
        if self.gpus_per_worker and self.gpus_per_worker > most_gpus:
            raise SetupError(f"a worker asks for {self.gpus_per_worker:g} GPUs but no node has that many ({has})",
                             setting="gpus_per_worker")
        if self.gpus_per_worker and self.workers and self.workers > (fits := self._capacity()):
            raise SetupError(f"{self.workers} workers with {self.gpus_per_worker:g} GPUs each do not fit ({has}; "
                             f"{fits} such workers do)", setting="workers")

    def worker_spec(self, spec: WorkerSpec) -> WorkerSpec:
        """The spec as these workers run it: BLAS threads for their CPUs, and on a GPU, unless asked, their
        share of its batch (``potentials.default_batch_atoms``)."""
        spec = dataclasses.replace(spec, threads=spec.threads or max(1, int(self.cpus_per_worker)))
        share = self._gpus_per_worker() or 0.0
        if share > 0 and spec.max_atoms_per_batch is None:
            spec = dataclasses.replace(spec, max_atoms_per_batch=default_batch_atoms("cuda", share))
        return spec

    def _gpus_per_worker(self) -> float | None:
        """``gpus_per_worker``, ``SHARE_GPUS`` resolved against the cluster once Ray is up: the ``workers``
        asked for spread over its GPUs, else ``workers_per_gpu`` (it stays ``SHARE_GPUS`` where no node has a
        GPU: ``ensure_runnable`` refuses that)."""
        if self.gpus_per_worker is SHARE_GPUS:
            nodes = self._nodes()
            gpus = sum(n.get("GPU", 0) for n in nodes)
            if gpus and self.workers:
                self.gpus_per_worker = 1 / math.ceil(self.workers / gpus - 1e-9)
            elif gpus:
                self.gpus_per_worker = 1 / workers_per_gpu(nodes, self.cpus_per_worker)
        return self.gpus_per_worker

    def _nodes(self) -> list[dict]:
        return [n.get("Resources", {}) for n in self._ray().nodes() if n.get("Alive")]

    def map_tasks(self, function, arguments, shared=None) -> Iterator:
        """``function(*a)`` (``shared`` first when given, put once in the object store) for each ``a`` of
        ``arguments`` (any iterable, read as tasks are submitted), as Ray tasks of ``cpus_per_worker`` CPUs, a
        few per slot in flight; results in order. A task that raises stops the run (it is not a structure's
        fault: the tasks keep each structure's failure in its row)."""
        arguments = iter(arguments)
        first = next(arguments, None)
        if first is None:
            return  # nothing to do: no Ray started for it
        arguments = itertools.chain([first], arguments)
        ray = self._ray()
        remote = ray.remote(num_cpus=self.cpus_per_worker, max_retries=self.max_retries)(_with_one_blas_thread)
        if shared is not None and not isinstance(shared, _Shared):
            shared = self.share(shared)
        head = (shared,) if shared is not None else ()
        pending = collections.deque()

        def submit() -> bool:
            for a in arguments:
                pending.append(remote.remote(function, *head, *a))
                return True
            return False

        in_flight = 2 * self.slots()  # asked of the cluster once, not per task
        while len(pending) < in_flight and submit():
            pass
        while pending:
            ref = pending.popleft()
            try:
                result = ray.get(ref)
            except Exception as exc:
                for other in pending:
                    ray.cancel(other)
                raise RunAborted(f"a {function.__name__} task failed ({_cause(exc)})") from None
            submit()
            yield result

    def share(self, value):
        """``value`` in the object store, once, for several ``map_tasks`` calls (each worker process reads
        it once: unpickling thousands of structures per task would cost more than the task)."""
        return _Shared([self._ray().put(value)])

    def slots(self) -> int:
        """How many workers run at once: as asked, or as many as the cluster's CPUs or GPUs allow."""
        if self.workers:
            return self.workers
        return self._capacity()

    def _capacity(self) -> int:
        """How many workers the cluster can place at once: on each node, as many as its CPUs and its GPUs
        both allow."""
        share = self._gpus_per_worker() or 0.0
        fits = 0
        for node in self._nodes():  # the actors each node can place: its CPUs and its GPUs both bound them
            by_cpus = math.floor(node.get("CPU", 0) / self.cpus_per_worker + 1e-9)
            fits += min(by_cpus, math.floor(node.get("GPU", 0) / share + 1e-9)) if share else by_cpus
        return max(1, fits)

    def map(self, spec: WorkerSpec, chunks: list[list[InputStructure]]) -> Iterator[list[StructureResult]]:
        if not chunks:
            return
        ray = self._ray()
        from ray.exceptions import RayActorError

        spec = self.worker_spec(spec)
        share = self._gpus_per_worker() or 0.0
        actor_class = ray.remote(Worker).options(
            num_cpus=self.cpus_per_worker, num_gpus=share,
            max_restarts=self.max_retries, max_task_retries=self.max_retries,
        )
        idle = [actor_class.remote(spec) for _ in range(min(self.slots(), len(chunks)))]
        # a worker that cannot start (a checkpoint missing on its node) stops the run, not each structure
        try:
            errors = [e for e in ray.get([actor.startup_error.remote() for actor in idle]) if e]
        except Exception as exc:  # the process itself died while starting
            errors = [_cause(exc)]
        if errors:
            for actor in idle:
                ray.kill(actor, no_restart=True)
            raise RunAborted(f"a worker could not start: {errors[0]}")
        queue = list(chunks)[::-1]
        running: dict = {}  # ref -> (actor, chunk, submitted_at)
        try:
            while queue or running:
                while queue and idle:
                    actor, chunk = idle.pop(), queue.pop()
                    running[actor.__call__.remote(chunk)] = (actor, chunk, time.monotonic())
                done, _ = ray.wait(list(running), num_returns=1, timeout=self.poll_s)
                for ref in done:
                    actor, chunk, _ = running.pop(ref)
                    try:
                        rows = ray.get(ref)
                    except RayActorError as exc:  # the worker died on every retry: a fresh one takes its place
                        ray.kill(actor, no_restart=True)
                        idle.append(actor_class.remote(spec))
                        yield from self._split_or_fail(queue, chunk, Status.WORKER_CRASHED, _cause(exc))
                        continue
                    except Exception as exc:  # the method never raises for a structure's sake: a bug
                        raise RunAborted(f"a worker failed on a chunk, not because of a structure ({_cause(exc)})") from None
                    idle.append(actor)
                    yield rows
                if self.timeout_per_structure_s:
                    now = time.monotonic()
                    for ref, (actor, chunk, submitted) in list(running.items()):
                        if now - submitted > self.timeout_per_structure_s * len(chunk) + self.grace_s:
                            ray.kill(actor, no_restart=True)  # stops the hanging call with its process
                            running.pop(ref)
                            idle.append(actor_class.remote(spec))
                            limit = f"took longer than {self.timeout_per_structure_s:g} s per structure"
                            yield from self._split_or_fail(queue, chunk, Status.TIMEOUT, limit)
        finally:
            for actor in idle + [a for a, _, _ in running.values()]:
                ray.kill(actor, no_restart=True)

    @staticmethod
    def _split_or_fail(queue, chunk, status, why) -> Iterator[list[StructureResult]]:
        """A failed chunk goes back as single structures; a single one fails for good."""
        if len(chunk) > 1:
            queue.extend([[item] for item in chunk][::-1])
            return
        yield [StructureResult.for_input(chunk[0], status, why)]


@dataclasses.dataclass
class _Shared:
    """A value shared by many tasks: its object reference, inside a list so that Ray hands it over as it is."""

    refs: list


_SHARED_IN_THIS_WORKER: dict = {}  # the shared value a task process read last, by its reference


def _with_one_blas_thread(function, *arguments):
    """A task's function under one BLAS thread, as the workers compute (small matrices); a shared first
    argument is read once per worker process."""
    from threadpoolctl import threadpool_limits

    if arguments and isinstance(arguments[0], _Shared):
        import ray

        ref = arguments[0].refs[0]
        if ref.hex() not in _SHARED_IN_THIS_WORKER:
            _SHARED_IN_THIS_WORKER.clear()  # one at a time: a bucket's structures
            _SHARED_IN_THIS_WORKER[ref.hex()] = ray.get(ref)
        arguments = (_SHARED_IN_THIS_WORKER[ref.hex()], *arguments[1:])
    with threadpool_limits(limits=1, user_api="blas"):
        return function(*arguments)


_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _cause(exc: BaseException) -> str:
    """The error behind Ray's wrapper, in one line without terminal colour codes."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    return _TERMINAL_CODES.sub("", reason(exc))
