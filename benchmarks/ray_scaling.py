"""Ray's overhead against the in-process path, and scaling from 1 to 2 workers, on the same structures.

    python benchmarks/ray_scaling.py --model chgnet            # demo set, this machine's CPUs

Each configuration runs the whole pipeline (batched engine) into a fresh folder: in-process with all
CPUs as torch threads; Ray with 1 worker holding all CPUs; Ray with one worker per CPU. Ray's start-up
is inside the Ray timings. Verdicts must agree across the three. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from phononbench.running.executors import InProcessExecutor, RayExecutor
from phononbench.running.pipeline import run_benchmark
from phononbench.compute.potentials import load_potential
from phononbench.records import Col, verdict_column
from phononbench.running.run_folder import read_structures
from phononbench.settings import PUBLISHED
from phononbench.running.worker import WorkerSpec

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("inputs", nargs="*", default=[str(DEMO)])
    parser.add_argument("--model", default="chgnet")
    parser.add_argument("--chunk-size", type=int, default=4)
    args = parser.parse_args()

    cpus = os.cpu_count() or 1
    protocol = PUBLISHED.with_overrides(model=args.model)
    potential = load_potential(args.model)
    configurations = {
        "in_process": lambda: InProcessExecutor(potential),
        "ray_1_worker": lambda: RayExecutor(workers=1, cpus_per_worker=cpus),
        f"ray_{cpus}_workers": lambda: RayExecutor(workers=cpus, cpus_per_worker=1),
    }
    timings, verdicts = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in configurations.items():
            import ray

            ray.shutdown()  # each Ray configuration pays its own start-up
            torch.set_num_threads(cpus)
            spec = WorkerSpec(args.model, "cpu", None, None, protocol)
            start = time.perf_counter()
            run_benchmark(args.inputs, Path(tmp) / name, spec, potential.describe(), make(), chunk_size=args.chunk_size)
            timings[name] = round(time.perf_counter() - start, 2)
            rows = read_structures(Path(tmp) / name)
            verdicts[name] = dict(zip(rows[Col.STRUCTURE_ID], zip(rows[Col.STATUS], rows[verdict_column(-0.1)])))
            print(f"{name:16s} {timings[name]:8.1f} s")
    names = list(configurations)
    report = {
        "model": args.model, "cpus": cpus, "chunk_size": args.chunk_size, "seconds": timings,
        "ray_overhead_ratio": round(timings["ray_1_worker"] / timings["in_process"], 3),
        "speedup_1_to_n_workers": round(timings["ray_1_worker"] / timings[names[2]], 3),
        "verdicts_agree": all(verdicts[n] == verdicts[names[0]] for n in names),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
