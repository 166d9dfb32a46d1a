"""How a finished run's large supercells' force constants behave under three treatments, on the structures
it computed: as produced (symmetrized), phonopy's symfc fit, and zeroed beyond half the supercell's narrowest
width (the accurate preset's choice). Prints the lowest frequency on the high-symmetry path, at the
commensurate q-points (exact, no interpolation) and on the mesh, for each.

    python benchmarks/force_constant_noise.py runs/validate-chgnet-accurate-12 [--limit 20]

The last line printed is one JSON object with every structure's figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from phononbench.science.phonons import displace, displaced_supercells, zone_frequencies
from phononbench.compute.potentials import load_potential
from phononbench.records import Col, Status
from phononbench.running.run_folder import read_run_info, read_structures
from phononbench.settings import ProtocolSettings
from phononbench.science.supercells import widths


def lowest(phonon, protocol: ProtocolSettings) -> dict:
    samples = zone_frequencies(phonon, protocol.band_npoints, protocol.bz_mesh_length_a)
    return {source: round(float(bands.frequencies_thz.min()), 4) for source, bands in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    info, rows = read_run_info(args.run), read_structures(args.run)
    protocol = ProtocolSettings.from_dict(info["protocol"])
    potential = load_potential(info["potential"]["model"], "cpu", info["potential"].get("checkpoint"))
    report = []
    for _, row in rows[rows[Col.STATUS] == Status.OK].head(args.limit).iterrows():
        atoms = AseAtomsAdaptor.get_atoms(Structure.from_str(row[Col.RELAXED_CIF], fmt="cif"))
        matrix = np.asarray(row[Col.SUPERCELL_MATRIX]).reshape(3, 3)
        forces = potential.forces(displaced_supercells(displace(atoms, matrix, protocol.displacement_a)))
        figures = {"structure_id": row[Col.STRUCTURE_ID], "formula": row[Col.FORMULA],
                   "n_supercell_atoms": int(row[Col.N_SUPERCELL_ATOMS])}
        for treatment in ("as_produced", "symfc", "cutoff_half_width"):
            phonon = displace(atoms, matrix, protocol.displacement_a)
            phonon.forces = np.array([f - f.mean(axis=0) for f in forces])
            start = time.perf_counter()
            if treatment == "symfc":
                phonon.produce_force_constants(fc_calculator="symfc")
            else:
                phonon.produce_force_constants()
                phonon.symmetrize_force_constants()
                if treatment == "cutoff_half_width":
                    phonon.set_force_constants_zero_with_radius(float(widths(phonon.supercell.cell).min()) / 2)
                    phonon.symmetrize_force_constants()
            figures[treatment] = {**lowest(phonon, protocol), "s": round(time.perf_counter() - start, 3)}
        print(figures, flush=True)
        report.append(figures)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
