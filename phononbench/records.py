"""The result row: one definition of every column, used by the writer, the reader and the summary.

A column is renamed here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum

import pyarrow as pa


class Status(StrEnum):
    """What happened to one input structure. Every input structure ends with exactly one."""

    OK = "ok"  # relaxed and phonons computed: the verdict columns hold the answer
    INVALID_INPUT = "invalid_input"  # unparseable, disordered, overlapping, bad cell, too large
    DUPLICATE = "duplicate"  # matches an earlier structure of the same generator
    RELAX_FAILED = "relax_failed"  # the potential raised or returned NaN while relaxing
    RELAX_NOT_CONVERGED = "relax_not_converged"  # hit the step limit above fmax
    PHONON_FAILED = "phonon_failed"  # relaxed, but phonopy or the forces failed: counts as unstable
    TIMEOUT = "timeout"  # ran past --timeout-per-structure on its own
    WORKER_CRASHED = "worker_crashed"  # its worker died on every retry, with the structure alone


# Statuses whose relaxation converged: the published denominator ("successfully relaxed").
RELAXED_STATUSES = frozenset({Status.OK, Status.PHONON_FAILED})


class Col(StrEnum):
    """Column names of OUT/structures/ and OUT/summary.parquet."""

    STRUCTURE_ID = "structure_id"
    GENERATOR = "generator"
    SOURCE = "source"
    FORMULA = "formula"
    N_ATOMS = "n_atoms"
    STATUS = "status"
    ERROR = "error"
    DUPLICATE_OF = "duplicate_of"
    INPUT_SPACEGROUP_NUMBER = "input_spacegroup_number"
    RELAXED_CIF = "relaxed_cif"
    ENERGY_PER_ATOM_EV = "energy_per_atom_ev"
    SPACEGROUP_NUMBER = "spacegroup_number"
    CRYSTAL_SYSTEM = "crystal_system"
    RELAX_STEPS = "relax_steps"
    RELAX_FMAX_EV_PER_A = "relax_fmax_ev_per_a"
    N_DISPLACEMENTS = "n_displacements"
    PHONON_METHOD = "phonon_method"
    MIN_FREQUENCY_THZ = "min_frequency_thz"
    MIN_FREQUENCY_QPOINT = "min_frequency_qpoint"
    MIN_FREQUENCY_BAND = "min_frequency_band"
    MIN_FREQUENCY_IS_ACOUSTIC_GAMMA = "min_frequency_is_acoustic_gamma"
    MIN_FREQUENCY_EXCL_ACOUSTIC_GAMMA_THZ = "min_frequency_excl_acoustic_gamma_thz"
    RELAX_WALL_S = "relax_wall_s"
    PHONON_WALL_S = "phonon_wall_s"
    # summary.parquet
    THRESHOLD_THZ = "threshold_thz"
    N_INPUT = "n_input"
    N_VALID = "n_valid"
    N_UNIQUE = "n_unique"
    N_RELAXED = "n_relaxed"
    N_PHONON = "n_phonon"
    N_STABLE = "n_stable"
    STABILITY_RATE = "stability_rate"
    STABILITY_RATE_UNIQUE = "stability_rate_unique"


def verdict_column(threshold_thz: float) -> str:
    """Name of the per-structure verdict column at one threshold, e.g. ``stable_at_-0.1_thz``."""
    return f"stable_at_{threshold_thz:g}_thz"


@dataclass
class StructureResult:
    """One row of OUT/structures/: one input structure, whatever happened to it."""

    structure_id: str
    generator: str
    source: str
    status: Status
    formula: str | None = None
    n_atoms: int | None = None
    error: str | None = None
    duplicate_of: str | None = None
    input_spacegroup_number: int | None = None
    relaxed_cif: str | None = None
    energy_per_atom_ev: float | None = None
    spacegroup_number: int | None = None
    crystal_system: str | None = None
    relax_steps: int | None = None
    relax_fmax_ev_per_a: float | None = None
    n_displacements: int | None = None
    phonon_method: str | None = None  # "supercell" (the full protocol) or "gamma_screen" (tiered preset)
    min_frequency_thz: float | None = None
    min_frequency_qpoint: list[float] | None = None
    min_frequency_band: int | None = None
    min_frequency_is_acoustic_gamma: bool | None = None
    min_frequency_excl_acoustic_gamma_thz: float | None = None
    relax_wall_s: float | None = None
    phonon_wall_s: float | None = None
    # threshold_thz -> stable; None where no verdict exists (not relaxed)
    verdicts: dict[float, bool] = field(default_factory=dict)

    def to_row(self, thresholds_thz: tuple[float, ...]) -> dict:
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "verdicts"}
        row[Col.STATUS] = str(self.status)
        for t in thresholds_thz:
            row[verdict_column(t)] = self.verdicts.get(t)
        return row


_FIXED_FIELDS: list[tuple[str, pa.DataType]] = [
    (Col.STRUCTURE_ID, pa.string()),
    (Col.GENERATOR, pa.string()),
    (Col.SOURCE, pa.string()),
    (Col.STATUS, pa.string()),
    (Col.FORMULA, pa.string()),
    (Col.N_ATOMS, pa.int32()),
    (Col.ERROR, pa.string()),
    (Col.DUPLICATE_OF, pa.string()),
    (Col.INPUT_SPACEGROUP_NUMBER, pa.int16()),
    (Col.RELAXED_CIF, pa.string()),
    (Col.ENERGY_PER_ATOM_EV, pa.float64()),
    (Col.SPACEGROUP_NUMBER, pa.int16()),
    (Col.CRYSTAL_SYSTEM, pa.string()),
    (Col.RELAX_STEPS, pa.int32()),
    (Col.RELAX_FMAX_EV_PER_A, pa.float64()),
    (Col.N_DISPLACEMENTS, pa.int32()),
    (Col.PHONON_METHOD, pa.string()),
    (Col.MIN_FREQUENCY_THZ, pa.float64()),
    (Col.MIN_FREQUENCY_QPOINT, pa.list_(pa.float64(), 3)),
    (Col.MIN_FREQUENCY_BAND, pa.int32()),
    (Col.MIN_FREQUENCY_IS_ACOUSTIC_GAMMA, pa.bool_()),
    (Col.MIN_FREQUENCY_EXCL_ACOUSTIC_GAMMA_THZ, pa.float64()),
    (Col.RELAX_WALL_S, pa.float64()),
    (Col.PHONON_WALL_S, pa.float64()),
]


def structures_schema(thresholds_thz: tuple[float, ...]) -> pa.Schema:
    """Arrow schema of OUT/structures/: fixed columns plus one verdict column per threshold."""
    fields = [pa.field(str(name), dtype) for name, dtype in _FIXED_FIELDS]
    fields += [pa.field(verdict_column(t), pa.bool_()) for t in thresholds_thz]
    return pa.schema(fields)


SUMMARY_SCHEMA = pa.schema(
    [
        pa.field(Col.GENERATOR, pa.string()),
        pa.field(Col.THRESHOLD_THZ, pa.float64()),
        pa.field(Col.N_INPUT, pa.int64()),
        pa.field(Col.N_VALID, pa.int64()),
        pa.field(Col.N_UNIQUE, pa.int64()),
        pa.field(Col.N_RELAXED, pa.int64()),
        pa.field(Col.N_PHONON, pa.int64()),
        pa.field(Col.N_STABLE, pa.int64()),
        pa.field(Col.STABILITY_RATE, pa.float64()),
        pa.field(Col.STABILITY_RATE_UNIQUE, pa.float64()),
    ]
)

# Label of the summary row that pools every generator (the published "average over all").
ALL_GENERATORS = "(all)"
