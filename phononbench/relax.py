"""Stage 3, relax: ASE FIRE on a FrechetCellFilter, symmetry kept by FixSymmetry (the published recipe)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.constraints import FixSymmetry
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE


class NonFiniteForces(RuntimeError):
    """The potential returned NaN or infinite energy, forces or stress."""


@dataclass
class Relaxation:
    atoms: Atoms  # relaxed cell, no calculator or constraint attached
    converged: bool  # fmax reached within the step limit
    n_steps: int
    fmax_ev_per_a: float  # largest residual force, atoms and cell together (FrechetCellFilter's measure)
    energy_per_atom_ev: float


def relax(
    atoms: Atoms,
    calculator: Calculator,
    fmax_ev_per_a: float,
    max_steps: int,
    fix_symmetry: bool = True,
    symprec: float = 0.01,
) -> Relaxation:
    run = _start(0, atoms, fmax_ev_per_a, fix_symmetry, symprec)
    run.atoms.calc = calculator
    try:
        run.optimizer.run(fmax=fmax_ev_per_a, steps=max_steps)
    except Exception:
        # NaN forces surface as odd errors deep in FixSymmetry or FIRE; name the real cause
        last = getattr(calculator, "results", {}) or {}
        broken = any(not np.all(np.isfinite(last[k])) for k in ("energy", "forces", "stress") if k in last)
        if broken or not (np.all(np.isfinite(run.atoms.positions)) and np.all(np.isfinite(run.atoms.cell[:]))):
            raise NonFiniteForces("potential returned NaN/inf energy, forces or stress during relaxation")
        raise
    return _finish(run, fmax_ev_per_a)


# ---------------------------------------------------------------------------------------------
# Many structures at once: each keeps its own ASE FIRE + FrechetCellFilter + FixSymmetry, stepped in
# lockstep so that every step's energies, forces and stresses come from one batched model call.


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


def relax_many(
    structures: list[Atoms],
    evaluate,
    fmax_ev_per_a: float,
    max_steps: int,
    fix_symmetry: bool = True,
    symprec: float = 0.01,
    max_active_atoms: int = 4096,
) -> list[Relaxation | Exception]:
    """Relax every structure with the published recipe, batching the model calls across structures.

    ``evaluate(list_of_atoms) -> list[Evaluation]`` is the potential's batched path. The loop is ASE's
    own (``Dynamics.irun``): evaluate at the current geometry, stop if converged or at the step limit,
    else take one FIRE step. Finished structures leave the batch and waiting ones take their place
    (up to ``max_active_atoms``), so a slow relaxation never holds the others back. A structure whose
    evaluation fails, or gives NaN, gets its exception in its slot; the others go on.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    outcome: list[Relaxation | Exception | None] = [None] * len(structures)
    waiting = list(range(len(structures)))[::-1]
    active: list[_Run] = []
    while waiting or active:
        n_atoms = sum(len(r.atoms) for r in active)
        while waiting and (not active or n_atoms + len(structures[waiting[-1]]) <= max_active_atoms):
            index = waiting.pop()
            try:
                active.append(_start(index, structures[index], fmax_ev_per_a, fix_symmetry, symprec))
                n_atoms += len(structures[index])
            except Exception as exc:  # e.g. FixSymmetry on a pathological cell
                outcome[index] = exc

        evaluations = _evaluate_isolating_failures([r.atoms for r in active], evaluate)
        still_active = []
        for run, evaluation in zip(active, evaluations):
            try:
                if isinstance(evaluation, Exception):
                    raise evaluation
                values = (evaluation.energy_ev, evaluation.forces, evaluation.stress)
                if not all(np.all(np.isfinite(v)) for v in values):
                    raise NonFiniteForces("potential returned NaN/inf energy, forces or stress during relaxation")
                run.atoms.calc = SinglePointCalculator(
                    run.atoms, energy=evaluation.energy_ev, forces=evaluation.forces, stress=evaluation.stress)
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


def _evaluate_isolating_failures(structures: list[Atoms], evaluate) -> list:
    """One batched call; if it raises, one call per structure so only the culprit fails."""
    if not structures:
        return []
    try:
        return evaluate(structures)
    except Exception:
        if len(structures) == 1:
            raise
    out = []
    for atoms in structures:
        try:
            out.append(evaluate([atoms])[0])
        except Exception as exc:
            out.append(exc)
    return out
