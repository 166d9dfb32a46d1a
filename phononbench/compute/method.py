"""The method, composed once: relax -> (Gamma screen) -> phonons -> stability, for a set of structures.

Two verdicts come from one set of force constants: the published one (the published scripts' q-points,
quirk included: ``phonons.band_path``) and the Brillouin-zone one (the true high-symmetry path, the
commensurate q-points and a mesh: ``phonons.brillouin_zone_qpoints``).

``compute(items, engine, protocol)`` is the benchmark for valid, unique input structures and returns
one row each; it never raises for a structure's sake. Every engine runs this same composition, so a
protocol option (the tiered Gamma screen, the relaxation recipe) holds for all of them by construction.
Per-stage wall times are each structure's share of its stage, in proportion to its work.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np

from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from phononbench.compute.engines import Engine
from phononbench.errors import reason
from phononbench.science.ingest import InputStructure
from phononbench.science.phonons import (
    band_structure,
    SupercellTooLarge,
    supercell_matrix,
    force_constants_many,
    gamma_frequencies,
    zone_frequencies,
)
from phononbench.records import Status, StructureResult
from phononbench.science.relax import Relaxation
from phononbench.settings import ProtocolSettings
from phononbench.science.stability import (
    StabilityVerdict,
    assess,
    assess_brillouin_zone,
    assess_brillouin_zone_beyond_acoustic_dips,
    dimensionality,
    separated_by_vacuum,
)


log = logging.getLogger(__name__)


def compute(items: list[InputStructure], engine: Engine, protocol: ProtocolSettings) -> list[StructureResult]:
    """One row per structure: relaxed with the engine, phonons, verdict at every threshold."""
    rows = [StructureResult.for_input(item) for item in items]
    for row, item in zip(rows, items):
        row.input_spacegroup_number, _ = symmetry(item.structure)

    relaxed = _relax(items, rows, engine, protocol)
    todo = list(relaxed)
    if protocol.gamma_screen:
        todo = _gamma_screen(todo, relaxed, rows, engine, protocol)
    _supercell_phonons(todo, relaxed, rows, engine, protocol)
    return rows


def symmetry(structure: Structure) -> tuple[int | None, str | None]:
    """Space group number and crystal system (descriptive only: None where spglib fails)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analyzer = SpacegroupAnalyzer(structure)
            return int(analyzer.get_space_group_number()), analyzer.get_crystal_system()
    except Exception:  # spglib can fail on pathological cells
        return None, None


# ---------------------------------------------------------------------------------------------
# The stages, each over every structure still in the running


def _relax(items, rows, engine: Engine, protocol: ProtocolSettings) -> dict[int, Relaxation]:
    """Relax all; returns the converged ones by position."""
    start = time.perf_counter()
    outcomes = engine.relax([AseAtomsAdaptor.get_atoms(i.structure) for i in items], protocol)
    relaxed: dict[int, Relaxation] = {}
    for k, outcome in enumerate(outcomes):
        if isinstance(outcome, Exception):
            rows[k].status, rows[k].error = Status.RELAX_FAILED, reason(outcome)
        elif _record_relaxation(rows[k], outcome, protocol):
            relaxed[k] = outcome
    work = {k: len(i.structure) * (1 if isinstance(o, Exception) else o.n_steps + 1)
            for k, (i, o) in enumerate(zip(items, outcomes))}
    for k, seconds in _share(time.perf_counter() - start, work).items():
        rows[k].relax_wall_s = seconds
    return relaxed


def _gamma_screen(todo: list[int], relaxed, rows, engine: Engine, protocol: ProtocolSettings) -> list[int]:
    """Tiered preset: the unit cell's own displacements give its Gamma frequencies (exact at Gamma); an
    optical mode there below every threshold (minus the margin) is unstable without the supercell.
    Returns the structures the screen could not decide."""
    if not todo:
        return todo
    start = time.perf_counter()
    screens = force_constants_many([relaxed[k].atoms for k in todo], engine.forces, lambda cell: (1, 1, 1),
                                   **phonon_settings(protocol))
    cutoff = min(protocol.thresholds_thz) - protocol.gamma_screen_margin_thz
    undecided = []
    for k, screen in zip(todo, screens):
        if isinstance(screen, Exception):
            undecided.append(k)  # the full calculation decides
            continue
        verdict = assess(gamma_frequencies(screen), protocol.thresholds_thz)
        optical = verdict.min_frequency_excl_acoustic_gamma_thz  # None: a cell with no optical mode
        if optical is not None and optical < cutoff:
            _record_verdict(rows[k], verdict, len(screen.displacements), "gamma_screen")
            # Gamma is in the zone: the Brillouin-zone verdict is the same unstable one
            rows[k].min_frequency_bz_thz, rows[k].min_frequency_bz_qpoint = verdict.min_frequency_thz, verdict.qpoint
            rows[k].min_frequency_bz_source, rows[k].bz_verdicts = "gamma_screen", dict(verdict.stable)
            # Gamma is commensurate (exact) and never set aside as an acoustic dip: the same minimum for both
            rows[k].min_frequency_commensurate_thz = verdict.min_frequency_thz
            rows[k].min_frequency_bz_with_acoustic_dips_thz = verdict.min_frequency_thz
            rows[k].min_frequency_beyond_acoustic_dips_thz = verdict.min_frequency_thz
            rows[k].min_frequency_beyond_acoustic_dips_qpoint = verdict.qpoint
        else:
            undecided.append(k)
    _add_phonon_time(rows, time.perf_counter() - start, {k: len(relaxed[k].atoms) for k in todo})
    return undecided


def _supercell_phonons(todo: list[int], relaxed, rows, engine: Engine, protocol: ProtocolSettings) -> None:
    """The published phonon calculation: supercell force constants, then both verdicts from them."""
    if not todo:
        return
    start = time.perf_counter()
    constants = force_constants_many([relaxed[k].atoms for k in todo], engine.forces,
                                     lambda cell: supercell_matrix(cell, protocol.supercell,
                                                                   protocol.supercell_min_length_a,
                                                                   protocol.max_supercell_atoms,
                                                                   protocol.supercell_zone_boundary,
                                                                   protocol.supercell_keeps_rotations),
                                     **phonon_settings(protocol))
    for k, phonon in zip(todo, constants):
        try:
            if isinstance(phonon, Exception):
                raise phonon
            # the published script writes the relaxed structure once the force constants exist: from here
            # a failure still counts as relaxed (and unstable), before it the structure left its count
            rows[k].has_force_constants = True
            rows[k].supercell_matrix = [int(x) for x in np.asarray(phonon.supercell_matrix).ravel()]
            rows[k].n_supercell_atoms = len(phonon.supercell)
            verdict = assess(band_structure(phonon, protocol.band_npoints), protocol.thresholds_thz)
            bz_start = time.perf_counter()
            frequencies = zone_frequencies(phonon, protocol.band_npoints, protocol.bz_mesh_length_a)
            bz = assess_brillouin_zone(frequencies, protocol.thresholds_thz)
            rows[k].min_frequency_commensurate_thz = assess(frequencies["commensurate"], ()).min_frequency_thz
            rows[k].min_frequency_bz_with_acoustic_dips_thz = bz.min_frequency_thz
            set_aside = protocol.acoustic_dips == "set_aside"
            try:
                beyond = assess_brillouin_zone_beyond_acoustic_dips(phonon, frequencies, protocol.thresholds_thz)
                rows[k].min_frequency_beyond_acoustic_dips_thz = beyond.min_frequency_thz
                rows[k].min_frequency_beyond_acoustic_dips_qpoint = beyond.qpoint
            except Exception as exc:
                if set_aside:  # the zone verdict itself: the structure's phonons fail, with the reason
                    raise
                # a side verdict: the column stays empty, and validate leaves it out, saying so
                log.warning("%s: the verdict beyond acoustic dips failed: %s", rows[k].structure_id, reason(exc))
            zone = beyond if set_aside else bz
            rows[k].phonon_bz_wall_s = time.perf_counter() - bz_start
            _record_verdict(rows[k], verdict, len(phonon.displacements), "supercell")
            rows[k].min_frequency_bz_thz, rows[k].min_frequency_bz_qpoint = zone.min_frequency_thz, zone.qpoint
            rows[k].min_frequency_bz_source, rows[k].bz_verdicts = zone.source, zone.stable
        except Exception as exc:
            rows[k].status, rows[k].error = Status.PHONON_FAILED, reason(exc)
            # a supercell over the cap was our choice not to compute: it stays in the count, as unstable
            if not isinstance(exc, SupercellTooLarge):
                rows[k].has_force_constants = bool(rows[k].has_force_constants)
            # counts as unstable, as published, on both verdicts
            rows[k].verdicts = {t: False for t in protocol.thresholds_thz}
            rows[k].bz_verdicts = {t: False for t in protocol.thresholds_thz}
    work = {k: len(relaxed[k].atoms) * max(len(getattr(p, "displacements", [])), 1) for k, p in zip(todo, constants)}
    _add_phonon_time(rows, time.perf_counter() - start, work)


# ---------------------------------------------------------------------------------------------
# Filling the row


def _record_relaxation(row: StructureResult, relaxation: Relaxation, protocol: ProtocolSettings) -> bool:
    """The relaxed-structure columns; True if the relaxation converged."""
    relaxed = AseAtomsAdaptor.get_structure(relaxation.atoms)
    row.relaxed_cif = str(CifWriter(relaxed))
    row.energy_per_atom_ev = relaxation.energy_per_atom_ev
    row.relax_steps = relaxation.n_steps
    row.relax_cycles = relaxation.n_cycles
    row.relax_fmax_ev_per_a = relaxation.fmax_ev_per_a
    row.spacegroup_number, row.crystal_system = symmetry(relaxed)
    row.dimensionality = dimensionality(relaxation.atoms)
    row.separated_by_vacuum = separated_by_vacuum(relaxation.atoms)
    if not relaxation.converged:
        row.status = Status.RELAX_NOT_CONVERGED
        row.error = (f"fmax {relaxation.fmax_ev_per_a:.4g} eV/A after {relaxation.n_steps} steps in "
                     f"{relaxation.n_cycles} cycles (acceptance {protocol.relax_fmax_ev_per_a} eV/A, at most "
                     f"{protocol.relax_cycles} cycles of {protocol.relax_steps_per_cycle} steps)")
        return False
    if protocol.exclude_low_dimensional and row.separated_by_vacuum:
        row.status = Status.LOW_DIMENSIONAL
        row.error = f"the relaxed structure is {row.dimensionality} pieces with vacuum between them, not a crystal"
        return False
    return True


def _record_verdict(row: StructureResult, verdict: StabilityVerdict, n_displacements: int, method: str) -> None:
    row.status = Status.OK
    row.n_displacements = n_displacements
    row.phonon_method = method
    row.min_frequency_thz = verdict.min_frequency_thz
    row.min_frequency_qpoint = verdict.qpoint
    row.min_frequency_band = verdict.band
    row.min_frequency_is_acoustic_gamma = verdict.is_acoustic_gamma
    row.min_frequency_excl_acoustic_gamma_thz = verdict.min_frequency_excl_acoustic_gamma_thz
    row.verdicts = verdict.stable


def phonon_settings(protocol: ProtocolSettings) -> dict:
    """The protocol's force-constant settings, as ``force_constants_many`` takes them."""
    return dict(displacement_a=protocol.displacement_a, subtract_drift=protocol.subtract_drift,
                symmetrize=protocol.symmetrize_force_constants,
                cutoff_at_half_width=protocol.force_constants_cutoff_at_half_width,
                subtract_residual=protocol.subtract_residual_forces)


def _share(total_s: float, work: dict[int, float]) -> dict[int, float]:
    """Split a stage's wall time over its structures in proportion to their work."""
    weight = sum(work.values()) or 1.0
    return {k: total_s * w / weight for k, w in work.items()}


def _add_phonon_time(rows, total_s: float, work: dict[int, float]) -> None:
    for k, seconds in _share(total_s, work).items():
        rows[k].phonon_wall_s = (rows[k].phonon_wall_s or 0.0) + seconds
