"""Ingest and dedup at scale, on synthetic generated sets built from the demo and shipped structures.

    python benchmarks/scale.py --size 10000 --bucket 300 --workers 1 2
    python benchmarks/scale.py --size 30000 --bucket 600 --workers 2
    python benchmarks/scale.py --size 110000 --bucket 2000 --workers 1 2
    python benchmarks/scale.py --size 10000 --bucket 300 --baseline /tmp/oldtree   # also the code at another tree

The set (seeded) is written once under ``--root``: three generators, two as folders of CIF files and one as
a CSV table of POSCAR strings. Its structures are the demo's and the test data's real generated crystals
with their elements substituted (so formulas spread as a generator's do) and their sites perturbed; 10%
are near-copies (a tiny perturbation and an origin shift: StructureMatcher calls them duplicates) of an
earlier structure of the same generator; and one generator holds large same-formula buckets (``--bucket``
structures, then a few of a quarter of that), strained and perturbed so that most are not duplicates: the
quadratic worst case of dedup.

For each worker count: ``phononbench dedup SET --out OUT --workers W`` in a fresh process on a local Ray,
then the same command again (a resume with nothing left to do). ``--finished-run``: also ``phononbench run``
with ``--max-atoms 1`` (every structure stops at ingest, so a whole run folder of SIZE rows is written
without the physics) and its resume. Printed per run: wall time of the
command, of its read-inputs and dedup stages (run.json ``stage_s``), CPU time of the whole process tree
(the driver, Ray and its workers, sampled), and the driver's peak RSS. ``--baseline TREE`` times the
serial ingest + dedup of the code at TREE (``read_inputs`` + ``find_duplicates`` in one process) on the
same set. The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ELEMENTS = ("Li Na K Rb Cs Be Mg Ca Sr Ba Sc Y La Ti Zr Hf V Nb Ta Cr Mo W Mn Fe Co Ni Cu Ag Zn Cd Al Ga In "
            "Si Ge Sn Pb P As Sb Bi O S Se Te F Cl Br I N C B").split()


def _bases() -> list:
    """The real generated crystals shipped with the project (demo and test data), at most 20 atoms."""
    from phononbench.science.ingest import read_inputs

    inputs = [str(REPO / 'data' / 'demo'), f"zip={REPO / 'tests' / 'data' / 'mattergen_sample.zip'}",
              f"gpt={REPO / 'tests' / 'data' / 'mattergpt_sample.csv'}",
              f"slices={REPO / 'tests' / 'data' / 'slices_crnn_sample.csv'}"]
    return [i.structure for i in read_inputs(inputs, 20, 0.5) if i.valid]


def _cif(name: str, lattice: np.ndarray, species: list[str], fractional: np.ndarray) -> str:
    a, b, c = np.linalg.norm(lattice, axis=1)
    alpha = np.degrees(np.arccos(lattice[1] @ lattice[2] / (b * c)))
    beta = np.degrees(np.arccos(lattice[0] @ lattice[2] / (a * c)))
    gamma = np.degrees(np.arccos(lattice[0] @ lattice[1] / (a * b)))
    lines = [f"data_{name}", "_symmetry_space_group_name_H-M 'P 1'", f"_cell_length_a {a:.6f}",
             f"_cell_length_b {b:.6f}", f"_cell_length_c {c:.6f}", f"_cell_angle_alpha {alpha:.4f}",
             f"_cell_angle_beta {beta:.4f}", f"_cell_angle_gamma {gamma:.4f}", "loop_", "_atom_site_label",
             "_atom_site_type_symbol", "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z"]
    lines += [f"{s}{k} {s} {x:.6f} {y:.6f} {z:.6f}" for k, (s, (x, y, z)) in enumerate(zip(species, fractional))]
    return "\n".join(lines) + "\n"


def _poscar(lattice: np.ndarray, species: list[str], fractional: np.ndarray) -> str:
    order = sorted(range(len(species)), key=lambda k: species[k])
    symbols = list(dict.fromkeys(species[k] for k in order))
    lines = ["generated", "1.0", *(" ".join(f"{v:.6f}" for v in row) for row in lattice), " ".join(symbols),
             " ".join(str(species.count(s)) for s in symbols), "Direct"]
    lines += [" ".join(f"{v:.6f}" for v in fractional[k]) for k in order]
    return "\n".join(lines) + "\n"


def _perturbed(rng, base, substitution: dict, amplitude: float, strain: float):
    lattice = base.lattice.matrix @ (np.eye(3) + strain * rng.uniform(-1, 1, (3, 3)))
    cartesian = base.frac_coords @ lattice + amplitude * rng.normal(size=(len(base), 3))
    fractional = (cartesian @ np.linalg.inv(lattice)) % 1.0
    return lattice, [substitution[str(site.specie)] for site in base], fractional


def make_structures(size: int, bucket: int, seed: int):
    """The set's structures, (lattice, species, fractional) per generator in input order, and the big buckets' sizes."""
    rng = np.random.default_rng(seed)
    bases = _bases()
    generators = {"gen_folder_a": [], "gen_folder_b": [], "gen_table": []}
    big_buckets = [bucket] + [bucket // 4] * 3
    n_big = sum(big_buckets)
    made = {g: [] for g in generators}

    def substitution_for(base):
        elements = sorted({str(s) for s in base.species})
        return dict(zip(elements, rng.choice(ELEMENTS, size=len(elements), replace=False)))

    for b, count in enumerate(big_buckets):  # large same-formula buckets, all in the first generator
        base = bases[b % len(bases)]
        substitution = substitution_for(base)
        for _ in range(count):
            made["gen_folder_a"].append(_perturbed(rng, base, substitution, rng.uniform(0.25, 0.6),
                                                   rng.uniform(0.0, 0.08)))
    names = list(generators)
    for k in range(size - n_big):
        generator = names[k % 3]
        if made[generator] and rng.random() < 0.10:  # a near-copy of an earlier structure of this generator
            lattice, species, fractional = made[generator][rng.integers(len(made[generator]))]
            shift = rng.uniform(0, 1, 3)
            fractional = (fractional + shift + rng.normal(scale=0.001, size=fractional.shape)) % 1.0
            made[generator].append((lattice, species, fractional))
        else:
            base = bases[rng.integers(len(bases))]
            made[generator].append(_perturbed(rng, base, substitution_for(base), 0.03, 0.01))
    for generator, structures in made.items():
        order = rng.permutation(len(structures))  # big buckets and copies spread through the generator
        made[generator] = [structures[k] for k in order]
    return made, big_buckets


def build_set(root: Path, size: int, bucket: int, seed: int) -> dict:
    """Write the synthetic set under root (unless it is there already); returns its description."""
    marker = root.with_name(root.name + ".json")  # beside the set: inside it, it would be read as an input
    if marker.exists():
        return json.loads(marker.read_text())
    shutil.rmtree(root, ignore_errors=True)
    made, big_buckets = make_structures(size, bucket, seed)
    for generator, structures in made.items():
        if generator == "gen_table":
            import pandas as pd

            (root / generator).mkdir(parents=True)
            pd.DataFrame({"poscar": [_poscar(*s) for s in structures]}).to_csv(root / generator / "generated.csv",
                                                                               index=False)
        else:
            for k, s in enumerate(structures):
                folder = root / generator / f"batch_{k // 5000:03d}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"s{k:06d}.cif").write_text(_cif(f"s{k}", *s))
    description = {"size": size, "largest_bucket": bucket, "big_buckets": big_buckets, "seed": seed,
                   "per_generator": {g: len(s) for g, s in made.items()}}
    marker.write_text(json.dumps(description))
    return description


def _tree_cpu_s(pid: int, stop: threading.Event, totals: dict) -> None:
    """Sample the CPU time of a process and all its descendants until stop; a process's last sample counts."""
    import psutil

    root = psutil.Process(pid)
    while not stop.is_set():
        try:
            for process in [root, *root.children(recursive=True)]:
                try:
                    times = process.cpu_times()
                    totals[process.pid] = times.user + times.system
                except psutil.Error:
                    pass
        except psutil.Error:
            break
        time.sleep(0.5)


def timed(command: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    stop, totals = threading.Event(), {}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = threading.Thread(target=_tree_cpu_s, args=(process.pid, stop, totals), daemon=True)
    sampler.start()
    out, err = process.communicate()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{err[-3000:]}")
    return wall, sum(totals.values()), subprocess.CompletedProcess(command, 0, out, err)


def _largest_bucket(out: Path) -> dict:
    """The largest (generator, formula) bucket of a dedup: its size and how many structures it kept."""
    import pandas as pd

    frame = pd.read_parquet(out / "dedup.parquet")
    sizes = frame.groupby(["generator", "formula"]).size()
    key = sizes.idxmax()
    members = frame.set_index(["generator", "formula"]).loc[key]
    return {"formula": key[1], "size": int(sizes.max()), "kept": int(members["duplicate_of"].isna().sum())}


BASELINE = """
import resource, sys, time, json
from phononbench.science.ingest import read_inputs
from phononbench.science.dedup import find_duplicates
start = time.perf_counter()
items = read_inputs([sys.argv[1]], 64, 0.5)
read = time.perf_counter()
duplicates = find_duplicates(items)
done = time.perf_counter()
print(json.dumps({"read_inputs_s": read - start, "dedup_s": done - read, "n": len(items),
                  "n_duplicates": len(duplicates),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--bucket", type=int, default=300, help="the largest same-formula bucket")
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None, help="where the set and outputs go")
    parser.add_argument("--baseline", type=Path, default=None, help="also time the code at this tree, serially")
    parser.add_argument("--keep", action="store_true", help="keep the output folders")
    parser.add_argument("--finished-run", action="store_true",
                        help="also a whole run that stops every structure at ingest, and its resume")
    args = parser.parse_args()
    root = args.root or Path(f"/tmp/phononbench-scale-{args.size}-{args.bucket}-{args.seed}")
    start = time.perf_counter()
    description = build_set(root / "set", args.size, args.bucket, args.seed)
    print(f"set: {description} ({time.perf_counter() - start:.0f} s to build or find)", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    figures = {"set": description, "cores": os.cpu_count(), "runs": []}
    for workers in args.workers:
        out = root / f"out-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "phononbench.cli", "dedup", str(root / "set"), "--out", str(out),
                   "--workers", str(workers)]
        for attempt in ("fresh", "resume"):
            wall, cpu, _ = timed(command, env)
            info = json.loads((out / "run.json").read_text())
            pooled = next(r for r in info["dedup"] if r["pooled"])
            row = {"workers": workers, "attempt": attempt, "wall_s": round(wall, 1), "tree_cpu_s": round(cpu, 1),
                   **{f"{k}_s": round(v, 1) for k, v in info["stage_s"].items()},
                   "driver_cpu_s": info.get("driver_cpu_s"), "driver_peak_rss_mb": info["driver_peak_rss_mb"],
                   "n_input": info["n_input"], "n_unique": pooled["n_unique"], "n_duplicates": pooled["n_valid"] - pooled["n_unique"],
                   "n_part_files": len(list((out / "structures").glob("*.parquet")))}
            if attempt == "fresh":
                row["largest_bucket"] = _largest_bucket(out)
            figures["runs"].append(row)
            print(json.dumps(row), flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    if args.finished_run:
        # a whole run whose every structure stops at ingest (--max-atoms 1: all invalid_input), then its
        # resume: the resume path of a finished run (inputs, dedup, rows, summary) without the physics
        out = root / "out-run"
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "phononbench.cli", "run", str(root / "set"), "--out", str(out),
                   "--model", "emt", "--max-atoms", "1", "--workers", str(max(args.workers))]
        for attempt in ("fresh", "resume"):
            wall, cpu, _ = timed(command, env)
            info = json.loads((out / "run.json").read_text())
            row = {"finished_run": attempt, "wall_s": round(wall, 1), "tree_cpu_s": round(cpu, 1),
                   **{f"{k}_s": round(v, 1) for k, v in info["stage_s"].items()},
                   "driver_peak_rss_mb": info["driver_peak_rss_mb"], "n_input": info["n_input"],
                   "n_computed_this_time": info["n_computed_this_time"],
                   "n_part_files": len(list((out / "structures").glob("*.parquet")))}
            figures["runs"].append(row)
            print(json.dumps(row), flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    if args.baseline:
        wall, cpu, done = timed([sys.executable, "-c", BASELINE, str(root / "set")],
                                {**env, "PYTHONPATH": str(args.baseline)})
        baseline = json.loads(done.stdout.strip().splitlines()[-1])
        figures["baseline"] = {"tree": str(args.baseline), "wall_s": round(wall, 1), "tree_cpu_s": round(cpu, 1),
                               **{k: round(v, 1) if isinstance(v, float) else v for k, v in baseline.items()}}
        print(json.dumps(figures["baseline"]), flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
