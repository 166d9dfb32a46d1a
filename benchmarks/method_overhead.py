"""CPU seconds per structure that the whole method spends outside the model (issue 20).

    python benchmarks/method_overhead.py                     # 120 generated crystals, published preset
    python benchmarks/method_overhead.py --n 300 --profile 25

The product's Worker runs ``method.compute`` (published preset: relaxation cycles, 2x2x2 displacements,
force constants, the published path and the Brillouin-zone verdict, dimensionality, CIF writing, rows) on
real generated crystals (benchmarks/data/generated_crystals, from ../shared/data: MatterGen and MatterGPT, all <= 20
atoms; valid inputs, the MatterGen `_symmetrized` twins left out, a fixed sample across generators), in
chunks of 32 as a run sends them, with a model that costs next to nothing and whose own CPU time is
measured inside it and taken off.

The model: every atom is held by a spring (1.0 eV/A^2) to the nearest point of a 1/48 grid in its cell's
fractional coordinates (48 holds every special position of the common Wyckoff sets), zero stress. A
relaxation therefore ends at the acceptance after a number of FIRE steps set by how far the atoms start
from the grid: with these inputs the median is close to the 52 steps the published recipe takes with
CHGNet on phonondb_dev (docs/VALIDATION.md), printed below. Supercell forces come from the same function;
their values do not change what phonopy, seekpath and the verdicts cost.

Printed: CPU s per structure outside the model, per stage (cProfile, cumulative, model time taken off),
the top costs, the relaxation step counts; the last line is one JSON object with ``cpu_s_per_structure``.
BLAS and torch run one thread, as in the workers.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from threadpoolctl import threadpool_limits

from phononbench.science.ingest import read_inputs
from phononbench.compute.potentials import Potential
from phononbench.settings import preset
from phononbench.running.worker import Worker, WorkerSpec

GENERATED = Path(__file__).resolve().parent / "data" / "generated_crystals"  # a copy of ../shared's (SOURCES.md)
GRID = 48
SPRING_EV_PER_A2 = 1.0

# the method's stages, as the profile names their functions (file, function): cumulative CPU per stage
STAGES = {
    "relaxation (FIRE, cell filter, FixSymmetry)": ("relax.py", "relax_structures"),
    "relaxation, torchsim engine": ("relax_torchsim.py", "relax_structures"),
    "supercells and displacements": ("phonons.py", "displace"),
    "force constants (produce, symmetrize)": ("phonons.py", "produce_force_constants"),
    "published path (seekpath, 101 points a segment)": ("phonons.py", "band_structure"),
    "Brillouin-zone q-points (path, commensurate, mesh)": ("phonons.py", "brillouin_zone_qpoints"),
    "frequencies at the Brillouin-zone q-points": ("phonons.py", "frequencies_at"),
    "verdicts": ("stability.py", "assess"),
    "dimensionality and vacuum": ("stability.py", "_network"),
    "space groups (spglib via pymatgen)": ("method.py", "symmetry"),
    "relaxed CIF": ("cif.py", "__str__"),
    "input unpacking": ("ingest.py", "unpacked"),
}


class GridSprings(Calculator):
    """Springs to the nearest 1/48 grid point of the cell's fractional coordinates; no stress. The CPU time
    of the model's calls is kept in ``cpu_s``, by stage (relaxation or supercells)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]
    cpu_s = {"relaxation": 0.0, "supercells": 0.0}
    calls = {"relaxation": 0, "supercells": 0}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        cell = self.atoms.cell.array
        fractional = np.linalg.solve(cell.T, self.atoms.positions.T).T
        offset = fractional - np.round(fractional * GRID) / GRID
        displacement = offset @ cell
        energy = 0.5 * SPRING_EV_PER_A2 * float((displacement ** 2).sum())
        self.results = {"energy": energy, "free_energy": energy, "forces": -SPRING_EV_PER_A2 * displacement,
                        "stress": np.zeros(6)}


def grid_springs_model():
    """The same springs as a TorchSim model (float64, as the engine's states are), its CPU time kept."""
    from torch_sim.models.interface import ModelInterface

    class GridSpringsModel(ModelInterface):
        def __init__(self):
            super().__init__()
            self._device, self._dtype = torch.device("cpu"), torch.float64
            self._compute_stress, self._compute_forces, self._memory_scales_with = True, True, "n_atoms"

        def forward(self, state, **kwargs):
            start = time.process_time()
            cells = state.row_vector_cell[state.system_idx]  # (atoms, 3, 3), rows a, b, c
            fractional = torch.linalg.solve(cells.transpose(1, 2), state.positions.unsqueeze(-1)).squeeze(-1)
            offset = fractional - torch.round(fractional * GRID) / GRID
            displacement = (offset.unsqueeze(1) @ cells).squeeze(1)
            like = dict(dtype=displacement.dtype, device=displacement.device)
            energy = torch.zeros(state.n_systems, **like).index_add_(
                0, state.system_idx, 0.5 * SPRING_EV_PER_A2 * (displacement ** 2).sum(dim=1))
            out = {"energy": energy, "forces": -SPRING_EV_PER_A2 * displacement,
                   "stress": torch.zeros((state.n_systems, 3, 3), **like)}
            kind = "relaxation" if state.n_atoms_per_system.max() <= 20 else "supercells"
            GridSprings.calls[kind] += 1
            GridSprings.cpu_s[kind] += time.process_time() - start
            return out

    return GridSpringsModel()


class GridPotential(Potential):
    """The batched engine's calls, timed by what was asked: with stress (relaxation) or without (supercells)."""

    def _predict_batch(self, batch, stress):
        start = time.process_time()
        out = super()._predict_batch(batch, stress)
        kind = "relaxation" if stress else "supercells"
        GridSprings.calls[kind] += len(batch)
        GridSprings.cpu_s[kind] += time.process_time() - start
        return out


def generated_sample(root: Path, n: int, seed: int = 0) -> list:
    """Valid generated crystals, ``_symmetrized`` twins left out, n of them spread over the generators."""
    items = [i for i in read_inputs([str(root)], 20, 0.5) if i.valid and "_symmetrized" not in i.structure_id]
    rng = np.random.default_rng(seed)
    by_generator: dict[str, list] = {}
    for item in items:
        by_generator.setdefault(item.generator.split("/")[0], []).append(item)
    chosen = []
    for members in by_generator.values():
        take = min(len(members), -(-n // len(by_generator)))
        chosen += [members[k] for k in rng.choice(len(members), take, replace=False)]
    return [item.packed() for item in chosen[:n]]


def stage_seconds(profile: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(profile)
    out = {}
    for name, (file, function) in STAGES.items():
        out[name] = sum(v[3] for (f, _, fn), v in stats.stats.items() if f.endswith(file) and fn == function)
    return out


def grid_springs_forces(supercells: list) -> list:
    out = []
    for supercell in supercells:
        supercell.calc = GridSprings()
        out.append(supercell.get_forces())
    return out


def cuts_side_by_side(cells: list, forces_of=grid_springs_forces, thresholds=(-0.1, -0.001)) -> dict:
    """The two post-processing cuts, old and new way on the same force constants (2x2x2 of each cell, forces
    from ``forces_of``; CPU s per structure): the published path through phonopy's band structure (one q-point
    at a time) against one batched solve on the same q-points; the full 20 A mesh against its irreducible
    q-points. The largest difference in the lowest frequency each makes (THz), and how many verdicts differ
    at each threshold."""
    from phonopy.phonon.grid import length2mesh

    from phononbench.science import phonons

    timings = {"published path, phonopy band structure": 0.0, "published path, one batched solve": 0.0,
               "mesh, every q-point": 0.0, "mesh, irreducible q-points": 0.0}
    largest = {"published path": 0.0, "mesh": 0.0}
    flips = {f"{cut} at {t:g} THz": 0 for cut in largest for t in thresholds}
    for atoms in cells:
        phonon = phonons.displace(atoms, (2, 2, 2), 0.01)
        phonons.produce_force_constants(phonon, forces_of(phonons.displaced_supercells(phonon)))
        start = time.process_time()
        old = np.concatenate([np.asarray(f) for f in phonons.band_path(phonon)["frequencies"]]).min()
        middle = time.process_time()
        new = phonons.band_structure(phonon).frequencies_thz.min()
        end = time.process_time()
        timings["published path, phonopy band structure"] += middle - start
        timings["published path, one batched solve"] += end - middle
        _compare("published path", old, new, largest, flips, thresholds)
        mesh = length2mesh(20.0, np.asarray(phonon.primitive.cell))
        grid = np.stack(np.meshgrid(*[np.arange(k) / k for k in mesh], indexing="ij"), axis=-1).reshape(-1, 3)
        start = time.process_time()
        old = phonons.frequencies_at(phonon, grid).frequencies_thz.min()
        middle = time.process_time()
        new = phonons.frequencies_at(phonon, phonons.irreducible_mesh(phonon, mesh)).frequencies_thz.min()
        end = time.process_time()
        timings["mesh, every q-point"] += middle - start
        timings["mesh, irreducible q-points"] += end - middle
        _compare("mesh", old, new, largest, flips, thresholds)
    n = len(cells)
    return {"cpu_s_per_structure": {k: round(v / n, 4) for k, v in timings.items()},
            "largest_lowest_frequency_difference_thz": largest, "verdicts_that_differ": flips, "n": n}


def _compare(cut: str, old: float, new: float, largest: dict, flips: dict, thresholds) -> None:
    largest[cut] = max(largest[cut], abs(float(old) - float(new)))
    for t in thresholds:
        flips[f"{cut} at {t:g} THz"] += bool((old >= t) != (new >= t))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=Path, default=GENERATED, help="folder of generated crystals")
    parser.add_argument("--n", type=int, default=120, help="structures measured")
    parser.add_argument("--chunk", type=int, default=32, help="structures per worker call, as a run sends them")
    parser.add_argument("--profile", type=int, default=20, help="top functions printed (by own time)")
    parser.add_argument("--engine", default="torchsim", help="torchsim (the GPU engine, default) or batched")
    args = parser.parse_args()

    torch.set_num_threads(1)
    items = generated_sample(args.structures, args.n)
    protocol = preset("published")
    potential = GridPotential("grid-springs", GridSprings(), "cpu", make_torchsim=lambda _: grid_springs_model())
    worker = Worker(WorkerSpec("grid-springs", "cpu", None, None, protocol, args.engine), potential=potential)
    worker(items[:2])  # first-call costs (imports, seekpath and spglib set-up) off the clock
    for kind in GridSprings.cpu_s:
        GridSprings.cpu_s[kind], GridSprings.calls[kind] = 0.0, 0

    profile = cProfile.Profile()
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        start, wall = time.process_time(), time.perf_counter()
        profile.enable()
        for k in range(0, len(items), args.chunk):
            rows += worker(items[k:k + args.chunk])
        profile.disable()
        total, wall = time.process_time() - start, time.perf_counter() - wall
    model = sum(GridSprings.cpu_s.values())
    n = len(rows)
    outside = (total - model) / n
    steps = np.array([r.relax_steps for r in rows if r.relax_steps is not None])
    statuses = {s: sum(r.status == s for r in rows) for s in sorted({str(r.status) for r in rows})}

    print(f"{n} structures ({', '.join(f'{v} {k}' for k, v in statuses.items())}); relaxation steps: median "
          f"{np.median(steps):.0f}, mean {steps.mean():.0f}, max {steps.max()}; atoms per cell mean "
          f"{np.mean([len(i.cell[1]) for i in items[:n]]):.1f}")
    print(f"CPU {total:.1f} s in all (wall {wall:.1f} s), model {model:.1f} s "
          f"({GridSprings.calls['relaxation']} relaxation calls, {GridSprings.calls['supercells']} supercells)")
    print(f"outside the model: {outside:.3f} CPU s per structure (target <= 0.25)")
    per_stage = stage_seconds(profile)
    relaxation = next(k for k in ("relaxation, torchsim engine", "relaxation (FIRE, cell filter, FixSymmetry)") if per_stage[k])
    per_stage[relaxation] -= GridSprings.cpu_s["relaxation"]
    print("per stage (CPU s per structure, cumulative: stages nest where one calls another):")
    for name, seconds in per_stage.items():
        print(f"  {seconds / n:7.4f}  {name}")
    buffer = io.StringIO()
    pstats.Stats(profile, stream=buffer).sort_stats("tottime").print_stats(args.profile)
    print("top costs by own time (the model's own lines included):")
    print("\n".join(line for line in buffer.getvalue().splitlines()[6:] if line.strip()))
    from pymatgen.io.ase import AseAtomsAdaptor

    with threadpool_limits(limits=1, user_api="blas"):
        cuts = cuts_side_by_side([AseAtomsAdaptor.get_atoms(i.unpacked().structure) for i in items[:12]])
    print(f"the cuts, old and new way on the same force constants ({cuts['n']} structures, CPU s per structure):")
    for name, seconds in cuts["cpu_s_per_structure"].items():
        print(f"  {seconds:7.4f}  {name}")
    print(f"  largest difference in the lowest frequency: {cuts['largest_lowest_frequency_difference_thz']} THz; "
          f"verdicts that differ: {cuts['verdicts_that_differ']}")
    print(json.dumps({"engine": args.engine, "n_structures": n, "cuts": cuts, "cpu_s_per_structure": round(outside, 4),
                      "model_cpu_s_per_structure": round(model / n, 4), "wall_s": round(wall, 1),
                      "relax_steps_median": float(np.median(steps)), "statuses": statuses,
                      "stages_cpu_s_per_structure": {k: round(v / n, 4) for k, v in per_stage.items()}}))


if __name__ == "__main__":
    main()
