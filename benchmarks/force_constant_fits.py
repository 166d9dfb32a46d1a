"""Force-constant fits side by side: the same displaced supercells' forces, several ways to turn them into
force constants, and the Brillouin-zone verdict of each (docs/VALIDATION.md, "The half-width cut").

For each structure of finished runs (the relaxed cell and the supercell matrix they recorded), the displaced
supercells' forces are computed once with ``--model`` (give the run's) and cached in ``--cache`` under the
material, model, displacement and supercell, then fitted:

- ``as_produced``: phonopy's traditional fit, symmetrized (the published and the ``accurate`` presets);
- ``cut``: ``as_produced``, then the pairs beyond half the supercell's narrowest width zeroed and the sum rule
  restored by phonopy's symmetrization (the ``accurate`` preset until commit 423a994);
- ``cut_projector``: as ``cut``, but the last symmetrization is symfc's projector (translational invariance
  and the space group imposed exactly, not by phonopy's one-pass correction);
- ``symfc``: symfc's least-squares fit with its symmetry constraints, no cut;
- ``symfc_cut``: ``symfc``, then the half-width cut and the projector;
- ``residual_subtracted``: ``as_produced`` from the displaced supercells' forces minus the perfect
  supercell's (phonopy's ``--fz``): a relaxation stops at a residual force (up to 0.005 eV/A per atom), which
  a one-sided displacement of 0.01 A turns into force constants of up to 0.5 eV/A^2 between every pair.

    OMP_NUM_THREADS=1 python benchmarks/force_constant_fits.py RUN [RUN ...] --ids mp-7492 mp-9252 \
        --cache /tmp/fc-cache --model sevennet-l3i5 --labels labels.csv --csv fits.csv

Prints one line per structure and fit (the lowest frequency over the zone, ``bz``, where it sits, and the
lowest at the commensurate q-points), with ``--labels`` the agreement with DFT per fit, verdict and
threshold, then one JSON line with all of it (``recorded_bz``: what the run itself recorded; the refit reads
the relaxed cell back from its CIF). ``--zone-boundary L`` uses, instead of the run's supercell, twice the
smallest supercell at least L/2 wide, whose commensurate q-points hold every zone-boundary half-point.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

FITS = ("as_produced", "cut", "cut_projector", "symfc", "symfc_cut", "residual_subtracted")


def structures(runs: list[str], ids: list[str]) -> pd.DataFrame:
    """The rows of these materials that have a supercell, in the order asked (a run's current rows, as
    ``phononbench`` reads them); a material in several runs is taken from the first run given."""
    from phononbench.reading.validation import rows_by_material

    rows = rows_by_material(runs, lambda rows: rows.supercell_matrix.notna())
    rows = rows[rows.material.isin(ids)].set_index("material", drop=False)
    return rows.loc[[i for i in ids if i in rows.index]]


def forces_for(row, potential, cache: Path, displacement_a: float, zone_boundary_a: float | None = None,
               need_perfect: bool = False):
    from ase.io import read

    from phononbench.science.phonons import displace, displaced_supercells

    atoms = read(io.StringIO(row.relaxed_cif), format="cif")
    matrix = np.asarray(row.supercell_matrix, dtype=int).reshape(3, 3)
    if zone_boundary_a is not None:  # every half-point commensurate
        from phononbench.science.supercells import zone_boundary_supercell

        matrix = zone_boundary_supercell(np.asarray(atoms.cell[:]), zone_boundary_a)
    phonon = displace(atoms, matrix, displacement_a)
    key = hashlib.sha1(json.dumps([potential.name, potential.checkpoint_sha256, displacement_a,
                                   matrix.tolist()]).encode()).hexdigest()[:12]
    path = cache / f"{row.material}-{key}.npz"
    expected = (len(phonon.displacements), len(phonon.supercell), 3)
    forces, seconds = _cached(path, expected, lambda: potential.forces(displaced_supercells(phonon)))
    perfect = None
    if need_perfect:
        from phononbench.science.phonons import to_ase_atoms

        perfect, _ = _cached(path.with_name(path.stem + "-perfect.npz"), expected[1:],
                             lambda: potential.forces([to_ase_atoms(phonon.supercell)])[0])
    return phonon, forces, seconds, perfect


def _cached(path: Path, shape: tuple, compute) -> tuple[np.ndarray, float]:
    """Forces from the cache, or computed and cached (atomically: a kill mid-write leaves no half a file)."""
    try:
        with np.load(path) as stored:
            forces, seconds = stored["forces"], float(stored["seconds"])
        if forces.shape != shape:
            raise ValueError(f"forces of shape {forces.shape}, expected {shape}")
        return forces, seconds
    except FileNotFoundError:
        start = time.perf_counter()
        forces = np.array(compute())
        seconds = time.perf_counter() - start
        partial = path.with_suffix(".partial.npz")
        np.savez(partial, forces=forces, seconds=seconds)
        os.replace(partial, path)
        return forces, seconds
    except Exception as exc:
        raise SystemExit(f"{path}: unreadable cached forces ({exc}); delete it to recompute") from None


def fit(phonon, forces: np.ndarray, how: str, perfect: np.ndarray | None = None) -> None:
    from phononbench.science.supercells import widths

    if how == "residual_subtracted":
        forces = forces - perfect
    forces = forces - forces.mean(axis=1, keepdims=True)  # drift, as the protocol subtracts it
    phonon.forces = forces
    radius = float(widths(np.asarray(phonon.supercell.cell)).min()) / 2
    if how.startswith("symfc"):
        phonon.produce_force_constants(fc_calculator="symfc", show_drift=False, fc_calculator_log_level=0)
    else:
        phonon.produce_force_constants(show_drift=False)
        phonon.symmetrize_force_constants(show_drift=False)
    if how in ("cut", "cut_projector", "symfc_cut"):
        phonon.set_force_constants_zero_with_radius(radius)
        phonon.symmetrize_force_constants(show_drift=False, use_symfc_projector=how != "cut")


def verdict(phonon) -> dict:
    from phononbench.science.phonons import zone_frequencies
    from phononbench.science.stability import assess, assess_brillouin_zone, assess_brillouin_zone_beyond_acoustic_dips

    samples = zone_frequencies(phonon)
    bz = assess_brillouin_zone(samples, ())
    beyond = assess_brillouin_zone_beyond_acoustic_dips(phonon, samples, ())
    return {"bz": round(bz.min_frequency_thz, 4), "qpoint": [round(x, 4) for x in bz.qpoint], "source": bz.source,
            "commensurate": round(assess(samples["commensurate"], ()).min_frequency_thz, 4),
            "bz_beyond_acoustic_dips": round(beyond.min_frequency_thz, 4),
            "qpoint_beyond_acoustic_dips": [round(x, 4) for x in beyond.qpoint]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--ids", nargs="+", required=True, help="material ids (the input file names' stems)")
    parser.add_argument("--cache", type=Path, required=True, help="folder for the displaced supercells' forces")
    parser.add_argument("--model", default="sevennet-l3i5")
    parser.add_argument("--displacement", type=float, default=0.01)
    parser.add_argument("--zone-boundary", type=float, metavar="L",
                        help="instead of the run's supercell: twice the smallest one at least L/2 wide (plain zb, as "
                             "accurate before it kept the crystal's rotations)")
    parser.add_argument("--fits", nargs="+", choices=FITS, default=list(FITS))
    parser.add_argument("--labels", type=Path, help="DFT labels (phonondb_dev's labels.csv): score each fit")
    parser.add_argument("--csv", type=Path, help="write one row per structure and fit here")
    args = parser.parse_args(argv)
    from phononbench.compute.potentials import load_potential

    if args.zone_boundary is not None and not (math.isfinite(args.zone_boundary) and 3 <= args.zone_boundary <= 50):
        parser.error(f"--zone-boundary {args.zone_boundary}: give a length from 3 to 50 A")
    if not (math.isfinite(args.displacement) and 0 < args.displacement < 0.5):
        parser.error(f"--displacement {args.displacement}: give a distance in A above 0 and below 0.5")
    rows = structures(args.runs, args.ids)
    missing = [i for i in args.ids if i not in rows.index]
    if missing:
        parser.error(f"not in the runs, or without a supercell: {', '.join(missing)}")
    args.cache.mkdir(parents=True, exist_ok=True)
    potential = load_potential(args.model)
    out = {}
    for row in rows.itertuples():
        phonon, forces, seconds, perfect = forces_for(row, potential, args.cache, args.displacement,
                                                      args.zone_boundary, "residual_subtracted" in args.fits)
        # the whole zone's, as the refit computes it (a run that set acoustic dips aside keeps it in its own
        # column; an older run had it as min_frequency_bz_thz). None or NaN: the run failed after its force constants
        recorded = getattr(row, "min_frequency_bz_with_acoustic_dips_thz", None)
        if recorded is None or not math.isfinite(recorded):
            recorded = row.min_frequency_bz_thz
        recorded = round(float(recorded), 4) if recorded is not None and math.isfinite(recorded) else None
        out[row.material] = {"formula": row.formula, "recorded_bz": recorded,
                             "n_supercell_atoms": len(phonon.supercell), "forces_s": round(seconds, 1)}
        for how in args.fits:
            start = time.perf_counter()
            try:
                fit(phonon, forces, how, perfect)
                result = verdict(phonon)
            except Exception as exc:  # a fit that fails is a figure too
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result["fit_s"] = round(time.perf_counter() - start, 1)
            out[row.material][how] = result
            print(f"{row.material:12s} {row.formula:12s} {how:13s} {json.dumps(result)}", flush=True)
    table = pd.DataFrame([{"material": m, "formula": r["formula"], "n_supercell_atoms": r["n_supercell_atoms"],
                           "forces_s": r["forces_s"], "recorded_bz": r["recorded_bz"], "fit": how,
                           **r[how]}
                          for m, r in out.items() for how in args.fits])
    scores = []
    if args.labels is not None and len(table):
        dft = pd.read_csv(args.labels).set_index("mp_id")["label"]
        table.insert(2, "dft", table["material"].map(dft))
        scores = score(table.dropna(subset=["dft"]).dropna(subset=["bz"]) if "bz" in table else table.iloc[:0])
        for line in scores:
            print(f"{line['fit']:13s} {line['verdict']:13s} {line['threshold_thz']:7g}  n={line['n']}  "
                  f"accuracy={line['accuracy']:.3f}  false-unstable={line['false_unstable']}/{line['dft_stable']}  "
                  f"false-stable={line['false_stable']}/{line['n'] - line['dft_stable']}")
    if args.csv is not None:
        for column in ("qpoint", "qpoint_beyond_acoustic_dips"):
            if column in table:
                table[column] = table[column].map(json.dumps, na_action="ignore")
        table.insert(0, "potential", args.model)  # so that a union with runs can check it is the same potential
        table.to_csv(args.csv, index=False)
    print(json.dumps({"structures": out, "scores": scores}))
    return 0


def score(table: pd.DataFrame) -> list[dict]:
    """Per fit, verdict (lowest frequency over the zone, or at the commensurate q-points) and threshold: how many
    verdicts agree with DFT, and the DFT-stable ones called unstable (false-unstable) and the reverse."""
    out = []
    for how, frame in table.groupby("fit", sort=False):
        dft_stable = frame["dft"] == "stable"
        for verdict in ("bz", "commensurate", "bz_beyond_acoustic_dips"):
            for threshold in (-0.1, -0.001):
                stable = frame[verdict] >= threshold
                out.append({"fit": how, "verdict": verdict, "threshold_thz": threshold, "n": len(frame),
                            "accuracy": round(float((stable == dft_stable).mean()), 4),
                            "dft_stable": int(dft_stable.sum()), "false_unstable": int((dft_stable & ~stable).sum()),
                            "false_stable": int((~dft_stable & stable).sum())})
    return out


if __name__ == "__main__":
    from phononbench.errors import SetupError

    try:
        sys.exit(main())
    except SetupError as exc:  # a run that cannot be read: one line, not a traceback
        sys.exit(str(exc))
