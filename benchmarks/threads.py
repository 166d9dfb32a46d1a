"""BLAS threads in the method: one thread (the default, ``WorkerSpec.blas_threads``) against numpy's own pool.

    OMP_NUM_THREADS= python benchmarks/threads.py                 # 8 EMT metals, in-process runs
    python benchmarks/threads.py --busy 2 --rounds 3              # with two other processes spinning

Each measurement is a whole in-process run (``run_benchmark``: ingest, dedup, relax, phonons) of the same
8 EMT structures in a fresh Python process, timed from the outside, with ``blas_threads`` = 1 against
``blas_threads`` = the machine's cores (what numpy does unless told otherwise), in ABBA order over
``--rounds`` rounds. ``--busy N`` starts N spinning processes first: a cluster node whose other cores are
busy with other workers, where a BLAS pool waiting for its threads hurts most. OMP_NUM_THREADS and
OPENBLAS_NUM_THREADS are removed from the children's environment so the pool is numpy's default.
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ONE_RUN = """
import sys
from ase.build import bulk
from phononbench.running.executors import InProcessExecutor
from phononbench.running.pipeline import run_benchmark
from phononbench.settings import PUBLISHED
from phononbench.running.worker import WorkerSpec
import dataclasses, pathlib
root, blas_threads = pathlib.Path(sys.argv[1]), int(sys.argv[2])
folder = root / "in" / "metals"
folder.mkdir(parents=True, exist_ok=True)
for element in ("Cu", "Al", "Ni", "Pd"):
    a = bulk(element, "fcc").cell.cellpar()[0] * 2 ** 0.5
    bulk(element, "fcc", a=a).write(folder / f"{element}_fcc.cif")
    bulk(element, "bcc", a=a / 2 ** (1 / 3)).write(folder / f"{element}_bcc.cif")
spec = WorkerSpec("emt", "cpu", None, None, PUBLISHED.with_overrides(model="emt"), blas_threads=blas_threads)
run_benchmark([str(root / "in")], root / "out", spec, {"model": "emt"}, InProcessExecutor())
"""


def _spin() -> None:
    while True:
        pass


def _one(blas_threads: int) -> float:
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    environment["PYTHONPATH"] = str(REPO)
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", ONE_RUN, root, str(blas_threads)], check=True, env=environment,
                       capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--busy", type=int, default=0, help="spinning processes beside the runs")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for process in spinners:
        process.start()
    times: dict[int, list[float]] = {1: [], cores: []}
    try:
        _one(1)  # warm the file cache and imports
        for round_ in range(args.rounds):
            order = (1, cores) if round_ % 2 == 0 else (cores, 1)
            for threads in order + order[::-1]:
                times[threads].append(_one(threads))
                print(f"round {round_ + 1}: blas_threads={threads}: {times[threads][-1]:.2f} s", flush=True)
    finally:
        for process in spinners:
            process.terminate()
    figures = {"cores": cores, "busy_processes": args.busy, "structures": 8,
               "one_thread_s": round(statistics.mean(times[1]), 2),
               "numpy_default_s": round(statistics.mean(times[cores]), 2),
               "runs_each": len(times[1])}
    figures["slowdown_without_limit"] = round(figures["numpy_default_s"] / figures["one_thread_s"], 2)
    print(f"8 EMT structures in-process, {cores} cores, {args.busy} busy: one BLAS thread "
          f"{figures['one_thread_s']} s, numpy's default pool {figures['numpy_default_s']} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
