"""The CUDA path, run for real where torch sees a GPU (skipped elsewhere, with the reason printed): the
torchsim engine on the GPU gives the CPU reference's verdicts with SevenNet-0, and MatterSim's model code
(random weights) runs on the GPU through both batched engines with the CPU's verdicts."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor

from phononbench.compute.engines import make_engine
from phononbench.science.ingest import InputStructure
from phononbench.compute.method import compute
from phononbench.compute.potentials import load_potential
from phononbench.records import Status
from phononbench.settings import PUBLISHED

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch here")


def _items():
    rattled = bulk("Si", "diamond", a=5.45, cubic=True)
    rattled.rattle(0.02, seed=3)
    named = [("NaCl", bulk("NaCl", "rocksalt", a=5.5)), ("Si-rattled", rattled), ("MgO", bulk("MgO", "rocksalt", a=4.3))]
    return [InputStructure(f"t/{n}", "t", n, AseAtomsAdaptor.get_structure(a)) for n, a in named]


def test_torchsim_engine_on_the_gpu_agrees_with_the_cpu_reference():
    items = _items()
    reference = compute(items, make_engine("batched", load_potential("sevennet")), PUBLISHED)
    gpu = compute(items, make_engine("torchsim", load_potential("sevennet", device="cuda")), PUBLISHED)
    for a, b in zip(reference, gpu):
        assert (a.status, b.status) == (Status.OK, Status.OK), (a.error, b.error)
        assert a.verdicts == b.verdicts
        assert b.min_frequency_thz == pytest.approx(a.min_frequency_thz, abs=0.02)


def test_mattersim_model_code_on_the_gpu(tmp_path):
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet

    torch.manual_seed(0)
    model = M3Gnet(device="cpu", num_blocks=2, units=32)
    path = tmp_path / "random.pth"
    torch.save({"model_name": "m3gnet", "model_args": model.model_args, "model": model.state_dict()}, path)
    protocol = PUBLISHED.with_overrides(model="mattersim", relax_fmax_ev_per_a=10.0,
                                        relax_target_fmax_ev_per_a=5.0, relax_cycles=1, relax_steps_per_cycle=5)
    items = _items()[:1]
    cpu = compute(items, make_engine("batched", load_potential("mattersim", checkpoint=str(path))), protocol)[0]
    gpu_potential = load_potential("mattersim", device="cuda", checkpoint=str(path))
    for engine in ("batched", "torchsim"):
        row = compute(items, make_engine(engine, gpu_potential), protocol)[0]
        assert row.status == cpu.status == Status.OK, row.error
        assert row.verdicts == cpu.verdicts
