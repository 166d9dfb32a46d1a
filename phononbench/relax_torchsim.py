"""Stage 3 on a TorchSim state: the published relaxation recipe (``relax.Recipe``) with every structure in
flight held in one batched state on the model's device.

The recipe is the one ``relax.py`` states, step for step, written with TorchSim's ASE-flavoured FIRE, its
Frechet cell filter and its FixSymmetry constraint (moyopy):

- a cycle starts with a fresh FixSymmetry (refining the geometry onto the symmetry it finds), a fresh cell
  filter (its reference cell is the current one) and a fresh FIRE, and the model is asked at that geometry;
- each structure's own loop is ASE's: predict, stop the cycle when the largest force of atoms *and* cell
  (ASE's FrechetCellFilter measure) is below the target or the cycle has taken its steps, else one FIRE step;
- a force above the guard fails the structure; after the cycles, a fresh constraint and filter give the
  acceptance residual (at most ``fmax``: relaxed), so a structure that ran out of steps is never "converged".

TorchSim's own ``optimize`` is not used because its defaults are not the recipe: convergence by energy,
cell forces left out of the force criterion, convergence looked at every few steps, and a system that hits
``max_steps`` returned like a converged one. Every structure's energy, forces and stress are checked after
every model call: a non-finite one fails alone (MatterSim's TorchSim path has reports of NaN on some cells)
and leaves the state before the next step.

Structures whose cycle ended wait, with their geometry, until enough of them gather (or nothing else is
stepping) and then start their next cycle together in one model call: waiting changes no structure's
trajectory, it only spares the device many tiny calls.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

import numpy as np
import torch
from ase import Atoms

from phononbench.relax import ForcesDiverged, NonFiniteForces, Recipe, Relaxation

# ASE's FIRE defaults, which the published scripts use
DT_START = 0.1
ALPHA_START = 0.1
F_DEC = 0.5


@dataclass
class _Slot:
    """Where one structure is in the recipe."""

    index: int  # position in the input list
    cycle: int = 1
    steps_before: int = 0  # FIRE steps of the earlier cycles
    steps: int = 0  # FIRE steps of this cycle
    final: bool = False  # the acceptance check: predict once with fresh constraint and filter, then finish


class _AskOnce:
    """The model, answering twice in a row for the same geometry from memory (``fire_init`` and the cell
    filter's init each ask at the start of a cycle)."""

    def __init__(self, model):
        self.model = model
        self._last = None

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, state):
        key = (state.positions, state.row_vector_cell, state.atomic_numbers)
        if self._last is not None and all(torch.equal(a, b) for a, b in zip(self._last[0], key)):
            return self._last[1]
        output = self.model(state)
        self._last = (tuple(t.clone() for t in key), output)
        return output

    def forget(self):
        self._last = None


def to_state(structures: list[Atoms], model):
    import torch_sim as ts

    return ts.io.atoms_to_state(structures, device=model.device, dtype=model.dtype)


def relax_structures(structures: list[Atoms], model, recipe: Recipe, max_atoms_in_flight: int = 4096,
                     max_structures_in_flight: int | None = None) -> list[Relaxation | Exception]:
    """Relax every structure with the published recipe, all in flight in one TorchSim state.

    ``model`` is a TorchSim ``ModelInterface`` (energy, forces, stress). Structures enter the state as
    others finish, up to ``max_atoms_in_flight`` atoms (and ``max_structures_in_flight``). Returns, per
    structure, its Relaxation or the exception that failed it alone.
    """
    import torch_sim as ts
    from torch_sim.optimizers import fire_step

    outcome: list[Relaxation | Exception | None] = [None] * len(structures)
    waiting = deque(range(len(structures)))
    most = max_structures_in_flight or len(structures)
    ask = _AskOnce(model)
    state, slots = None, []  # the stepping structures, in state order
    between: list[tuple[_Slot, object]] = []  # (slot, single-structure state) between two cycles

    while waiting or between or slots:
        newcomers = []
        # the ones between cycles go back when enough wait or nothing else steps; fresh ones while there is room
        if between and (not slots or len(between) >= max(1, len(slots) // 8)):
            newcomers, between = between, []
        n_atoms = (int(state.n_atoms) if state is not None else 0) + sum(
            int(single.n_atoms) for _, single in newcomers + between)
        while waiting and len(slots) + len(newcomers) + len(between) < most:
            size = len(structures[waiting[0]])
            if (slots or newcomers) and n_atoms + size > max_atoms_in_flight:
                break
            index = waiting.popleft()
            n_atoms += size
            newcomers.append((_Slot(index), to_state([structures[index]], model)))
        if newcomers:
            started, failed = _start_cycles(newcomers, ask, recipe)
            for slot, exc in failed:
                outcome[slot.index] = exc
            if started is not None:
                state = started if state is None else ts.concatenate_states([state, started])
                slots += [slot for slot, _ in newcomers if outcome[slot.index] is None]
        if state is None or not slots:
            continue

        # the model's answer at every structure's current geometry is in the state: decide per structure
        leave = {}  # position in state -> where it goes: an exception, a Relaxation or "between"
        finite = _finite_per_structure(state)
        gradient = _largest_gradient(state)
        for k, slot in enumerate(slots):
            if not finite[k]:
                leave[k] = NonFiniteForces("potential returned NaN/inf energy, forces or stress during relaxation")
            elif slot.final:
                leave[k] = _relaxation(state, k, slot, gradient[k], recipe)
            elif gradient[k] > recipe.force_guard_ev_per_a:
                leave[k] = ForcesDiverged(f"a force of {gradient[k]:.3g} eV/A (above "
                                          f"{recipe.force_guard_ev_per_a:g}): the potential diverged")
            else:
                converged = gradient[k] < recipe.target_fmax_ev_per_a
                if converged or slot.steps >= recipe.steps_per_cycle:
                    final = converged or slot.cycle >= recipe.cycles
                    slot.steps_before += slot.steps
                    slot.steps, slot.final = 0, final
                    slot.cycle = slot.cycle if final else slot.cycle + 1
                    leave[k] = "between"
        if leave:
            staying = [k for k in range(len(slots)) if k not in leave]
            for k, where in leave.items():
                if isinstance(where, str):
                    between.append((slots[k], _geometry(state, k)))
                else:
                    outcome[slots[k].index] = where
            slots = [slots[k] for k in staying]
            state = state[staying] if staying else None
        if state is None:
            continue
        try:
            state = fire_step(state, model, fire_flavor="ase_fire")
        except Exception as exc:  # the step itself (e.g. FixSymmetry on a cell gone singular)
            for k, culprit in enumerate(_culprits(state, slots)):
                if culprit:
                    outcome[slots[k].index] = exc
            if not any(outcome[s.index] is exc for s in slots):  # no culprit to single out: all of them
                for s in slots:
                    outcome[s.index] = exc
            keep = [k for k, s in enumerate(slots) if outcome[s.index] is None]
            slots = [slots[k] for k in keep]
            state = state[keep] if keep else None
            continue
        for slot in slots:
            slot.steps += 1
    return outcome


def _start_cycles(newcomers, ask: _AskOnce, recipe: Recipe):
    """Fresh FixSymmetry (refining each geometry), fresh Frechet cell filter and fresh FIRE for the
    structures starting a cycle, in one model call. Returns the new state and the (slot, exception) of
    structures that could not start (their symmetry could not be found, or their model call raised)."""
    import torch_sim as ts
    from torch_sim.constraints import FixSymmetry
    from torch_sim.optimizers import fire_init
    from torch_sim.optimizers.cell_filters import CellFilter

    failed, ok = [], []
    for slot, single in newcomers:
        try:
            if recipe.fix_symmetry:
                # made while the previous cycle's constraint would still hold: refine in place, then keep
                single.constraints = [FixSymmetry.from_state(single, symprec=recipe.symprec)]
            ok.append((slot, single))
        except Exception as exc:
            failed.append((slot, exc))
    newcomers[:] = ok
    if not ok:
        return None, failed
    batch = ts.concatenate_states([single for _, single in ok])
    try:
        state = fire_init(batch, ask, cell_filter=CellFilter.frechet, dt_start=DT_START, alpha_start=ALPHA_START,
                          fire_flavor="ase_fire")
    except Exception as exc:
        if len(ok) == 1:
            failed.append((ok[0][0], exc))
            newcomers.clear()
            return None, failed
        # one call per structure, so that only the culprit fails
        states = []
        for slot, single in list(ok):
            # its constraint is attached already: no second refinement
            one, one_failed = _start_cycles([(slot, single.clone())], ask, replace(recipe, fix_symmetry=False))
            if one is None:
                failed += one_failed
                newcomers.remove((slot, single))
            else:
                states.append(one)
        ask.forget()
        return (ts.concatenate_states(states) if states else None), failed
    ask.forget()
    # the forces the optimizer sees are the constrained ones, as ASE's FixSymmetry hands them over
    state.set_constrained_forces(state.forces)
    # A fresh ASE FIRE starts at rest with dt = dt_start. TorchSim's step halves dt for a system with zero
    # velocity beside moving ones (it reads zero power as a downhill turn), so start at rest at 2 dt_start:
    # the first step then moves exactly as ASE's first step does.
    state.velocities = torch.zeros_like(state.positions)
    state.cell_velocities = torch.zeros_like(state.cell_forces)
    state.dt = torch.full_like(state.dt, DT_START / F_DEC)
    state.alpha = torch.full_like(state.alpha, ALPHA_START)
    state.n_pos = torch.zeros_like(state.n_pos)
    return state, failed


def _per_structure_max(values: torch.Tensor, system_idx: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, system_idx, values, reduce="amax", include_self=True)


def _finite_per_structure(state) -> list[bool]:
    n = state.n_systems
    atoms_bad = (~torch.isfinite(state.forces)).any(dim=1).to(state.dtype)
    bad = _per_structure_max(atoms_bad, state.system_idx, n) > 0
    bad |= ~torch.isfinite(state.energy.reshape(n))
    if state.stress is not None:
        bad |= (~torch.isfinite(state.stress.reshape(n, -1))).any(dim=1)
    bad |= (~torch.isfinite(state.cell_forces.reshape(n, -1))).any(dim=1)
    return (~bad).tolist()


def _largest_gradient(state) -> list[float]:
    """Per structure, ASE's FrechetCellFilter measure: the largest row norm of the atoms' forces in the
    deformed frame (``forces @ F``) and of the cell forces."""
    atoms = torch.linalg.vector_norm(state.deform_grad_forces(), dim=1)
    largest = _per_structure_max(torch.nan_to_num(atoms, nan=np.inf), state.system_idx, state.n_systems)
    cell = torch.linalg.vector_norm(state.cell_forces, dim=2).amax(dim=1)
    return torch.maximum(largest, torch.nan_to_num(cell, nan=np.inf)).tolist()


def _geometry(state, k: int):
    """Structure k's geometry alone, as a plain state (its constraint is remade at the next cycle)."""
    import torch_sim as ts

    one = state[[k]]
    return ts.SimState(positions=one.positions.clone(), masses=one.masses.clone(), cell=one.cell.clone(),
                       pbc=one.pbc, atomic_numbers=one.atomic_numbers.clone())


def _relaxation(state, k: int, slot: _Slot, residual: float, recipe: Recipe) -> Relaxation:
    """The acceptance, on the forces just computed with a fresh constraint and filter."""
    one = state[[k]]
    atoms = Atoms(numbers=one.atomic_numbers.cpu().numpy(), positions=one.positions.detach().cpu().numpy(),
                  cell=one.row_vector_cell[0].detach().cpu().numpy(), pbc=True)
    energy = float(one.energy.reshape(-1)[0])
    return Relaxation(atoms, residual <= recipe.fmax_ev_per_a, slot.steps_before, slot.cycle, residual,
                      energy / len(atoms))


def _culprits(state, slots) -> list[bool]:
    """Structures whose geometry or velocities are no longer finite after a failed step."""
    bad_atoms = (~torch.isfinite(state.positions)).any(dim=1) | (~torch.isfinite(state.velocities)).any(dim=1)
    bad = _per_structure_max(bad_atoms.to(state.dtype), state.system_idx, state.n_systems) > 0
    bad |= (~torch.isfinite(state.cell.reshape(state.n_systems, -1))).any(dim=1)
    return bad.tolist()
