"""The benchmark top to bottom: ingest -> dedup -> relax -> phonons -> stability -> results.

``evaluate`` (the serial reference) and ``evaluate_batch`` (the engine) are the science and need nothing
but a potential and a protocol; ``run_benchmark`` drives a whole run. Where chunks run is the
``executor`` argument (in-process by default, or Ray), chosen by the caller, never here.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import time
import warnings
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
from phononbench.executors import InProcessExecutor, WorkerSpec
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
    def start(self, total: int, done: int = 0) -> None: ...
    def advance(self, result: StructureResult) -> None: ...
    def stop(self) -> None: ...


ENGINES = ("batched", "serial")

# run.json keys that must match for a resume: anything that changes a verdict
RESUME_KEYS = ("protocol", "inputs", "limit_per_generator")
RESUME_POTENTIAL_KEYS = ("model", "checkpoint_sha256")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _check_resumable(previous: dict, info: dict) -> None:
    differing = [k for k in RESUME_KEYS if previous.get(k) != info[k]]
    differing += [f"potential.{k}" for k in RESUME_POTENTIAL_KEYS
                  if previous.get("potential", {}).get(k) != info["potential"].get(k)]
    if differing:
        raise SetupError(
            f"the run in this output folder used other settings ({', '.join(differing)}); resuming would mix "
            "two runs. Use the same command as before, or another --out."
        )


def run_benchmark(
    inputs: list[str],
    out: str | Path,
    spec: WorkerSpec,
    potential_info: dict,
    executor=None,
    limit_per_generator: int | None = None,
    reporter: Reporter | None = None,
    command: str | None = None,
    chunk_size: int = 32,
):
    """Run the benchmark on ``inputs`` into ``out``; returns the summary DataFrame.

    An ``out`` that already holds a run with the same settings is resumed: structures already written
    are skipped, so running the same command twice never duplicates a row. ``executor`` decides where
    chunks run (``InProcessExecutor`` by default, ``RayExecutor`` for a local Ray or a cluster).
    """
    if spec.engine not in ENGINES:
        raise SetupError(f"unknown engine {spec.engine!r}; choose one of {', '.join(ENGINES)}")
    executor = executor or InProcessExecutor()
    protocol = spec.protocol
    started = time.time()
    out = Path(out)
    info = {
        "status": "running",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(),
        "command": command,
        "inputs": [str(i) for i in inputs],
        "limit_per_generator": limit_per_generator,
        "engine": spec.engine,
        "chunk_size": chunk_size,
        "executor": executor.describe(),
        "protocol": protocol.to_dict(),
        "potential": potential_info,
        "versions": package_versions(),
        "python": platform.python_version(),
        "host": platform.node(),
    }
    # JSON round trip so tuples compare equal to what run.json holds
    info = json.loads(json.dumps(info, default=str))
    resumed = (out / results_io.RUN_FILE).exists()
    if resumed:
        previous = results_io.read_run_info(out)
        _check_resumable(previous, info)
        info["resumed_from"] = previous.get("started")
    out = results_io.prepare_output(out)
    results_io.write_run_info(out, info)
    done = results_io.finished_ids(out)

    items = read_inputs(inputs, protocol.max_atoms, protocol.min_distance_a, limit_per_generator)
    duplicate_of = find_duplicates(items)
    todo = [i for i in items if i.valid and i.structure_id not in duplicate_of and i.structure_id not in done]

    size = 1 if spec.engine == "serial" else max(1, chunk_size)
    chunks = [todo[k:k + size] for k in range(0, len(todo), size)]
    with results_io.ResultWriter(out, protocol.thresholds_thz) as writer:
        for item in items:
            if item.structure_id in done:
                continue
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
            for chunk_results in executor.map(spec, chunks):
                for result in chunk_results:
                    writer.add(result)
                    if reporter:
                        reporter.advance(result)
                writer.flush()  # a finished chunk is on disk before the next one is awaited
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
        n_evaluated_this_time=len(todo),
        n_already_done=len(done),
    )
    results_io.write_run_info(out, info)
    return summary
