"""The post-processing cuts of issue 20 on real force constants: old and new way side by side on phonondb_dev.

    python benchmarks/cuts_parity.py ../shared/data/phonondb_dev/poscar_unitcell --model chgnet

Each material's DFT unit cell, its 2x2x2 supercell, 0.01 A displacements, forces from the potential (no
relaxation: near-equilibrium cells give realistic force constants, soft modes where the potential disagrees
with DFT); then the published path through phonopy's band structure (the way before the cut) against one
batched solve on the same q-points, and every q-point of the 20 A mesh against its irreducible ones
(benchmarks/method_overhead.cuts_side_by_side). Printed: CPU s per structure each way, the largest
difference in a lowest frequency, and how many verdicts differ at -0.1 and -0.001 THz. Last line JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ase.io import read
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_overhead import cuts_side_by_side  # noqa: E402

from phononbench.compute.potentials import load_potential  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("structures", type=Path, help="folder of POSCAR unit cells")
    parser.add_argument("--model", default="chgnet")
    parser.add_argument("--n", type=int, default=None, help="the first N files only")
    args = parser.parse_args()
    files = sorted(p for p in args.structures.iterdir() if p.is_file())[:args.n]
    cells = [read(p, format="vasp") for p in files]
    potential = load_potential(args.model)
    started = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        cuts = cuts_side_by_side(cells, potential.forces)
    print(f"{cuts['n']} materials from {args.structures}, forces from {args.model} ({time.perf_counter() - started:.0f} s)")
    for name, seconds in cuts["cpu_s_per_structure"].items():
        print(f"  {seconds:7.4f} CPU s per structure  {name}")
    print(f"largest difference in a lowest frequency: {cuts['largest_lowest_frequency_difference_thz']} THz")
    print(f"verdicts that differ: {cuts['verdicts_that_differ']}")
    print(json.dumps({"model": args.model, **cuts}))


if __name__ == "__main__":
    main()
