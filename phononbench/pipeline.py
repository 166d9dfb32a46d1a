"""The benchmark top to bottom: ingest -> dedup -> relax -> phonons -> stability -> results.

``evaluate`` is the science for one structure and needs nothing but a potential and a protocol;
``run_benchmark`` drives a whole run. Where the per-structure work runs is the ``map_structures``
argument (in-process by default), chosen by the caller, never here.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Protocol as TypingProtocol

from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from phononbench import results as results_io
from phononbench.dedup import find_duplicates
from phononbench.ingest import InputStructure, read_inputs
from phononbench.phonons import phonons
from phononbench.potentials import Potential
from phononbench.records import Status, StructureResult
from phononbench.relax import relax
from phononbench.settings import Protocol
from phononbench.stability import assess

PACKAGES = ("phononbench", "mattersim", "torch", "ase", "phonopy", "spglib", "seekpath", "pymatgen",
            "chgnet", "sevenn", "ray", "numpy", "pyarrow", "pandas")


def _symmetry(structure: Structure) -> tuple[int | None, str | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analyzer = SpacegroupAnalyzer(structure)
            return int(analyzer.get_space_group_number()), analyzer.get_crystal_system()
    except Exception:  # spglib can fail on pathological cells; symmetry is descriptive only
        return None, None


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def base_result(item: InputStructure) -> StructureResult:
    result = StructureResult(item.structure_id, item.generator, item.source, Status.INVALID_INPUT, error=item.error)
    if item.structure is not None:
        result.formula = item.structure.composition.reduced_formula
        result.n_atoms = len(item.structure)
    return result


def evaluate(item: InputStructure, potential: Potential, protocol: Protocol) -> StructureResult:
    """Relax, compute phonons and judge stability for one valid structure. Never raises for the structure's sake."""
    result = base_result(item)
    result.input_spacegroup_number, _ = _symmetry(item.structure)

    start = time.perf_counter()
    try:
        relaxation = relax(
            AseAtomsAdaptor.get_atoms(item.structure),
            potential.calculator,
            fmax_ev_per_a=protocol.relax_fmax_ev_per_a,
            max_steps=protocol.relax_max_steps,
            fix_symmetry=protocol.fix_symmetry,
            symprec=protocol.symprec,
        )
    except Exception as exc:
        result.status, result.error = Status.RELAX_FAILED, _reason(exc)
        return result
    finally:
        result.relax_wall_s = time.perf_counter() - start

    relaxed = AseAtomsAdaptor.get_structure(relaxation.atoms)
    result.relaxed_cif = str(CifWriter(relaxed))
    result.energy_per_atom_ev = relaxation.energy_per_atom_ev
    result.relax_steps = relaxation.n_steps
    result.relax_fmax_ev_per_a = relaxation.fmax_ev_per_a
    result.spacegroup_number, result.crystal_system = _symmetry(relaxed)
    if not relaxation.converged:
        result.status = Status.RELAX_NOT_CONVERGED
        result.error = (f"fmax {relaxation.fmax_ev_per_a:.4g} eV/A after {relaxation.n_steps} steps "
                        f"(target {protocol.relax_fmax_ev_per_a}, limit {protocol.relax_max_steps})")
        return result

    start = time.perf_counter()
    try:
        phonon, bands = phonons(
            relaxation.atoms,
            potential.forces,
            supercell=protocol.supercell,
            displacement_a=protocol.displacement_a,
            subtract_drift=protocol.subtract_drift,
            symmetrize=protocol.symmetrize_force_constants,
            band_npoints=protocol.band_npoints,
        )
        verdict = assess(bands, protocol.thresholds_thz)
    except Exception as exc:
        result.status, result.error = Status.PHONON_FAILED, _reason(exc)
        result.verdicts = {t: False for t in protocol.thresholds_thz}  # counts as unstable, as published
        return result
    finally:
        result.phonon_wall_s = time.perf_counter() - start

    result.status = Status.OK
    result.n_displacements = len(phonon.displacements)
    result.min_frequency_thz = verdict.min_frequency_thz
    result.min_frequency_qpoint = verdict.qpoint
    result.min_frequency_band = verdict.band
    result.min_frequency_is_acoustic_gamma = verdict.is_acoustic_gamma
    result.min_frequency_excl_acoustic_gamma_thz = verdict.min_frequency_excl_acoustic_gamma_thz
    result.verdicts = verdict.stable
    return result


# ---------------------------------------------------------------------------------------------
# A whole run


class Reporter(TypingProtocol):
    def start(self, total: int) -> None: ...
    def advance(self, result: StructureResult) -> None: ...
    def stop(self) -> None: ...


MapStructures = Callable[[Callable[[InputStructure], StructureResult], list[InputStructure]], Iterable[StructureResult]]


def map_in_process(evaluate_one: Callable[[InputStructure], StructureResult],
                   items: list[InputStructure]) -> Iterator[StructureResult]:
    for item in items:
        yield evaluate_one(item)


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_benchmark(
    inputs: list[str],
    out: str | Path,
    protocol: Protocol,
    potential: Potential,
    limit_per_generator: int | None = None,
    reporter: Reporter | None = None,
    map_structures: MapStructures = map_in_process,
    command: str | None = None,
):
    """Run the benchmark on ``inputs`` into ``out``; returns the summary DataFrame."""
    started = time.time()
    out = results_io.prepare_output(Path(out))
    info = {
        "status": "running",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(),
        "command": command,
        "inputs": [str(i) for i in inputs],
        "limit_per_generator": limit_per_generator,
        "protocol": protocol.to_dict(),
        "potential": potential.describe(),
        "versions": package_versions(),
        "python": platform.python_version(),
        "host": platform.node(),
    }
    results_io.write_run_info(out, info)

    items = read_inputs(inputs, protocol.max_atoms, protocol.min_distance_a, limit_per_generator)
    duplicate_of = find_duplicates(items)
    todo = [i for i in items if i.valid and i.structure_id not in duplicate_of]

    def evaluate_one(item: InputStructure) -> StructureResult:
        return evaluate(item, potential, protocol)

    with results_io.ResultWriter(out, protocol.thresholds_thz) as writer:
        for item in items:
            if not item.valid:
                writer.add(base_result(item))
            elif item.structure_id in duplicate_of:
                row = base_result(item)
                row.status, row.duplicate_of = Status.DUPLICATE, duplicate_of[item.structure_id]
                writer.add(row)
        writer.flush()
        if reporter:
            reporter.start(len(todo))
        try:
            for result in map_structures(evaluate_one, todo):
                writer.add(result)
                if reporter:
                    reporter.advance(result)
        finally:
            if reporter:
                reporter.stop()

    summary = results_io.summarize(results_io.read_structures(out), protocol.thresholds_thz)
    results_io.write_summary(out, summary)
    info.update(
        status="complete",
        finished=dt.datetime.now(dt.timezone.utc).isoformat(),
        wall_s=round(time.time() - started, 2),
        n_input=len(items),
        n_evaluated=len(todo),
    )
    results_io.write_run_info(out, info)
    return summary
