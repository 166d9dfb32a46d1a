"""Potentials whose weights ship in their wheels, on real physics (no network needed)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor

from phononbench.science.ingest import InputStructure
from phononbench.compute.potentials import load_potential
from phononbench.records import Status
from phononbench.settings import PUBLISHED
from tests.helpers import published


@pytest.mark.parametrize("name", ["chgnet", "sevennet"])
def test_shipped_potential_loads_offline_with_checksum(name):
    potential = load_potential(name)
    assert potential.checkpoint_sha256 and len(potential.checkpoint_sha256) == 64
    forces = potential.forces([bulk("Si", "diamond", a=5.43)])[0]
    assert forces.shape == (2, 3) and np.abs(forces).max() < 1e-3  # symmetric sites: no net force


def test_chgnet_finds_diamond_silicon_stable():
    item = InputStructure("t/Si", "t", "Si", AseAtomsAdaptor.get_structure(bulk("Si", "diamond", a=5.45)))
    result = published(item, load_potential("chgnet"), PUBLISHED.with_overrides(model="chgnet"))
    assert result.status == Status.OK, result.error
    assert result.spacegroup_number == 227
    assert result.verdicts[-0.1] is True
    assert result.min_frequency_excl_acoustic_gamma_thz > 0


def test_cubic_batio3_has_an_imaginary_polar_mode_at_gamma():
    """The ferroelectric instability: an optical mode at Gamma, below the three acoustic zeros."""
    from pymatgen.core import Lattice, Structure

    cubic = Structure(Lattice.cubic(4.0), ["Ba", "Ti", "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    result = published(InputStructure("t/BaTiO3", "t", "BaTiO3", cubic), load_potential("chgnet"), PUBLISHED)
    assert result.status == Status.OK and result.spacegroup_number == 221  # FixSymmetry kept it cubic
    assert result.min_frequency_thz < -1.0
    assert result.min_frequency_qpoint == [0.0, 0.0, 0.0]
    assert not result.min_frequency_is_acoustic_gamma  # it sorts below the acoustic modes: must not be mistaken
    assert result.verdicts == {-0.1: False, -0.001: False}

