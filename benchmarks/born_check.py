"""The Born check, measured and not adopted: where setting acoustic dips aside changes a verdict, is the crystal
elastically stable (its relaxed-ion elastic tensor positive definite)? docs/VALIDATION.md, "The Born check".

Acoustic modes next to Gamma, at wavelengths longer than the supercell, are what a supercell cannot measure;
their long-wave limit is the elastic tensor. The relaxed-ion tensor is the clamped-ion one (stress under strain,
atoms at fixed fractional positions) less what the atoms' relaxation gives back, from the internal-strain
forces and the Gamma force constants (the energy minimised over the atoms at second order in the strain):

    V C_relaxed = V C_clamped - Lambda^T Phi_Gamma^+ Lambda,   Lambda = dF/d(strain)

Twelve single points of the unit cell, and Gamma force constants: here from a phonopy calculation on
``--gamma-supercell`` (default the unit cell itself, 1x1x1; any supercell gives the same ones in exact
arithmetic). What it measured: where a soft optical mode couples to strain, the tensor is a small difference of
large numbers, and the Gamma force constants of different supercells (all from the same potential) move its
lowest eigenvalue across zero; so the `accurate` preset does not use it.

For each computed structure of the runs (the relaxed cell read back from its CIF), with ``--model`` (give
the run's); ``--all`` checks every structure, not only those whose verdict the dips change at some threshold.

    OMP_NUM_THREADS=1 python benchmarks/born_check.py RUN [RUN ...] --model chgnet --labels labels.csv --csv born.csv

Prints one line per structure (whole-zone and beyond-dips minima, the lowest eigenvalue in GPa, the DFT label),
then one JSON line: per threshold, how many dips-set-aside verdicts a Born check would turn back, by DFT label.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from ase import Atoms
from ase.units import GPa

STRAIN = 0.005  # each strain component, +-; small enough for the harmonic limit, large against stress noise
# Voigt order, as ASE's stress: xx, yy, zz, yz, xz, xy; shears as engineering strains (gamma = 2 epsilon)
_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


@dataclass(frozen=True)
class ElasticCheck:
    elastic_tensor_gpa: np.ndarray  # 6x6, Voigt, relaxed-ion
    min_eigenvalue_gpa: float  # of the tensor in Mandel's notation (the same in any axes); Born-stable when > 0


def strain_tensor(voigt_index: int, amount: float) -> np.ndarray:
    """The symmetric strain with one Voigt component set to ``amount`` (shears as engineering strain)."""
    i, j = _VOIGT[voigt_index]
    strain = np.zeros((3, 3))
    strain[i, j] += amount if i == j else amount / 2
    if i != j:
        strain[j, i] += amount / 2
    return strain


def strained_cells(atoms: Atoms, amount: float = STRAIN) -> list[Atoms]:
    """Twelve copies of the cell, each under +-``amount`` of one Voigt strain, atoms at fixed fractional
    positions (clamped ions): +xx, -xx, +yy, -yy, ... in Voigt order."""
    cells = []
    for index in range(6):
        for sign in (1, -1):
            deformation = np.eye(3) + strain_tensor(index, sign * amount)
            strained = Atoms(atoms.get_chemical_symbols(), cell=atoms.cell.array @ deformation.T,
                             scaled_positions=atoms.get_scaled_positions(wrap=False), pbc=True)
            cells.append(strained)
    return cells


def gamma_force_constants(phonon) -> np.ndarray:
    """Phonopy's force constants summed over periodic images at Gamma (3n x 3n, eV/A^2), from its dynamical
    matrix at q = 0 (the primitive cell's atoms, the order of ``phonon.primitive``)."""
    phonon.dynamical_matrix.run([0.0, 0.0, 0.0])
    dynamical = np.real(phonon.dynamical_matrix.dynamical_matrix)
    root_masses = np.repeat(np.sqrt(phonon.primitive.masses), 3)
    return dynamical * np.outer(root_masses, root_masses)


def relaxed_ion_elastic_tensor(atoms: Atoms, stresses: list[np.ndarray], forces: list[np.ndarray],
                               gamma_constants: np.ndarray, amount: float = STRAIN) -> ElasticCheck:
    """The relaxed-ion elastic tensor from the ``strained_cells`` predictions (ASE Voigt stress, eV/A^3;
    forces, eV/A) and the Gamma force constants (eV/A^2), by central differences."""
    stresses = np.asarray(stresses, dtype=float).reshape(6, 2, 6)
    forces = np.asarray(forces, dtype=float).reshape(6, 2, -1)
    if not (np.all(np.isfinite(stresses)) and np.all(np.isfinite(forces))):
        raise ValueError("potential returned NaN/inf stress or forces on a strained cell")
    clamped = ((stresses[:, 0] - stresses[:, 1]) / (2 * amount)).T  # C[i, j] = d stress_i / d strain_j
    internal = ((forces[:, 0] - forces[:, 1]) / (2 * amount)).T  # Lambda, 3n x 6
    n = len(atoms)
    # the crystal's rigid translations cost nothing and carry no force: leave them out of the inverse
    translations = np.kron(np.ones((n, 1)), np.eye(3)) / np.sqrt(n)
    keep = np.eye(3 * n) - translations @ translations.T
    constants = keep @ (0.5 * (gamma_constants + gamma_constants.T)) @ keep
    eigenvalues, modes = np.linalg.eigh(constants)
    # optical modes soft at Gamma would be an instability of their own (a commensurate point, never set aside)
    stiff = eigenvalues > 1e-6 * max(float(np.abs(eigenvalues).max()), 1e-12)
    projected = modes[:, stiff].T @ internal
    relaxation = projected.T @ (projected / eigenvalues[stiff, None])
    tensor = clamped - relaxation / atoms.get_volume()
    tensor = 0.5 * (tensor + tensor.T) / GPa
    # positive definite in any notation; the eigenvalues themselves depend on the axes unless the shears carry
    # sqrt(2) (Mandel's notation: for a cubic crystal C11 + 2 C12, C11 - C12 and 2 C44)
    mandel = np.sqrt([1, 1, 1, 2, 2, 2])
    return ElasticCheck(tensor, float(np.linalg.eigvalsh(tensor * np.outer(mandel, mandel)).min()))


def rows_of(runs: list[str]) -> pd.DataFrame:
    """The runs' relaxed structures, one per material, with the whole-zone columns validate reads."""
    from phononbench.reading.validation import rows_by_material, with_whole_zone
    from phononbench.records import Col, Status

    return with_whole_zone(rows_by_material(runs, lambda rows: rows[Col.STATUS] == Status.OK).copy())


def check(atoms: Atoms, potential, gamma_supercell: str = "1x1x1") -> ElasticCheck:
    """The Born check of a relaxed cell: Gamma force constants from its displacements on ``gamma_supercell``
    (NxNxN or a length, e.g. 12zb, as ``--supercell`` reads it; residual forces subtracted, as ``accurate``)."""
    from phononbench.science.phonons import force_constants_one, supercell_matrix
    from phononbench.settings import PUBLISHED

    spec = PUBLISHED.with_supercell(gamma_supercell)
    matrix = supercell_matrix(atoms, spec.supercell, spec.supercell_min_length_a, None, spec.supercell_zone_boundary,
                              spec.supercell_keeps_rotations)
    phonon = force_constants_one(atoms, potential.forces, matrix, subtract_residual=True)
    predictions = potential.predict(strained_cells(atoms), stress=True)
    return relaxed_ion_elastic_tensor(atoms, [p.stress for p in predictions], [p.forces for p in predictions],
                                      gamma_force_constants(phonon))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--model", required=True)
    parser.add_argument("--labels", help="phonondb_dev's labels.csv: the DFT label beside each line")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[-0.1, -0.001])
    parser.add_argument("--gamma-supercell", nargs="+", default=["1x1x1"],
                        help="the supercells whose Gamma force constants are used, each in turn (e.g. 1x1x1 2x2x2 12zb)")
    parser.add_argument("--ids", nargs="+", help="only these materials")
    parser.add_argument("--all", action="store_true", help="every computed structure, not only the flips")
    parser.add_argument("--csv")
    args = parser.parse_args()

    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    from phononbench.compute.potentials import load_potential
    from phononbench.reading.validation import load_labels
    from phononbench.records import Col

    rows = rows_of(args.runs)
    whole = rows[Col.MIN_FREQUENCY_BZ_WITH_ACOUSTIC_DIPS_THZ].astype(float)
    beyond = rows[Col.MIN_FREQUENCY_BEYOND_ACOUSTIC_DIPS_THZ].astype(float)
    flips = pd.Series(False, index=rows.index)
    for t in args.thresholds:
        flips |= (whole < t) & (beyond >= t)
    rows = rows.assign(flips=flips)
    if args.ids:
        rows = rows[rows.material.isin(args.ids)]
    elif not args.all:
        rows = rows[rows.flips]
    labels = {}
    if args.labels:
        table = load_labels(args.labels)
        labels = dict(zip(table.label_id, table.label))
    potential = load_potential(args.model)
    out = []
    for _, row in rows.iterrows():
        atoms = AseAtomsAdaptor.get_atoms(Structure.from_str(row[Col.RELAXED_CIF], fmt="cif"))
        line = {"material": row.material, "formula": row[Col.FORMULA], "label": labels.get(row.material),
                "whole_zone_thz": row[Col.MIN_FREQUENCY_BZ_WITH_ACOUSTIC_DIPS_THZ],
                "beyond_dips_thz": row[Col.MIN_FREQUENCY_BEYOND_ACOUSTIC_DIPS_THZ], "flips": bool(row.flips)}
        start = time.perf_counter()
        for spec in args.gamma_supercell:
            try:
                line[f"born_gpa_{spec}"] = check(atoms, potential, spec).min_eigenvalue_gpa
            except Exception as exc:  # one structure's failure is a line of the table
                line[f"born_gpa_{spec}"], line["error"] = float("nan"), str(exc).splitlines()[0]
        line["seconds"] = time.perf_counter() - start
        out.append(line)
        born = " ".join(f"{line[f'born_gpa_{spec}']:8.2f}" for spec in args.gamma_supercell)
        print(f"{line['material']:>12} {line['formula']:<12} {str(line['label']):<9} whole {line['whole_zone_thz']:+7.2f} "
              f"beyond {line['beyond_dips_thz']:+7.2f} flips {line['flips']!s:<5} born (GPa) {born}"
              + (f"  ({line['error']})" if line.get("error") else ""), flush=True)
    table = pd.DataFrame(out)
    if args.csv and len(table):
        table.to_csv(args.csv, index=False)
    summary = {}
    for t in args.thresholds:
        flipped = table[(table.whole_zone_thz < t) & (table.beyond_dips_thz >= t)] if len(table) else table
        summary[str(t)] = {"flips_by_label": flipped.label.value_counts().to_dict() if len(flipped) else {}}
        for spec in args.gamma_supercell:
            back = flipped[flipped[f"born_gpa_{spec}"] < 0] if len(flipped) else flipped
            summary[str(t)][f"born_unstable_by_label_{spec}"] = back.label.value_counts().to_dict() if len(back) else {}
    print(json.dumps({"model": args.model, "n_checked": len(table), "gamma_supercells": args.gamma_supercell,
                      "thresholds": summary}))


if __name__ == "__main__":
    from phononbench.errors import SetupError

    try:
        main()
    except SetupError as exc:  # a run that cannot be read: one line, not a traceback
        sys.exit(str(exc))
