"""Stage 5, stability: the lowest frequency on the band path, where it sits, and the verdict per threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phononbench.phonons import BandStructure

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


def dimensionality(atoms) -> str:
    """Dimensionality of the bonded network (ASE's topology-scaling analysis, its best-scored bond scale):
    "3D" for a crystal; "0D" (molecules, lone atoms), "1D" (chains), "2D" (layers) or mixtures like
    "2D+0D" for a structure that relaxed into pieces in vacuum."""
    from ase.geometry.dimensionality import analyze_dimensionality

    try:
        return str(analyze_dimensionality(atoms, method="RDA")[0].dimtype)
    except TypeError:
        # ASE finds no bond at any scale it tries (its interval list is empty): isolated atoms
        return "0D"
