"""Stage 3, relax: the published recipe, ASE FIRE on a FrechetCellFilter with symmetry kept by FixSymmetry,
in cycles (hyllios/utils ``benchmark_ph/umlip.py`` ``relax_structure``, as the PhononBench scripts call it):

- up to ``cycles`` cycles; each attaches a fresh FixSymmetry and a fresh FrechetCellFilter to the current
  geometry and runs a fresh FIRE to ``target_fmax`` for at most ``steps_per_cycle`` steps;
- cycling stops once the filter's largest force (atoms and cell) is below the target;
- a force above ``force_guard`` at any point means the potential diverged: the relaxation fails;
- afterwards the structure is relaxed only if, with a fresh constraint and filter, the largest force is
  at most ``fmax`` (the acceptance).

Attaching a fresh FixSymmetry refines the geometry onto the symmetry it finds (a structure that relaxed
towards higher symmetry snaps onto it), so a new cycle or the acceptance check asks the model again
wherever that moved the atoms or the cell, as the published scripts' calculator does.

Every structure keeps its own ASE optimizer, cell filter and constraint. Structures in flight are stepped
in lockstep so that each step's energies, forces and stresses come from one ``predict`` call over all of
them; with one structure in flight and the potential's calculator behind ``predict`` this is exactly the
published scripts' one-structure relaxation. How many are in flight, and how ``predict`` batches, is the
engine's choice (``engines.py``); the recipe is written once, here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from ase import Atoms
from ase.calculators.calculator import compare_atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixSymmetry
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from phononbench.errors import isolating_failures
from phononbench.settings import ProtocolSettings


class NonFiniteForces(RuntimeError):
    """The potential returned NaN or infinite energy, forces or stress."""


class ForcesDiverged(RuntimeError):
    """A force above the guard: the potential has left physical territory (the published observer's check)."""


@dataclass(frozen=True)
class Recipe:
    """The relaxation's knobs, read off a protocol's settings (``Recipe.of``: the values, published ones
    included, are written there once)."""

    fmax_ev_per_a: float  # acceptance after the cycles
    target_fmax_ev_per_a: float  # each cycle's FIRE target
    cycles: int
    steps_per_cycle: int
    force_guard_ev_per_a: float
    fix_symmetry: bool
    symprec: float

    @classmethod
    def of(cls, protocol: ProtocolSettings) -> "Recipe":
        return cls(fmax_ev_per_a=protocol.relax_fmax_ev_per_a, target_fmax_ev_per_a=protocol.relax_target_fmax_ev_per_a,
                   cycles=protocol.relax_cycles, steps_per_cycle=protocol.relax_steps_per_cycle,
                   force_guard_ev_per_a=protocol.relax_force_guard_ev_per_a, fix_symmetry=protocol.fix_symmetry,
                   symprec=protocol.symprec)


class Move(StrEnum):
    """What the recipe does next with one structure, given the model's answer at its geometry."""

    STEP = "step"  # one more FIRE step in this cycle
    NEW_CYCLE = "new cycle"  # a fresh FIRE and FixSymmetry from here (the cycle ended above the target)
    ACCEPTANCE = "acceptance"  # the end: judged once more on the final geometry (at fmax_ev_per_a)


def next_move(largest_force: float, converged: bool, steps: int, cycle: int, recipe: Recipe) -> Move:
    """The published recipe's rule, the one both engines follow: a cycle steps until its FIRE target is met
    (``converged``) or its step cap is reached; then a new cycle, unless it converged or the cycles are used
    up, when the acceptance follows. A force above the guard is the potential's divergence (raised)."""
    if largest_force > recipe.force_guard_ev_per_a:
        raise ForcesDiverged(f"a force of {largest_force:.3g} eV/A (above {recipe.force_guard_ev_per_a:g}): "
                             "the potential diverged")
    if not converged and steps < recipe.steps_per_cycle:
        return Move.STEP
    return Move.ACCEPTANCE if converged or cycle >= recipe.cycles else Move.NEW_CYCLE


@dataclass
class Relaxation:
    atoms: Atoms  # relaxed cell, no calculator or constraint attached
    converged: bool  # largest force at most the acceptance after the cycles
    n_steps: int  # FIRE steps over all cycles
    n_cycles: int
    fmax_ev_per_a: float  # largest residual force, atoms and cell together (FrechetCellFilter's measure)
    energy_per_atom_ev: float


@dataclass
class _Slot:
    """Where one structure is in the recipe: its atoms under this cycle's FixSymmetry, filter and FIRE."""

    index: int
    atoms: Atoms
    cell_filter: FrechetCellFilter
    optimizer: FIRE
    cycle: int  # 1-based
    steps_before: int  # FIRE steps of the earlier cycles
    final: bool = False  # the acceptance check after the cycles: predict once more, then finish


def _constrained(atoms: Atoms, recipe: Recipe) -> Atoms:
    """A copy with a fresh FixSymmetry, no calculator. Attaching FixSymmetry refines the geometry onto the
    symmetry it finds (ASE's ``refine_symmetry``), so the copy may differ slightly from ``atoms``. As in the
    published scripts, the new constraint is made while the previous cycle's is still attached, so that
    refinement moves the atoms only as the previous symmetry allows."""
    atoms = atoms.copy()
    atoms.calc = None
    atoms.set_constraint(FixSymmetry(atoms, symprec=recipe.symprec) if recipe.fix_symmetry else None)
    return atoms


def _start(index: int, atoms: Atoms, recipe: Recipe, cycle: int = 1, steps_before: int = 0,
           final: bool = False) -> _Slot:
    """A cycle: fresh constraint, fresh filter (its reference cell is the current one), fresh FIRE."""
    atoms = _constrained(atoms, recipe)
    cell_filter = FrechetCellFilter(atoms)
    optimizer = FIRE(cell_filter, logfile=None)
    optimizer.fmax = recipe.target_fmax_ev_per_a
    return _Slot(index, atoms, cell_filter, optimizer, cycle, steps_before, final)


def _largest(forces: np.ndarray) -> float:
    return float(np.sqrt((np.asarray(forces).reshape(-1, 3) ** 2).sum(axis=1).max()))


def _attach(atoms: Atoms, prediction) -> None:
    atoms.calc = SinglePointCalculator(atoms, energy=prediction.energy_ev, forces=prediction.forces,
                                       stress=prediction.stress)


def _same_geometry(a: Atoms, b: Atoms) -> bool:
    """As an ASE calculator decides whether it must compute again (``check_state``, tolerance 1e-15)."""
    return not compare_atoms(a, b, tol=1e-15, excluded_properties={"initial_magmoms", "initial_charges"})


def _finish(run: _Slot, recipe: Recipe) -> Relaxation:
    """The acceptance: the largest force with a fresh constraint and filter on the final geometry."""
    residual = _largest(run.cell_filter.get_forces())
    relaxed = run.atoms.copy()
    relaxed.set_constraint()
    relaxed.calc = None
    # judged on the final forces, never on the step count: a run that used up its cycles may still pass
    return Relaxation(relaxed, residual <= recipe.fmax_ev_per_a, run.steps_before, run.cycle, residual,
                      float(run.atoms.get_potential_energy()) / len(relaxed))


def _advance(run: _Slot, prediction, recipe: Recipe) -> _Slot | Relaxation:
    """Take the prediction at the run's geometry: one FIRE step, a new cycle, the acceptance check (each
    returns the run to predict next), or the end (returns the Relaxation). Raises for the structure's sake."""
    values = (prediction.energy_ev, prediction.forces, prediction.stress)
    if not all(np.all(np.isfinite(v)) for v in values):
        raise NonFiniteForces("potential returned NaN/inf energy, forces or stress during relaxation")
    while True:
        _attach(run.atoms, prediction)
        if run.final:
            return _finish(run, recipe)
        gradient = run.optimizer.optimizable.get_gradient()
        move = next_move(_largest(gradient), run.optimizer.gradient_converged(gradient), run.optimizer.nsteps,
                         run.cycle, recipe)
        if move == Move.STEP:
            run.optimizer.step()
            run.optimizer.nsteps += 1
            return run
        # the cycle is over: a fresh one, or the acceptance check, starts from here
        final = move == Move.ACCEPTANCE
        following = _start(run.index, run.atoms, recipe, run.cycle if final else run.cycle + 1,
                           run.steps_before + int(run.optimizer.nsteps), final)
        if not _same_geometry(following.atoms, run.atoms):
            return following  # FixSymmetry refined the geometry: the model is asked again there
        run = following


def relax_structures(
    structures: list[Atoms],
    predict: Callable[[list[Atoms]], list],
    recipe: Recipe,
    max_atoms_in_flight: int = 4096,
    max_structures_in_flight: int | None = None,
) -> list[Relaxation | Exception]:
    """Relax every structure with the published recipe.

    ``predict(list_of_atoms) -> list[Prediction]`` gives energy, forces and stress per structure. Each
    cycle's loop is ASE's own (``Dynamics.irun``): predict at the current geometry, stop if converged or at
    the step limit, else take one FIRE step. Finished structures leave and waiting ones take their place (up
    to the atom and structure limits), so a slow relaxation never holds the others back. A structure whose
    prediction fails, is not finite, or diverges gets its exception in its slot; the others go on.
    """
    outcome: list[Relaxation | Exception | None] = [None] * len(structures)
    waiting = list(range(len(structures)))[::-1]
    active: list[_Slot] = []
    most = max_structures_in_flight or len(structures)
    while waiting or active:
        n_atoms = sum(len(r.atoms) for r in active)
        while waiting and len(active) < most and (
                not active or n_atoms + len(structures[waiting[-1]]) <= max_atoms_in_flight):
            index = waiting.pop()
            try:
                active.append(_start(index, structures[index], recipe))
                n_atoms += len(structures[index])
            except Exception as exc:  # e.g. FixSymmetry on a pathological cell
                outcome[index] = exc

        predictions = [p if isinstance(p, Exception) else p[0]
                       for p in isolating_failures([[r.atoms] for r in active], predict, "prediction")]
        still_active = []
        for run, prediction in zip(active, predictions):
            try:
                if isinstance(prediction, Exception):
                    raise prediction
                advanced = _advance(run, prediction, recipe)
            except Exception as exc:
                outcome[run.index] = exc
                continue
            if isinstance(advanced, Relaxation):
                outcome[run.index] = advanced
            else:
                still_active.append(advanced)
        active = still_active
    return outcome
