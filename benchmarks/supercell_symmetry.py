"""Does a run's supercell keep the crystal's symmetry? A supercell lattice that some rotation of the crystal's point
group does not map onto itself gives force constants with only the rotations it keeps (phonopy finds the
supercell's own space group), and interpolated frequencies at q-points the crystal makes equivalent then differ.
docs/VALIDATION.md, "Supercells and the crystal's symmetry".

For each computed structure of the runs (the relaxed cell from its CIF, the supercell matrix recorded): the
rotations of the crystal's point group and how many of them map the supercell lattice onto itself. With
``--frequencies ID ...`` (and ``--model``, the run's), the force constants of those materials are recomputed on
the recorded supercell (residual forces subtracted, as ``accurate``) and the largest difference between the
frequencies at random q-points and at their images under the crystal's rotations is measured (THz).

    OMP_NUM_THREADS=1 python benchmarks/supercell_symmetry.py RUN [RUN ...] [--model chgnet --frequencies mp-2605]

One line per structure, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def largest_difference_at_equivalent_q(phonon, n_q: int = 20, seed: int = 0) -> float:
    """Max |frequency(q R) - frequency(q)| (THz) over random q-points and the crystal's rotations."""
    from phononbench.science.phonons import frequencies_at

    q = np.random.default_rng(seed).random((n_q, 3)) - 0.5
    base = frequencies_at(phonon, q).frequencies_thz
    return float(max(np.abs(frequencies_at(phonon, q @ rotation).frequencies_thz - base).max()
                     for rotation in phonon.primitive_symmetry.pointgroup_operations))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--model", help="the run's potential (for --frequencies)")
    parser.add_argument("--frequencies", nargs="+", default=[], help="materials whose frequencies are compared")
    args = parser.parse_args()
    if args.frequencies and not args.model:
        raise SystemExit("--frequencies needs --model (the run's potential)")

    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    from phononbench.science.phonons import crystal_rotations, force_constants_one
    from phononbench.science.supercells import keeps_rotations

    from phononbench.reading.validation import rows_by_material
    from phononbench.records import Status

    rows = rows_by_material(args.runs, lambda rows: (rows.status == Status.OK) & rows.supercell_matrix.notna())
    potential = None
    if args.frequencies:
        from phononbench.compute.potentials import load_potential

        potential = load_potential(args.model)
    out = []
    for _, row in rows.iterrows():
        atoms = AseAtomsAdaptor.get_atoms(Structure.from_str(row.relaxed_cif, fmt="cif"))
        matrix = np.array(row.supercell_matrix, dtype=float).reshape(3, 3)
        rotations = crystal_rotations(atoms)
        kept = sum(bool(keeps_rotations(matrix, [rotation])[0]) for rotation in rotations)
        line = {"material": row.material, "formula": row.formula, "n_supercell_atoms": int(row.n_supercell_atoms),
                "rotations": len(rotations), "kept": kept}
        if row.material in args.frequencies:
            phonon = force_constants_one(atoms, potential.forces, matrix, subtract_residual=True)
            line["largest_difference_thz"] = largest_difference_at_equivalent_q(phonon)
        out.append(line)
        extra = f"  equivalent q-points differ by up to {line['largest_difference_thz']:.3f} THz" \
            if "largest_difference_thz" in line else ""
        print(f"{line['material']:>11} {line['formula']:<12} {line['n_supercell_atoms']:5d} atoms  keeps "
              f"{line['kept']:2d} of {line['rotations']:2d} rotations{extra}", flush=True)
    broken = [o for o in out if o["kept"] < o["rotations"]]
    print(json.dumps({"n_structures": len(out), "n_supercells_losing_rotations": len(broken),
                      "materials": out}))


if __name__ == "__main__":
    from phononbench.errors import SetupError

    try:
        main()
    except SetupError as exc:  # a run that cannot be read: one line, not a traceback
        sys.exit(str(exc))
