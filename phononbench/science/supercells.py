"""Supercells sized by length: the smallest supercell whose perpendicular widths are all at least L.

A width of a cell is the distance between two opposite faces (V / |b x c|, ...): a finite-displacement
supercell at least L wide holds every pair of atoms within L/2 of each other without periodic images
of the displaced atom overlapping them. atomate2's PhononMaker (and its TorchSim variant) asks pymatgen's
``CubicSupercellTransformation`` for a nearly cubic supercell of a minimum length; we keep that rule
(integer matrices, non-diagonal allowed) but measure it by the widths and return the smallest such
supercell, not the first that rounding a cube finds:

1. an upper bound: the best of the diagonal supercells (of the cell and of its Minkowski-reduced basis)
   and of the integer matrices within one of the ideal cube in every entry;
2. then every supercell lattice with fewer cells, each once (Hermite normal form), from the volume bound
   ``L^3 / V`` (a cube is the widest cell of its volume) up, checked exactly: a lattice has a basis with all
   widths >= L when its reciprocal lattice has three independent vectors no longer than 1/L;
3. the first size with a wide enough lattice wins, the bound's own size included, so every lattice of the
   winning size is compared: ties go to the widest (its widths in its widest basis, narrowest first), then,
   given the atoms, to the supercell whose pair distances (minimum image, by species, sorted) are longer at the
   first that differs (an atom further from another's periodic image).
   Each step looks at the lattice and the atoms, not at a basis. With the crystal's rotations kept (``-sym``)
   the same crystal written in another basis gets the same supercell lattice. Without them, lattices that a
   rotation of the crystal maps onto each other tie in everything and the basis picks among them: the same
   physics, rotated (the band path then crosses other interpolated q-points). The matrix is in the given
   basis, that of a step-1 candidate where one spans the chosen lattice (a diagonal one where it fits).

Step 2 visits at most ``EXHAUSTIVE_BUDGET`` matrices; past that (cells of one to a few atoms at long lengths:
fcc Cu from 10 A and rock salt at 15 A without ``-sym``) the best upper bound of step 1 is returned, found from
the basis given, so its size too can depend on the basis.

Matrices are in phonopy's convention: supercell lattice vectors as columns are the unit cell's columns
times the matrix (in rows, ``supercell = matrix.T @ cell``).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

_PERTURBATIONS = np.array(list(itertools.product((-1, 0, 1), repeat=9)), dtype=np.int64).reshape(-1, 3, 3)
_COMBINATIONS = np.array([c for c in itertools.product(range(-2, 3), repeat=3) if any(c)], dtype=float)
_TOLERANCE_A = 1e-6
EXHAUSTIVE_BUDGET = 100_000  # Hermite normal forms checked exactly up to the upper bound
Sites = tuple[np.ndarray, np.ndarray]  # Cartesian positions (n, 3, A) and atomic numbers (n,) of the cell's atoms


def widths(cell_rows: np.ndarray) -> np.ndarray:
    """Perpendicular widths (A) of cells given as rows of lattice vectors, shape (..., 3, 3) -> (..., 3)."""
    cell_rows = np.asarray(cell_rows, dtype=float)
    a, b, c = cell_rows[..., 0, :], cell_rows[..., 1, :], cell_rows[..., 2, :]
    volume = np.abs(np.einsum("...i,...i", a, np.cross(b, c)))
    areas = np.stack([np.linalg.norm(np.cross(b, c), axis=-1), np.linalg.norm(np.cross(c, a), axis=-1),
                      np.linalg.norm(np.cross(a, b), axis=-1)], axis=-1)
    return volume[..., None] / areas


def same_lattice(rows: np.ndarray, other_rows: np.ndarray) -> np.ndarray:
    """Whether lattices given by basis rows (shape (..., 3, 3), broadcast) are one lattice: each basis is a whole,
    unimodular combination of the other."""
    change = np.asarray(other_rows, dtype=float) @ np.linalg.inv(np.asarray(rows, dtype=float))
    return np.all(np.abs(change - np.rint(change)) < 1e-6, axis=(-2, -1)) & np.isclose(np.abs(np.linalg.det(change)), 1)


def keeps_rotations(matrices: np.ndarray, rotations: np.ndarray | None) -> np.ndarray:
    """Which supercell matrices (phonopy's convention, shape (m, 3, 3)) give a lattice that every rotation
    (fractional, of the unit cell: x' = R x) maps onto itself: M^-1 R M whole. Force constants from a supercell
    that loses a rotation have only the rotations it keeps (phonopy finds the supercell's own space group), and
    interpolated frequencies at equivalent q-points differ (docs/VALIDATION.md)."""
    matrices = np.asarray(matrices, dtype=float).reshape(-1, 3, 3)
    if rotations is None or not len(rotations):
        return np.ones(len(matrices), dtype=bool)
    rotations = np.asarray(rotations, dtype=float)
    images = np.linalg.inv(matrices)[:, None] @ rotations[None] @ matrices[:, None]
    return np.all(np.abs(images - np.rint(images)) < 1e-6, axis=(1, 2, 3))


def supercell_for_length(cell_rows: np.ndarray, min_length_a: float, rotations: np.ndarray | None = None,
                         sites: Sites | None = None) -> np.ndarray:
    """The smallest supercell matrix (phonopy's convention, 3x3 integers) whose supercell has a basis with
    every perpendicular width >= ``min_length_a``; with ``rotations`` (the crystal's point group, fractional),
    the smallest whose lattice keeps them all (``keeps_rotations``; the upper bound is then the best scaled
    small sublattice that keeps them, ``_scaled_symmetric_sublattices``). ``sites`` (the cell's atoms: Cartesian
    positions and atomic numbers) break ties between equally small and equally wide lattices, which only the
    atoms tell apart (two orientations of one sublattice in a trigonal crystal)."""
    from ase.geometry.minkowski_reduction import minkowski_reduce

    cell = np.asarray(cell_rows, dtype=float)
    if not (math.isfinite(min_length_a) and min_length_a > 0):
        raise ValueError(f"supercell length must be positive (got {min_length_a})")
    if not (np.all(np.isfinite(cell)) and abs(np.linalg.det(cell)) > 1e-3 and widths(cell).min() > 1e-2):
        raise ValueError("a supercell by length needs a cell with a volume and widths (a flat or singular cell)")
    reduced, to_reduced = minkowski_reduce(cell)  # reduced = to_reduced @ cell
    to_reduced = np.asarray(to_reduced, dtype=np.int64)
    if rotations is not None and all(np.allclose(r, r[0, 0] * np.eye(3)) for r in np.asarray(rotations)):
        rotations = None  # identity and inversion keep every lattice (P1, P-1): nothing to restrict
    candidates = []
    for basis, to_cell in ((cell, np.eye(3, dtype=np.int64)), (reduced, to_reduced)):
        diagonal = np.diag(np.maximum(1, np.ceil(min_length_a / widths(basis) - 1e-9)).astype(np.int64))
        candidates.append((diagonal @ to_cell).T)
    if rotations is not None:
        candidates = [m for m in candidates if keeps_rotations(m, rotations)[0]]
        candidates += _scaled_symmetric_sublattices(reduced, to_reduced, min_length_a, rotations)
    n_low = min_length_a ** 3 / abs(np.linalg.det(cell))
    n_high = min(supercell_size(m) for m in candidates)
    scale = 1.0
    while scale ** 3 * n_low <= n_high:
        ideal = np.rint(scale * min_length_a * np.linalg.inv(cell)).astype(np.int64)  # rows: the cube's edges
        found = _smallest_wide(ideal[None] + _PERTURBATIONS, cell, min_length_a, rotations)
        if found is not None:
            candidates.extend(found)
        scale *= 1.05
    n_bound = min(supercell_size(m) for m in candidates)
    smallest = _smallest_lattices(cell, reduced, to_reduced, min_length_a, math.ceil(n_low - 1e-9), n_bound, rotations)
    chosen = _choose(np.stack(candidates) if smallest is None else smallest, cell, sites)
    return _simplest_basis(chosen, np.stack(candidates), cell)


def zone_boundary_supercell(cell_rows: np.ndarray, min_length_a: float, rotations: np.ndarray | None = None,
                            sites: Sites | None = None) -> np.ndarray:
    """Twice the smallest supercell at least ``min_length_a / 2`` wide: at least ``min_length_a`` wide, and
    every q-point whose fractional coordinates are all 0 or 1/2 is commensurate with it (M^T q is whole), so
    the frequencies there are exact, not interpolated (points such as K = (1/3, 1/3, 0) need not be). Not
    always the smallest supercell with both properties; on 300 MatterGen crystals at 15 A it has 1.57 times
    the atoms of ``supercell_for_length`` (mean; benchmarks/supercell_sizes.py)."""
    return 2 * supercell_for_length(cell_rows, min_length_a / 2, rotations, sites)


SYMMETRIC_SUBLATTICE_INDEX = 16  # up to the body-centred sublattice of a face-centred lattice's doubled cube


def _scaled_symmetric_sublattices(reduced: np.ndarray, to_reduced: np.ndarray, min_length_a: float,
                                  rotations: np.ndarray) -> list[np.ndarray]:
    """Upper bounds for a supercell that keeps the rotations, whatever basis the cell is given in: each sublattice
    of index up to SYMMETRIC_SUBLATTICE_INDEX that keeps them (the lattice itself, and its centred and primitive
    relatives: simple, body- and face-centred cubes of a cubic lattice), in its widest basis, scaled by the
    smallest whole factor that makes it wide enough (a scaled lattice keeps the rotations its lattice keeps)."""
    from ase.geometry.minkowski_reduction import minkowski_reduce

    out = []
    for n in range(1, SYMMETRIC_SUBLATTICE_INDEX + 1):
        for form in _keeping(_hermite_forms(n), to_reduced, rotations):
            # the widest basis: the dual of the reduced reciprocal basis (a reduced basis itself need not be)
            dual_reduced, _ = minkowski_reduce(np.linalg.inv(form @ reduced).T)
            widest = np.rint(np.linalg.inv(dual_reduced).T @ np.linalg.inv(reduced)).astype(np.int64)
            factor = max(1, math.ceil(min_length_a / widths(widest @ reduced).min() - 1e-9))
            out.append((factor * widest @ to_reduced).T)
    return out


def _smallest_lattices(cell: np.ndarray, reduced: np.ndarray, to_reduced: np.ndarray, min_length_a: float,
                       n_from: int, n_bound: int, rotations: np.ndarray | None = None) -> np.ndarray | None:
    """Every wide enough supercell lattice of the smallest size from n_from to n_bound cells (Hermite normal forms
    over the reduced basis), each in its widest basis; None when none is, or when the sizes below the bound are
    more than the budget to check. The bound's own size is searched when the budget allows it (when it does not,
    None, and the bound's candidates are all there is): the lattices there are then all compared, not only those
    the bound's candidates happened to be."""
    from ase.geometry.minkowski_reduction import minkowski_reduce

    sizes, total = [], 0
    for n in range(max(1, n_from), n_bound + 1):
        total += _count_hermite(n)
        if total > EXHAUSTIVE_BUDGET:
            if n < n_bound:
                return None
            break
        sizes.append(n)
    for n in sizes:
        forms = _keeping(_hermite_forms(n), to_reduced, rotations)  # rows in the reduced basis
        if not len(forms):
            continue
        ok = _wide_lattices(forms @ reduced, min_length_a)
        if ok.any():
            matrices = []
            for form in forms[ok]:
                # the widest basis: the dual of the reduced reciprocal basis (a reduced basis itself need not be)
                dual_reduced, _ = minkowski_reduce(np.linalg.inv(form @ reduced).T)
                rows = np.linalg.inv(dual_reduced).T @ np.linalg.inv(reduced)  # supercell rows in reduced coords
                matrices.append((np.rint(rows).astype(np.int64) @ to_reduced).T)
            return np.stack(matrices)
    return None


def _keeping(forms: np.ndarray, to_reduced: np.ndarray, rotations: np.ndarray | None) -> np.ndarray:
    """The Hermite normal forms (rows in the reduced basis) whose lattices keep the rotations; all without them."""
    if rotations is None:
        return forms
    return forms[keeps_rotations(np.transpose(forms @ to_reduced, (0, 2, 1)), rotations)]


def _count_hermite(n: int) -> int:
    return sum(a * a * c for a in range(1, n + 1) if n % a == 0 for c in range(1, n // a + 1) if (n // a) % c == 0)


def _hermite_forms(n: int) -> np.ndarray:
    """All lower-triangular Hermite normal forms of determinant n: each sublattice of index n once."""
    out = []
    for a in range(1, n + 1):
        if n % a:
            continue
        for c in range(1, n // a + 1):
            if (n // a) % c:
                continue
            f = n // (a * c)
            b, d, e = np.meshgrid(np.arange(a), np.arange(a), np.arange(c), indexing="ij")
            forms = np.zeros((b.size, 3, 3), dtype=np.int64)
            forms[:, 0, 0], forms[:, 1, 1], forms[:, 2, 2] = a, c, f
            forms[:, 1, 0], forms[:, 2, 0], forms[:, 2, 1] = b.ravel(), d.ravel(), e.ravel()
            out.append(forms)
    return np.concatenate(out)


def _wide_lattices(lattices: np.ndarray, min_length_a: float) -> np.ndarray:
    """Which lattices (rows, shape (m, 3, 3)) have a basis with every width >= L: their reciprocal lattice
    (rows of inv(S).T) has three independent vectors of length <= 1/L. Each reciprocal basis is first
    reduced pair by pair, then its short combinations (coefficients -2..2) are collected."""
    dual = np.linalg.inv(lattices).transpose(0, 2, 1)
    for _ in range(12):  # pairwise (Gauss) reduction sweeps
        for i, j in ((0, 1), (0, 2), (1, 2), (1, 0), (2, 0), (2, 1)):
            bi, bj = dual[:, i], dual[:, j]
            k = np.rint(np.einsum("mi,mi->m", bi, bj) / np.einsum("mi,mi->m", bj, bj))
            dual[:, i] = bi - k[:, None] * bj
    vectors = np.einsum("ck,mkj->mcj", _COMBINATIONS, dual)
    short = np.linalg.norm(vectors, axis=-1) <= 1.0 / (min_length_a - _TOLERANCE_A)
    gram = np.einsum("mc,mci,mcj->mij", short.astype(float), vectors, vectors)
    scale = np.einsum("mii->m", gram) + 1e-300
    return np.linalg.det(gram / scale[:, None, None]) > 1e-9


def _smallest_wide(rows_in_cell: np.ndarray, cell: np.ndarray, min_length_a: float,
                   rotations: np.ndarray | None = None) -> np.ndarray | None:
    """Among integer row matrices P (supercell rows = P @ cell), the smallest wide enough ones, those widest in
    their own basis (phonopy's convention, shape (k, 3, 3)): candidates for the upper bound, few enough for
    ``_choose`` to compare."""
    sizes = np.abs(np.rint(np.linalg.det(rows_in_cell.astype(float)))).astype(np.int64)
    ok = sizes > 0
    if rotations is not None:
        ok[ok] = keeps_rotations(np.transpose(rows_in_cell[ok], (0, 2, 1)), rotations)
    ok[ok] = widths(rows_in_cell[ok] @ cell).min(axis=-1) >= min_length_a - _TOLERANCE_A
    if not ok.any():
        return None
    wide = rows_in_cell[ok][sizes[ok] == sizes[ok].min()]
    narrowest = widths(wide @ cell).min(axis=-1)
    return np.transpose(wide[narrowest >= narrowest.max() - _TOLERANCE_A], (0, 2, 1))


def _choose(matrices: np.ndarray, cell: np.ndarray, sites: Sites | None = None) -> np.ndarray:
    """Fewest cells, then the widest lattice (widths of its widest basis, narrowest first), then, given the sites,
    the longer pair distances, then fewest off-diagonal entries (phonopy convention matrices)."""
    sizes = np.abs(np.rint(np.linalg.det(matrices.astype(float)))).astype(np.int64)
    matrices = matrices[sizes == sizes.min()]
    lattices = np.transpose(matrices, (0, 2, 1)) @ cell
    widest = _first_by(-_lattice_widths(lattices))
    matrices, lattices = matrices[widest], lattices[widest]
    if sites is not None and len(matrices) > 1:
        matrices = matrices[_first_by(-np.stack([_pair_distances(lattice, cell, sites) for lattice in lattices]))]
    off_diagonal = np.count_nonzero(matrices * (1 - np.eye(3, dtype=np.int64)), axis=(1, 2))
    chosen = matrices[np.argmin(off_diagonal)]
    if np.linalg.det(chosen.astype(float)) < 0:
        chosen = -chosen  # the same lattice, right-handed (phonopy wants a positive determinant)
    return chosen


def _simplest_basis(chosen: np.ndarray, candidates: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """The chosen lattice in the basis of a bound candidate that spans it, if one does (widest in its basis, then
    fewest off-diagonal entries: a diagonal matrix where one fits), else as chosen. The lattice alone fixes the
    physics; the basis fixes phonopy's displacement directions, so a supercell recorded before the lattice was
    chosen this way keeps its matrix where its lattice is the same."""
    same = same_lattice(np.transpose(candidates, (0, 2, 1)) @ cell, chosen.T @ cell)
    if not same.any():
        return chosen
    spanning = candidates[same]
    narrowest = widths(np.transpose(spanning, (0, 2, 1)) @ cell).min(axis=-1)
    off_diagonal = np.count_nonzero(spanning * (1 - np.eye(3, dtype=np.int64)), axis=(1, 2))
    simplest = spanning[np.lexsort((off_diagonal, -np.round(narrowest, 6)))[0]]
    return -simplest if np.linalg.det(simplest.astype(float)) < 0 else simplest


def _first_by(keys: np.ndarray) -> np.ndarray:
    """Which rows of ``keys`` (m, k) come first in order of their columns, values within _TOLERANCE_A equal."""
    keep = np.ones(len(keys), dtype=bool)
    for column in keys.T:
        keep &= column <= column[keep].min() + _TOLERANCE_A
        if keep.sum() == 1:
            break
    return keep


def _lattice_widths(lattices: np.ndarray) -> np.ndarray:
    """Widths of each lattice's widest basis, narrowest first: the inverse lengths of its Minkowski-reduced
    reciprocal basis (the successive minima, the same in every basis)."""
    from ase.geometry.minkowski_reduction import minkowski_reduce

    return np.stack([np.sort(1 / np.linalg.norm(minkowski_reduce(np.linalg.inv(rows).T)[0], axis=1)) for rows in lattices])


def _pair_distances(lattice: np.ndarray, cell: np.ndarray, sites: Sites) -> np.ndarray:
    """Minimum-image distances in the supercell from each atom of one cell to every atom of the supercell,
    grouped by the two species and sorted: the same for the same supercell in any basis, different for
    sublattices that sit differently on the atoms."""
    from ase import Atoms
    from ase.build import make_supercell
    from ase.geometry import get_distances

    positions, numbers = sites
    unit = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
    supercell = make_supercell(unit, np.rint(lattice @ np.linalg.inv(cell)).astype(np.int64), wrap=True)
    _, distances = get_distances(unit.positions, supercell.positions, cell=lattice, pbc=True)
    first, second = np.meshgrid(unit.numbers, supercell.numbers, indexing="ij")
    return distances.ravel()[np.lexsort((distances.ravel(), second.ravel(), first.ravel()))]


def supercell_size(matrix: np.ndarray) -> int:
    """Unit cells in the supercell."""
    return int(round(abs(np.linalg.det(np.asarray(matrix, dtype=float)))))
