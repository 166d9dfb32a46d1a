"""Potentials that misbehave on purpose, loaded by the workers as ``python:tests.potentials_for_tests:NAME``.

Each is ASE's EMT with a delay: real physics, plus the slow or hanging structure a long run meets.
"""

from __future__ import annotations

import time

from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from phononbench.compute.potentials import Potential


class DelayedEMT(Calculator):
    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, delays_s: dict[str, float]):
        super().__init__()
        self.delays_s, self.emt = delays_s, EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        for symbol, delay in self.delays_s.items():
            if symbol in atoms.get_chemical_symbols():
                time.sleep(delay)
        self.emt.calculate(atoms, ["energy", "forces", "stress"], system_changes)
        self.results = dict(self.emt.results)


def hangs_on_gold(name, device, checkpoint):
    """Any structure with Au never finishes (an hour per call)."""
    return Potential(name, DelayedEMT({"Au": 3600.0}), "cpu")


def slow_on_palladium(name, device, checkpoint):
    """Each call on a Pd structure takes a while: time to kill a worker mid-batch."""
    return Potential(name, DelayedEMT({"Pd": 0.3}), "cpu")


class _BreaksOnBatches(Potential):
    """Batched inference that raises on any batch of more than one structure (a systematic bug)."""

    def _predict_batch(self, batch, stress):
        if len(batch) > 1:
            raise RuntimeError(f"batched inference broke on {len(batch)} structures")
        return super()._predict_batch(batch, stress)


def breaks_on_batches(name, device, checkpoint):
    return _BreaksOnBatches(name, EMT(), "cpu")


def needs_its_checkpoint(name, device, checkpoint):
    """EMT that will not start without its checkpoint file (a node where the weights are missing)."""
    from pathlib import Path

    if not checkpoint or not Path(checkpoint).exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} is not on this node")
    return Potential(name, EMT(), "cpu")


class _CountsBlasThreads(Calculator):
    """EMT that refuses to compute while numpy's BLAS may use more than one thread (item 9 of issue 10)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self):
        super().__init__()
        self.emt = EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from threadpoolctl import threadpool_info

        super().calculate(atoms, properties, system_changes)
        threads = {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
        if threads != {1}:
            raise RuntimeError(f"BLAS runs {threads} threads inside the method")
        self.emt.calculate(atoms, ["energy", "forces", "stress"], system_changes)
        self.results = dict(self.emt.results)


def one_blas_thread(name, device, checkpoint):
    return Potential(name, _CountsBlasThreads(), "cpu")
