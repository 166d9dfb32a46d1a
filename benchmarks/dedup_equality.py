"""Our dedup against plain StructureMatcher on one real same-formula bucket, side by side in one run.

    python benchmarks/dedup_equality.py --n 300 --workers 2

The bucket: ``--n`` perturbed and strained copies of one real generated crystal (by default MatterGen's
SbAu from the demo set, in its 8-atom symmetrized cell), seeded; small perturbations stay within the
matcher's tolerances, large ones do not. Compared, each as the index of every structure's group
representative: pymatgen's ``StructureMatcher().group_structures``; the plain greedy loop the package used
before (``fit`` on the raw structures, reducing both in every call); ours in one process; ours on a local
Ray with the bucket forced onto the large-bucket (blocked) path. Prints times and whether all four agree;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure
from pymatgen.core.structure_matcher import StructureMatcher

from phononbench.science import dedup
from phononbench.science.ingest import InputStructure, read_inputs

REPO = Path(__file__).resolve().parents[1]


def bucket(n: int, seed: int, source: str) -> list[InputStructure]:
    base = next(i for i in read_inputs([str(REPO / "data" / "demo")], 40, 0.5) if i.structure_id == source).structure
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        amplitude, strain = rng.choice([0.0, 0.02, 0.3, 0.6, 1.0]), rng.choice([0.0, 0.02, 0.08])
        lattice = base.lattice.matrix @ (np.eye(3) + strain * rng.uniform(-1, 1, (3, 3)))
        fractional = (base.cart_coords + amplitude * rng.normal(size=(len(base), 3))) @ np.linalg.inv(base.lattice.matrix)
        structure = Structure(Lattice(lattice), base.species, fractional)
        out.append(InputStructure(f"b/{k}", "b", str(k), structure, formula=structure.composition.reduced_formula))
    return out


def owners_from_groups(structures, groups) -> list[int]:
    position = {id(s): k for k, s in enumerate(structures)}
    owner = list(range(len(structures)))
    for group in groups:
        for member in group:
            owner[position[id(member)]] = position[id(group[0])]
    return owner


def plain_greedy(structures) -> list[int]:
    """The loop before this change: fit on raw structures (both reduced in every call)."""
    matcher, kept, owner = StructureMatcher(), [], []
    for j, s in enumerate(structures):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            match = next((i for i in kept if matcher.fit(structures[i], s)), None)
        if match is None:
            kept.append(j)
        owner.append(j if match is None else match)
    return owner


def owners_from_duplicates(items, duplicate_of) -> list[int]:
    index = {i.structure_id: k for k, i in enumerate(items)}
    return [index[duplicate_of[i.structure_id]] if i.structure_id in duplicate_of else k for k, i in enumerate(items)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--source", default="mattergen/mattergen_base/SbAu_symmetrized.cif")
    args = parser.parse_args()
    items = bucket(args.n, args.seed, args.source)
    structures = [i.structure for i in items]
    results, times = {}, {}

    def timed(name, run):
        start = time.perf_counter()
        results[name] = run()
        times[name] = round(time.perf_counter() - start, 1)
        print(f"{name}: {len(set(results[name]))} groups of {args.n}, {times[name]} s", flush=True)

    timed("pymatgen_group_structures", lambda: owners_from_groups(
        structures, StructureMatcher().group_structures(structures)))
    timed("plain_fit_greedy", lambda: plain_greedy(structures))
    timed("ours_one_process", lambda: owners_from_duplicates(items, dedup.find_duplicates(items)))

    import ray

    from phononbench.running.executors import RayExecutor

    dedup.LARGE_BUCKET = 10  # the blocked path, spread over the workers
    executor = RayExecutor(workers=args.workers)
    dedup.find_duplicates([i.packed() for i in items[:40]], executor)  # start Ray and its workers before timing
    timed("ours_blocked_on_ray", lambda: owners_from_duplicates(
        items, dedup.find_duplicates([i.packed() for i in items], executor)))
    ray.shutdown()
    reference = results["pymatgen_group_structures"]
    agree = all(r == reference for r in results.values())
    print(f"all agree: {agree}")
    print(json.dumps({"n": args.n, "source": args.source, "groups": len(set(reference)),
                      "reduced_sizes": sorted({len(r) for r in dedup.reduce(items) if r is not None}),
                      "agree": agree, "seconds": times}))


if __name__ == "__main__":
    main()
