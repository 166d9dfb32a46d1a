"""Stage 4, phonons: phonopy finite displacements on a supercell, frequencies on the seekpath band path.

phonopy's verbs in the order they are used: ``displace`` (generate displacements), the displaced
supercells' forces from the engine, ``produce_force_constants``, then frequencies. From one set of force
constants, two samplings of the Brillouin zone:

- ``band_path``: the published scripts' q-points, exactly. phonopy's ``get_band_qpoints_by_seekpath``
  returns seekpath's point coordinates, which are fractional in seekpath's *standardised* primitive
  reciprocal basis, and phonopy reads them in the input cell's basis. For a cell not already in
  seekpath's setting these are other lines through the zone than the high-symmetry path; the published
  rates were computed on them, so the published verdict keeps them.
- ``brillouin_zone_qpoints``: the high-symmetry path expressed in the input cell's reciprocal basis (with its
  copies under the crystal's rotations that the supercell loses), the supercell's commensurate q-points (where
  finite displacements are exact) and a Gamma-centred mesh.

``force_constants_many`` sends every displaced supercell of many structures through one forces call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from phonopy import Phonopy
from phonopy.phonon.band_structure import get_band_qpoints_by_seekpath
from phonopy.structure.atoms import PhonopyAtoms

from phononbench.errors import isolating_failures


@dataclass
class BandStructure:
    qpoints: np.ndarray  # (n_q, 3), fractional, reciprocal basis of the phonopy primitive (= input cell)
    frequencies_thz: np.ndarray  # (n_q, n_bands), ascending within each q-point


def to_phonopy_atoms(atoms: Atoms) -> PhonopyAtoms:
    return PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(), cell=atoms.cell[:], scaled_positions=atoms.get_scaled_positions()
    )


def to_ase_atoms(cell: PhonopyAtoms) -> Atoms:
    return Atoms(symbols=cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)


class SupercellTooLarge(ValueError):
    """The supercell has more atoms than the protocol's cap (max_supercell_atoms)."""


def supercell_matrix(unitcell: Atoms, supercell: tuple[int, int, int] | None = (2, 2, 2),
                     min_length_a: float | None = None, max_atoms: int | None = None,
                     zone_boundary: bool = False, keep_rotations: bool = False) -> np.ndarray:
    """The supercell matrix (phonopy's convention) for this cell: the fixed diagonal one, or the smallest
    at least ``min_length_a`` wide, or with ``zone_boundary`` the zone-boundary one that wide (supercells.py);
    with ``keep_rotations`` the smallest such one whose lattice keeps the crystal's point group.
    Raises ValueError above ``max_atoms`` atoms."""
    from phononbench.science.supercells import supercell_for_length, supercell_size, zone_boundary_supercell

    if not (np.all(np.isfinite(unitcell.cell[:])) and np.all(np.isfinite(unitcell.positions))):
        raise ValueError("the cell or the positions are not finite numbers")  # spglib would crash on them
    rotations = crystal_rotations(unitcell) if keep_rotations else None
    sites = (unitcell.positions, unitcell.numbers)
    if supercell is not None:
        matrix = np.diag(supercell).astype(int)
    elif zone_boundary:
        matrix = zone_boundary_supercell(np.asarray(unitcell.cell[:]), min_length_a, rotations, sites)
    else:
        matrix = supercell_for_length(np.asarray(unitcell.cell[:]), min_length_a, rotations, sites)
    n_atoms = supercell_size(matrix) * len(unitcell)
    if max_atoms is not None and n_atoms > max_atoms:
        if supercell is not None:
            wanted = "x".join(map(str, supercell))
        else:
            rule = f"{min_length_a:g}{'zb' if zone_boundary else ''}{'-sym' if keep_rotations else ''}"
            wanted = f"at least {min_length_a:g} A wide" + (f" ({rule})" if zone_boundary or keep_rotations else "")
        raise SupercellTooLarge(f"the supercell {wanted} has {n_atoms} atoms, above the cap of {max_atoms} "
                         "(max_supercell_atoms)")
    return matrix


def crystal_rotations(unitcell: Atoms) -> np.ndarray:
    """The crystal's point group as phonopy finds it (its default tolerance): fractional rotations of the cell."""
    from phonopy.structure.symmetry import Symmetry

    return Symmetry(to_phonopy_atoms(unitcell)).pointgroup_operations


def displace(unitcell: Atoms, supercell: tuple[int, int, int] | np.ndarray, displacement_a: float) -> Phonopy:
    """A phonopy object on the given cell (it is its own primitive, as published) with displacements;
    ``supercell`` is a diagonal (three integers) or a 3x3 supercell matrix (phonopy's convention)."""
    matrix = np.diag(supercell) if np.ndim(supercell) == 1 else np.asarray(supercell)
    # primitive_matrix="P": the input cell is the primitive, as in the published runs (phonopy < 4 default);
    # phonopy 4 would otherwise search for a smaller primitive cell.
    phonon = Phonopy(to_phonopy_atoms(unitcell), supercell_matrix=matrix, primitive_matrix="P")
    phonon.generate_displacements(distance=displacement_a, is_diagonal=False)
    return phonon


def displaced_supercells(phonon: Phonopy) -> list[Atoms]:
    return [to_ase_atoms(cell) for cell in phonon.supercells_with_displacements]


def produce_force_constants(
    phonon: Phonopy, forces: list[np.ndarray], subtract_drift: bool = True, symmetrize: bool = True,
    cutoff_at_half_width: bool = False, residual_forces: np.ndarray | None = None,
) -> None:
    """Force constants from the displaced supercells' forces. ``residual_forces``, the undisplaced
    supercell's forces, are taken off each displaced supercell's (phonopy's --fz) when given."""
    forces = [np.asarray(f, dtype=float) for f in forces]
    if not all(np.all(np.isfinite(f)) for f in forces):
        raise ValueError("potential returned NaN/inf forces on a displaced supercell")
    if residual_forces is not None:
        residual = np.asarray(residual_forces, dtype=float)
        if not np.all(np.isfinite(residual)):
            raise ValueError("potential returned NaN/inf forces on the undisplaced supercell (residual forces)")
        # phonopy builds the force constants from +u alone where the crystal's symmetry maps +u onto -u, so a
        # force already present at u = 0 does not cancel and enters as F0 / u. A relaxation leaves such
        # forces where the potential itself breaks the crystal's symmetry: SevenNet's models are not
        # inversion-equivariant (is_parity False), and FixSymmetry cannot relax that part away
        # (docs/VALIDATION.md, "Residual forces")
        forces = [f - residual for f in forces]
    if subtract_drift:
        # a potential's forces need not sum to zero; the drift would leak into the acoustic modes
        forces = [f - f.mean(axis=0) for f in forces]
    phonon.forces = np.array(forces)
    phonon.produce_force_constants()
    if symmetrize:
        phonon.symmetrize_force_constants()
    if cutoff_at_half_width:
        # Pairs farther apart than half the supercell's narrowest width sit where a displaced atom's periodic
        # images meet: their force constants are the potential's numerical noise, which interpolation turns
        # into soft modes between the commensurate q-points (docs/VALIDATION.md). Zero them, then restore the
        # acoustic sum rule.
        from phononbench.science.supercells import widths

        phonon.set_force_constants_zero_with_radius(float(widths(np.asarray(phonon.supercell.cell)).min()) / 2)
        phonon.symmetrize_force_constants()


def band_path(phonon: Phonopy, npoints: int = 101) -> dict:
    """Run phonopy's band structure on the published scripts' path (constant q-spacing) and return
    phonopy's band-structure dict (``qpoints``, ``distances``, ``frequencies`` per segment) with the
    path's ``labels`` and ``path_connections``. The one band path that verdicts and plots share."""
    bands, labels, connections = get_band_qpoints_by_seekpath(phonon.primitive, npoints, is_const_interval=True)
    phonon.run_band_structure(bands, path_connections=connections, labels=labels, is_legacy_plot=False)
    return {**phonon.get_band_structure_dict(), "labels": labels, "path_connections": connections}


def seekpath_to_cell(primitive: PhonopyAtoms) -> tuple[dict, np.ndarray]:
    """seekpath's path for this cell, and the matrix taking seekpath's fractional q-point coordinates (in
    its standardised, possibly rotated, primitive reciprocal basis) to fractional coordinates in this
    cell's reciprocal basis: q_cell = M @ q_seekpath. M is an integer matrix for any cell of the crystal."""
    import seekpath

    path = seekpath.get_path(primitive.totuple())
    # k (Cartesian, seekpath's frame) = B_p^T q_p; the input frame is rotated back by R^T; q_cell = A k / 2 pi
    to_cell = (np.asarray(primitive.cell) @ np.asarray(path["rotation_matrix"]).T
               @ np.asarray(path["reciprocal_primitive_lattice"]).T) / (2 * np.pi)
    return path, to_cell


def high_symmetry_path(phonon: Phonopy, npoints: int = 101) -> tuple[list[np.ndarray], list[tuple[str, str]]]:
    """seekpath's high-symmetry path in the input cell's reciprocal basis, sampled at constant q-spacing
    with ``npoints`` on the longest segment. Returns the segments' q-points and their end labels."""
    path, to_cell = seekpath_to_cell(phonon.primitive)
    coords = {label: to_cell @ np.asarray(q) for label, q in path["point_coords"].items()}
    reciprocal = np.linalg.inv(np.asarray(phonon.primitive.cell))  # columns: b_i / 2 pi
    ends = [(coords[a], coords[b]) for a, b in path["path"]]
    lengths = [np.linalg.norm(reciprocal @ (end - start)) for start, end in ends]
    longest = max(lengths) or 1.0
    segments = []
    for (start, end), length in zip(ends, lengths):
        n = max(2, int(np.rint(length / longest * npoints)))
        segments.append(start + np.outer(np.linspace(0.0, 1.0, n), end - start))
    return segments, [tuple(p) for p in path["path"]]


def high_symmetry_band_path(phonon: Phonopy, npoints: int = 101) -> dict:
    """Frequencies along the Brillouin-zone path (``high_symmetry_path``), in the shape ``band_path``
    returns (``qpoints``, ``distances``, ``frequencies`` per segment, ``labels``, ``path_connections``),
    so one plot draws either path."""
    segments, ends = high_symmetry_path(phonon, npoints)
    reciprocal = np.linalg.inv(np.asarray(phonon.primitive.cell))  # columns: b_i / 2 pi
    result: dict = {"qpoints": [], "distances": [], "frequencies": [], "labels": [], "path_connections": []}
    start = 0.0
    for k, (segment, (a, b)) in enumerate(zip(segments, ends)):
        if k == 0 or ends[k - 1][1] != a:  # a jump in the path: the new segment starts at its own label
            if k:
                result["path_connections"][-1] = False
            result["labels"].append(a)
        result["labels"].append(b)
        result["path_connections"].append(True)
        distance = start + np.linalg.norm((segment - segment[0]) @ reciprocal.T, axis=1)
        start = float(distance[-1])
        result["qpoints"].append(segment)
        result["distances"].append(distance)
        result["frequencies"].append(frequencies_at(phonon, segment).frequencies_thz)
    result["path_connections"][-1] = False
    return result


def brillouin_zone_qpoints(phonon: Phonopy, npoints: int = 101, mesh_length_a: float = 20.0) -> dict[str, np.ndarray]:
    """q-points (fractional, the input cell's reciprocal basis) by where they come from:
    ``path`` (high-symmetry path), ``commensurate`` (exact for these force constants), ``mesh``."""
    from phonopy.harmonic.dynmat_to_fc import get_commensurate_points
    from phonopy.phonon.grid import length2mesh

    segments, _ = high_symmetry_path(phonon, npoints)
    mesh = length2mesh(mesh_length_a, np.asarray(phonon.primitive.cell))
    return {
        "path": star_of(phonon, np.concatenate(segments)),
        "commensurate": np.asarray(get_commensurate_points(phonon.supercell_matrix), dtype=float),
        "mesh": irreducible_mesh(phonon, mesh),
    }


def zone_frequencies(phonon: Phonopy, npoints: int = 101, mesh_length_a: float = 20.0) -> dict[str, "BandStructure"]:
    """Frequencies at each sampling of ``brillouin_zone_qpoints`` (path, commensurate, mesh), by its name."""
    return {source: frequencies_at(phonon, q)
            for source, q in brillouin_zone_qpoints(phonon, npoints, mesh_length_a).items()}


def supercell_rotations(phonon: Phonopy) -> np.ndarray:
    """The rotations of the supercell's own space group (with which phonopy symmetrizes the force constants),
    in the input cell's fractional basis (M R M^-1), those that are rotations of the input cell's lattice: on a
    cell that is not primitive, the supercell can have rotations its lattice does not (not integer there)."""
    matrix = np.asarray(phonon.supercell_matrix, dtype=float)
    exact = matrix @ phonon.symmetry.pointgroup_operations @ np.linalg.inv(matrix)
    integer = np.abs(exact - np.rint(exact)).max(axis=(1, 2)) < 1e-6
    return np.rint(exact[integer]).astype("intc")


def loses_rotations(phonon: Phonopy) -> bool:
    """Whether the supercell keeps fewer rotations than the crystal has (its zone path then takes copies)."""
    return len(supercell_rotations(phonon)) < len(phonon.primitive_symmetry.pointgroup_operations)


def star_of(phonon: Phonopy, qpoints: np.ndarray) -> np.ndarray:
    """The q-points and their copies under each rotation of the crystal that the supercell loses (one per coset
    of the supercell's own rotations). On such a supercell the copies of a high-symmetry point have different
    interpolated frequencies, and which copy seekpath's path passes through depends on how the cell is oriented
    in space (bcc Al on a 1x2x2: N at (1/2, 0, 0) or (0, 0, 1/2)); the zone takes them all. A supercell that keeps
    every rotation (2x2x2, ``-sym``) gives the q-points unchanged."""
    own = supercell_rotations(phonon)
    kept = {r.tobytes() for r in own}
    crystal = np.asarray(phonon.primitive_symmetry.pointgroup_operations, dtype="intc")  # the cell is its primitive
    cosets = [np.eye(3, dtype="intc")]
    for rotation in crystal:  # S and S h (h kept) give the same frequencies: one S per coset S H
        if not any(np.rint(np.linalg.inv(c) @ rotation).astype("intc").tobytes() in kept for c in cosets):
            cosets.append(rotation)
    if len(cosets) == 1:
        return qpoints
    # a rotation S of fractional coordinates takes q to q S (row vectors); over a group, the same set as S^-T q
    copies = np.concatenate([qpoints @ c for c in cosets])
    # one q-point of each set that the supercell's rotations and time reversal make equivalent (the same
    # frequencies): copies on symmetry lines coincide. The path's own points come first, so they are kept
    images = np.einsum("nj,kji->nki", copies, own)
    grid = np.rint(np.mod(np.concatenate([images, -images], axis=1), 1.0) * 1e6).astype(np.int64) % 1_000_000
    canonical = (grid[..., 0] * 1_000_000 + grid[..., 1]) * 1_000_000 + grid[..., 2]
    _, first = np.unique(canonical.min(axis=1), return_index=True)
    return copies[np.sort(first)]


def irreducible_mesh(phonon: Phonopy, mesh) -> np.ndarray:
    """The q-points of a Gamma-centred mesh, one of each set that the force constants' symmetry (and time
    reversal) makes equivalent: the rotations of the supercell's own space group, with which phonopy symmetrizes
    them, in the input cell's basis (M R M^-1). On a supercell that loses some of the crystal's rotations, the
    q-points those would map onto each other have different interpolated frequencies, and all are kept."""
    import spglib

    rotations = supercell_rotations(phonon)
    mapping, addresses = spglib.get_stabilized_reciprocal_mesh(np.asarray(mesh, dtype="intc"), rotations,
                                                               is_shift=[0, 0, 0], is_time_reversal=True)
    return addresses[np.unique(mapping)] / np.asarray(mesh, dtype=float)


def frequencies_at(phonon: Phonopy, qpoints: np.ndarray) -> BandStructure:
    """Frequencies (THz, imaginary as negative) at the given q-points."""
    phonon.run_qpoints(np.asarray(qpoints, dtype=float))
    frequencies = np.asarray(phonon.get_qpoints_dict()["frequencies"])
    return BandStructure(qpoints=np.asarray(qpoints, dtype=float), frequencies_thz=frequencies.reshape(len(qpoints), -1))


def band_structure(phonon: Phonopy, npoints: int = 101) -> BandStructure:
    """Frequencies along the band path (the q-points ``band_path`` visits), all segments together: one
    batched solve (phonopy's run_qpoints) instead of phonopy's band structure, which solves one q-point
    at a time in Python (the same dynamical matrices; 4x the CPU, benchmarks/method_overhead.py)."""
    bands, _, _ = get_band_qpoints_by_seekpath(phonon.primitive, npoints, is_const_interval=True)
    return frequencies_at(phonon, np.concatenate([np.asarray(q) for q in bands]))


# ---------------------------------------------------------------------------------------------
# Many structures at once: every displaced supercell of every structure goes through one batched
# force evaluation (split by atom count inside the potential).


def force_constants_many(
    unitcells: list[Atoms],
    forces_of: Callable[[list[Atoms]], list[np.ndarray]],
    supercell_of: Callable[[Atoms], np.ndarray | tuple[int, int, int]] = lambda cell: (2, 2, 2),
    displacement_a: float = 0.01,
    subtract_drift: bool = True,
    symmetrize: bool = True,
    cutoff_at_half_width: bool = False,
    subtract_residual: bool = False,
) -> list[Phonopy | Exception]:
    """Force constants for each cell on the supercell ``supercell_of(cell)`` gives; a structure that fails
    gets its exception, the others go on. ``subtract_residual``: the undisplaced supercell goes through the
    same forces call, and its forces are taken off (``produce_force_constants``)."""
    outcome: list[Phonopy | Exception | None] = [None] * len(unitcells)
    phonons: dict[int, Phonopy] = {}
    cells: dict[int, list[Atoms]] = {}
    for k, unitcell in enumerate(unitcells):
        try:
            phonon = displace(unitcell, supercell_of(unitcell), displacement_a)
            cells[k] = displaced_supercells(phonon) + ([to_ase_atoms(phonon.supercell)] if subtract_residual else [])
            phonons[k] = phonon
        except Exception as exc:
            outcome[k] = exc
    forces = dict(zip(cells, isolating_failures(list(cells.values()), forces_of, "forces")))
    for k, phonon in phonons.items():
        try:
            if isinstance(forces[k], Exception):
                raise forces[k]
            displaced, residual = (forces[k][:-1], forces[k][-1]) if subtract_residual else (forces[k], None)
            produce_force_constants(phonon, displaced, subtract_drift, symmetrize, cutoff_at_half_width, residual)
            outcome[k] = phonon
        except Exception as exc:
            outcome[k] = exc
    return outcome


def force_constants_one(unitcell: Atoms, forces_of: Callable[[list[Atoms]], list[np.ndarray]], matrix,
                        **settings) -> Phonopy:
    """``force_constants_many`` for one cell on the given supercell matrix; raises its failure."""
    phonon = force_constants_many([unitcell], forces_of, lambda cell: matrix, **settings)[0]
    if isinstance(phonon, Exception):
        raise phonon
    return phonon


def gamma_frequencies(phonon: Phonopy) -> BandStructure:
    """Frequencies at Gamma alone (exact from any supercell, the unit cell included)."""
    return frequencies_at(phonon, np.zeros((1, 3)))


# ---------------------------------------------------------------------------------------------
# Acoustic dips next to Gamma. Between Gamma (where the acoustic frequencies are zero by the sum rule) and
# the nearest commensurate q-points, a supercell measures nothing: the acoustic branches there are Fourier
# interpolation of the force constants, and the long-range tail that decides them is where a potential's
# noise sits (docs/VALIDATION.md). This marks those modes; what a verdict does with them is its choice.


def inside_gamma_cell(supercell_lattice: np.ndarray, unitcell_lattice: np.ndarray, qpoints: np.ndarray) -> np.ndarray:
    """For each q-point (fractional, the unit cell's reciprocal basis): True when it is not commensurate and
    Gamma (or a reciprocal lattice vector of the unit cell) is strictly its nearest commensurate point: it
    lies inside the Wigner-Seitz cell around Gamma of the supercell's reciprocal lattice. That lattice is
    Minkowski-reduced first, so the nearest point is among the 27 around the rounded coordinates even for a
    skewed cell; a 1x1x1 supercell's Gamma cell is the whole zone."""
    from itertools import product

    from ase.geometry.minkowski_reduction import minkowski_reduce

    reciprocal = np.linalg.inv(np.asarray(unitcell_lattice, dtype=float)).T  # rows, no 2 pi
    commensurate_basis, _ = minkowski_reduce(np.linalg.inv(np.asarray(supercell_lattice, dtype=float)).T)
    cartesian = np.asarray(qpoints, dtype=float).reshape(-1, 3) @ reciprocal
    # the commensurate points near each q-point, in the reduced basis, then as Cartesian vectors
    rounded = np.round(np.linalg.solve(commensurate_basis.T, cartesian.T).T)
    shifts = np.array(list(product((-1, 0, 1), repeat=3)), dtype=float)
    near = (rounded[:, None, :] + shifts[None, :, :]) @ commensurate_basis  # (n_q, 27, 3)
    distance = np.linalg.norm(cartesian[:, None, :] - near, axis=2)
    fractional = near @ np.asarray(unitcell_lattice, dtype=float).T  # in the unit cell's reciprocal basis
    is_gamma = np.all(np.abs(fractional - np.round(fractional)) < 1e-6, axis=2)  # Gamma or one of its images
    to_gamma = np.where(is_gamma, distance, np.inf).min(axis=1)
    to_other = np.where(is_gamma, np.inf, distance).min(axis=1)
    scale = np.linalg.norm(commensurate_basis, axis=1).min()
    return (to_gamma > 1e-6 * scale) & (to_gamma < to_other - 1e-9 * scale)


def acoustic_character(phonon: Phonopy, qpoints: np.ndarray) -> np.ndarray:
    """(n_q, n_bands), bands in ascending frequency as ``frequencies_at``: the weight of each mode's
    eigenvector on the three rigid translations of the cell (1 for an acoustic mode at Gamma, 0 for an
    optical one). phonopy's dynamical matrix carries the phase of each atom's position, so an acoustic
    mode near Gamma is every atom moving alike, weighted by the square root of its mass."""
    qpoints = np.asarray(qpoints, dtype=float).reshape(-1, 3)
    phonon.run_qpoints(qpoints, with_eigenvectors=True)
    eigenvectors = np.asarray(phonon.get_qpoints_dict()["eigenvectors"])  # (n_q, 3N, modes)
    masses = np.asarray(phonon.primitive.masses, dtype=float)
    translations = np.kron(np.sqrt(masses)[:, None], np.eye(3)) / np.sqrt(masses.sum())  # (3N, 3), orthonormal
    overlap = np.einsum("na,qnm->qma", translations, eigenvectors)
    return (np.abs(overlap) ** 2).sum(axis=2)
