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
from phononbench.ingest import InputStructure
from phononbench.potentials import load_potential, sha256_of
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

