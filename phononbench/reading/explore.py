"""Looking into a run: its rows filtered, sorted and paged (for the browser), and one structure at a time,
its relaxed cell, its force constants and its band structures on the published path and on the
Brillouin-zone path.

The force constants are computed again with the run's own potential and protocol (run.json), once: they
and the two figures are kept in the run folder under ``bands/<key>/``, the key a digest of the structure's
id, content, potential and protocol (an id never becomes a path).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from phononbench.errors import SetupError
from phononbench.records import Col, bz_verdict_column, is_relaxed, is_stable, is_stable_bz, verdict_column
from phononbench.settings import ProtocolSettings

BANDS_DIR = "bands"
FORCE_CONSTANTS_FILE = "force_constants.npy"
FIGURES = {"published": "published_path.png", "bz": "brillouin_zone_path.png"}  # kind -> file in bands/<key>/
PAGE_SIZE = 50
# what the table may be sorted by: the row's own columns, never an arbitrary name from a URL
SORTABLE = (Col.STRUCTURE_ID, Col.GENERATOR, Col.FORMULA, Col.N_ATOMS, Col.STATUS, Col.SPACEGROUP_NUMBER,
            Col.CRYSTAL_SYSTEM, Col.RELAX_STEPS, Col.MIN_FREQUENCY_THZ, Col.MIN_FREQUENCY_BZ_THZ,
            Col.ENERGY_PER_ATOM_EV)
_ELEMENT = re.compile(r"[A-Z][a-z]?")


def elements_of(formulas: pd.Series) -> pd.Series:
    """The set of element symbols of each formula (empty where there is none)."""
    return formulas.map(lambda f: frozenset(_ELEMENT.findall(f)) if isinstance(f, str) else frozenset())


def element_symbols(text: str) -> set[str]:
    """Element symbols as typed: "Cu O", "cu,o", "CU" or "CuO"."""
    symbols = set()
    for token in re.findall(r"[A-Za-z]+", text):
        symbols |= {token.capitalize()} if token.islower() or token.isupper() else set(_ELEMENT.findall(token))
    return symbols


@dataclass
class Filters:
    """What the structure table shows: each filter None for "any". ``verdicts`` maps a verdict column
    (``verdict_column(t)`` or ``bz_verdict_column(t)``) to "stable" or "unstable" (relaxed, not stable)."""

    generator: str | None = None
    status: str | None = None
    crystal_system: str | None = None
    element: str | None = None  # one or more symbols, "Cu O" or "Cu,O": structures containing all of them
    verdicts: dict[str, str] = field(default_factory=dict)
    sort: str = Col.STRUCTURE_ID
    descending: bool = False
    page: int = 1


def select(rows: pd.DataFrame, elements: pd.Series, filters: Filters, thresholds_thz) -> pd.DataFrame:
    """The rows the filters keep, sorted (stable sort; rows without a value last)."""
    keep = np.ones(len(rows), dtype=bool)
    for column, wanted in ((Col.GENERATOR, filters.generator), (Col.STATUS, filters.status),
                           (Col.CRYSTAL_SYSTEM, filters.crystal_system)):
        if wanted:  # a browser sends a line break (LF or CR) in a chosen name as CRLF
            keep &= rows[column].isin({wanted, wanted.replace("\r\n", "\n"), wanted.replace("\r\n", "\r")}).to_numpy()
    if filters.element:
        wanted = element_symbols(filters.element)
        keep &= np.fromiter((wanted <= e for e in elements), bool, len(rows))
    verdict_of = {verdict_column(t): (is_stable, t) for t in thresholds_thz}
    verdict_of |= {bz_verdict_column(t): (is_stable_bz, t) for t in thresholds_thz}
    for column, wanted in filters.verdicts.items():
        if column not in verdict_of or wanted not in ("stable", "unstable"):
            raise SetupError(f"cannot filter {column} by {wanted!r}")
        rule, t = verdict_of[column]
        stable = rule(rows, t).to_numpy()
        keep &= stable if wanted == "stable" else (is_relaxed(rows).to_numpy() & ~stable)
    chosen = rows[keep]
    if filters.sort not in SORTABLE:
        raise SetupError(f"cannot sort by {filters.sort!r}; one of {', '.join(SORTABLE)}")
    return chosen.sort_values(filters.sort, ascending=not filters.descending, kind="stable", na_position="last")


def page_of(chosen: pd.DataFrame, page: int, size: int = PAGE_SIZE) -> tuple[pd.DataFrame, int, int]:
    """One page of the chosen rows, the page number (clamped) and the number of pages."""
    pages = max(1, -(-len(chosen) // size))
    page = min(max(1, page), pages)
    return chosen.iloc[(page - 1) * size:page * size], page, pages


# ---------------------------------------------------------------------------------------------
# One structure


def row_of(rows: pd.DataFrame, structure_id: str) -> pd.Series:
    """The row of one structure, looked up by id (never used as a path)."""
    match = rows[rows[Col.STRUCTURE_ID] == structure_id]
    if match.empty:
        raise KeyError(structure_id)
    return match.iloc[-1]


def relaxed_unitcell(row: pd.Series):
    """The relaxed cell (ASE atoms) of a row; SetupError if it has none."""
    from ase.io import read

    if not isinstance(row[Col.RELAXED_CIF], str):
        raise SetupError(f"{row[Col.STRUCTURE_ID]} has no relaxed structure "
                         f"(status {row[Col.STATUS]}: {row[Col.ERROR]})")
    return read(io.StringIO(row[Col.RELAXED_CIF]), format="cif")


def bands_folder(out: Path, row: pd.Series, info: dict) -> Path:
    """OUT/bands/<key>: the key a digest of what the force constants depend on."""
    what = json.dumps([row[Col.STRUCTURE_ID], row[Col.STRUCTURE_HASH], row[Col.RELAXED_CIF],
                       info["potential"].get("model"), info["potential"].get("checkpoint_sha256"),
                       info["protocol"]], sort_keys=True, default=str)
    return Path(out) / BANDS_DIR / hashlib.sha256(what.encode()).hexdigest()[:24]


def run_potential(described: dict, device: str = "cpu", recorded_path: bool = True):
    """The potential a run used (run.json's ``potential``), known by its weights: the recorded checkpoint
    where that file is on this machine (``recorded_path``: a folder someone sent names a file that loading
    unpickles, so the app passes False unless told otherwise), else the registry's own weights for the name
    (a run made in another environment records another path to the same wheel file); refused if those are
    other weights."""
    from phononbench.compute.potentials import load_potential

    checkpoint = described.get("checkpoint")
    usable = recorded_path and checkpoint and Path(checkpoint).is_file()
    potential = load_potential(described["model"], device, checkpoint if usable else None)
    recorded, here = described.get("checkpoint_sha256"), potential.checkpoint_sha256
    if recorded and here and recorded != here:
        raise SetupError(f"the run's {described['model']} weights (sha256 {recorded[:12]}..., {checkpoint}) are not "
                         f"on this machine (found {here[:12]}...); the force constants cannot be computed again")
    return potential


def force_constants(out: Path, row: pd.Series, info: dict, potential_for: Callable[[dict], object]):
    """A phonopy object with the structure's force constants: from the run folder's cache, or computed
    with ``potential_for(run.json's potential)`` and the run's protocol, then cached."""
    from phononbench.compute.method import phonon_settings
    from phononbench.science.phonons import SupercellTooLarge, displace, force_constants_one, supercell_matrix

    protocol = ProtocolSettings.from_dict(info["protocol"])
    unitcell = relaxed_unitcell(row)
    recorded = row.get(Col.SUPERCELL_MATRIX)
    try:  # a supercell the run left out as too large is not computed here either
        matrix = (np.asarray(recorded, dtype=int).reshape(3, 3) if isinstance(recorded, (list, np.ndarray)) and len(recorded) == 9 else
                  supercell_matrix(unitcell, protocol.supercell, protocol.supercell_min_length_a,
                                   protocol.max_supercell_atoms, zone_boundary=protocol.supercell_zone_boundary,
                                   keep_rotations=protocol.supercell_keeps_rotations))
    except SupercellTooLarge as exc:
        raise SetupError(f"{exc}: its bands are not computed") from None
    cached = bands_folder(out, row, info) / FORCE_CONSTANTS_FILE
    if cached.exists():
        phonon = displace(unitcell, matrix, protocol.displacement_a)
        phonon.force_constants = np.load(cached)
        return phonon
    potential = potential_for(info["potential"])
    phonon = force_constants_one(unitcell, potential.forces, matrix, **phonon_settings(protocol))
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f".{cached.name}.partial")
    with open(partial, "wb") as handle:
        np.save(handle, phonon.force_constants)
    os.replace(partial, cached)
    return phonon


def band_figures(out: Path, row: pd.Series, info: dict, potential_for: Callable[[dict], object]) -> dict[str, Path]:
    """The structure's band structures as PNG files (kind -> path): ``published`` (the published scripts'
    q-points, where the published verdict looks) and ``bz`` (the high-symmetry path in the cell's own
    reciprocal basis); imaginary branches below the headline threshold in red. Made once, then read."""
    from phononbench.science.phonons import band_path, high_symmetry_band_path, loses_rotations
    from phononbench.reading.plots import band_structure_figure

    folder = bands_folder(out, row, info)
    paths = {kind: folder / name for kind, name in FIGURES.items()}
    if all(p.exists() for p in paths.values()):
        return paths
    protocol = ProtocolSettings.from_dict(info["protocol"])
    phonon = force_constants(out, row, info, potential_for)
    name = f"{row[Col.STRUCTURE_ID]} ({row[Col.FORMULA]})"
    # on a supercell that loses rotations the zone verdict also takes the path's copies under them, not drawn
    zone = "Brillouin-zone path" + (" (one copy; the verdict takes all)" if loses_rotations(phonon) else "")
    for kind, bands, where in (("published", band_path, "published q-points"), ("bz", high_symmetry_band_path, zone)):
        partial = folder / f".{kind}.partial.png"
        band_structure_figure(bands(phonon, protocol.band_npoints), f"{name}: {where}", partial,
                              protocol.headline_threshold_thz)
        os.replace(partial, paths[kind])
    return paths
