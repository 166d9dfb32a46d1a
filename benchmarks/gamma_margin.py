"""How far the tiered preset's Gamma screen can be from the supercell it stands in for: for every structure a
finished run computed, the optical frequencies at Gamma from the relaxed unit cell's own displacements (the
screen) and from the run's supercell, with the run's potential. The largest difference among modes near the
thresholds is the margin the screen needs so that it never flips a verdict.

    python benchmarks/gamma_margin.py runs/demo [runs/validate-chgnet ...] [--near 3.0]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from phononbench.compute.method import phonon_settings
from phononbench.science.phonons import force_constants_one, gamma_frequencies
from phononbench.compute.potentials import load_potential
from phononbench.records import Col, Status
from phononbench.running.run_folder import read_run_info, read_structures
from phononbench.settings import ProtocolSettings


def gamma_optical_thz(atoms, matrix, potential, protocol: ProtocolSettings) -> np.ndarray:
    """Gamma frequencies without the three acoustic modes (the three closest to zero)."""
    phonon = force_constants_one(atoms, potential.forces, matrix, **phonon_settings(protocol))
    frequencies = np.sort(gamma_frequencies(phonon).frequencies_thz[0])
    acoustic = np.argsort(np.abs(frequencies))[:3]
    return np.delete(frequencies, acoustic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--near", type=float, default=3.0, help="Only modes within this many THz of a threshold.")
    args = parser.parse_args()
    differences, worst = [], None
    for run in args.runs:
        info, rows = read_run_info(run), read_structures(run)
        protocol = ProtocolSettings.from_dict(info["protocol"])
        potential = load_potential(info["potential"]["model"], "cpu", info["potential"].get("checkpoint"))
        for _, row in rows[rows[Col.STATUS] == Status.OK].iterrows():
            atoms = AseAtomsAdaptor.get_atoms(Structure.from_str(row[Col.RELAXED_CIF], fmt="cif"))
            matrix = np.asarray(row[Col.SUPERCELL_MATRIX]).reshape(3, 3)  # every OK row records its supercell
            unit = gamma_optical_thz(atoms, np.eye(3, dtype=int), potential, protocol)
            supercell = gamma_optical_thz(atoms, matrix, potential, protocol)
            if not len(unit):
                continue
            near = np.min(np.abs(np.subtract.outer(unit, np.asarray(protocol.thresholds_thz))), axis=1) <= args.near
            if near.any():
                gap = float(np.max(np.abs(unit - supercell)[near]))
                differences.append(gap)
                if worst is None or gap > worst["difference_thz"]:
                    worst = {"run": run, "structure_id": row[Col.STRUCTURE_ID], "difference_thz": round(gap, 4),
                             "unit_cell_min_thz": round(float(unit.min()), 4),
                             "supercell_min_thz": round(float(supercell.min()), 4)}
        print(f"{run}: {len(differences)} structures so far with an optical Gamma mode within {args.near} THz "
              "of a threshold", flush=True)
    report = {"n_structures": len(differences), "max_difference_thz": max(differences, default=float("nan")),
              "p99_difference_thz": float(np.percentile(differences, 99)) if differences else float("nan"),
              "worst": worst}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
