"""The Born check of benchmarks/born_check.py (measured, not adopted): the relaxed-ion elastic tensor from
strained cells and the Gamma force constants, against straining and relaxing the atoms outright; fcc copper
Born-stable, bcc copper not."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.optimize import BFGS
from ase.units import GPa
from pymatgen.io.ase import AseAtomsAdaptor

from phononbench.compute.potentials import load_potential
from phononbench.science.phonons import force_constants_one

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from born_check import STRAIN, check, gamma_force_constants, relaxed_ion_elastic_tensor, strained_cells  # noqa: E402


def _emt_forces(cells):
    out = []
    for cell in cells:
        cell = cell.copy()
        cell.calc = EMT()
        out.append(cell.get_forces())
    return out


def _checked(atoms):
    """The check as the method makes it: the strained cells' stress and forces, the Gamma force constants."""
    cells = strained_cells(atoms)
    for cell in cells:
        cell.calc = EMT()
    phonon = force_constants_one(atoms, _emt_forces, (1, 1, 1))
    return relaxed_ion_elastic_tensor(atoms, [c.get_stress() for c in cells], [c.get_forces() for c in cells],
                                      gamma_force_constants(phonon)), cells


def test_strains_are_voigt_with_engineering_shears():
    cells = strained_cells(bulk("Cu", "fcc", a=3.6, cubic=True))
    assert len(cells) == 12
    stretched, sheared = cells[0].cell.array, cells[6].cell.array  # +xx and +yz
    assert stretched[0, 0] == pytest.approx(3.6 * (1 + STRAIN)) and stretched[1, 1] == pytest.approx(3.6)
    # engineering shear gamma_yz = STRAIN: each off-diagonal component is half of it
    assert sheared[1, 2] == pytest.approx(3.6 * STRAIN / 2) and sheared[2, 1] == pytest.approx(3.6 * STRAIN / 2)


def test_relaxed_ion_tensor_is_what_relaxing_the_strained_atoms_gives():
    """hcp's two atoms move under shear (their sites lack inversion): the tensor from the internal-strain forces
    and the Gamma force constants is the one from relaxing each strained cell's atoms outright, and the
    relaxation matters (the clamped-ion C66 is larger)."""
    hcp = bulk("Cu", "hcp", a=2.55, c=4.17)
    result, cells = _checked(hcp)
    outright, clamped = np.zeros((6, 6)), np.zeros((6, 6))
    for j in range(6):
        stresses = []
        for cell in cells[2 * j:2 * j + 2]:
            clamped_stress = cell.get_stress()
            BFGS(cell, logfile=None).run(fmax=1e-6, steps=500)
            stresses.append(cell.get_stress())
            clamped[:, j] += clamped_stress * (1 if len(stresses) == 1 else -1)
        outright[:, j] = (stresses[0] - stresses[1]) / (2 * STRAIN)
    outright, clamped = outright / GPa, clamped / (2 * STRAIN) / GPa
    assert np.abs(result.elastic_tensor_gpa - 0.5 * (outright + outright.T)).max() < 0.2
    assert clamped[5, 5] - result.elastic_tensor_gpa[5, 5] > 5  # the atoms' relaxation gives back > 5 GPa
    c = result.elastic_tensor_gpa  # hexagonal: C66 = (C11 - C12) / 2
    assert c[5, 5] == pytest.approx((c[0, 0] - c[0, 1]) / 2, abs=0.2)
    assert result.min_eigenvalue_gpa > 0


def test_fcc_copper_is_born_stable_and_bcc_copper_is_not():
    """EMT copper: fcc with cubic constants (C11 > C12, C44 > 0); bcc has C11 < C12, unstable to the
    tetragonal (Bain) shear that takes it to fcc."""
    fcc, _ = _checked(bulk("Cu", "fcc", a=3.6))
    c = fcc.elastic_tensor_gpa
    assert c[0, 0] == pytest.approx(c[1, 1], abs=0.1) and c[3, 3] == pytest.approx(c[5, 5], abs=0.1)
    assert c[0, 0] > c[0, 1] > 0 and c[3, 3] > 0 and fcc.min_eigenvalue_gpa > 0
    assert fcc.min_eigenvalue_gpa == pytest.approx(min(c[0, 0] - c[0, 1], 2 * c[3, 3], c[0, 0] + 2 * c[0, 1]), abs=0.1)
    bcc, _ = _checked(bulk("Cu", "bcc", a=2.87))
    c = bcc.elastic_tensor_gpa
    assert c[0, 0] < c[0, 1]
    assert bcc.min_eigenvalue_gpa == pytest.approx(c[0, 0] - c[0, 1], abs=0.1) and bcc.min_eigenvalue_gpa < 0


def test_the_check_does_not_depend_on_the_supercell_of_its_gamma_force_constants_where_nothing_is_soft():
    """fcc copper's one atom has no optical mode: any supercell's Gamma force constants give one tensor, in any
    axes (the relaxed cell as read back from a rotated CIF)."""
    from pymatgen.core import Structure

    fcc = bulk("Cu", "fcc", a=3.6)
    cif = AseAtomsAdaptor.get_structure(fcc).to(fmt="cif")
    rotated = AseAtomsAdaptor.get_atoms(Structure.from_str(cif, fmt="cif"))
    emt = load_potential("emt")
    values = [check(atoms, emt, spec).min_eigenvalue_gpa for atoms, spec in
              [(fcc, "1x1x1"), (fcc, "2x2x2"), (rotated, "1x1x1")]]
    assert values == pytest.approx([values[0]] * 3, abs=0.05) and values[0] > 50
