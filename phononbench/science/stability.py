"""Stage 5, stability: the lowest frequency on the band path, where it sits, and the verdict per threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phononbench.science.phonons import BandStructure

GAMMA_TOLERANCE = 1e-6  # |q| (fractional) below which a q-point is Gamma
N_ACOUSTIC = 3


@dataclass
class StabilityVerdict:
    min_frequency_thz: float  # over every band and q-point, acoustic modes included (as published)
    qpoint: list[float]
    band: int
    is_acoustic_gamma: bool  # the minimum is one of the three acoustic modes at Gamma (numerical noise)
    min_frequency_excl_acoustic_gamma_thz: float | None  # None: no mode but the acoustic ones (1-atom cell at Gamma)
    stable: dict[float, bool]  # threshold_thz -> min_frequency_thz >= threshold_thz


def assess(bands: BandStructure, thresholds_thz: tuple[float, ...]) -> StabilityVerdict:
    frequencies = np.asarray(bands.frequencies_thz)
    iq, band = np.unravel_index(int(np.argmin(frequencies)), frequencies.shape)
    at_gamma = np.linalg.norm(bands.qpoints, axis=1) < GAMMA_TOLERANCE
    acoustic_gamma = np.zeros_like(frequencies, dtype=bool)
    for iq_gamma in np.flatnonzero(at_gamma):
        # the acoustic modes are the three closest to zero, not the three lowest: an imaginary optical
        # mode at Gamma sorts below them
        acoustic_gamma[iq_gamma, np.argsort(np.abs(frequencies[iq_gamma]))[:N_ACOUSTIC]] = True
    minimum = float(frequencies[iq, band])
    return StabilityVerdict(
        min_frequency_thz=minimum,
        qpoint=[float(x) for x in bands.qpoints[iq]],
        band=int(band),
        is_acoustic_gamma=bool(acoustic_gamma[iq, band]),
        min_frequency_excl_acoustic_gamma_thz=float(frequencies[~acoustic_gamma].min()) if (~acoustic_gamma).any() else None,
        stable={t: minimum >= t for t in thresholds_thz},
    )


@dataclass
class BrillouinZoneVerdict:
    min_frequency_thz: float  # over every band and every sampled q-point, acoustic modes included
    qpoint: list[float]  # fractional, the input cell's reciprocal basis
    source: str  # which sampling holds the minimum: path, commensurate or mesh
    stable: dict[float, bool]  # threshold_thz -> min_frequency_thz >= threshold_thz


def assess_brillouin_zone(samples: dict[str, BandStructure], thresholds_thz: tuple[float, ...]) -> BrillouinZoneVerdict:
    """The lowest frequency over all samplings of the zone (``phonons.brillouin_zone_qpoints``)."""
    lowest = {source: assess(bands, ()) for source, bands in samples.items()}
    source = min(lowest, key=lambda k: lowest[k].min_frequency_thz)
    minimum = lowest[source].min_frequency_thz
    return BrillouinZoneVerdict(minimum, lowest[source].qpoint, source, {t: minimum >= t for t in thresholds_thz})


ACOUSTIC_CHARACTER = 0.5  # a mode with more than half its weight on the rigid translations is acoustic


def assess_brillouin_zone_beyond_acoustic_dips(phonon, samples: dict[str, BandStructure],
                                               thresholds_thz: tuple[float, ...]) -> BrillouinZoneVerdict:
    """``assess_brillouin_zone`` without the acoustic modes at interpolated q-points inside the supercell's
    Gamma cell (``phonons.inside_gamma_cell``): there the supercell measures nothing, and the branch is
    interpolated between Gamma's zeros and the nearest commensurate points. Its blind spot: a crystal
    unstable only at wavelengths longer than the supercell (an elastic instability) is called stable."""
    from phononbench.science.phonons import BandStructure as Bands, acoustic_character, inside_gamma_cell

    kept = {}
    for source, bands in samples.items():
        kept[source] = bands
        if source == "commensurate":  # exact, never inside
            continue
        frequencies = np.array(bands.frequencies_thz, dtype=float)
        soft = np.flatnonzero(inside_gamma_cell(phonon.supercell.cell, phonon.unitcell.cell, bands.qpoints)
                              & (frequencies.min(axis=1) < 0))
        if len(soft):
            acoustic = acoustic_character(phonon, bands.qpoints[soft]) > ACOUSTIC_CHARACTER
            frequencies[soft] = np.where(acoustic, np.inf, frequencies[soft])
            kept[source] = Bands(bands.qpoints, frequencies)
    return assess_brillouin_zone(kept, thresholds_thz)


# Bonded when closer than BOND_SCALE x the sum of covalent radii: covalent, ionic and metallic nearest neighbours
# (fcc Al at 1.18, fcc Pb at 1.20, bcc Li at 1.19, rock-salt LiH at 1.28, NaCl at 1.05), not van der Waals
# contacts (graphite's layers at 2.2, bulk MoS2's at 1.66, dry ice's molecules at 2.2; solid I2's, at 1.26, are
# counted bonded).
BOND_SCALE = 1.3
# In contact when closer than the sum of van der Waals radii plus this margin: van der Waals-stacked layers and
# molecular crystals are in contact; a molecule, chain or layer with vacuum around it is not.
CONTACT_MARGIN_A = 1.0
_VDW_FALLBACK_A = 2.0  # elements without a tabulated van der Waals radius


def dimensionality(atoms) -> str:
    """Dimensionality of the bonded network (ASE's rank determination over bonds of BOND_SCALE): "3D" for a
    crystal bonded in three dimensions; "2D" for van der Waals layers (graphite, bulk MoS2) as for a layer in
    vacuum, "0D" for molecules (a molecular crystal, a molecule or a lone atom in a box), "1D" for chains,
    and ASE's codes for mixtures, e.g. "03D" (molecules beside a 3D network). Whether the pieces touch is
    ``separated_by_vacuum``."""
    from ase.data import covalent_radii

    return _network(atoms, BOND_SCALE * covalent_radii[atoms.numbers] / 1.0)


def separated_by_vacuum(atoms) -> bool:
    """True when the structure is not one 3D network even counting van der Waals contacts: molecules, chains
    or layers with vacuum between them (not a van der Waals-stacked crystal)."""
    from ase.data import vdw_radii

    radii = np.nan_to_num(vdw_radii[atoms.numbers], nan=_VDW_FALLBACK_A) + CONTACT_MARGIN_A / 2
    return _network(atoms, radii) != "3D"


def _network(atoms, radii: np.ndarray) -> str:
    """ASE's dimensionality type ("3D", "02D", ...) of the network joining atoms closer than r_i + r_j."""
    from ase.geometry.dimensionality.interval_analysis import build_dimtype
    from ase.geometry.dimensionality.rank_determination import RDA
    from ase.neighborlist import neighbor_list

    atoms = atoms.copy()
    atoms.pbc = True
    first, second, shifts = neighbor_list("ijS", atoms, radii, self_interaction=False)
    network = RDA(len(atoms))
    for i, j, shift in zip(first, second, shifts):
        network.insert_bond(int(i), int(j), tuple(int(x) for x in shift))
    return str(build_dimtype(network.check()))
