"""Stages 3-5 on real physics: relaxation, phonopy phonons and the verdict, with ASE's EMT."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from pymatgen.io.ase import AseAtomsAdaptor

from phononbench.science.ingest import InputStructure
from phononbench.compute.potentials import Potential, load_potential
from phononbench.records import Status
from phononbench.settings import PUBLISHED
from tests.helpers import published


def _published_row(atoms, potential, protocol=PUBLISHED):
    item = InputStructure("t/x", "t", "x", AseAtomsAdaptor.get_structure(atoms))
    return published(item, potential, protocol)


@pytest.fixture(scope="module")
def emt():
    return load_potential("emt")


def test_fcc_copper_is_stable(emt):
    result = _published_row(bulk("Cu", "fcc", a=3.7), emt)  # strained start: the relaxation has work to do
    assert result.status == Status.OK
    assert result.relax_fmax_ev_per_a < PUBLISHED.relax_fmax_ev_per_a
    assert result.verdicts == {-0.1: True, -0.001: True}
    # the lowest frequency is numerical noise of an acoustic mode at Gamma
    assert abs(result.min_frequency_thz) < 1e-3 and result.min_frequency_is_acoustic_gamma
    assert result.min_frequency_excl_acoustic_gamma_thz > 0
    assert result.spacegroup_number == 225 and result.crystal_system == "cubic"
    assert result.n_displacements == 1  # one symmetry-reduced displacement for fcc


def test_bcc_copper_is_unstable(emt):
    result = _published_row(bulk("Cu", "bcc", a=2.87), emt)
    assert result.status == Status.OK
    assert result.spacegroup_number == 229  # FixSymmetry kept the bcc cell
    assert result.min_frequency_thz < -0.5
    assert not result.min_frequency_is_acoustic_gamma
    assert result.verdicts == {-0.1: False, -0.001: False}


def test_conventional_and_primitive_cells_agree(emt):
    """bcc Cu under EMT is unstable, softest at the zone boundary (-1.14 THz). In its 2-atom cubic cell the
    published path (that cell's own seekpath lines) passes the soft branch only at (1/3, 0, 1/3) of a
    segment, at -0.99 THz; the Brillouin-zone verdict finds -1.14 THz in both cells. At a threshold between
    the two, the published verdicts of the two cells differ and the Brillouin-zone ones must not: a
    Brillouin-zone verdict that looked only where the published one looks would fail here."""
    threshold = -1.05
    protocol = PUBLISHED.with_overrides(thresholds_thz=(threshold,))
    primitive = _published_row(bulk("Cu", "bcc", a=2.87), emt, protocol)
    conventional = _published_row(bulk("Cu", "bcc", a=2.87, cubic=True), emt, protocol)
    assert primitive.min_frequency_bz_thz == pytest.approx(conventional.min_frequency_bz_thz, abs=0.01)
    assert primitive.min_frequency_bz_thz < threshold
    assert conventional.bz_verdicts == primitive.bz_verdicts == {threshold: False}
    assert conventional.min_frequency_thz > threshold > primitive.min_frequency_thz  # the published quirk, kept
    assert conventional.verdicts != primitive.verdicts
    assert conventional.energy_per_atom_ev == pytest.approx(primitive.energy_per_atom_ev, abs=1e-5)


def test_step_limit_means_not_converged(emt):
    protocol = PUBLISHED.with_overrides(relax_cycles=1, relax_steps_per_cycle=2)
    result = _published_row(bulk("Cu", "fcc", a=4.0), emt, protocol)
    assert result.status == Status.RELAX_NOT_CONVERGED
    assert result.relax_steps == 2 and "after 2 steps" in result.error
    assert result.relaxed_cif and result.min_frequency_thz is None


class NaNForces(Calculator):
    """A calculator that breaks the way a potential can: NaN forces on some geometry."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, nan_above_atoms: int):
        super().__init__()
        self.nan_above_atoms, self.emt = nan_above_atoms, EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.emt.calculate(atoms, ["energy", "forces", "stress"], system_changes)
        self.results = dict(self.emt.results)
        if len(atoms) > self.nan_above_atoms:
            self.results["forces"] = np.full_like(self.results["forces"], np.nan)


def test_nan_forces_while_relaxing_is_relax_failed():
    result = _published_row(bulk("Cu", "fcc", a=3.7), Potential("nan", NaNForces(nan_above_atoms=0), "cpu"))
    assert result.status == Status.RELAX_FAILED and "NaN" in result.error, result.error


def test_nan_forces_in_phonons_is_phonon_failed_and_unstable():
    # the one-atom cell relaxes fine; the 8-atom displaced supercells get NaN forces
    result = _published_row(bulk("Cu", "fcc", a=3.6), Potential("nan", NaNForces(nan_above_atoms=1), "cpu"))
    assert result.status == Status.PHONON_FAILED and "NaN" in result.error
    assert result.verdicts == {-0.1: False, -0.001: False}


def test_element_outside_emt_is_relax_failed(emt):
    result = _published_row(bulk("Si", "diamond", a=5.43), emt)
    assert result.status == Status.RELAX_FAILED and result.error

