"""Throughput of the batched engine against the published serial protocol, side by side in one process.

    python benchmarks/throughput.py --model chgnet                      # demo set, CPU
    python benchmarks/throughput.py --model mattersim --checkpoint M.pth --fmax 5 --max-steps 20
    python benchmarks/throughput.py --model mattersim-5m --device cuda --n 200 --batch-atoms 16384

Serial reference: one structure at a time, relaxation through the ASE calculator, one displaced supercell
per calculator call (what the published scripts do): the ``serial`` engine. Engine: the ``batched`` engine over
chunks of structures. Both run the one method (``method.compute``) through the product's ``Worker``.
Both see the same structures (valid, deduplicated, first ``--n``) after one warm-up call, timed in ABBA order
over ``--rounds`` rounds and averaged. The tiered preset
(Gamma screen) runs on the engine too, to measure how often the screen fires and whether it agrees.
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from phononbench.dedup import find_duplicates
from phononbench.ingest import read_inputs
from phononbench.potentials import load_potential
from phononbench.records import Status, StructureResult
from phononbench.settings import preset
from phononbench.worker import Worker, WorkerSpec

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
                        help="timed rounds, alternating which path goes first (ABBA); times are averaged")
    args = parser.parse_args()

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

    serial_worker, batched_worker = worker("serial", published), worker("batched", published)
    batched_worker(items[:1])  # warm-up: lazy imports, first graph, allocator

    def timed(run):
        start = time.perf_counter()
        out = run()
        return out, time.perf_counter() - start

    chunks = [items[k:k + args.chunk_size] for k in range(0, len(items), args.chunk_size)]
    run_serial = lambda: [r for i in items for r in serial_worker([i])]  # noqa: E731
    run_engine = lambda: [r for c in chunks for r in batched_worker(c)]  # noqa: E731
    # ABBA order (serial, engine, engine, serial, ...): on a small machine the second of two long runs in
    # one process is not timed like the first (allocator and cache state), so the order must cancel out
    times: dict[str, list[float]] = {"serial": [], "engine": []}
    for round_ in range(args.rounds):
        order = [("serial", run_serial), ("engine", run_engine)]
        for name, run in order if round_ % 2 == 0 else order[::-1]:
            rows, seconds = timed(run)
            times[name].append(seconds)
            if name == "serial":
                serial = rows
            else:
                engine = rows
    serial_s, engine_s = (sum(times[k]) / len(times[k]) for k in ("serial", "engine"))
    agree, max_diff, differing = _compare(serial, engine)

    report = {
        "model": args.model, "device": args.device, "n_structures": len(items),
        "batch_atoms": potential.max_atoms_per_batch, "chunk_size": args.chunk_size,
        "fmax_ev_per_a": published.relax_fmax_ev_per_a, "relax_cycles": published.relax_cycles,
        "relax_steps_per_cycle": published.relax_steps_per_cycle,
        "rounds": args.rounds, "serial_s_each": [round(t, 2) for t in times["serial"]],
        "engine_s_each": [round(t, 2) for t in times["engine"]],
        "serial_s": round(serial_s, 2), "engine_s": round(engine_s, 2),
        "serial_structures_per_hour": round(_per_hour(len(items), serial_s), 1),
        "engine_structures_per_hour": round(_per_hour(len(items), engine_s), 1),
        "ratio": round(serial_s / engine_s, 3) if engine_s else math.nan,
        "verdicts_agree": agree, "max_min_frequency_diff_thz": max_diff, "differing": differing,
        "serial_stages": _stage_seconds(serial), "engine_stages": _stage_seconds(engine),
        "statuses": {s: sum(r.status == s for r in engine) for s in map(str, Status) if any(r.status == s for r in engine)},
        "n_displacements": sum(r.n_displacements or 0 for r in engine),
    }
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

    for key in ("serial_structures_per_hour", "engine_structures_per_hour", "ratio", "verdicts_agree",
                "max_min_frequency_diff_thz", "tiered_screen_fired", "tiered_verdicts_agree"):
        if key in report:
            print(f"{key:32s} {report[key]}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
