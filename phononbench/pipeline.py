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
from phononbench.errors import SetupError
from phononbench.ingest import InputStructure, read_inputs
from phononbench.phonons import band_structure, force_constants_many, gamma_frequencies, phonons
from phononbench.potentials import Potential
from phononbench.records import Status, StructureResult
from phononbench.relax import Relaxation, relax, relax_many
from phononbench.settings import Protocol
from phononbench.stability import StabilityVerdict, assess

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


def _record_relaxation(result: StructureResult, relaxation: Relaxation, protocol: Protocol) -> bool:
    """Fill the relaxed-structure columns; True if the relaxation converged."""
    relaxed = AseAtomsAdaptor.get_structure(relaxation.atoms)
    result.relaxed_cif = str(CifWriter(relaxed))
    result.energy_per_atom_ev = relaxation.energy_per_atom_ev
    result.relax_steps = relaxation.n_steps
    result.relax_fmax_ev_per_a = relaxation.fmax_ev_per_a
    result.spacegroup_number, result.crystal_system = _symmetry(relaxed)
    if relaxation.converged:
        return True
    result.status = Status.RELAX_NOT_CONVERGED
    result.error = (f"fmax {relaxation.fmax_ev_per_a:.4g} eV/A after {relaxation.n_steps} steps "
                    f"(target {protocol.relax_fmax_ev_per_a}, limit {protocol.relax_max_steps})")
    return False


def _record_phonon_failure(result: StructureResult, exc: BaseException, protocol: Protocol) -> None:
    result.status, result.error = Status.PHONON_FAILED, _reason(exc)
    result.verdicts = {t: False for t in protocol.thresholds_thz}  # counts as unstable, as published


def _record_verdict(result: StructureResult, verdict: StabilityVerdict, n_displacements: int, method: str) -> None:
    result.status = Status.OK
    result.n_displacements = n_displacements
    result.phonon_method = method
    result.min_frequency_thz = verdict.min_frequency_thz
    result.min_frequency_qpoint = verdict.qpoint
    result.min_frequency_band = verdict.band
    result.min_frequency_is_acoustic_gamma = verdict.is_acoustic_gamma
    result.min_frequency_excl_acoustic_gamma_thz = verdict.min_frequency_excl_acoustic_gamma_thz
    result.verdicts = verdict.stable


def _relax_settings(protocol: Protocol) -> dict:
    return dict(fmax_ev_per_a=protocol.relax_fmax_ev_per_a, max_steps=protocol.relax_max_steps,
                fix_symmetry=protocol.fix_symmetry, symprec=protocol.symprec)


def _phonon_settings(protocol: Protocol) -> dict:
    return dict(displacement_a=protocol.displacement_a, subtract_drift=protocol.subtract_drift,
                symmetrize=protocol.symmetrize_force_constants)


def evaluate(item: InputStructure, potential: Potential, protocol: Protocol) -> StructureResult:
    """The reference path, as the published scripts do it: one structure, the ASE calculator for the
    relaxation and one displaced supercell per call. Never raises for the structure's sake."""
    result = base_result(item)
    result.input_spacegroup_number, _ = _symmetry(item.structure)

    start = time.perf_counter()
    try:
        relaxation = relax(AseAtomsAdaptor.get_atoms(item.structure), potential.calculator,
                           **_relax_settings(protocol))
    except Exception as exc:
        result.status, result.error = Status.RELAX_FAILED, _reason(exc)
        return result
    finally:
        result.relax_wall_s = time.perf_counter() - start
    if not _record_relaxation(result, relaxation, protocol):
        return result

    start = time.perf_counter()
    try:
        phonon, bands = phonons(relaxation.atoms, potential.forces_serial, supercell=protocol.supercell,
                                band_npoints=protocol.band_npoints, **_phonon_settings(protocol))
        verdict = assess(bands, protocol.thresholds_thz)
    except Exception as exc:
        _record_phonon_failure(result, exc, protocol)
        return result
    finally:
        result.phonon_wall_s = time.perf_counter() - start
    _record_verdict(result, verdict, len(phonon.displacements), "supercell")
    return result


def _share(total_s: float, costs: dict[int, float]) -> dict[int, float]:
    """Split a batch's wall time over its structures in proportion to their work."""
    weight = sum(costs.values()) or 1.0
    return {k: total_s * c / weight for k, c in costs.items()}


def evaluate_batch(items: list[InputStructure], potential: Potential, protocol: Protocol) -> list[StructureResult]:
    """The engine: the same science as ``evaluate`` for many structures, every model call batched.

    Relaxations run in lockstep (one batched call per FIRE step across structures), then all displaced
    supercells of all relaxed structures go through the potential together. With ``protocol.gamma_screen``
    a structure whose unit-cell Gamma frequencies already show an unstable optical mode skips the
    supercell. Per-stage wall times are each structure's share of its batch.
    """
    results = [base_result(item) for item in items]
    for result, item in zip(results, items):
        result.input_spacegroup_number, _ = _symmetry(item.structure)

    start = time.perf_counter()
    outcomes = relax_many([AseAtomsAdaptor.get_atoms(i.structure) for i in items], potential.evaluate,
                          max_active_atoms=potential.max_atoms_per_batch, **_relax_settings(protocol))
    relaxed: dict[int, Relaxation] = {}
    for k, outcome in enumerate(outcomes):
        if isinstance(outcome, Exception):
            results[k].status, results[k].error = Status.RELAX_FAILED, _reason(outcome)
        elif _record_relaxation(results[k], outcome, protocol):
            relaxed[k] = outcome
    costs = {k: len(i.structure) * ((o.n_steps + 1) if not isinstance(o, Exception) else 1)
             for k, (i, o) in enumerate(zip(items, outcomes))}
    for k, seconds in _share(time.perf_counter() - start, costs).items():
        results[k].relax_wall_s = seconds

    phonon_s = dict.fromkeys(relaxed, 0.0)
    todo = list(relaxed)
    if protocol.gamma_screen and todo:
        start = time.perf_counter()
        screens = force_constants_many([relaxed[k].atoms for k in todo], potential.forces, supercell=(1, 1, 1),
                                       **_phonon_settings(protocol))
        cutoff = min(protocol.thresholds_thz) - protocol.gamma_screen_margin_thz
        remaining = []
        for k, screen in zip(todo, screens):
            if isinstance(screen, Exception):
                remaining.append(k)  # let the full calculation decide
                continue
            verdict = assess(gamma_frequencies(screen), protocol.thresholds_thz)
            if verdict.min_frequency_excl_acoustic_gamma_thz < cutoff:
                _record_verdict(results[k], verdict, len(screen.displacements), "gamma_screen")
            else:
                remaining.append(k)
        for k, seconds in _share(time.perf_counter() - start, {k: len(relaxed[k].atoms) for k in todo}).items():
            phonon_s[k] += seconds
        todo = remaining

    if todo:
        start = time.perf_counter()
        constants = force_constants_many([relaxed[k].atoms for k in todo], potential.forces,
                                         supercell=protocol.supercell, **_phonon_settings(protocol))
        for k, phonon in zip(todo, constants):
            try:
                if isinstance(phonon, Exception):
                    raise phonon
                verdict = assess(band_structure(phonon, protocol.band_npoints), protocol.thresholds_thz)
                _record_verdict(results[k], verdict, len(phonon.displacements), "supercell")
            except Exception as exc:
                _record_phonon_failure(results[k], exc, protocol)
        work = {k: len(relaxed[k].atoms) * max(len(getattr(p, "displacements", [])), 1) for k, p in zip(todo, constants)}
        for k, seconds in _share(time.perf_counter() - start, work).items():
            phonon_s[k] += seconds
    for k, seconds in phonon_s.items():
        results[k].phonon_wall_s = seconds
    return results


# ---------------------------------------------------------------------------------------------
# A whole run


class Reporter(TypingProtocol):
    def start(self, total: int) -> None: ...
    def advance(self, result: StructureResult) -> None: ...
    def stop(self) -> None: ...


EvaluateChunk = Callable[[list[InputStructure]], list[StructureResult]]
MapChunks = Callable[[EvaluateChunk, list[list[InputStructure]]], Iterable[list[StructureResult]]]


def map_in_process(evaluate_chunk: EvaluateChunk, chunks: list[list[InputStructure]]) -> Iterator[list[StructureResult]]:
    for chunk in chunks:
        yield evaluate_chunk(chunk)


ENGINES = ("batched", "serial")


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
    map_chunks: MapChunks = map_in_process,
    command: str | None = None,
    engine: str = "batched",
    chunk_size: int = 32,
):
    """Run the benchmark on ``inputs`` into ``out``; returns the summary DataFrame.

    ``engine``: "batched" (``evaluate_batch`` over chunks of ``chunk_size`` structures) or "serial"
    (``evaluate``, one structure at a time, the published scripts' way).
    """
    if engine not in ENGINES:
        raise SetupError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    started = time.time()
    out = results_io.prepare_output(Path(out))
    info = {
        "status": "running",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(),
        "command": command,
        "inputs": [str(i) for i in inputs],
        "limit_per_generator": limit_per_generator,
        "engine": engine,
        "chunk_size": chunk_size,
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

    def evaluate_chunk(chunk: list[InputStructure]) -> list[StructureResult]:
        if engine == "serial":
            return [evaluate(item, potential, protocol) for item in chunk]
        return evaluate_batch(chunk, potential, protocol)

    size = 1 if engine == "serial" else max(1, chunk_size)
    chunks = [todo[k:k + size] for k in range(0, len(todo), size)]

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
            for chunk_results in map_chunks(evaluate_chunk, chunks):
                for result in chunk_results:
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
