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
    atoms = atoms.copy()
    atoms.calc = calculator
    if fix_symmetry:
        atoms.set_constraint(FixSymmetry(atoms, symprec=symprec))
    cell_filter = FrechetCellFilter(atoms)
    optimizer = FIRE(cell_filter, logfile=None)
    try:
        optimizer.run(fmax=fmax_ev_per_a, steps=max_steps)
    except Exception:
        # NaN forces surface as odd errors deep in FixSymmetry or FIRE; name the real cause
        last = getattr(calculator, "results", {}) or {}
        broken = any(not np.all(np.isfinite(last[k])) for k in ("energy", "forces", "stress") if k in last)
        if broken or not (np.all(np.isfinite(atoms.positions)) and np.all(np.isfinite(atoms.cell[:]))):
            raise NonFiniteForces("potential returned NaN/inf energy, forces or stress during relaxation")
        raise

    forces = cell_filter.get_forces()
    energy = atoms.get_potential_energy()
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        raise NonFiniteForces("potential returned NaN/inf energy or forces during relaxation")
    residual = float(np.sqrt((forces**2).sum(axis=1).max()))
    relaxed = atoms.copy()
    relaxed.set_constraint()
    relaxed.calc = None
    return Relaxation(
        atoms=relaxed,
        # judged on the final forces, never on the step count: a run that hits the limit is not converged
        converged=residual < fmax_ev_per_a,
        n_steps=int(optimizer.nsteps),
        fmax_ev_per_a=residual,
        energy_per_atom_ev=float(energy) / len(atoms),
    )
