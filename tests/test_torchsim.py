"""The TorchSim engine runs the published recipe: the same trajectories as the ASE path with TorchSim's own
analytic Lennard-Jones model, the same verdicts with SevenNet-0, and a structure whose model output is not
finite fails alone while the batch goes on. All on the CPU, TorchSim and the models running for real."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.lj import LennardJones
from pymatgen.io.ase import AseAtomsAdaptor
from torch_sim.models.interface import ModelInterface
from torch_sim.models.lennard_jones import LennardJonesModel

from phononbench.compute.engines import make_engine
from phononbench.errors import SetupError
from phononbench.science.ingest import InputStructure
from phononbench.compute.method import compute
from phononbench.compute.potentials import Potential, load_potential, predict_with_torchsim
from phononbench.records import Status
from phononbench.science.relax import NonFiniteForces, Recipe, relax_structures
from phononbench.compute.relax_torchsim import relax_structures as relax_in_torchsim
from phononbench.settings import PUBLISHED

PUBLISHED_RECIPE = Recipe.of(PUBLISHED)
SIGMA, EPSILON, CUTOFF = 2.3, 1.0, 5.0  # a stiff LJ solid: forces of eV/A, so the cycles have work to do


def _lj_model():
    return LennardJonesModel(sigma=SIGMA, epsilon=EPSILON, cutoff=CUTOFF, compute_stress=True,
                             dtype=torch.float64)


def _argon_like():
    fcc = bulk("Ar", "fcc", a=3.5, cubic=True)
    fcc.rattle(0.03, seed=1)
    hcp = bulk("Ar", "hcp", a=2.5, c=4.2)
    sc = bulk("Ar", "sc", a=2.6)
    strained = bulk("Ar", "fcc", a=3.3) * (1, 1, 2)
    strained.cell[2] *= 1.04
    strained.positions[1] += [0.05, 0.0, 0.02]
    return [fcc, hcp, sc, strained]


def _ase_lj(atoms):
    atoms = atoms.copy()
    atoms.calc = LennardJones(sigma=SIGMA, epsilon=EPSILON, rc=CUTOFF, smooth=False)
    return atoms


def _predict_lj(structures):
    """The reference path's predictions from the same TorchSim model, one structure per call (ASE's own
    LennardJones gives another stress for the small hcp cell: the same model on both sides isolates the
    engine)."""
    model = _lj_model()
    return [predict_with_torchsim(model, [atoms], stress=True)[0] for atoms in structures]


@pytest.mark.parametrize("recipe", [
    PUBLISHED_RECIPE,
    dataclasses.replace(PUBLISHED_RECIPE, cycles=3, steps_per_cycle=7),  # three cycles each
    dataclasses.replace(PUBLISHED_RECIPE, cycles=2, steps_per_cycle=4),  # cycles run out
], ids=["published", "short-cycles", "too-few-cycles"])
def test_same_trajectories_as_the_ase_recipe_with_torchsims_lennard_jones(recipe):
    structures = _argon_like()
    reference = relax_structures([a.copy() for a in structures], _predict_lj, recipe)
    engine = relax_in_torchsim([a.copy() for a in structures], _lj_model(), recipe, max_atoms_in_flight=6)
    for ase_run, ts_run in zip(reference, engine):
        assert not isinstance(ase_run, Exception) and not isinstance(ts_run, Exception)
        assert (ts_run.n_steps, ts_run.n_cycles, ts_run.converged) == (ase_run.n_steps, ase_run.n_cycles, ase_run.converged)
        if not ase_run.converged:
            continue  # stopped mid-way, forces of up to 1 eV/A: float64 sums in another order show (~1e-3 A)
        # the same geometry (ASE's refinement in both), the same residual at the acceptance
        assert ts_run.fmax_ev_per_a == pytest.approx(ase_run.fmax_ev_per_a, abs=1e-4)  # 2% of the acceptance
        assert np.allclose(ts_run.atoms.cell[:], ase_run.atoms.cell[:], atol=1e-5)
        assert np.allclose(ts_run.atoms.positions, ase_run.atoms.positions, atol=1e-5)
    if recipe.steps_per_cycle == 7:
        assert all(r.n_cycles == 3 and r.converged for r in engine)
    if recipe.steps_per_cycle == 4:
        assert all(r.n_cycles == 2 and r.n_steps == 8 and not r.converged for r in engine)  # never "converged"


class NaNForLargeCells(ModelInterface):
    """TorchSim's LJ, except that structures above a size get NaN forces (as MatterSim's TorchSim path has
    been reported to give on some cells)."""

    def __init__(self, above_atoms: int):
        super().__init__()
        self.inner = _lj_model()
        self.above = above_atoms
        self._device, self._dtype = self.inner.device, self.inner.dtype
        self._compute_stress, self._compute_forces = True, True
        self._memory_scales_with = "n_atoms"

    def forward(self, state, **kwargs):
        output = dict(self.inner(state))
        large = state.n_atoms_per_system > self.above
        output["forces"] = output["forces"].clone()
        output["forces"][large[state.system_idx]] = float("nan")
        return output


def test_a_structure_with_nan_forces_fails_alone_in_the_state():
    structures = _argon_like()  # 4, 2, 1 and 2 atoms
    outcome = relax_in_torchsim([a.copy() for a in structures], NaNForLargeCells(above_atoms=3), PUBLISHED_RECIPE)
    assert isinstance(outcome[0], NonFiniteForces)
    assert all(not isinstance(o, Exception) and o.converged for o in outcome[1:])
    clean = relax_in_torchsim([a.copy() for a in structures[1:]], _lj_model(), PUBLISHED_RECIPE)
    assert [o.n_steps for o in outcome[1:]] == [o.n_steps for o in clean]  # the others did not notice


class RaisesForLargeCells(NaNForLargeCells):
    """TorchSim's LJ, except that a call with a structure above a size in it raises."""

    def forward(self, state, **kwargs):
        if bool((state.n_atoms_per_system > self.above).any()):
            raise ValueError("no neighbour list for this cell")
        return self.inner(state)


def test_a_structure_whose_model_call_raises_fails_alone_at_the_cycle_start(caplog):
    """The cycle's first model call is batched; when it raises, one call per structure pins it on the one
    that causes it (errors.isolating_failures), and the others relax as if it had never been there."""
    structures = _argon_like()  # 4, 2, 1 and 2 atoms
    with caplog.at_level("WARNING", logger="phononbench.errors"):
        outcome = relax_in_torchsim([a.copy() for a in structures], RaisesForLargeCells(above_atoms=3), PUBLISHED_RECIPE)
    assert isinstance(outcome[0], ValueError) and "neighbour list" in str(outcome[0])
    assert all(not isinstance(o, Exception) and o.converged for o in outcome[1:])
    clean = relax_in_torchsim([a.copy() for a in structures[1:]], _lj_model(), PUBLISHED_RECIPE)
    assert [o.n_steps for o in outcome[1:]] == [o.n_steps for o in clean]
    assert any("FIRE start of 4 structures failed" in r.getMessage() for r in caplog.records)


def _items(named):
    return [InputStructure(f"t/{n}", "t", n, AseAtomsAdaptor.get_structure(a)) for n, a in named]


def test_nan_supercell_forces_fail_only_that_structures_phonons():
    potential = Potential("lj-nan", _ase_lj(bulk("Ar")).calc, "cpu",
                          make_torchsim=lambda p: NaNForLargeCells(above_atoms=16))
    small = bulk("Ar", "fcc", a=3.4)  # primitive: 8-atom supercells
    large = bulk("Ar", "fcc", a=3.4, cubic=True)  # 32-atom supercells: NaN
    rows = compute(_items([("small", small), ("large", large)]), make_engine("torchsim", potential), PUBLISHED)
    assert rows[0].status == Status.OK, rows[0].error
    assert rows[1].status == Status.PHONON_FAILED and "NaN" in rows[1].error
    assert rows[1].verdicts == {t: False for t in PUBLISHED.thresholds_thz}


@pytest.fixture(scope="module")
def sevennet():
    return load_potential("sevennet", max_atoms_per_batch=64)


def test_torchsim_engine_verdicts_agree_with_the_ase_engine_with_sevennet(sevennet):
    rattled = bulk("Si", "diamond", a=5.45, cubic=True)
    rattled.rattle(0.02, seed=3)
    items = _items([("NaCl", bulk("NaCl", "rocksalt", a=5.5)), ("Si-rattled", rattled),
                    ("MgO", bulk("MgO", "rocksalt", a=4.3)), ("Cu-bcc", bulk("Cu", "bcc", a=2.9))])
    reference = compute(items, make_engine("batched", sevennet), PUBLISHED)
    engine = compute(items, make_engine("torchsim", sevennet), PUBLISHED)
    for a, b in zip(reference, engine):
        assert (a.status, b.status) == (Status.OK, Status.OK), (a.error, b.error)
        assert a.verdicts == b.verdicts and a.bz_verdicts == b.bz_verdicts
        assert abs(a.relax_steps - b.relax_steps) <= 2
        assert b.min_frequency_thz == pytest.approx(a.min_frequency_thz, abs=0.02)
        assert b.energy_per_atom_ev == pytest.approx(a.energy_per_atom_ev, abs=1e-4)
    assert [r.verdicts[-0.1] for r in engine] == [True, True, True, False]  # bcc Cu: soft modes


def test_torchsim_engine_refused_before_work_for_a_potential_without_a_torchsim_model():
    from phononbench.compute.engines import ensure_engine

    with pytest.raises(SetupError, match="torchsim engine needs"):
        ensure_engine("torchsim", "chgnet")
    with pytest.raises(SetupError, match="torchsim engine needs"):
        make_engine("torchsim", load_potential("emt"))


def test_the_run_command_with_the_torchsim_engine(copper_folder, tmp_path):
    import json

    from typer.testing import CliRunner

    from phononbench.cli import app
    from phononbench.running.run_folder import read_structures

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(copper_folder), "--out", str(out), "--model", "sevennet",
                                      "--engine", "torchsim", "--in-process"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["engine"] == "torchsim"
    rows = read_structures(out).set_index("structure_id")
    assert rows.loc["metals/Cu_fcc.cif", "status"] == Status.OK
    assert rows.loc["metals/Cu_fcc_conventional.cif", "status"] == Status.DUPLICATE
    assert rows.loc["metals/broken.cif", "status"] == Status.INVALID_INPUT
    assert rows.loc["metals/Cu_bcc.cif", "status"] == Status.OK


class OutOfMemoryAbove(ModelInterface):
    """TorchSim's LJ on a device that holds at most ``most_atoms`` atoms at once (from its ``after``-th call
    on): a larger call raises CUDA's out-of-memory error, as a GPU does, on the CPU."""

    def __init__(self, most_atoms: int, after: int = 0):
        super().__init__()
        self.inner = _lj_model()
        self.most, self.after, self.calls, self.raised = most_atoms, after, 0, 0
        self._device, self._dtype = self.inner.device, self.inner.dtype
        self._compute_stress, self._compute_forces = True, True
        self._memory_scales_with = "n_atoms"

    def forward(self, state, **kwargs):
        self.calls += 1
        if self.calls > self.after and int(state.n_atoms) > self.most:
            self.raised += 1
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB ({int(state.n_atoms)} atoms)")
        return self.inner(state)


@pytest.mark.parametrize("most_atoms, after", [(4, 0), (6, 12)], ids=["from-the-start", "mid-relaxation"])
def test_out_of_memory_halves_what_is_in_flight_and_fails_no_structure(most_atoms, after, caplog):
    """Issue 19.10: an out-of-memory step is not the structures' fault: what is in flight is halved (and
    stays halved: 18 atoms to at most 4 takes two halvings, never more), every structure in flight restarts
    its cycle where it stood, and all end relaxed to the same geometry."""
    structures = _argon_like() * 2  # 18 atoms in all
    model = OutOfMemoryAbove(most_atoms, after)
    with caplog.at_level("WARNING", logger="phononbench.compute.relax_torchsim"):
        outcome = relax_in_torchsim([a.copy() for a in structures], model, PUBLISHED_RECIPE, max_atoms_in_flight=64)
    assert 1 <= sum("out of memory with" in r.getMessage() for r in caplog.records) <= 2
    clean = relax_in_torchsim([a.copy() for a in structures], _lj_model(), PUBLISHED_RECIPE, max_atoms_in_flight=64)
    assert model.raised >= 1
    assert not any(isinstance(o, Exception) for o in outcome), [o for o in outcome if isinstance(o, Exception)]
    for run, reference in zip(outcome, clean):
        assert run.converged and reference.converged
        assert run.fmax_ev_per_a <= PUBLISHED_RECIPE.fmax_ev_per_a
        # the same relaxed cell (another path to it may leave it rigidly rotated by a milliradian)
        assert np.allclose(run.atoms.cell.cellpar(), reference.atoms.cell.cellpar(), atol=2e-3)
