"""A simulated GPU under the real pipeline: how busy would the device be, and how many structures an hour? (issue 20)

    python benchmarks/simulated_device.py                       # 48 generated crystals, a few layouts
    python benchmarks/simulated_device.py --n 128 --workers 1 2 --chunks 16 64

The device: a model (an ASE calculator for the batched engine, a TorchSim model for the torchsim engine)
whose every call takes a + b x atoms seconds of wall time while holding no CPU (it sleeps, releasing the
GIL, as a process waiting on a GPU kernel does) and serialises its callers across processes as one device
does (a file lock); its forces are the grid springs of benchmarks/method_overhead.py (realistic step
counts). Every call's start and end go to a log, from which the device's busy fraction is read.

Calibration (stated, not measured here: no GPU has been lent to this project yet): b = 3.0 us per atom,
NVIDIA's figure for MACE-MP-0b2-Large on an H100 in batches of ~82k atoms (NIM for BGR, "Performance"
page: 3.02 us/atom/step), taken as MatterSim-5M's (a 4.5M-parameter M3GNet with three-body terms: the
same order); a = 5 ms per call (graph building and kernel launches of a batched call). Replace both with
`benchmarks/gpu_check.py`'s MatterSim figure once a device is lent.

The real pipeline runs against it: `pipeline.run_benchmark` on a local Ray with N workers, the engine's
batching and the run's chunks, the published preset. Printed per layout: structures/h, the device's busy
fraction, device seconds and CPU seconds per structure; then what the goal (7.6 structures/s per GPU,
>= 90% busy) needs in CPU cores per GPU. The last line is one JSON object with ``device_busy_fraction`` and
``structures_per_hour`` (the best layout).
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PER_CALL_S = 5e-3
PER_ATOM_S = 3.0e-6
GOAL_STRUCTURES_PER_S = 7.6  # 27,500 an hour per GPU: 110k in 4 GPU-hours


class Device:
    """One device for every process on this machine: a call holds the lock for a + b x atoms seconds."""

    def __init__(self, folder: str, per_call_s: float, per_atom_s: float):
        self.lock_path, self.log_path = Path(folder) / "device.lock", Path(folder) / "device.log"
        self.per_call_s, self.per_atom_s = per_call_s, per_atom_s

    def call(self, n_atoms: int) -> None:
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            start = time.time()
            time.sleep(self.per_call_s + self.per_atom_s * n_atoms)  # no CPU held, the GIL released
            end = time.time()
            fcntl.flock(lock, fcntl.LOCK_UN)
        with open(self.log_path, "a") as log:  # one short append per call: whole lines
            log.write(f"{start:.6f} {end:.6f} {n_atoms}\n")


def build(name: str, device: str, checkpoint: str | None):
    """``python:simulated_device:build``: the potential the pipeline's workers load (settings from the
    environment the driver set before Ray started)."""
    import torch

    from method_overhead import GridSprings, grid_springs_model
    from phononbench.compute.potentials import Potential

    simulated = Device(os.environ["SIMULATED_DEVICE_DIR"], float(os.environ["SIMULATED_DEVICE_A"]),
                       float(os.environ["SIMULATED_DEVICE_B"]))

    class DevicePotential(Potential):
        def _predict_batch(self, batch, stress):
            simulated.call(sum(len(a) for a in batch))
            return super()._predict_batch(batch, stress)

    springs = grid_springs_model()

    class DeviceModel(type(springs)):
        def forward(self, state, **kwargs):
            simulated.call(int(state.n_atoms))
            return super().forward(state, **kwargs)

    torch.set_num_threads(1)
    potential = DevicePotential(name, GridSprings(), "cpu", make_torchsim=lambda _: DeviceModel())
    return potential


def busy_fraction(log: Path, since: float, until: float) -> tuple[float, float]:
    """The device's busy share of [since, until] and its busy seconds."""
    if not log.exists():
        return 0.0, 0.0
    calls = np.loadtxt(log, ndmin=2)
    calls = calls[(calls[:, 0] >= since) & (calls[:, 1] <= until)]
    busy = float((calls[:, 1] - calls[:, 0]).sum())
    return busy / (until - since), busy


def run_layout(inputs: Path, scratch: Path, workers: int, engine: str, chunk: int) -> dict:
    from phononbench.running.executors import RayExecutor
    from phononbench.running.pipeline import run_benchmark
    from phononbench.settings import preset
    from phononbench.running.worker import WorkerSpec

    import ray

    out = scratch / f"run-{engine}-{workers}w-{chunk}"
    log = Path(os.environ["SIMULATED_DEVICE_DIR"]) / "device.log"
    # one declared GPU that the workers share as `--device cuda` shares a real one (executors.workers_per_gpu):
    # each takes 1/workers of it and that share of a GPU's batch (the cuda default, not the CPU's 256 atoms)
    ray.init(num_cpus=workers, num_gpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    spec = WorkerSpec("python:simulated_device:build", "cpu", None, None, preset("published"), engine, threads=1)
    executor = RayExecutor(workers=workers, cpus_per_worker=1.0, gpus_per_worker=1 / workers)
    cpu = DescendantsCPU()
    started = time.time()
    summary = run_benchmark([str(inputs)], out, spec, {"model": "simulated-device"}, executor, chunk_size=chunk)
    ended = time.time()
    worker_cpu_s = cpu.seconds()
    ray.shutdown()  # the next layout starts a Ray of its own size
    n = int(summary[summary["pooled"]]["n_relaxed"].iloc[0])
    fraction, busy = busy_fraction(log, started, ended)
    wall = ended - started
    return {"engine": engine, "workers": workers, "chunk": chunk, "structures": n, "wall_s": round(wall, 1),
            "structures_per_hour": round(n / wall * 3600), "device_busy_fraction": round(fraction, 4),
            "device_s_per_structure": round(busy / max(n, 1), 4),
            "worker_cpu_s_per_structure": round(worker_cpu_s / max(n, 1), 3)}


class DescendantsCPU:
    """CPU seconds of every process this one starts, at any depth (Ray's workers, and its raylet: a small
    share), sampled twice a second while they live: the workers are gone when the run returns."""

    def __init__(self):
        import threading

        self.last: dict[int, float] = {}
        self._look()
        self.first = dict(self.last)  # what Ray's own processes spent starting: not the run's
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _look(self):
        import psutil

        for process in psutil.Process().children(recursive=True):
            try:
                times = process.cpu_times()
                self.last[process.pid] = times.user + times.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue

    def _sample(self):
        while not self.stop.wait(0.5):
            self._look()

    def seconds(self) -> float:
        self.stop.set()
        self.thread.join()
        self._look()
        return sum(seconds - self.first.get(pid, 0.0) for pid, seconds in self.last.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="generated crystals")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--engines", nargs="+", default=["torchsim"])
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 64],
                        help="structures per chunk (a worker's structures in flight)")
    parser.add_argument("--per-call-s", type=float, default=PER_CALL_S)
    parser.add_argument("--per-atom-s", type=float, default=PER_ATOM_S)
    args = parser.parse_args()

    from pymatgen.io.cif import CifWriter

    from method_overhead import GENERATED, generated_sample

    scratch = Path(tempfile.mkdtemp(prefix="simulated-device-"))
    os.environ.update(SIMULATED_DEVICE_DIR=str(scratch), SIMULATED_DEVICE_A=str(args.per_call_s),
                      SIMULATED_DEVICE_B=str(args.per_atom_s), OMP_NUM_THREADS="1",
                      PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    sys.path.insert(0, str(HERE))
    inputs = scratch / "inputs" / "generated"
    inputs.mkdir(parents=True)
    for k, item in enumerate(generated_sample(GENERATED, args.n)):
        CifWriter(item.unpacked().structure).write_file(str(inputs / f"{k:04d}.cif"))

    layouts = []
    for engine in args.engines:
        for workers, chunk in itertools.product(args.workers, args.chunks):
            figures = run_layout(inputs.parent, scratch, workers, engine, chunk)
            layouts.append(figures)
            print(f"{engine}, {workers} worker(s), chunks of {chunk}: {figures['structures_per_hour']:,} structures/h, "
                  f"device busy {100 * figures['device_busy_fraction']:.1f}% ({figures['device_s_per_structure'] * 1000:.1f} ms "
                  f"of device per structure), {figures['worker_cpu_s_per_structure']:.2f} worker CPU s per structure",
                  flush=True)
    best = max(layouts, key=lambda f: f["structures_per_hour"])
    device_s = best["device_s_per_structure"]
    cpu_s = best["worker_cpu_s_per_structure"]
    needed = {"device_s_per_structure": device_s, "device_bound_structures_per_s": round(1 / device_s, 1) if device_s else None,
              "cpu_cores_per_gpu_for_the_goal": round(GOAL_STRUCTURES_PER_S * cpu_s, 1),
              "cpu_cores_per_gpu_for_90_percent_busy": round(0.9 / device_s * cpu_s, 1) if device_s else None}
    print(f"the device alone could do {needed['device_bound_structures_per_s']} structures/s; the goal "
          f"({GOAL_STRUCTURES_PER_S}/s per GPU) needs {needed['cpu_cores_per_gpu_for_the_goal']} CPU cores per GPU at "
          f"{cpu_s:.2f} CPU s per structure, and a 90%-busy device {needed['cpu_cores_per_gpu_for_90_percent_busy']}")
    print(json.dumps({"calibration": {"per_call_s": args.per_call_s, "per_atom_s": args.per_atom_s},
                      "layouts": layouts, "best": best, "needed": needed,
                      "device_busy_fraction": best["device_busy_fraction"],
                      "structures_per_hour": best["structures_per_hour"]}))


if __name__ == "__main__":
    main()
