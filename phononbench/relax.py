"""Stage 3, relax: ASE FIRE on a FrechetCellFilter, symmetry kept by FixSymmetry (the published recipe).

Every structure keeps its own ASE optimizer, cell filter and constraint. Structures in flight are stepped
in lockstep so that each step's energies, forces and stresses come from one ``predict`` call over all of
them; with one structure in flight and the potential's calculator behind ``predict`` this is exactly the
published scripts' one-structure relaxation. How many are in flight, and how ``predict`` batches, is the
engine's choice (``engines.py``); the recipe is written once, here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixSymmetry
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

log = logging.getLogger(__name__)


class NonFiniteForces(RuntimeError):
    """The potential returned NaN or infinite energy, forces or stress."""


@dataclass
class Relaxation:
    atoms: Atoms  # relaxed cell, no calculator or constraint attached
    converged: bool  # fmax reached within the step limit
    n_steps: int
    fmax_ev_per_a: float  # largest residual force, atoms and cell together (FrechetCellFilter's measure)
    energy_per_atom_ev: float


@dataclass
class _Run:
    index: int
    atoms: Atoms
    cell_filter: FrechetCellFilter
    optimizer: FIRE


def _start(index: int, atoms: Atoms, fmax_ev_per_a: float, fix_symmetry: bool, symprec: float) -> _Run:
    atoms = atoms.copy()
    if fix_symmetry:
        atoms.set_constraint(FixSymmetry(atoms, symprec=symprec))
    cell_filter = FrechetCellFilter(atoms)
    optimizer = FIRE(cell_filter, logfile=None)
    optimizer.fmax = fmax_ev_per_a
    return _Run(index, atoms, cell_filter, optimizer)


def _finish(run: _Run, fmax_ev_per_a: float) -> Relaxation:
    forces = run.cell_filter.get_forces()
    energy = float(run.atoms.get_potential_energy())
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        raise NonFiniteForces("potential returned NaN/inf energy or forces during relaxation")
    residual = float(np.sqrt((forces**2).sum(axis=1).max()))
    relaxed = run.atoms.copy()
    relaxed.set_constraint()
    relaxed.calc = None
    # judged on the final forces, never on the step count: a run that hits the limit is not converged
    return Relaxation(relaxed, residual < fmax_ev_per_a, int(run.optimizer.nsteps), residual, energy / len(relaxed))


def relax_structures(
    structures: list[Atoms],
    predict: Callable[[list[Atoms]], list],
    fmax_ev_per_a: float,
    max_steps: int,
    fix_symmetry: bool = True,
    symprec: float = 0.01,
    max_atoms_in_flight: int = 4096,
    max_structures_in_flight: int | None = None,
) -> list[Relaxation | Exception]:
    """Relax every structure with the published recipe.

    ``predict(list_of_atoms) -> list[Prediction]`` gives energy, forces and stress per structure. The
    loop is ASE's own (``Dynamics.irun``): predict at the current geometry, stop if converged or at the
    step limit, else take one FIRE step. Finished structures leave and waiting ones take their place (up
    to the atom and structure limits), so a slow relaxation never holds the others back. A structure whose
    prediction fails, or is not finite, gets its exception in its slot; the others go on.
    """
    outcome: list[Relaxation | Exception | None] = [None] * len(structures)
    waiting = list(range(len(structures)))[::-1]
    active: list[_Run] = []
    most = max_structures_in_flight or len(structures)
    while waiting or active:
        n_atoms = sum(len(r.atoms) for r in active)
        while waiting and len(active) < most and (
                not active or n_atoms + len(structures[waiting[-1]]) <= max_atoms_in_flight):
            index = waiting.pop()
            try:
                active.append(_start(index, structures[index], fmax_ev_per_a, fix_symmetry, symprec))
                n_atoms += len(structures[index])
            except Exception as exc:  # e.g. FixSymmetry on a pathological cell
                outcome[index] = exc

        predictions = _predict_isolating_failures([r.atoms for r in active], predict)
        still_active = []
        for run, prediction in zip(active, predictions):
            try:
                if isinstance(prediction, Exception):
                    raise prediction
                values = (prediction.energy_ev, prediction.forces, prediction.stress)
                if not all(np.all(np.isfinite(v)) for v in values):
                    raise NonFiniteForces("potential returned NaN/inf energy, forces or stress during relaxation")
                run.atoms.calc = SinglePointCalculator(
                    run.atoms, energy=prediction.energy_ev, forces=prediction.forces, stress=prediction.stress)
                gradient = run.optimizer.optimizable.get_gradient()
                if run.optimizer.gradient_converged(gradient) or run.optimizer.nsteps >= max_steps:
                    outcome[run.index] = _finish(run, fmax_ev_per_a)
                    continue
                run.optimizer.step()
                run.optimizer.nsteps += 1
                still_active.append(run)
            except Exception as exc:
                outcome[run.index] = exc
        active = still_active
    return outcome


def _predict_isolating_failures(structures: list[Atoms], predict) -> list:
    """One call for all; if it raises, one call per structure so only the culprit fails."""
    if not structures:
        return []
    try:
        return predict(structures)
    except Exception as exc:
        if len(structures) == 1:
            return [exc]
        # a systematic bug here would otherwise be a silent slow path: say so
        log.warning("batched prediction of %d structures failed (%s); retrying one structure at a time",
                    len(structures), exc, exc_info=True)
    out = []
    for atoms in structures:
        try:
            out.append(predict([atoms])[0])
        except Exception as exc:
            out.append(exc)
    return out
