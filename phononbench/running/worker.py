"""The worker: built once per process with its potential, engine and protocol, then called on chunks.

The idiom of Ray Data's ``map_batches(Worker)``: ``Worker(spec)`` loads the potential (once), and
``worker(chunk)`` returns one row per structure of the chunk. In-process runs and Ray actors use this
same class; an executor only decides where workers live.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from phononbench.compute import method
from phononbench.compute.engines import make_engine
from phononbench.errors import reason
from phononbench.science.ingest import InputStructure
from phononbench.compute.potentials import Potential, load_potential
from phononbench.records import StructureResult
from phononbench.running.run_folder import METHOD_SHA256
from phononbench.settings import ProtocolSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to build itself, picklable (sent to Ray workers as is)."""

    model: str
    device: str
    checkpoint: str | None
    max_atoms_per_batch: int | None
    protocol: ProtocolSettings
    engine: str = "batched"  # a name in engines.ENGINES
    threads: int | None = None  # torch threads in the worker's process
    log_file: str | None = None  # the run's log (OUT/run.log), appended to by every worker
    # numpy/scipy BLAS threads while computing: the method's matrices are 3x3 (ASE's cell filter, FixSymmetry)
    # or small (phonopy), where a thread pool's start-up and spinning cost far more than they save, and a
    # pool per worker oversubscribes the node (benchmarks/threads.py); the model keeps torch's threads
    blas_threads: int = 1
    # the driver's code (run_folder.METHOD_SHA256): a worker that imports other code refuses to start, as a resume
    # under other code is refused (a Ray worker's import path is its own)
    method_sha256: str | None = None


class Worker:
    """Built once per process. A worker that cannot start (a checkpoint missing on its node) does not raise:
    ``startup_error()`` says why, so an executor reports the cause itself rather than its own wrapper."""

    def __init__(self, spec: WorkerSpec, potential: Potential | None = None):
        if spec.log_file:
            attach_log_file(spec.log_file)
        if spec.threads:
            import torch

            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.error: str | None = None
        if spec.method_sha256 and METHOD_SHA256 and spec.method_sha256 != METHOD_SHA256:
            self.error = (f"this worker imports other phononbench code ({METHOD_SHA256[:8]}, from "
                          f"{Path(__file__).resolve().parents[1]}) than the run ({spec.method_sha256[:8]})")
            log.error("worker could not start: %s", self.error)
            return
        try:
            self.potential = potential or load_potential(spec.model, spec.device, spec.checkpoint,
                                                         spec.max_atoms_per_batch)
            self.engine = make_engine(spec.engine, self.potential)
        except Exception as exc:
            self.error = reason(exc)
            log.error("worker could not start: %s", self.error)
            return
        log.info("worker ready: %s on %s, engine %s", spec.model, spec.device, spec.engine)

    def startup_error(self) -> str | None:
        """None when the worker is ready, else why it could not start (one line)."""
        return self.error

    def __call__(self, chunk: list[InputStructure]) -> list[StructureResult]:
        from threadpoolctl import threadpool_limits

        if self.error:
            raise RuntimeError(f"this worker could not start: {self.error}")
        with threadpool_limits(limits=self.spec.blas_threads, user_api="blas"):
            return method.compute([item.unpacked() for item in chunk], self.engine, self.spec.protocol)


def attach_log_file(path: str) -> logging.Handler:
    """Send the package's log records (INFO and up) to ``path``, once per process and file."""
    logger = logging.getLogger("phononbench")
    logger.setLevel(logging.INFO)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and handler.baseFilename == str(path):
            return handler
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return handler
