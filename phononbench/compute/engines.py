"""Engines: how structures move through the model. The method (``method.py``) is the same for all.

An engine answers two questions the method asks, and nothing else:

- ``relax(structures, protocol)``: the published relaxation recipe (``relax.relax_structures``) for each
  structure; the engine decides how many are in flight together and how their predictions are batched;
- ``forces(supercells)``: forces on displaced supercells, in whatever batches suit the engine.

``serial`` is the published scripts' way: one structure at a time, one ASE calculator call per geometry.
``batched`` steps a chunk's relaxations in lockstep with one batched model call per FIRE step, and sends
all displaced supercells through the model's batched inference. ``torchsim`` keeps every structure in flight
in one TorchSim state on the model's device (``relax_torchsim.py``: the same recipe with TorchSim's FIRE,
Frechet cell filter and FixSymmetry) and sends the supercells through the same model in bins packed by
TorchSim's autobatcher. The stages do not change.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from ase import Atoms

from phononbench.errors import SetupError
from phononbench.compute.potentials import Potential, batches_by_atoms
from phononbench.science.relax import Recipe, Relaxation, relax_structures
from phononbench.settings import ProtocolSettings


class Engine(Protocol):
    name: str

    def relax(self, structures: list[Atoms], protocol: ProtocolSettings) -> list[Relaxation | Exception]: ...

    def forces(self, supercells: list[Atoms]) -> list[np.ndarray]: ...


class _OnePotential:
    def __init__(self, potential: Potential):
        self.potential = potential


class SerialEngine(_OnePotential):
    """One structure at a time through the potential's ASE calculator, as the published scripts run."""

    name = "serial"

    def relax(self, structures: list[Atoms], protocol: ProtocolSettings) -> list[Relaxation | Exception]:
        return relax_structures(structures, self.potential.predict_with_calculator, Recipe.of(protocol),
                                max_structures_in_flight=1)

    def forces(self, supercells: list[Atoms]) -> list[np.ndarray]:
        return [p.forces for p in self.potential.predict_with_calculator(supercells, stress=False)]


class BatchedEngine(_OnePotential):
    """Lockstep relaxations and batched model calls, capped at the potential's atoms per batch."""

    name = "batched"

    def relax(self, structures: list[Atoms], protocol: ProtocolSettings) -> list[Relaxation | Exception]:
        return relax_structures(structures, self.potential.predict, Recipe.of(protocol),
                                max_atoms_in_flight=self.potential.max_atoms_per_batch)

    def forces(self, supercells: list[Atoms]) -> list[np.ndarray]:
        return self.potential.forces(supercells)


class TorchSimEngine(_OnePotential):
    """Every structure in flight in one TorchSim state on the device; supercells in autobatched bins.

    In flight: up to the potential's atoms per batch. Supercell bins: on a CPU, that many atoms; on a GPU,
    as many as TorchSim's autobatcher measures will fit (once per worker, by trying growing batches)."""

    name = "torchsim"

    def __init__(self, potential: Potential):
        super().__init__(potential)
        self.model = potential.torchsim_model()
        if self.model is None:
            ensure_engine(self.name, potential.name)  # says which potentials have one
            raise SetupError(f"the potential {potential.name} has no TorchSim model: use --engine batched",
                             setting="engine")
        self._memory_scaler: float | None = None  # the autobatcher's measure of a GPU's room, once known

    def relax(self, structures: list[Atoms], protocol: ProtocolSettings) -> list[Relaxation | Exception]:
        from phononbench.compute import relax_torchsim

        return relax_torchsim.relax_structures(structures, self.model, Recipe.of(protocol),
                                               max_atoms_in_flight=self.potential.max_atoms_per_batch)

    def forces(self, supercells: list[Atoms]) -> list[np.ndarray]:
        from phononbench.compute.potentials import predict_with_torchsim, split_on_oom

        out: list[np.ndarray | None] = [None] * len(supercells)
        for indices in self._bins(supercells):
            batch = [supercells[i] for i in indices]
            predictions = split_on_oom(lambda b: predict_with_torchsim(self.model, b, stress=False), batch)
            for i, prediction in zip(indices, predictions):
                out[i] = prediction.forces
        return out

    def _bins(self, supercells: list[Atoms]) -> list[list[int]]:
        """Which supercells go through the model together: on a CPU, consecutive runs of at most the
        potential's atoms per batch; on a GPU, TorchSim's autobatcher's bins, sized by measuring the memory
        (once per worker)."""
        if not supercells:
            return []
        if not self.potential.device.startswith("cuda"):
            bins, start = [], 0
            for batch in batches_by_atoms(supercells, self.potential.max_atoms_per_batch):
                bins.append(list(range(start, start + len(batch))))
                start += len(batch)
            return bins
        from torch_sim.autobatching import BinningAutoBatcher

        from phononbench.compute.potentials import to_state

        batcher = BinningAutoBatcher(self.model, memory_scales_with=self.model.memory_scales_with,
                                     max_memory_scaler=self._memory_scaler)
        batcher.load_states(to_state(supercells, self.model))
        self._memory_scaler = batcher.max_memory_scaler
        return batcher.index_bins


ENGINES = {"batched": BatchedEngine, "serial": SerialEngine, "torchsim": TorchSimEngine}


# potentials with a TorchSim model (potentials.py: make_torchsim); plugins are checked when they load
TORCHSIM_MODELS = ("mattersim-5m", "mattersim-1m", "mattersim", "sevennet", "sevennet-0", "sevennet-l3i5", "sevennet-mf-0")


def ensure_engine(name: str, model: str | None = None) -> str:
    if name not in ENGINES:
        raise SetupError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}", setting="engine")
    if name == "torchsim" and model is not None and not model.startswith("python:") and model not in TORCHSIM_MODELS:
        raise SetupError(f"the torchsim engine needs a potential with a TorchSim model ({', '.join(TORCHSIM_MODELS)}); "
                         f"{model} has none: use --engine batched", setting="engine")
    return name


def make_engine(name: str, potential: Potential) -> Engine:
    return ENGINES[ensure_engine(name)](potential)
