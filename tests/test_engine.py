"""Every engine runs the same method: the batched engine gives the serial reference's answers, and the
tiered screen agrees with the full protocol and screens the same way in every engine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from ase.build import bulk
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from phononbench.science.ingest import InputStructure
from phononbench.compute.potentials import Potential, load_potential
from phononbench.records import Status
from phononbench.science.relax import Recipe, relax_structures
from phononbench.settings import PUBLISHED, TIERED
from tests.helpers import batched, published
from tests.test_physics import NaNForces


def _items(named_atoms):
    return [InputStructure(f"t/{name}", "t", name, AseAtomsAdaptor.get_structure(a)) for name, a in named_atoms]


def _metals():
    rattled = bulk("Cu", "fcc", a=3.62, cubic=True)
    rattled.rattle(0.03, seed=4)
    return _items([("Cu-fcc", bulk("Cu", "fcc", a=3.7)), ("Cu-bcc", bulk("Cu", "bcc", a=2.87)),
                   ("Al-fcc", bulk("Al", "fcc", a=4.1)), ("Cu-rattled", rattled),
                   ("Ni-hcp", bulk("Ni", "hcp", a=2.5, c=4.1))])


def test_batched_engine_matches_serial_reference_with_emt():
    potential = load_potential("emt", max_atoms_per_batch=6)  # small batches: exercise the splitting
    items = _metals()
    serial = [published(item, potential, PUBLISHED) for item in items]
    lockstep = batched(items, potential, PUBLISHED)
    for s, b in zip(serial, lockstep):
        assert (s.structure_id, s.status, s.verdicts) == (b.structure_id, b.status, b.verdicts)
        assert s.relax_steps == b.relax_steps  # the same FIRE trajectory, step for step
        assert s.n_displacements == b.n_displacements
        assert b.min_frequency_thz == pytest.approx(s.min_frequency_thz, abs=1e-6)
    assert [r.verdicts[-0.1] for r in lockstep] == [True, False, True, True, True]


def test_batched_engine_matches_serial_with_mattersim_model_code(tmp_path):
    import torch
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet

    torch.manual_seed(1)
    model = M3Gnet(device="cpu", num_blocks=2, units=32)
    path = tmp_path / "random.pth"
    torch.save({"model_name": "m3gnet", "model_args": model.model_args, "model": model.state_dict()}, path)
    potential = load_potential("mattersim", checkpoint=str(path))
    protocol = PUBLISHED.with_overrides(relax_fmax_ev_per_a=5.0, relax_target_fmax_ev_per_a=2.5,
                                        relax_cycles=1, relax_steps_per_cycle=4)
    items = _items([("NaCl", bulk("NaCl", "rocksalt", a=5.64)), ("MgO", bulk("MgO", "rocksalt", a=4.2))])
    serial = [published(item, potential, protocol) for item in items]
    lockstep = batched(items, potential, protocol)
    for s, b in zip(serial, lockstep):
        assert s.status == b.status == Status.OK
        assert s.verdicts == b.verdicts
        assert b.min_frequency_thz == pytest.approx(s.min_frequency_thz, abs=1e-4)


def test_step_limit_in_lockstep_is_not_converged_and_failures_stay_alone():
    emt = load_potential("emt")
    tight = dataclasses.replace(Recipe.of(PUBLISHED), fmax_ev_per_a=0.001, target_fmax_ev_per_a=0.0005, cycles=1,
                                steps_per_cycle=200)
    relaxed = relax_structures([bulk("Cu", "fcc", a=3.6)], emt.predict, tight)[0].atoms
    three_steps = dataclasses.replace(Recipe.of(PUBLISHED), cycles=1, steps_per_cycle=3)
    slow, fast = relax_structures([bulk("Cu", "fcc", a=4.0), relaxed], emt.predict, three_steps)
    assert slow.n_steps == 3 and not slow.converged
    assert fast.converged

    broken = Potential("nan-for-big-cells", NaNForces(nan_above_atoms=1), "cpu")
    items = _items([("Cu", bulk("Cu", "fcc", a=3.6)), ("Cu2", bulk("Cu", "fcc", a=3.6, orthorhombic=True))])
    one_ok, one_failed = batched(items, broken, PUBLISHED)
    assert one_ok.status == Status.PHONON_FAILED  # its 8-atom supercells get NaN, its relaxation did not
    assert one_failed.status == Status.RELAX_FAILED and "NaN" in one_failed.error


def test_tiered_screen_fires_on_batio3_and_agrees_with_full_protocol():
    chgnet = load_potential("chgnet")
    cubic = Structure(Lattice.cubic(4.0), ["Ba", "Ti", "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    items = [InputStructure("t/BaTiO3", "t", "BaTiO3", cubic),
             InputStructure("t/Si", "t", "Si", AseAtomsAdaptor.get_structure(bulk("Si", "diamond", a=5.45)))]
    full = batched(items, chgnet, PUBLISHED)
    tiered = batched(items, chgnet, TIERED)
    assert [r.verdicts for r in tiered] == [r.verdicts for r in full]
    assert tiered[0].phonon_method == "gamma_screen" and full[0].phonon_method == "supercell"
    # the unit-cell estimate of the soft mode is close to, not equal to, the supercell's (finite
    # displacements of a whole sublattice); the verdict is what must agree
    assert tiered[0].min_frequency_thz < -1.0
    assert tiered[0].min_frequency_thz == pytest.approx(full[0].min_frequency_thz, rel=0.15)
    assert tiered[0].n_displacements == full[0].n_displacements  # same displacements, in an 8x smaller cell
    assert tiered[1].phonon_method == "supercell"  # stable silicon is not screened out
    # Gamma is commensurate: the screened row carries the commensurate and beyond-acoustic-dips verdicts too,
    # so validate does not leave them out for a tiered run
    assert tiered[0].min_frequency_commensurate_thz == tiered[0].min_frequency_beyond_acoustic_dips_thz == \
        tiered[0].min_frequency_bz_thz < -1.0
    assert np.isclose(tiered[1].min_frequency_thz, full[1].min_frequency_thz)


def _drops_one_when_batched(call):
    """A batched call that loses its middle result whenever it is given more than one structure's worth."""
    def lossy(items):
        results = list(call(items))
        return results[:len(results) // 2] + results[len(results) // 2 + 1:] if len(items) > 8 else results
    return lossy


def test_a_batched_call_that_loses_a_result_never_hands_a_structure_anothers_numbers():
    """Results are matched to structures by position: a batched call that hands back one result too few would
    shift every later structure's forces onto its neighbour. It is refused and each structure is computed
    alone: the same relaxations and force constants as one structure at a time."""
    from phononbench.science.phonons import force_constants_many

    emt = load_potential("emt")
    cells = [bulk("Cu", "fcc", a=3.7), bulk("Al", "fcc", a=4.0), bulk("Ni", "fcc", a=3.6),
             bulk("Ag", "fcc", a=4.1), bulk("Pd", "fcc", a=3.9), bulk("Au", "fcc", a=4.1),
             bulk("Pt", "fcc", a=4.0), bulk("Cu", "bcc", a=2.9), bulk("Al", "bcc", a=3.2)]
    recipe = dataclasses.replace(Recipe.of(PUBLISHED), cycles=1, steps_per_cycle=5)
    alone = [relax_structures([c], emt.predict, recipe)[0] for c in cells]
    lossy = relax_structures(cells, _drops_one_when_batched(emt.predict), recipe)
    for one, other in zip(alone, lossy):
        assert not isinstance(other, Exception), other
        assert np.allclose(one.atoms.positions, other.atoms.positions) and np.allclose(one.atoms.cell, other.atoms.cell)
    reference = [force_constants_many([c], emt.forces)[0].force_constants for c in cells[:3]]
    shifted = force_constants_many(cells[:3], _drops_one_when_batched(emt.forces))
    assert all(np.allclose(r, s.force_constants) for r, s in zip(reference, shifted))


def test_residual_forces_are_taken_off_their_own_structure_in_a_batch():
    """With subtract_residual, each structure's undisplaced supercell rides in the same batched call as the
    displaced ones: a force that does not depend on the displacements (here a fixed, symmetry-breaking
    pattern added to EMT's forces, different for each structure) must leave each structure's force
    constants as EMT's alone, and it does not without the subtraction."""
    from phononbench.science.phonons import force_constants_many

    emt = load_potential("emt")

    def biased(structures):
        return [f + 0.003 * np.cos(np.arange(3 * len(a)).reshape(-1, 3) * (1.3 + len(a)))
                for f, a in zip(emt.forces(structures), structures)]

    cells = [bulk("Cu", "fcc", a=3.6), bulk("Al", "bcc", a=3.2), bulk("Ni", "hcp", a=2.5, c=4.1)]
    reference = [p.force_constants for p in force_constants_many(cells, emt.forces)]
    subtracted = force_constants_many(cells, biased, subtract_residual=True)
    plain = force_constants_many(cells, biased)
    for r, s, p in zip(reference, subtracted, plain):
        assert np.abs(s.force_constants - r).max() < 1e-6
        assert np.abs(p.force_constants - r).max() > 0.01
