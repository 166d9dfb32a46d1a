"""What a supercell rule costs in atoms on generated crystals: for each structure of a CIF zip, the atoms of
the smallest supercell at least L wide (``--supercell L``), of the zone-boundary one (``--supercell Lzb``:
twice the smallest at least L/2 wide) and of the zone-boundary one that keeps the crystal's rotations
(``Lzb-sym``: its lattice mapped onto itself by every rotation of the point group, as spglib finds it with
phonopy's tolerance), side by side, with how many are above 1000 and 2000 atoms (the accurate preset's cap),
how many of the plain rules' supercells lose a rotation, and how many structures get another supercell lattice
when their cell is written in another basis (one random unimodular change each; the atoms stay where they are).

    OMP_NUM_THREADS=1 python benchmarks/supercell_sizes.py benchmarks/data/generated_crystals/mattergen/cifs.zip \
        [--length 15] [--limit 300] [--caps 1000 2000]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
import zipfile

import numpy as np
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from phononbench.science.phonons import crystal_rotations, supercell_matrix
from phononbench.science.supercells import keeps_rotations, same_lattice, supercell_size


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cifs", help="a zip of CIF files")
    parser.add_argument("--length", type=float, default=15.0)
    parser.add_argument("--limit", type=int, default=300, help="the first N CIF files in the zip")
    parser.add_argument("--caps", type=int, nargs="+", default=[1000, 2000], help="count the supercells above these")
    args = parser.parse_args(argv)
    # (zone boundary, keep rotations) of each rule, chosen as the pipeline chooses them (the -sym rule's time
    # includes finding the crystal's rotations)
    rules = {f"{args.length:g}": (False, False), f"{args.length:g}zb": (True, False), f"{args.length:g}zb-sym": (True, True)}
    atoms = {name: [] for name in rules}
    losing = {name: 0 for name in rules}
    rebased = {name: 0 for name in rules}
    seconds = {name: 0.0 for name in rules}
    random = np.random.default_rng(0)
    with zipfile.ZipFile(args.cifs) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".cif"))[: args.limit]
        for name in names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pymatgen's CIF rounding notes
                structure = Structure.from_str(archive.read(name).decode(), fmt="cif")
            unit = AseAtomsAdaptor.get_atoms(structure)
            rotations = crystal_rotations(unit)
            other = _in_another_basis(unit, random)
            for rule, (zone_boundary, keep_rotations) in rules.items():
                start = time.perf_counter()
                matrix = supercell_matrix(unit, None, args.length, None, zone_boundary, keep_rotations)
                seconds[rule] += time.perf_counter() - start
                atoms[rule].append(supercell_size(matrix) * len(structure))
                losing[rule] += int(not keeps_rotations(matrix, rotations)[0])
                again = supercell_matrix(other, None, args.length, None, zone_boundary, keep_rotations)
                rebased[rule] += int(not same_lattice(matrix.T @ unit.cell[:], again.T @ other.cell[:]))
    figures = {"structures": len(names), "length_a": args.length}
    for rule, sizes in atoms.items():
        sizes = np.asarray(sizes)
        figures[rule] = {"mean_atoms": round(float(sizes.mean()), 1), "median_atoms": float(np.median(sizes)),
                         "p95_atoms": float(np.percentile(sizes, 95)), "max_atoms": int(sizes.max()),
                         **{f"above_{cap}": int((sizes > cap).sum()) for cap in args.caps},
                         "losing_a_rotation": losing[rule], "another_lattice_in_another_basis": rebased[rule],
                         "search_s": round(seconds[rule], 1)}
        above = ", ".join(f"above {cap}: {(sizes > cap).sum()}" for cap in args.caps)
        print(f"--supercell {rule:6s} mean {sizes.mean():6.0f}  median {np.median(sizes):5.0f}  "
              f"95th percentile {np.percentile(sizes, 95):5.0f}  max {sizes.max():5d}  {above} (of {len(sizes)})  "
              f"losing a rotation: {losing[rule]}  another lattice in another basis: {rebased[rule]}  "
              f"({seconds[rule]:.0f} s to choose them)")
    plain, zone, symmetric = (np.asarray(a, dtype=float) for a in atoms.values())
    figures["zb_over_plain_mean_atoms"] = round(float(zone.mean() / plain.mean()), 2)
    figures["zb_sym_over_zb_mean_atoms"] = round(float(symmetric.mean() / zone.mean()), 2)
    print(json.dumps(figures))
    return 0


def _in_another_basis(unit, random):
    """The same crystal with its cell written in another basis: three random shears (a unimodular change)."""
    change = np.eye(3, dtype=int)
    for i, j in random.permutation([(i, j) for i in range(3) for j in range(3) if i != j])[:3]:
        change[i] += random.choice([-1, 1]) * change[j]
    other = unit.copy()
    other.set_cell(change @ unit.cell[:], scale_atoms=False)
    other.wrap()
    return other


if __name__ == "__main__":
    raise SystemExit(main())
