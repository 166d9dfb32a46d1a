"""Engines: how structures move through the model. The method (``method.py``) is the same for all.

An engine answers two questions the method asks, and nothing else:

- ``relax(structures, protocol)``: the published relaxation recipe (``relax.relax_structures``) for each
  structure; the engine decides how many are in flight together and how their predictions are batched;
- ``forces(supercells)``: forces on displaced supercells, in whatever batches suit the engine.

``serial`` is the published scripts' way: one structure at a time, one ASE calculator call per geometry.
``batched`` steps a chunk's relaxations in lockstep with one batched model call per FIRE step, and sends
all displaced supercells through the model's batched inference. A further engine (a GPU-resident batched
state) implements the same two methods; the stages do not change.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

import numpy as np
from ase import Atoms

from phononbench.errors import SetupError
from phononbench.potentials import Potential
from phononbench.relax import Recipe, Relaxation, relax_structures
from phononbench.settings import Protocol


class Engine(TypingProtocol):
    name: str

    def relax(self, structures: list[Atoms], protocol: Protocol) -> list[Relaxation | Exception]: ...

    def forces(self, supercells: list[Atoms]) -> list[np.ndarray]: ...


def recipe(protocol: Protocol) -> Recipe:
    """The protocol's relaxation knobs, for ``relax.relax_structures``."""
    return Recipe(fmax_ev_per_a=protocol.relax_fmax_ev_per_a,
                  target_fmax_ev_per_a=protocol.relax_target_fmax_ev_per_a, cycles=protocol.relax_cycles,
                  steps_per_cycle=protocol.relax_steps_per_cycle,
                  force_guard_ev_per_a=protocol.relax_force_guard_ev_per_a, fix_symmetry=protocol.fix_symmetry,
                  symprec=protocol.symprec)


class _OnePotential:
    def __init__(self, potential: Potential):
        self.potential = potential


class SerialEngine(_OnePotential):
    """One structure at a time through the potential's ASE calculator, as the published scripts run."""

    name = "serial"

    def relax(self, structures: list[Atoms], protocol: Protocol) -> list[Relaxation | Exception]:
        return relax_structures(structures, self.potential.predict_with_calculator, recipe(protocol),
                                max_structures_in_flight=1)

    def forces(self, supercells: list[Atoms]) -> list[np.ndarray]:
        return [p.forces for p in self.potential.predict_with_calculator(supercells, stress=False)]


class BatchedEngine(_OnePotential):
    """Lockstep relaxations and batched model calls, capped at the potential's atoms per batch."""

    name = "batched"

    def relax(self, structures: list[Atoms], protocol: Protocol) -> list[Relaxation | Exception]:
        return relax_structures(structures, self.potential.predict, recipe(protocol),
                                max_atoms_in_flight=self.potential.max_atoms_per_batch)

    def forces(self, supercells: list[Atoms]) -> list[np.ndarray]:
        return self.potential.forces(supercells)


ENGINES = {"batched": BatchedEngine, "serial": SerialEngine}


def check_engine(name: str) -> str:
    if name not in ENGINES:
        raise SetupError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}", setting="engine")
    return name


def make_engine(name: str, potential: Potential) -> Engine:
    return ENGINES[check_engine(name)](potential)
