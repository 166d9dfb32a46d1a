"""CPU time each engine spends outside the model, per structure and relaxation step.

    python benchmarks/engine_overhead.py                    # demo structures, 100 steps, every engine
    python benchmarks/engine_overhead.py --in-flight 256 --steps 50

Every engine relaxes the same structures (the demo's valid, unique ones, repeated with a small rattle up to
``--in-flight`` structures) for exactly ``--steps`` FIRE steps (one cycle, an acceptance no structure
reaches) with a model that costs nothing: forces a fixed smooth function of the positions, zero stress,
as an ASE calculator (serial, batched) and as a TorchSim model (torchsim). The model's own time is measured
separately (the same calls) and taken off. Printed: CPU milliseconds per structure-step outside the model,
per engine; the last line is one JSON object. Numpy's BLAS and torch run one thread, as in the workers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from pymatgen.io.ase import AseAtomsAdaptor
from threadpoolctl import threadpool_limits

from phononbench.science.dedup import find_duplicates
from phononbench.compute.engines import ENGINES, make_engine
from phononbench.science.ingest import read_inputs
from phononbench.compute.potentials import Potential
from phononbench.settings import preset

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


class FreeCalculator(Calculator):
    """Forces that never vanish (so every step is taken), no stress, no cost worth the name."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]
    calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        FreeCalculator.calls += 1
        positions = self.atoms.get_positions()
        forces = 0.05 * np.sin(positions)
        forces -= forces.mean(axis=0)
        self.results = {"energy": float(np.cos(positions).sum()), "free_energy": 0.0, "forces": forces,
                        "stress": np.zeros(6)}


def free_model(device: str = "cpu"):
    """The same forces as FreeCalculator, as a TorchSim model (float64, as the engine's states are)."""
    from torch_sim.models.interface import ModelInterface

    class FreeModel(ModelInterface):
        calls = 0

        def __init__(self):
            super().__init__()
            self._device, self._dtype = torch.device(device), torch.float64
            self._compute_stress, self._compute_forces, self._memory_scales_with = True, True, "n_atoms"

        def forward(self, state, **kwargs):
            FreeModel.calls += 1
            forces = 0.05 * torch.sin(state.positions)
            like = dict(dtype=forces.dtype, device=forces.device)
            mean = torch.zeros((state.n_systems, 3), **like).index_add_(0, state.system_idx, forces)
            forces = forces - (mean / state.n_atoms_per_system[:, None])[state.system_idx]
            energy = torch.zeros(state.n_systems, **like).index_add_(
                0, state.system_idx, torch.cos(state.positions).sum(dim=1))
            return {"energy": energy, "forces": forces, "stress": torch.zeros((state.n_systems, 3, 3), **like)}

    return FreeModel()


def structures(n: int, seed: int = 0) -> list:
    items = read_inputs([str(DEMO)], 40, 0.5)
    duplicates = find_duplicates(items)
    atoms = [AseAtomsAdaptor.get_atoms(i.structure) for i in items if i.valid and i.structure_id not in duplicates]
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        copy = atoms[len(out) % len(atoms)].copy()
        copy.positions += 0.01 * rng.normal(size=copy.positions.shape)
        out.append(copy)
    return out


def model_seconds(cells: list, calls_per_cell: int) -> float:
    """CPU time of the ASE model alone for as many calls as a relaxation makes."""
    calculator = FreeCalculator()
    start = time.process_time()
    for atoms in cells:
        for _ in range(calls_per_cell):
            atoms = atoms.copy()
            atoms.calc = calculator
            atoms.get_forces()
            atoms.get_stress()
    return time.process_time() - start


def torch_model_seconds(cells: list, calls: int, device: str) -> float:
    """CPU time of the TorchSim model alone, called as often as the relaxation called it, on all cells."""
    from phononbench.compute.potentials import to_state

    model = free_model(device)
    state = to_state(cells, model)
    start = time.process_time()
    for _ in range(calls):
        model(state)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=24, help="structures relaxed together")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES))
    parser.add_argument("--device", default="cpu", help="where the torchsim engine's state lives (cpu or cuda)")
    args = parser.parse_args()
    protocol = preset("published").with_overrides(relax_fmax_ev_per_a=1e-9, relax_target_fmax_ev_per_a=1e-10,
                                                  relax_cycles=1, relax_steps_per_cycle=args.steps)
    cells = structures(args.in_flight)
    potential = Potential("free", FreeCalculator(), "cpu", make_torchsim=lambda _: free_model(args.device))
    potential.max_atoms_per_batch = 10**6  # every structure in one lockstep batch
    figures = {"device": args.device, "in_flight": len(cells), "steps": args.steps, "atoms": sum(len(a) for a in cells), "engines": {}}
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        for name in args.engines:
            engine = make_engine(name, potential)
            FreeCalculator.calls = 0
            if name == "torchsim":
                engine.relax([a.copy() for a in cells[:2]], protocol)  # first-call costs (imports) off the clock
                type(engine.model).calls = 0
            start = time.process_time()
            outcomes = engine.relax([a.copy() for a in cells], protocol)
            total = time.process_time() - start
            failed = [o for o in outcomes if isinstance(o, Exception)]
            steps = sum(o.n_steps for o in outcomes if not isinstance(o, Exception))
            if name == "torchsim":
                model = torch_model_seconds(cells, type(engine.model).calls, args.device)
            else:
                model = model_seconds(cells, max(1, round(FreeCalculator.calls / len(cells))))
            per_step_ms = 1000 * (total - model) / max(steps, 1)
            figures["engines"][name] = {"cpu_s": round(total, 2), "model_cpu_s": round(model, 2),
                                        "structure_steps": steps, "failed": len(failed),
                                        "ms_per_structure_step": round(per_step_ms, 3)}
            print(f"{name}: {per_step_ms:.2f} ms of CPU per structure-step outside the model "
                  f"({steps} structure-steps, {total:.1f} s CPU, model {model:.2f} s)", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
