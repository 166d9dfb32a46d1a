"""Throughput of every engine against the published serial protocol, side by side in one process.

    python benchmarks/throughput.py --model chgnet                      # demo set, CPU (no torchsim: CHGNet)
    python benchmarks/throughput.py --model sevennet                    # serial, batched and torchsim
    python benchmarks/throughput.py --random-architecture 5m --fmax 5 --max-steps 20   # MatterSim's code
    python benchmarks/throughput.py --model mattersim-5m --device cuda --n 200 --chunk-size 200

Serial reference: one structure at a time, relaxation through the ASE calculator, one displaced supercell
per calculator call (what the published scripts do): the ``serial`` engine. Engines: ``batched`` (ASE
lockstep) and ``torchsim`` (one TorchSim state) over chunks of structures. All run the one method
(``method.compute``) through the product's ``Worker``, on the same structures (valid, deduplicated, first
``--n``) after one warm-up call each, timed in rotating order over ``--rounds`` rounds and averaged.
``--random-architecture 1m|5m`` writes a MatterSim checkpoint of that architecture with random weights
(use with ``--fmax``/``--max-steps``: a fixed number of steps, so the cost per step is the real one).
On CUDA, nvidia-smi is sampled while each engine runs (mean GPU utilisation). The tiered preset (Gamma
screen) runs on the batched engine too. The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from phononbench.science.dedup import find_duplicates
from phononbench.science.ingest import read_inputs
from phononbench.compute.potentials import load_potential
from phononbench.records import Status, StructureResult
from phononbench.settings import preset
from phononbench.running.worker import Worker, WorkerSpec

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


def _per_hour(n: int, seconds: float) -> float:
    return 3600.0 * n / seconds if seconds > 0 else float("nan")


def _stage_seconds(results: list[StructureResult]) -> dict[str, float]:
    return {"relax_s": round(sum(r.relax_wall_s or 0 for r in results), 2),
            "phonon_s": round(sum(r.phonon_wall_s or 0 for r in results), 2)}


def _compare(reference: list[StructureResult], other: list[StructureResult]) -> tuple[bool, float, list[str]]:
    agree, largest, differing = True, 0.0, []
    for a, b in zip(reference, other):
        if (a.status, a.verdicts) != (b.status, b.verdicts):
            agree = False
            differing.append(a.structure_id)
        if a.min_frequency_thz is not None and b.min_frequency_thz is not None:
            largest = max(largest, abs(a.min_frequency_thz - b.min_frequency_thz))
    return agree, largest, differing


def _atom_evaluations(results: list[StructureResult], supercell_size: int) -> int:
    """Atoms the model was evaluated on: unit cells over the relaxation steps, supercells over displacements."""
    total = 0
    for r in results:
        if r.n_atoms:
            total += r.n_atoms * ((r.relax_steps or 0) + 1)
            total += supercell_size * r.n_atoms * (r.n_displacements or 0)
    return total


class GpuSampler:
    """Mean GPU utilisation (nvidia-smi, every 0.5 s) while a block runs; None without nvidia-smi."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except Exception:
                return
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def random_mattersim(architecture: str, folder: str) -> str:
    """A MatterSim checkpoint of the 1M (128 units) or 5M (256 units) architecture, random weights."""
    import torch
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet

    torch.manual_seed(0)
    model = M3Gnet(device="cpu", units={"1m": 128, "5m": 256}[architecture])
    path = str(Path(folder) / f"mattersim-{architecture}-random.pth")
    torch.save({"model_name": "m3gnet", "model_args": model.model_args, "model": model.state_dict()}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", default=[str(DEMO)])
    parser.add_argument("--model", default="chgnet")
    parser.add_argument("--checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=None, help="at most N structures (default: all)")
    parser.add_argument("--batch-atoms", type=int, default=None)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--fmax", type=float, default=None, help="override fmax (random-weight models)")
    parser.add_argument("--max-steps", type=int, default=None, help="one relaxation cycle of at most N steps")
    parser.add_argument("--skip-tiered", action="store_true")
    parser.add_argument("--rounds", type=int, default=2,
                        help="timed rounds, rotating which engine goes first; times are averaged")
    parser.add_argument("--engines", nargs="+", default=["serial", "batched", "torchsim"],
                        help="serial first: it is the reference (torchsim is left out for potentials without it)")
    parser.add_argument("--random-architecture", choices=["1m", "5m"],
                        help="MatterSim with random weights of this architecture (sets --model mattersim)")
    args = parser.parse_args()
    if args.random_architecture:
        args.model, args.checkpoint = "mattersim", random_mattersim(args.random_architecture, tempfile.mkdtemp())

    overrides = dict(model=args.model)
    if args.fmax is not None:  # random-weight models: a loose acceptance, and the target at half of it
        overrides.update(relax_fmax_ev_per_a=args.fmax, relax_target_fmax_ev_per_a=args.fmax / 2)
    if args.max_steps is not None:  # a fixed step count: one cycle of that many steps
        overrides.update(relax_cycles=1, relax_steps_per_cycle=args.max_steps)
    published = preset("published").with_overrides(**overrides)
    tiered = preset("tiered").with_overrides(**overrides)
    potential = load_potential(args.model, args.device, args.checkpoint, args.batch_atoms)

    items = read_inputs(args.inputs, published.max_atoms, published.min_distance_a)
    duplicates = find_duplicates(items)
    items = [i for i in items if i.valid and i.structure_id not in duplicates][: args.n]
    print(f"{len(items)} structures, model {args.model} on {args.device}, "
          f"{potential.max_atoms_per_batch} atoms per batch, chunks of {args.chunk_size}")
    # the product's workers (Worker: the method under one BLAS thread), one per engine, sharing the potential
    def worker(engine, protocol):
        return Worker(WorkerSpec(args.model, args.device, args.checkpoint, args.batch_atoms, protocol, engine),
                      potential)

    engines = [e for e in args.engines if e != "torchsim" or potential.torchsim_model() is not None]
    workers = {e: worker(e, published) for e in engines}
    for e in engines:
        workers[e](items[:1])  # warm-up, every engine (serial too): lazy imports, first graph, allocator

    def timed(run):
        start = time.perf_counter()
        out = run()
        return out, time.perf_counter() - start

    chunks = [items[k:k + args.chunk_size] for k in range(0, len(items), args.chunk_size)]

    def run(engine):
        if engine == "serial":
            return [r for i in items for r in workers[engine]([i])]
        return [r for c in chunks for r in workers[engine](c)]

    # rotating order: on a small machine the second of two long runs in one process is not timed like the
    # first (allocator and cache state), so the order must cancel out
    times: dict[str, list[float]] = {e: [] for e in engines}
    utilisation: dict[str, list[float]] = {e: [] for e in engines}
    rows: dict[str, list[StructureResult]] = {}
    for round_ in range(args.rounds):
        order = engines[round_ % len(engines):] + engines[:round_ % len(engines)]
        for engine in order if round_ % 2 == 0 else order[::-1]:
            with GpuSampler() as gpu:
                rows[engine], seconds = timed(lambda: run(engine))
            times[engine].append(seconds)
            if gpu.mean() is not None:
                utilisation[engine].append(gpu.mean())
    seconds = {e: sum(t) / len(t) for e, t in times.items()}
    reference = engines[0]

    report = {
        "model": args.model, "checkpoint": args.checkpoint, "device": args.device, "n_structures": len(items),
        "n_atoms": sum(len(i.structure) for i in items),
        "batch_atoms": potential.max_atoms_per_batch, "chunk_size": args.chunk_size,
        "fmax_ev_per_a": published.relax_fmax_ev_per_a, "relax_cycles": published.relax_cycles,
        "relax_steps_per_cycle": published.relax_steps_per_cycle, "rounds": args.rounds,
        "reference": reference, "engines": {},
    }
    for e in engines:
        agree, max_diff, differing = _compare(rows[reference], rows[e])
        per_hour = _per_hour(len(items), seconds[e])
        report["engines"][e] = {
            "s_each": [round(t, 2) for t in times[e]], "s": round(seconds[e], 2),
            "structures_per_hour": round(per_hour, 1),
            "atom_evaluations_per_s": round(_atom_evaluations(rows[e], math.prod(published.supercell)) / seconds[e], 1),
            "speedup_vs_reference": round(seconds[reference] / seconds[e], 3),
            "hours_for_110k": round(110_000 / per_hour, 2),
            "gpu_utilisation_percent": (round(sum(utilisation[e]) / len(utilisation[e]), 1)
                                        if utilisation[e] else None),
            "verdicts_agree": agree, "max_min_frequency_diff_thz": max_diff, "differing": differing,
            "stages": _stage_seconds(rows[e]),
            "statuses": {s: sum(r.status == s for r in rows[e]) for s in map(str, Status)
                         if any(r.status == s for r in rows[e])},
        }
    # the earlier report's keys, for RESULTS.md's older tables
    if "serial" in rows and "batched" in rows:
        report.update({"serial_s": round(seconds["serial"], 2), "engine_s": round(seconds["batched"], 2),
                       "ratio": round(seconds["serial"] / seconds["batched"], 3)})
    engine = rows.get("batched", rows[engines[-1]])
    serial_s = seconds[reference]
    if args.device.startswith("cuda"):
        import torch

        report["gpu"] = torch.cuda.get_device_name()
        report["gpu_peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    if not args.skip_tiered:
        tiered_worker = worker("batched", tiered)
        screened, tiered_s = timed(lambda: [r for c in chunks for r in tiered_worker(c)])
        tiered_agree, _, tiered_differing = _compare(engine, screened)
        fired = sum(r.phonon_method == "gamma_screen" for r in screened)
        report.update({
            "tiered_s": round(tiered_s, 2),
            "tiered_structures_per_hour": round(_per_hour(len(items), tiered_s), 1),
            "tiered_ratio_vs_serial": round(serial_s / tiered_s, 3) if tiered_s else math.nan,
            "tiered_screen_fired": fired,
            "tiered_screen_fired_fraction": round(fired / max(1, sum(r.status == Status.OK for r in screened)), 3),
            "tiered_verdicts_agree": tiered_agree, "tiered_differing": tiered_differing,
            "tiered_stages": _stage_seconds(screened),
        })

    for e, figures in report["engines"].items():
        print(f"{e:9s} {figures['s']:8.1f} s  {figures['structures_per_hour']:10.1f} structures/h  "
              f"{figures['atom_evaluations_per_s']:10.1f} atom-evaluations/s  x{figures['speedup_vs_reference']:.2f}  "
              f"verdicts agree: {figures['verdicts_agree']} (max diff {figures['max_min_frequency_diff_thz']:.4f} THz)"
              + (f"  GPU {figures['gpu_utilisation_percent']}%" if figures["gpu_utilisation_percent"] is not None else ""))
    for key in ("tiered_screen_fired", "tiered_verdicts_agree"):
        if key in report:
            print(f"{key:32s} {report[key]}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
