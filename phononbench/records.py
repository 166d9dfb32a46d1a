"""The result row: one definition of every column, and of what counts as relaxed and as stable.

The writer, the reader, the summary, the analysis, the leaderboard and the notebooks all use these
names and these two rules, so a column is renamed, and a count redefined, here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    from phononbench.science.ingest import InputStructure


class Status(StrEnum):
    """What happened to one input structure. Every input structure ends with exactly one."""

    OK = "ok"  # relaxed and phonons computed: the verdict columns hold the answer
    INVALID_INPUT = "invalid_input"  # unparseable, disordered, overlapping, bad cell, too large
    DUPLICATE = "duplicate"  # matches an earlier structure of the same generator
    RELAX_FAILED = "relax_failed"  # the potential raised or returned NaN while relaxing
    RELAX_NOT_CONVERGED = "relax_not_converged"  # hit the step limit above fmax
    PHONON_FAILED = "phonon_failed"  # relaxed, but phonopy or the forces failed: counts as unstable
    LOW_DIMENSIONAL = "low_dimensional"  # relaxed into a molecule, chain or layer; set aside (bulk preset only)
    TIMEOUT = "timeout"  # ran past the per-structure time limit on its own
    WORKER_CRASHED = "worker_crashed"  # its worker died on every retry, with the structure alone


# Statuses whose relaxation converged. The published denominator ("successfully relaxed") is narrower: the
# published script writes a relaxed structure only once its force constants exist (is_relaxed).
RELAXED_STATUSES = frozenset({Status.OK, Status.PHONON_FAILED})


class Col(StrEnum):
    """Column names of OUT/structures/ and OUT/summary.parquet."""

    STRUCTURE_ID = "structure_id"
    STRUCTURE_HASH = "structure_hash"
    GENERATOR = "generator"
    SOURCE = "source"
    STATUS = "status"
    FORMULA = "formula"
    N_ATOMS = "n_atoms"
    ERROR = "error"
    DUPLICATE_OF = "duplicate_of"
    INPUT_SPACEGROUP_NUMBER = "input_spacegroup_number"
    RELAXED_CIF = "relaxed_cif"
    ENERGY_PER_ATOM_EV = "energy_per_atom_ev"
    SPACEGROUP_NUMBER = "spacegroup_number"
    CRYSTAL_SYSTEM = "crystal_system"
    DIMENSIONALITY = "dimensionality"
    SEPARATED_BY_VACUUM = "separated_by_vacuum"
    RELAX_STEPS = "relax_steps"
    RELAX_CYCLES = "relax_cycles"
    RELAX_FMAX_EV_PER_A = "relax_fmax_ev_per_a"
    N_DISPLACEMENTS = "n_displacements"
    SUPERCELL_MATRIX = "supercell_matrix"
    N_SUPERCELL_ATOMS = "n_supercell_atoms"
    HAS_FORCE_CONSTANTS = "has_force_constants"
    MIN_FREQUENCY_COMMENSURATE_THZ = "min_frequency_commensurate_thz"
    MIN_FREQUENCY_BEYOND_ACOUSTIC_DIPS_THZ = "min_frequency_beyond_acoustic_dips_thz"
    MIN_FREQUENCY_BZ_WITH_ACOUSTIC_DIPS_THZ = "min_frequency_bz_with_acoustic_dips_thz"
    MIN_FREQUENCY_BEYOND_ACOUSTIC_DIPS_QPOINT = "min_frequency_beyond_acoustic_dips_qpoint"
    PHONON_METHOD = "phonon_method"
    MIN_FREQUENCY_THZ = "min_frequency_thz"
    MIN_FREQUENCY_QPOINT = "min_frequency_qpoint"
    MIN_FREQUENCY_BAND = "min_frequency_band"
    MIN_FREQUENCY_IS_ACOUSTIC_GAMMA = "min_frequency_is_acoustic_gamma"
    MIN_FREQUENCY_EXCL_ACOUSTIC_GAMMA_THZ = "min_frequency_excl_acoustic_gamma_thz"
    MIN_FREQUENCY_BZ_THZ = "min_frequency_bz_thz"
    MIN_FREQUENCY_BZ_QPOINT = "min_frequency_bz_qpoint"
    MIN_FREQUENCY_BZ_SOURCE = "min_frequency_bz_source"
    RELAX_WALL_S = "relax_wall_s"
    PHONON_WALL_S = "phonon_wall_s"
    PHONON_BZ_WALL_S = "phonon_bz_wall_s"
    ATTEMPT = "attempt"
    # summary.parquet
    POOLED = "pooled"
    THRESHOLD_THZ = "threshold_thz"
    N_INPUT = "n_input"
    N_VALID = "n_valid"
    N_UNIQUE = "n_unique"
    N_RELAXED = "n_relaxed"
    N_PHONON = "n_phonon"
    N_PHONON_FAILED = "n_phonon_failed"
    # the statuses that leave the denominator, each counted (a batch's losses in plain sight)
    N_RELAX_FAILED = "n_relax_failed"
    N_RELAX_NOT_CONVERGED = "n_relax_not_converged"
    N_TIMEOUT = "n_timeout"
    N_WORKER_CRASHED = "n_worker_crashed"
    N_LOW_DIMENSIONAL = "n_low_dimensional"
    N_STABLE = "n_stable"
    STABILITY_RATE = "stability_rate"
    STABILITY_RATE_UNIQUE = "stability_rate_unique"
    N_STABLE_BZ = "n_stable_bz"
    STABILITY_RATE_BZ = "stability_rate_bz"
    N_STABLE_NOT_3D = "n_stable_not_3d"
    # rates with intervals (analysis) and the leaderboard
    CI_LOW = "ci_low"
    CI_HIGH = "ci_high"
    STRICT_STABILITY_RATE = "strict_stability_rate"
    RANK = "rank"
    MODEL = "model"
    PROTOCOL = "protocol"
    RUN = "run"
    N_DECIDED = "n_decided"  # rows written so far, of n_input (an unfinished run)
    COMPLETE = "complete"  # every run behind a leaderboard entry finished


def verdict_column(threshold_thz: float) -> str:
    """The published-path verdict column at one threshold, e.g. ``stable_at_-0.1_thz``."""
    return f"stable_at_{threshold_thz:g}_thz"


def bz_verdict_column(threshold_thz: float) -> str:
    """The Brillouin-zone verdict column at one threshold, e.g. ``stable_bz_at_-0.1_thz``."""
    return f"stable_bz_at_{threshold_thz:g}_thz"


def _column(arrow_type: pa.DataType, default=None):
    """A row field that is also a Parquet column of this Arrow type. Lists are variable-size, never
    fixed-size: pyarrow before 26 cannot read back a null fixed-size list from Parquet (apache/arrow#35692),
    so one failed structure made its whole part file unreadable there."""
    return field(default=default, metadata={"arrow": arrow_type})


@dataclass
class StructureResult:
    """One row of OUT/structures/: one input structure, whatever happened to it.

    ``status`` is None only while the method is still deciding; a row is written only once it is set.
    """

    structure_id: str = _column(pa.string())
    structure_hash: str | None = _column(pa.string())  # ingest.structure_hash: what was computed
    generator: str = _column(pa.string())
    source: str = _column(pa.string())
    status: Status | None = _column(pa.string())
    formula: str | None = _column(pa.string())
    n_atoms: int | None = _column(pa.int32())
    error: str | None = _column(pa.string())
    duplicate_of: str | None = _column(pa.string())
    input_spacegroup_number: int | None = _column(pa.int16())
    relaxed_cif: str | None = _column(pa.string())
    energy_per_atom_ev: float | None = _column(pa.float64())
    spacegroup_number: int | None = _column(pa.int16())
    crystal_system: str | None = _column(pa.string())
    dimensionality: str | None = _column(pa.string())  # of the relaxed bonded network: "3D", "2D", "0D", "02D", ...
    separated_by_vacuum: bool | None = _column(pa.bool_())  # pieces not even in van der Waals contact
    relax_steps: int | None = _column(pa.int32())  # FIRE steps over all cycles
    relax_cycles: int | None = _column(pa.int16())
    relax_fmax_ev_per_a: float | None = _column(pa.float64())
    n_displacements: int | None = _column(pa.int32())
    supercell_matrix: list[int] | None = _column(pa.list_(pa.int32()))  # 9 integers: phonopy's convention, row by row
    n_supercell_atoms: int | None = _column(pa.int32())
    # phonopy produced force constants: the published script's "relaxed" (it writes the relaxed CIF then);
    # False only where the forces or phonopy failed before them (None: not attempted, e.g. over the atom cap)
    has_force_constants: bool | None = _column(pa.bool_())
    phonon_method: str | None = _column(pa.string())  # "supercell" (full protocol) or "gamma_screen" (tiered)
    min_frequency_thz: float | None = _column(pa.float64())
    min_frequency_qpoint: list[float] | None = _column(pa.list_(pa.float64()))
    min_frequency_band: int | None = _column(pa.int32())
    min_frequency_is_acoustic_gamma: bool | None = _column(pa.bool_())
    min_frequency_excl_acoustic_gamma_thz: float | None = _column(pa.float64())
    # the Brillouin-zone verdict: the true high-symmetry path, the commensurate q-points and a mesh
    min_frequency_bz_thz: float | None = _column(pa.float64())
    min_frequency_bz_qpoint: list[float] | None = _column(pa.list_(pa.float64()))
    min_frequency_bz_source: str | None = _column(pa.string())  # path, commensurate, mesh or gamma_screen
    # the lowest frequency at the supercell's commensurate q-points alone (exact: no interpolation)
    min_frequency_commensurate_thz: float | None = _column(pa.float64())
    # the Brillouin zone without acoustic modes at interpolated q-points nearer Gamma than any other commensurate
    # point (stability.assess_brillouin_zone_beyond_acoustic_dips)
    min_frequency_beyond_acoustic_dips_thz: float | None = _column(pa.float64())
    min_frequency_beyond_acoustic_dips_qpoint: list[float] | None = _column(pa.list_(pa.float64()))
    # the whole zone, acoustic dips included: min_frequency_bz_thz itself unless the protocol sets the dips aside
    min_frequency_bz_with_acoustic_dips_thz: float | None = _column(pa.float64())
    relax_wall_s: float | None = _column(pa.float64())
    phonon_wall_s: float | None = _column(pa.float64())
    phonon_bz_wall_s: float | None = _column(pa.float64())  # the part of phonon_wall_s the BZ verdict took
    attempt: int | None = _column(pa.int16())  # 1, or 2 for a timeout / crashed worker retried on resume
    # threshold_thz -> stable; one bool column per threshold; empty where no verdict exists
    verdicts: dict[float, bool] = field(default_factory=dict)  # published path (verdict_column)
    bz_verdicts: dict[float, bool] = field(default_factory=dict)  # Brillouin zone (bz_verdict_column)

    @classmethod
    def for_input(cls, item: InputStructure, status: Status | None = None, error: str | None = None,
                  **columns) -> StructureResult:
        """A row for one input structure, its identity and composition filled in."""
        row = cls(item.structure_id, item.structure_hash, item.generator, item.source, status,
                  error=error or item.error, **columns)
        if item.formula is not None:
            row.formula, row.n_atoms = item.formula, item.n_atoms
        elif item.structure is not None:
            row.formula = item.structure.composition.reduced_formula
            row.n_atoms = len(item.structure)
        return row

    def to_row(self, thresholds_thz: tuple[float, ...]) -> dict:
        if self.status is None:
            raise ValueError(f"row {self.structure_id} has no status: the method left it undecided")
        row = {name: getattr(self, name) for name in _ROW_FIELDS}
        row[Col.STATUS] = str(self.status)
        for t in thresholds_thz:
            row[verdict_column(t)] = self.verdicts.get(t)
        for t in thresholds_thz:
            row[bz_verdict_column(t)] = self.bz_verdicts.get(t)
        return row


# The Arrow schema is read off the row definition, so a field cannot be missing from one of them.
_ROW_FIELDS = [f.name for f in dataclasses.fields(StructureResult) if "arrow" in f.metadata]
_ROW_TYPES = {f.name: f.metadata["arrow"] for f in dataclasses.fields(StructureResult) if "arrow" in f.metadata}
if not set(_ROW_FIELDS) <= {c.value for c in Col}:
    raise ImportError(f"row fields without a Col name: {sorted(set(_ROW_FIELDS) - {c.value for c in Col})}")


def structures_schema(thresholds_thz: tuple[float, ...]) -> pa.Schema:
    """Arrow schema of OUT/structures/: the row's columns plus one verdict column per threshold."""
    fields = [pa.field(name, _ROW_TYPES[name]) for name in _ROW_FIELDS]
    fields += [pa.field(verdict_column(t), pa.bool_()) for t in thresholds_thz]
    fields += [pa.field(bz_verdict_column(t), pa.bool_()) for t in thresholds_thz]
    return pa.schema(fields)


SUMMARY_SCHEMA = pa.schema(
    [
        pa.field(Col.GENERATOR, pa.string()),
        pa.field(Col.POOLED, pa.bool_()),  # the row pools every generator (shown as ALL_GENERATORS)
        pa.field(Col.THRESHOLD_THZ, pa.float64()),
        pa.field(Col.N_INPUT, pa.int64()),
        pa.field(Col.N_VALID, pa.int64()),
        pa.field(Col.N_UNIQUE, pa.int64()),
        pa.field(Col.N_RELAXED, pa.int64()),
        pa.field(Col.N_PHONON, pa.int64()),
        pa.field(Col.N_PHONON_FAILED, pa.int64()),
        pa.field(Col.N_RELAX_FAILED, pa.int64()),
        pa.field(Col.N_RELAX_NOT_CONVERGED, pa.int64()),
        pa.field(Col.N_TIMEOUT, pa.int64()),
        pa.field(Col.N_WORKER_CRASHED, pa.int64()),
        pa.field(Col.N_LOW_DIMENSIONAL, pa.int64()),
        pa.field(Col.N_STABLE, pa.int64()),
        pa.field(Col.STABILITY_RATE, pa.float64()),
        pa.field(Col.STABILITY_RATE_UNIQUE, pa.float64()),
        pa.field(Col.N_STABLE_BZ, pa.int64()),
        pa.field(Col.STABILITY_RATE_BZ, pa.float64()),
        pa.field(Col.N_STABLE_NOT_3D, pa.int64()),
    ]
)

# the statuses that leave the denominator (besides invalid and duplicate inputs), by their summary column
LEFT_OUT = {Col.N_RELAX_FAILED: Status.RELAX_FAILED, Col.N_RELAX_NOT_CONVERGED: Status.RELAX_NOT_CONVERGED,
            Col.N_TIMEOUT: Status.TIMEOUT, Col.N_WORKER_CRASHED: Status.WORKER_CRASHED,
            Col.N_LOW_DIMENSIONAL: Status.LOW_DIMENSIONAL}

# Label of the summary row that pools every generator (the published "average over all"). Only a label:
# the row is known by its ``pooled`` column, so a generator may be called anything, this included.
ALL_GENERATORS = "(all)"

# Statuses a resume computes again once: the structure's worker timed out or died, not the physics.
RETRYABLE_STATUSES = frozenset({Status.TIMEOUT, Status.WORKER_CRASHED})

# Statuses the method decided for a structure: a resume keeps them while the structure is unchanged.
COMPUTED_STATUSES = frozenset({Status.OK, Status.RELAX_FAILED, Status.RELAX_NOT_CONVERGED, Status.PHONON_FAILED,
                               Status.LOW_DIMENSIONAL})


# ---------------------------------------------------------------------------------------------
# What counts: the two rules every count, rate and table uses.


def is_relaxed(rows: pd.DataFrame) -> pd.Series:
    """The published denominator, as phonon_multi_gpu_run.py counts it: it writes the relaxed CIF (what
    "Relaxed" counts) after the relaxation and the force constants, before the band structure. So a structure
    counts once its force constants exist: a failure after them (the band path) counts as relaxed and
    unstable; a failure of the displaced supercells' forces or of phonopy before them leaves the count
    (``n_phonon_failed`` shows every phonon failure)."""
    status = rows[Col.STATUS]
    if Col.HAS_FORCE_CONSTANTS not in rows:  # a run from before the column: every phonon failure counted
        return status.isin([str(s) for s in RELAXED_STATUSES])
    never_made = rows[Col.HAS_FORCE_CONSTANTS].astype(object) == False  # noqa: E712 (None: not known, counted)
    return (status == Status.OK) | ((status == Status.PHONON_FAILED) & ~never_made)


def is_stable(rows: pd.DataFrame, threshold_thz: float) -> pd.Series:
    """Stable at the threshold: phonons computed and the lowest frequency at or above it.

    A phonon failure counts as unstable, as published."""
    return (rows[Col.STATUS] == Status.OK) & (rows[verdict_column(threshold_thz)] == True)  # noqa: E712 (nullable)


def is_stable_bz(rows: pd.DataFrame, threshold_thz: float) -> pd.Series:
    """Stable over the Brillouin zone (path, commensurate q-points, mesh) at the threshold."""
    return (rows[Col.STATUS] == Status.OK) & (rows[bz_verdict_column(threshold_thz)] == True)  # noqa: E712


def is_not_3d(rows: pd.DataFrame) -> pd.Series:
    """The relaxed structure's bonded network is not three-dimensional (molecule, chain, layer); rows from
    before the column was recorded say nothing of it."""
    if Col.DIMENSIONALITY not in rows:
        return pd.Series(False, index=rows.index)
    return rows[Col.DIMENSIONALITY].notna() & (rows[Col.DIMENSIONALITY] != "3D")


def counts(rows: pd.DataFrame, thresholds_thz, brillouin_zone: bool = False) -> dict:
    """input / valid / unique / relaxed / phonon counts and stable per threshold, for one set of rows; the
    stable structures that are not 3D-bonded by the verdict the run ranks by (``brillouin_zone``: accurate's)."""
    status = rows[Col.STATUS]
    n_valid = int((status != Status.INVALID_INPUT).sum())
    return {
        Col.N_INPUT: len(rows),
        Col.N_VALID: n_valid,
        Col.N_UNIQUE: n_valid - int((status == Status.DUPLICATE).sum()),
        Col.N_RELAXED: int(is_relaxed(rows).sum()),
        Col.N_PHONON: int((status == Status.OK).sum()),
        Col.N_PHONON_FAILED: int((status == Status.PHONON_FAILED).sum()),
        **{column: int((status == each).sum()) for column, each in LEFT_OUT.items()},
        "n_stable_at": {t: int(is_stable(rows, t).sum()) for t in thresholds_thz},
        "n_stable_bz_at": {t: int(is_stable_bz(rows, t).sum()) for t in thresholds_thz},
        "n_stable_not_3d_at": {t: int(((is_stable_bz if brillouin_zone else is_stable)(rows, t) & is_not_3d(rows)).sum())
                               for t in thresholds_thz},
    }
