"""MatterSim's real model code, through a randomly initialised M3GNet checkpoint the test writes.

The published weights cannot be downloaded here; the architecture, graph construction, force and
stress evaluation and checkpoint loading are MatterSim's own, only the weights are random.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor

from phononbench.errors import SetupError
from phononbench.science.ingest import InputStructure
from phononbench.compute.potentials import load_potential, sha256_of
from phononbench.records import Status
from phononbench.settings import PUBLISHED
from tests.helpers import published


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet

    torch.manual_seed(0)
    model = M3Gnet(device="cpu", num_blocks=2, units=32)  # small, same code path as the published model
    path = tmp_path_factory.mktemp("ckpt") / "m3gnet-random.pth"
    torch.save({"model_name": "m3gnet", "model_args": model.model_args, "model": model.state_dict()}, path)
    return path


def test_one_structure_end_to_end_through_mattersim(random_checkpoint):
    potential = load_potential("mattersim", device="cpu", checkpoint=str(random_checkpoint))
    assert type(potential.calculator).__name__ == "MatterSimCalculator"
    assert potential.checkpoint_sha256 == sha256_of(random_checkpoint)

    rocksalt = bulk("NaCl", "rocksalt", a=5.64)
    forces = potential.forces([rocksalt])[0]
    assert forces.shape == (2, 3) and np.all(np.isfinite(forces))

    # random weights give no physical minimum: allow a loose fmax and few steps so phonons run
    protocol = PUBLISHED.with_overrides(model="mattersim", relax_fmax_ev_per_a=10.0,
                                        relax_target_fmax_ev_per_a=5.0, relax_cycles=1, relax_steps_per_cycle=5)
    item = InputStructure("t/NaCl", "t", "NaCl", AseAtomsAdaptor.get_structure(rocksalt))
    result = published(item, potential, protocol)
    assert result.status == Status.OK, result.error
    assert result.n_displacements == 2  # Na and Cl, one symmetry-reduced displacement each
    assert np.isfinite(result.min_frequency_thz) and np.isfinite(result.energy_per_atom_ev)
    assert set(result.verdicts) == {-0.1, -0.001}


def test_missing_published_checkpoint_offline_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    # make sure no download can succeed, whatever network the test machine has
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(SetupError) as error:
        load_potential("mattersim-5m")
    message = str(error.value)
    expected = tmp_path / ".local/mattersim/pretrained_models/mattersim-v1.0.0-5M.pth"
    assert str(expected) in message and "mattersim-v1.0.0-5M.pth" in message
    assert error.value.setting == "checkpoint"  # the command line names its --checkpoint option (below)
    assert not expected.exists()  # no partial file left behind


def test_mattersim_without_checkpoint_is_refused():
    with pytest.raises(SetupError, match="needs a checkpoint"):
        load_potential("mattersim")
    with pytest.raises(SetupError, match="not found"):
        load_potential("mattersim", checkpoint="/nonexistent/model.pth")


def test_cli_stops_before_any_work_without_the_checkpoint(tmp_path, monkeypatch, copper_folder):
    from typer.testing import CliRunner

    from phononbench.cli import app

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(copper_folder), "--out", str(out)])  # default model: mattersim-5m
    assert result.exit_code == 2 and "mattersim-v1.0.0-5M.pth" in result.output and "--checkpoint" in result.output
    assert not out.exists()



def test_batched_predictions_are_each_structures_own(random_checkpoint):
    """MatterSim 1.2.5's dataloader + predict_properties gives the structures of one batch forces ~1% apart
    from each one's own (two copies of one structure get different forces); the batched path used here
    (MatterSim's TorchSim wrapper) must give every structure exactly what the calculator gives it alone."""
    potential = load_potential("mattersim", device="cpu", checkpoint=str(random_checkpoint))
    cell = bulk("NaCl", "rocksalt", a=5.64) * (2, 2, 2)
    cell.rattle(0.01, seed=1)
    displaced = cell.copy()
    displaced.positions[0, 0] += 0.01
    batch = [cell, displaced, displaced, cell]
    batched = potential.predict(batch)
    alone = potential.predict_with_calculator(batch)
    for b, a in zip(batched, alone):
        assert b.energy_ev == pytest.approx(a.energy_ev, rel=1e-6)
        # float32 sums in another order differ by ~1e-6 of the largest force; the 1.2.5 dataloader by ~1e-2
        assert np.allclose(b.forces, a.forces, rtol=0, atol=1e-4 * np.abs(a.forces).max())
        assert np.allclose(b.stress, a.stress, rtol=1e-5, atol=1e-9)
    assert np.allclose(batched[1].forces, batched[2].forces, rtol=0, atol=1e-4 * np.abs(batched[1].forces).max())


def test_torchsim_engine_runs_mattersims_model_code(random_checkpoint):
    from phononbench.compute.engines import make_engine
    from phononbench.compute.method import compute

    potential = load_potential("mattersim", device="cpu", checkpoint=str(random_checkpoint))
    protocol = PUBLISHED.with_overrides(model="mattersim", relax_fmax_ev_per_a=10.0,
                                        relax_target_fmax_ev_per_a=5.0, relax_cycles=1, relax_steps_per_cycle=5)
    items = [InputStructure("t/NaCl", "t", "NaCl", AseAtomsAdaptor.get_structure(bulk("NaCl", "rocksalt", a=5.64)))]
    reference = compute(items, make_engine("batched", potential), protocol)[0]
    row = compute(items, make_engine("torchsim", potential), protocol)[0]
    assert row.status == reference.status == Status.OK, (row.error, reference.error)
    assert row.relax_steps == reference.relax_steps and row.verdicts == reference.verdicts
    assert row.min_frequency_thz == pytest.approx(reference.min_frequency_thz, abs=1e-3)
