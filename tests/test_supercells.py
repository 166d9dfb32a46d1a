"""Supercells sized by length, the accurate preset, dimensionality of bonded crystals, published fidelity
(no atom limit, phonon failures counted as the published script counts them), potentials by name."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from ase.build import bulk, mx2
from ase.geometry import cellpar_to_cell
from ase.geometry.minkowski_reduction import minkowski_reduce
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from phononbench.science.ingest import InputStructure
from phononbench.compute.potentials import load_potential
from phononbench.records import Col, Status, counts, is_relaxed
from phononbench.settings import ACCURATE, PUBLISHED, preset
from phononbench.science.stability import dimensionality, separated_by_vacuum
from phononbench.science.supercells import (_lattice_widths, _pair_distances, supercell_for_length, supercell_size, widths,
                                           zone_boundary_supercell)
from tests.helpers import batched

# the accurate preset with the long-range cut (CHGNet's noise needs it; refused on supercells under 10 A)
CUT = dataclasses.replace(ACCURATE, force_constants_cutoff_at_half_width=True)


def _smallest_by_brute_force(cell: np.ndarray, length: float, up_to: int, rotations=None) -> int | None:
    """Every sublattice (Hermite normal form) of 1..up_to cells; wide enough when its reciprocal lattice,
    Minkowski-reduced, has all three vectors no longer than 1/L (its widest basis then has every width >= L).
    With ``rotations``, only sublattices that each of them maps onto itself."""
    for n in range(1, up_to + 1):
        for a in (a for a in range(1, n + 1) if n % a == 0):
            for c in (c for c in range(1, n // a + 1) if (n // a) % c == 0):
                f = n // (a * c)
                for b, d, e in itertools.product(range(a), range(a), range(c)):
                    form = np.array([[a, 0, 0], [b, c, 0], [d, e, f]])
                    if rotations is not None and not all(  # R maps each row vector m to R m, which must be whole in the rows
                            np.allclose(x := np.linalg.solve(form.T, r @ form.T), np.rint(x)) for r in rotations):
                        continue
                    rows = form @ cell
                    reduced, _ = minkowski_reduce(np.linalg.inv(rows).T)
                    if np.linalg.norm(reduced, axis=1).max() <= 1 / length + 1e-9:
                        return n
    return None


# cells and lengths (A) whose smallest supercells have 7-30 cells: the brute force stays quick
CELLS = {
    "hexagonal (hcp Mg)": (bulk("Mg", "hcp", a=3.21, c=5.21).cell[:], (8.0, 9.0)),
    "fcc primitive (skewed, 60 degrees)": (bulk("Al", "fcc", a=4.05).cell[:], (6.0, 7.0)),
    "triclinic": (cellpar_to_cell([4.1, 5.3, 6.2, 71.0, 103.0, 118.0]), (8.0, 10.0)),
    "monoclinic, long c": (cellpar_to_cell([3.3, 3.9, 9.5, 90.0, 97.0, 90.0]), (8.0, 10.0)),
}


@pytest.mark.parametrize("name,length", [(name, length) for name, (_, lengths) in CELLS.items() for length in lengths])
def test_supercell_by_length_is_wide_enough_and_the_smallest_such(name, length):
    cell = CELLS[name][0]
    matrix = supercell_for_length(cell, length)
    assert np.allclose(matrix, np.rint(matrix)) and np.linalg.det(matrix) > 0
    supercell = matrix.T @ cell  # phonopy's convention: columns of the unit cell times the matrix
    assert widths(supercell).min() >= length - 1e-6
    assert supercell_size(matrix) == _smallest_by_brute_force(cell, length, supercell_size(matrix))


@pytest.mark.parametrize("name", CELLS)
def test_a_zone_boundary_supercell_is_wide_enough_and_makes_every_half_point_exact(name):
    """Every q-point with coordinates 0 or 1/2 is commensurate (M^T q whole), where the plain supercell by
    length leaves some to interpolation."""
    from phonopy.harmonic.dynmat_to_fc import get_commensurate_points

    cell, (length, _) = CELLS[name]
    length *= 1.5
    matrix = zone_boundary_supercell(cell, length)
    assert widths(matrix.T @ cell).min() >= length - 1e-6
    half_points = np.array(list(itertools.product((0, 0.5), repeat=3)))
    assert np.allclose(half_points @ matrix, np.rint(half_points @ matrix))
    commensurate = np.asarray(get_commensurate_points(matrix))
    for q in half_points:  # and phonopy's commensurate points include each (up to a reciprocal lattice vector)
        assert np.any(np.all(np.isclose((commensurate - q + 0.5) % 1, 0.5), axis=1))
    plain = supercell_for_length(cell, length)
    assert supercell_size(plain) <= supercell_size(matrix)


SYMMETRIC = {"fcc Cu primitive": bulk("Cu", "fcc", a=3.61), "hcp Mg": bulk("Mg", "hcp", a=3.21, c=5.21),
             "wurtzite ZnO": bulk("ZnO", "wurtzite", a=3.25, c=5.2)}


@pytest.mark.parametrize("name", SYMMETRIC)
def test_a_supercell_that_keeps_the_crystals_rotations_is_the_smallest_such(name):
    """At 12zb each of these cells' plain zone-boundary supercell loses rotations of the point group; with
    ``-sym`` every rotation maps the supercell's lattice onto itself, it is at least as wide, and no smaller
    lattice at least half as wide keeps them (the zone-boundary supercell is twice it)."""
    from phononbench.science.phonons import crystal_rotations, supercell_matrix
    from phononbench.science.supercells import keeps_rotations

    atoms = SYMMETRIC[name]
    cell, rotations = atoms.cell[:], crystal_rotations(atoms)
    plain = supercell_matrix(atoms, None, 12.0, None, zone_boundary=True)
    symmetric = supercell_matrix(atoms, None, 12.0, None, zone_boundary=True, keep_rotations=True)
    assert not keeps_rotations(plain, rotations)[0] and keeps_rotations(symmetric, rotations)[0]
    assert widths(symmetric.T @ cell).min() >= 12.0 - 1e-6 and np.allclose(symmetric % 2, 0)
    half = symmetric // 2
    assert supercell_size(half) == _smallest_by_brute_force(cell, 6.0, supercell_size(half), rotations)
    assert supercell_size(plain) <= supercell_size(symmetric)


def test_a_supercell_that_keeps_the_rotations_does_not_depend_on_the_cells_basis():
    """fcc copper given in a sheared basis gets the supercell its reduced basis gets (it once got 864 cells for
    512), and at 15 A (not zone-boundary) the body-centred cube of 432 cells, 15.3 A wide, not the 500-cell
    simple cube (both keep all 48 rotations); over the cap, the message names the rule."""
    from phononbench.science.phonons import SupercellTooLarge, crystal_rotations, supercell_matrix
    from phononbench.science.supercells import keeps_rotations

    copper = bulk("Cu", "fcc", a=3.61)
    sheared = Atoms("Cu", cell=np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]]) @ copper.cell[:], pbc=True)
    for atoms in (copper, sheared):
        matrix = supercell_matrix(atoms, None, 15.0, None, zone_boundary=True, keep_rotations=True)
        assert supercell_size(matrix) == 512 and keeps_rotations(matrix, crystal_rotations(atoms))[0]
    cube = supercell_matrix(copper, None, 15.0, None, keep_rotations=True)
    assert supercell_size(cube) == 432 and widths(cube.T @ copper.cell[:]).min() >= 15.0
    with pytest.raises(SupercellTooLarge, match=r"\(15zb-sym\) has 512 atoms"):
        supercell_matrix(copper, None, 15.0, 400, zone_boundary=True, keep_rotations=True)


def test_a_cell_with_no_rotation_but_inversion_gets_the_plain_supercell():
    """Identity and inversion keep every lattice: a triclinic cell's -sym supercell is its plain one."""
    from phononbench.science.phonons import supercell_matrix

    triclinic = Atoms("Cu", cell=CELLS["triclinic"][0], pbc=True)
    assert np.array_equal(supercell_matrix(triclinic, None, 15.0, None, True, keep_rotations=True),
                          supercell_matrix(triclinic, None, 15.0, None, True))


def test_equivalent_q_points_get_one_frequency_on_a_supercell_that_keeps_the_rotations():
    """fcc copper under EMT on its 10zb supercell: the plain one keeps 6 of the 48 rotations and its interpolated
    frequencies at q-points the crystal makes equivalent differ (by 7e-4 THz; CaO under CHGNet on its 15zb, by
    1.1 THz); the one that keeps them all gives one frequency."""
    from phononbench.science.phonons import crystal_rotations, force_constants_one, frequencies_at, supercell_matrix

    copper, emt = bulk("Cu", "fcc", a=3.61), load_potential("emt")
    q = np.random.default_rng(0).random((20, 3)) - 0.5
    spread = {}
    for keep in (False, True):
        phonon = force_constants_one(copper, emt.forces, supercell_matrix(copper, None, 10.0, None, True, keep))
        at_q = frequencies_at(phonon, q).frequencies_thz
        spread[keep] = max(np.abs(frequencies_at(phonon, q @ r).frequencies_thz - at_q).max()
                           for r in crystal_rotations(copper))
    assert spread[False] > 1e-4 and spread[True] < 1e-6


def test_the_zone_mesh_keeps_every_q_point_the_supercells_symmetry_does_not_make_equivalent():
    """On copper's plain 10zb supercell (6 of 48 rotations kept) the irreducible mesh is reduced by those 6 only:
    every q-point of the full mesh has the frequencies of one it keeps, where reducing by all 48 left out
    q-points whose interpolated frequencies differ. On the -sym supercell the mesh is the crystal's irreducible one."""
    import spglib

    from phononbench.science.phonons import force_constants_one, frequencies_at, irreducible_mesh, supercell_matrix

    copper, emt, mesh = bulk("Cu", "fcc", a=3.61), load_potential("emt"), np.array([6, 6, 6])
    full = np.array(list(itertools.product(*(range(-2, 4),) * 3))) / mesh
    for keep in (False, True):
        phonon = force_constants_one(copper, emt.forces, supercell_matrix(copper, None, 10.0, None, True, keep))
        reduced = irreducible_mesh(phonon, mesh)
        kept, every = (frequencies_at(phonon, q).frequencies_thz for q in (reduced, full))
        nearest = np.abs(every[:, None] - kept[None]).max(axis=2).min(axis=1)
        assert nearest.max() < 1e-9  # each q-point's frequencies are those of one the reduced mesh keeps
        crystal = spglib.get_ir_reciprocal_mesh(mesh, (copper.cell[:], copper.get_scaled_positions(), [29]))[0]
        assert (len(reduced) > len(np.unique(crystal))) != keep

def test_the_zone_path_on_a_supercell_that_loses_rotations_does_not_depend_on_how_the_cell_is_oriented():
    """bcc Al on a 1x2x2 (12 of 48 rotations kept): seekpath's path passes through one copy of N or another as
    the same cell is turned in space, and those copies have other interpolated frequencies. The zone takes the
    path with its copies under the rotations the supercell loses, so both orientations give the same lowest
    frequency (the path alone did not: -2.306 against -2.277 THz here); a 2x2x2 keeps the path as it is."""
    from scipy.spatial.transform import Rotation

    from phononbench.science.phonons import (force_constants_one, frequencies_at, high_symmetry_path, loses_rotations,
                                             star_of, supercell_rotations, zone_frequencies)

    emt, aluminium = load_potential("emt"), bulk("Al", "bcc", a=3.24)
    turned = aluminium.copy()
    turned.set_cell(aluminium.cell[:] @ Rotation.from_euler("xyz", [30, 50, 70], degrees=True).as_matrix().T,
                    scale_atoms=True)
    lowest, path_alone = [], []
    for cell in (aluminium, turned):
        phonon = force_constants_one(cell, emt.forces, np.diag([1, 2, 2]))
        lowest.append(zone_frequencies(phonon)["path"].frequencies_thz.min())
        path_alone.append(frequencies_at(phonon, np.concatenate(high_symmetry_path(phonon)[0])).frequencies_thz.min())
    assert abs(lowest[0] - lowest[1]) < 1e-6 and lowest[0] < -1.0, lowest
    assert abs(path_alone[0] - path_alone[1]) > 0.01, path_alone  # what the star mends
    assert min(path_alone) >= lowest[0] - 1e-9
    keeps = force_constants_one(aluminium, emt.forces, np.diag([2, 2, 2]))
    q = np.random.default_rng(0).random((4, 3))
    assert np.array_equal(star_of(keeps, q), q) and not loses_rotations(keeps) and loses_rotations(phonon)
    # a cell that is not primitive (bcc doubled along c): its 2x2x1 supercell has rotations its lattice lacks,
    # not integer in its basis; those are left out, the rest a group of the lattice's rotations
    doubled = Atoms("Al2", cell=aluminium.cell[:] * np.array([[1], [1], [2]]), pbc=True,
                    positions=[[0, 0, 0], aluminium.cell[2]])
    rotations = supercell_rotations(force_constants_one(doubled, emt.forces, np.diag([2, 2, 1])))
    assert 1 < len(rotations) < 48 and set(np.rint(np.abs(np.linalg.det(rotations))).astype(int)) == {1}
    products = {(a @ b).tobytes() for a in rotations for b in rotations}
    assert products == {r.tobytes() for r in rotations}  # closed under products


@pytest.mark.parametrize("name", ["mp-9252", "mp-7492"])
def test_the_same_crystal_in_another_basis_gets_the_same_supercell_lattice(data_dir, name):
    """HgS and La2B2O6 (tests/data/phonondb_ties/SOURCES.md): their smallest 15zb-sym supercell is one of several
    lattices of one size, equally wide (HgS: in every direction, told apart only by the atoms). Written in other
    bases (random unimodular changes, the atoms where they were), each must still get the same lattice, of the
    smallest size that keeps the rotations."""
    from ase.io import read

    from phononbench.science.phonons import crystal_rotations, supercell_matrix

    atoms = read(data_dir / "phonondb_ties" / f"{name}.POSCAR-unitcell", format="vasp")
    cell = atoms.cell[:]
    matrix = supercell_matrix(atoms, None, 15.0, None, True, True)
    lattice = matrix.T @ cell
    assert _smallest_by_brute_force(cell, 7.5, supercell_size(matrix) // 8, crystal_rotations(atoms)) == supercell_size(matrix) // 8
    rng = np.random.default_rng(3)
    for _ in range(4):
        change = np.eye(3, dtype=int)
        for i, j in rng.permutation(list(itertools.permutations(range(3), 2)))[:3]:
            change[i] += rng.choice([-1, 1]) * change[j]
        rewritten = atoms.copy()
        rewritten.set_cell(change @ cell, scale_atoms=False)
        rewritten.wrap()
        other = supercell_matrix(rewritten, None, 15.0, None, True, True).T @ rewritten.cell[:]
        basis_change = other @ np.linalg.inv(lattice)
        assert np.allclose(basis_change, np.rint(basis_change), atol=1e-6), f"another lattice in basis {change.tolist()}"
        assert round(abs(np.linalg.det(basis_change))) == 1
        # without -sym the basis may pick among lattices a rotation of the crystal maps onto each other: the same
        # widths and the same distances between atoms and periodic images, so the same physics, rotated
        plain = supercell_matrix(atoms, None, 15.0, None, True).T @ cell
        other = supercell_matrix(rewritten, None, 15.0, None, True).T @ rewritten.cell[:]
        assert np.allclose(*_lattice_widths(np.stack([plain, other])), atol=1e-6)
        sites = (atoms.positions, atoms.numbers)
        assert np.allclose(_pair_distances(plain, cell, sites), _pair_distances(other, cell, sites), atol=1e-6)


def test_a_cell_that_is_not_finite_is_refused_in_one_line():
    """spglib crashes the process on a cell of NaNs; the supercell is refused first, with a ValueError the
    pipeline records as the structure's reason."""
    from phononbench.science.phonons import supercell_matrix

    broken = bulk("Cu", "fcc", a=3.61)
    broken.positions[0, 0] = np.nan
    for keep_rotations in (False, True):
        with pytest.raises(ValueError, match="not finite"):
            supercell_matrix(broken, None, 15.0, None, True, keep_rotations)


def test_the_hexagonal_supercell_is_smaller_than_any_diagonal_one():
    cell = CELLS["hexagonal (hcp Mg)"][0]
    matrix = supercell_for_length(cell, 8.0)
    diagonal = np.prod(np.ceil(8.0 / widths(cell)))
    assert supercell_size(matrix) == 12 < diagonal  # a sqrt(3) x sqrt(3) in-plane cell, not 3x3
    assert np.count_nonzero(matrix - np.diag(np.diag(matrix))) > 0


def test_supercell_setting_is_checked_before_any_work():
    from phononbench.errors import SetupError

    assert PUBLISHED.with_supercell("3x3x2").supercell == (3, 3, 2)
    assert PUBLISHED.with_supercell("15A").supercell_min_length_a == 15.0
    assert PUBLISHED.with_supercell("15zb").supercell_zone_boundary and not ACCURATE.with_supercell("15").supercell_zone_boundary
    assert PUBLISHED.with_supercell("12 A zb").supercell_min_length_a == 12.0
    assert not ACCURATE.with_supercell("2x2x2").ensure_runnable().supercell_zone_boundary
    with pytest.raises(SetupError, match="zone-boundary"):
        dataclasses.replace(PUBLISHED, supercell_zone_boundary=True).ensure_runnable()
    keeping = PUBLISHED.with_supercell("15zb-sym")
    assert keeping.supercell_keeps_rotations and keeping.supercell_zone_boundary and keeping.supercell_min_length_a == 15
    assert not keeping.with_supercell("15zb").supercell_keeps_rotations
    assert not keeping.with_supercell("2x2x2").ensure_runnable().supercell_keeps_rotations
    with pytest.raises(SetupError, match="rotations"):
        dataclasses.replace(PUBLISHED, supercell_keeps_rotations=True).ensure_runnable()
    for bad in ("2x2", "0x1x1", "-5", "abc", "1e9", "1e-300", "100x100x100", "2x2x2zb", "zb", "1zb", "2x2x2-sym", "-sym"):
        with pytest.raises(SetupError, match="supercell"):
            PUBLISHED.with_supercell(bad)
    assert preset("accurate") is ACCURATE and ACCURATE.ensure_runnable() and ACCURATE.headline_verdict == "brillouin_zone"
    with pytest.raises(SetupError, match="cutoff"):  # half of a 2x2x2's width would cut real neighbours off
        CUT.with_supercell("2x2x2").ensure_runnable()


def _item(name, atoms):
    return InputStructure(f"t/{name}", "t", name, AseAtomsAdaptor.get_structure(atoms))


@pytest.fixture(scope="module")
def chgnet():
    return load_potential("chgnet")


def test_a_verdict_flips_from_the_2x2x2_to_a_supercell_by_length(data_dir, chgnet):
    """RbH (rock salt, stable in DFT): CHGNet on the published 2x2x2 (6.9 A wide) finds a soft mode below
    -0.1 THz; on the smallest supercell 12 A wide, with CHGNet's long-range noise cut off, it is stable."""
    structure = Structure.from_file(data_dir / "phonondb_subset" / "poscar_unitcell" / "mp-24721.POSCAR-unitcell")
    item = InputStructure("t/RbH", "t", "RbH", structure)
    small = batched([item], chgnet, PUBLISHED)[0]
    large = batched([item], chgnet, CUT.with_supercell("12"))[0]
    assert small.status == large.status == Status.OK
    assert small.verdicts[-0.1] is False and small.bz_verdicts[-0.1] is False
    assert large.bz_verdicts[-0.1] is True and large.verdicts[-0.1] is True
    assert small.supercell_matrix == [2, 0, 0, 0, 2, 0, 0, 0, 2] and small.n_supercell_atoms == 8 * len(structure)
    matrix = np.reshape(large.supercell_matrix, (3, 3))
    assert large.n_supercell_atoms == supercell_size(matrix) * len(structure) > small.n_supercell_atoms
    cell = AseAtomsAdaptor.get_atoms(Structure.from_str(large.relaxed_cif, fmt="cif")).cell[:]
    assert widths(matrix.T @ cell).min() >= 12.0 - 0.05  # the relaxed cell (its CIF rounds the lattice)


def test_the_half_width_cut_makes_sevennet_l3i5_soft_where_dft_is_stable(data_dir):
    """Rb4I2O (DFT-stable): SevenNet-l3i5 on the smallest supercell 15 A wide is stable with the force constants
    as produced (the accurate preset on that supercell, ``--supercell 15``). Its supercell's narrowest width is twice a lattice translation (a + b),
    so 224 pairs sit exactly at half the width, the radius of the cut the preset used to make: keep them and
    zero the pairs beyond (a radius a hair above half the width), and Gamma, an exact q-point, goes soft; zero
    them too (a hair below), and it does not. The cut's verdict hung on the last digits of the positions."""
    from phononbench.science.phonons import displace, displaced_supercells, produce_force_constants, zone_frequencies
    from phononbench.science.stability import assess_brillouin_zone

    assert not ACCURATE.force_constants_cutoff_at_half_width
    structure = Structure.from_file(data_dir / "phonondb_rb4i2o" / "mp-760417.POSCAR-unitcell")
    potential = load_potential("sevennet-l3i5")
    row = batched([InputStructure("t/Rb4I2O", "t", "Rb4I2O", structure)], potential, ACCURATE.with_supercell("15"))[0]
    assert row.n_supercell_atoms == 112
    assert row.status == Status.OK and row.bz_verdicts[-0.1] is True and row.min_frequency_bz_thz > -0.05
    assert row.min_frequency_bz_with_acoustic_dips_thz > -0.05  # no acoustic dip set aside to get there
    relaxed = AseAtomsAdaptor.get_atoms(Structure.from_str(row.relaxed_cif, fmt="cif"))
    phonon = displace(relaxed, np.reshape(row.supercell_matrix, (3, 3)), ACCURATE.displacement_a)
    produce_force_constants(phonon, potential.forces(displaced_supercells(phonon)))
    as_produced = phonon.force_constants.copy()
    half_width = widths(np.asarray(phonon.supercell.cell)).min() / 2
    lowest = {}
    for radius in (half_width - 1e-3, half_width + 1e-3):
        phonon.force_constants = as_produced.copy()
        phonon.set_force_constants_zero_with_radius(radius)
        phonon.symmetrize_force_constants(show_drift=False)  # the sum rule again, as the cut did
        lowest[radius] = assess_brillouin_zone(zone_frequencies(phonon), (-0.1,))
    below, above = lowest.values()
    assert below.stable[-0.1] is True
    assert above.stable[-0.1] is False and above.min_frequency_thz < -0.2
    assert np.allclose(above.qpoint, np.rint(above.qpoint))  # Gamma (or its image): exact on any supercell


def test_residual_forces_are_subtracted_where_the_potential_breaks_inversion_symmetry(data_dir):
    """TbCl2F (C2/c): its F atoms sit on inversion centres, so phonopy displaces them by +u only and takes
    -u from the inversion. SevenNet's models are not inversion-equivariant (is_parity False): the undisplaced
    crystal already has forces (on F too, where inversion allows none), and built from +u alone they enter
    the force constants as F0 / u. The reference takes both +u and -u from the potential (central
    differences: F0 cancels). The accurate preset's settings match it; without the subtraction they do not."""
    from phonopy import Phonopy

    from phononbench.compute.method import phonon_settings
    from phononbench.science.phonons import (displaced_supercells, force_constants_many, frequencies_at,
                                             to_phonopy_atoms)

    assert ACCURATE.subtract_residual_forces and not PUBLISHED.subtract_residual_forces
    unitcell = AseAtomsAdaptor.get_atoms(Structure.from_file(data_dir / "phonondb_tbcl2f" / "mp-560119.POSCAR-unitcell"))
    potential = load_potential("sevennet-0")
    assert np.abs(potential.forces([unitcell])[0][unitcell.numbers == 9]).max() > 1e-3  # on the inversion centres
    supercell = np.diag([1, 2, 2])
    qpoints = np.array([[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]])

    central = Phonopy(to_phonopy_atoms(unitcell), supercell_matrix=supercell, primitive_matrix="P")
    central.generate_displacements(distance=ACCURATE.displacement_a, is_diagonal=False, is_plusminus=True)
    forces = np.array(potential.forces(displaced_supercells(central)))
    central.forces = forces - forces.mean(axis=1, keepdims=True)
    central.produce_force_constants()
    central.symmetrize_force_constants()
    reference = frequencies_at(central, qpoints).frequencies_thz

    lowest = {}
    for subtract in (True, False):
        settings = {**phonon_settings(ACCURATE), "subtract_residual": subtract}
        phonon = force_constants_many([unitcell], potential.forces, lambda cell: supercell, **settings)[0]
        assert len(phonon.displacements) < len(central.displacements)  # some -u taken from symmetry
        lowest[subtract] = np.abs(frequencies_at(phonon, qpoints).frequencies_thz - reference).max()
    assert lowest[True] < 0.01
    assert lowest[False] > 0.2


# Dimensionality: experimental lattice constants (A)
def _graphite():
    a, c = 2.464, 6.711
    return Atoms("C4", cell=[[a, 0, 0], [-a / 2, a * 3 ** 0.5 / 2, 0], [0, 0, c]], pbc=True,
                 scaled_positions=[[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])


def _bulk_mos2():
    a, c, z = 3.16, 12.29, 0.621  # 2H-MoS2, P6_3/mmc
    return Atoms("Mo2S4", cell=[[a, 0, 0], [-a / 2, a * 3 ** 0.5 / 2, 0], [0, 0, c]], pbc=True,
                 scaled_positions=[[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75], [1 / 3, 2 / 3, z],
                                   [1 / 3, 2 / 3, 0.5 - z], [2 / 3, 1 / 3, z - 0.5], [2 / 3, 1 / 3, 1 - z]])


def _solid_co2():
    """Dry ice, Pa-3, a = 5.62 A, O at (x, x, x) with x = 0.1185: CO2 molecules 3.1 A apart."""
    from pymatgen.core import Lattice

    return AseAtomsAdaptor.get_atoms(Structure.from_spacegroup("Pa-3", Lattice.cubic(5.624), ["C", "O"],
                                                               [[0, 0, 0], [0.1185, 0.1185, 0.1185]]))


CRYSTALS = {
    "fcc Al": (bulk("Al", "fcc", a=4.05), "3D", False), "bcc Li": (bulk("Li", "bcc", a=3.51), "3D", False),
    "fcc Pb": (bulk("Pb", "fcc", a=4.95), "3D", False), "bcc Na": (bulk("Na", "bcc", a=4.23), "3D", False),
    "fcc Cu": (bulk("Cu", "fcc", a=3.61), "3D", False), "hcp Mg": (bulk("Mg", "hcp", a=3.21, c=5.21), "3D", False),
    "rock salt NaCl": (bulk("NaCl", "rocksalt", a=5.64), "3D", False),
    "perovskite SrTiO3": (Atoms("SrTiO3", cell=[3.905] * 3, pbc=True, scaled_positions=[
        [0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]), "3D", False),
    # van der Waals layers: bonded in 2D, but the layers touch: a crystal, not layers in vacuum
    "graphite": (_graphite(), "2D", False), "bulk MoS2": (_bulk_mos2(), "2D", False),
    "MoS2 monolayer in vacuum": (mx2("MoS2", a=3.16, vacuum=8.0), "2D", True),
    "molecular crystal (dry ice)": (_solid_co2(), "0D", False),
    "carbon chain": (Atoms("C2", positions=[[0, 0, 0], [0, 0, 1.28]], cell=[10, 10, 2.56], pbc=True), "1D", True),
    "atom in a box": (Atoms("Ar", cell=[9, 9, 9], pbc=True), "0D", True),
}


@pytest.mark.parametrize("name", CRYSTALS)
def test_dimensionality_of_bonded_crystals(name):
    atoms, bonded, vacuum = CRYSTALS[name]
    atoms = atoms.copy()
    atoms.pbc = True
    assert dimensionality(atoms) == bonded
    assert separated_by_vacuum(atoms) is vacuum


def test_a_64_atom_cell_is_computed_under_the_published_preset():
    emt = load_potential("emt")
    cell = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 4))
    assert len(cell) == 64
    row = batched([_item("Cu64", cell)], emt, PUBLISHED)[0]
    assert row.status == Status.OK and row.n_supercell_atoms == 512 and row.verdicts[-0.1] is True
    assert PUBLISHED.max_atoms is None


def test_phonon_failures_counted_as_the_published_script_counts_them():
    """The published script counts a structure as relaxed once its force constants exist: a failure of the
    forces (here NaN forces from the potential) leaves the count, a failure after them does not; a supercell
    over our own atom cap is our choice, so it stays in the count as unstable. All are in n_phonon_failed."""
    emt = load_potential("emt")
    capped = PUBLISHED.with_overrides(max_supercell_atoms=16)
    rows = batched([_item("Cu1", bulk("Cu", "fcc", a=3.61)), _item("Cu4", bulk("Cu", "fcc", a=3.61, cubic=True))],
                   emt, capped)
    assert rows[0].status == Status.OK and rows[0].has_force_constants is True  # 8 atoms: under the cap
    assert rows[1].status == Status.PHONON_FAILED and rows[1].has_force_constants is None
    assert "32 atoms, above the cap of 16" in rows[1].error

    class NaNForces:  # a potential whose supercell forces are not numbers: phonopy never gets force constants
        def relax(self, structures, protocol):
            return batched_engine.relax(structures, protocol)

        def forces(self, supercells):
            return [np.full((len(s), 3), np.nan) for s in supercells]

    from phononbench.compute import method
    from phononbench.compute.engines import make_engine

    batched_engine = make_engine("batched", emt)
    failed = method.compute([_item("Cu1b", bulk("Cu", "fcc", a=3.61))], NaNForces(), PUBLISHED)[0]
    assert failed.status == Status.PHONON_FAILED and failed.has_force_constants is False
    frame = pd.DataFrame([r.to_row(capped.thresholds_thz) for r in [*rows, failed]])
    late = frame.iloc[[0]].assign(**{Col.STATUS: "phonon_failed"})  # failed after its force constants
    frame = pd.concat([frame, late], ignore_index=True)
    assert is_relaxed(frame).tolist() == [True, True, False, True]
    tally = counts(frame, capped.thresholds_thz)
    assert (tally[Col.N_RELAXED], tally[Col.N_PHONON], tally[Col.N_PHONON_FAILED]) == (3, 1, 3)
    assert tally["n_stable_at"][-0.1] == 1
    # a run from before the column: every phonon failure counted, as then
    assert is_relaxed(frame.drop(columns=[Col.HAS_FORCE_CONSTANTS])).tolist() == [True, True, True, True]


@pytest.mark.parametrize("name,file", [("sevennet-l3i5", "checkpoint_l3i5.pth"), ("sevennet-0", "checkpoint_sevennet_0.pth"),
                                       ("sevennet-mf-0", "checkpoint_sevennet_mf_0.pth")])
def test_sevennet_potentials_by_name_record_their_weights(name, file):
    potential = load_potential(name)
    described = potential.describe()
    assert described["model"] == name and described["checkpoint"].endswith(file)
    assert len(described["checkpoint_sha256"]) == 64
    assert described["modal"] == ("PBE" if name == "sevennet-mf-0" else None)
    silicon = bulk("Si", "diamond", a=5.43)
    silicon.rattle(0.02, seed=3)
    from phononbench.compute.potentials import predict_with_torchsim

    through_torchsim = predict_with_torchsim(potential.torchsim_model(), [silicon], stress=False)[0].forces
    assert np.allclose(through_torchsim, potential.forces([silicon])[0], atol=1e-4)
