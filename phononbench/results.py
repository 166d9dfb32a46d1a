"""Stage 6, results: the run folder as a ledger. Per-structure rows as a Parquet dataset, the
per-generator summary, and run.json (settings, inputs, versions: what a resume must match).

Rows are flushed in small part files while the run goes, each written under a temporary name and
renamed, so a crash loses only the rows not yet flushed and never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import platform
import time
import uuid
from importlib import metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from phononbench.errors import SetupError
from phononbench.records import ALL_GENERATORS, SUMMARY_SCHEMA, Col, StructureResult, counts, structures_schema

STRUCTURES_DIR = "structures"
SUMMARY_FILE = "summary.parquet"
RUN_FILE = "run.json"
LOG_FILE = "run.log"

PACKAGES = ("phononbench", "mattersim", "torch", "ase", "phonopy", "spglib", "seekpath", "pymatgen",
            "chgnet", "sevenn", "ray", "numpy", "pyarrow", "pandas")

# run.json keys that must match for a resume: anything that changes a verdict
RESUME_KEYS = ("protocol", "inputs", "limit_per_generator")
RESUME_POTENTIAL_KEYS = ("model", "checkpoint_sha256")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict:
    """What ran the run: package versions, Python, host."""
    return {"versions": package_versions(), "python": platform.python_version(), "host": platform.node()}


def check_resumable(previous: dict, info: dict) -> None:
    """Refuse to resume a run made with other settings: the rows would mix two runs."""
    differing = [k for k in RESUME_KEYS if previous.get(k) != info[k]]
    differing += [f"potential.{k}" for k in RESUME_POTENTIAL_KEYS
                  if previous.get("potential", {}).get(k) != info["potential"].get(k)]
    if differing:
        raise SetupError(
            f"the run in this output folder used other settings ({', '.join(differing)}); resuming would mix "
            "two runs. Use the same settings as before, or another output folder."
        )


def prepare_output(out: Path) -> Path:
    """Create OUT (or reuse an existing run's OUT, for resuming); clear half-written files of a crash."""
    out = Path(out)
    try:
        (out / STRUCTURES_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(f"cannot create output folder {out}: {exc}") from exc
    for partial in (out / STRUCTURES_DIR).glob(".*.partial"):
        partial.unlink()
    return out


def finished_ids(out: Path) -> set[str]:
    """structure_ids already written under OUT/structures (empty for a new folder)."""
    parts = sorted((Path(out) / STRUCTURES_DIR).glob("part-*.parquet"))
    ids: set[str] = set()
    for part in parts:
        ids.update(pq.read_table(part, columns=[str(Col.STRUCTURE_ID)]).column(0).to_pylist())
    return ids


def _write_atomically(table: pa.Table, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table, partial)
    os.replace(partial, path)


class ResultWriter:
    """Collects rows and flushes them to OUT/structures/part-NNNNN.parquet every few rows or seconds."""

    def __init__(self, out: Path, thresholds_thz: tuple[float, ...], every_rows: int = 50, every_s: float = 60.0):
        self.directory = Path(out) / STRUCTURES_DIR
        self.thresholds_thz = tuple(thresholds_thz)
        self.schema = structures_schema(self.thresholds_thz)
        self.every_rows, self.every_s = every_rows, every_s
        self.pending: list[dict] = []
        self.last_flush = time.monotonic()
        self.run_tag = uuid.uuid4().hex[:8]  # parts of a resumed run never overwrite earlier ones
        self.n_parts = 0

    def add(self, result: StructureResult) -> None:
        self.pending.append(result.to_row(self.thresholds_thz))
        if len(self.pending) >= self.every_rows or time.monotonic() - self.last_flush > self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            table = pa.Table.from_pylist(self.pending, schema=self.schema)
            _write_atomically(table, self.directory / f"part-{self.run_tag}-{self.n_parts:05d}.parquet")
            self.n_parts += 1
            self.pending = []
        self.last_flush = time.monotonic()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()  # also on an exception: what was computed is kept


def read_structures(out: Path) -> pd.DataFrame:
    directory = Path(out) / STRUCTURES_DIR
    parts = sorted(directory.glob("part-*.parquet"))
    if not parts:
        raise SetupError(f"no results under {directory}; is {out} a PhononBench output folder?")
    table = pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default").to_pandas()
    return table.drop_duplicates(subset=[str(Col.STRUCTURE_ID)], keep="first").reset_index(drop=True)


def summarize(structures: pd.DataFrame, thresholds_thz: tuple[float, ...]) -> pd.DataFrame:
    """One row per (generator, threshold), plus the pooled ``(all)`` rows.

    stability_rate = stable / successfully relaxed on the published path (the published rate);
    stability_rate_bz the same over the Brillouin zone; phonon failures count as unstable;
    n_stable_not_3d: how many of the (published-path) stable structures are not 3D-bonded.
    """
    rows = []
    groups = [(g, df) for g, df in structures.groupby(Col.GENERATOR, sort=True)]
    groups.append((ALL_GENERATORS, structures))
    for generator, df in groups:
        tally = counts(df, thresholds_thz)
        n_relaxed, n_unique = tally[Col.N_RELAXED], tally[Col.N_UNIQUE]
        for threshold in thresholds_thz:
            n_stable = tally["n_stable_at"][threshold]
            rows.append(
                {
                    Col.GENERATOR: generator,
                    Col.THRESHOLD_THZ: float(threshold),
                    **{c: tally[c] for c in (Col.N_INPUT, Col.N_VALID, Col.N_UNIQUE, Col.N_RELAXED, Col.N_PHONON)},
                    Col.N_STABLE: n_stable,
                    Col.STABILITY_RATE: n_stable / n_relaxed if n_relaxed else float("nan"),
                    Col.STABILITY_RATE_UNIQUE: n_stable / n_unique if n_unique else float("nan"),
                    Col.N_STABLE_BZ: tally["n_stable_bz_at"][threshold],
                    Col.STABILITY_RATE_BZ: tally["n_stable_bz_at"][threshold] / n_relaxed if n_relaxed else float("nan"),
                    Col.N_STABLE_NOT_3D: tally["n_stable_not_3d_at"][threshold],
                }
            )
    return pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA).to_pandas()


def write_summary(out: Path, summary: pd.DataFrame) -> Path:
    path = Path(out) / SUMMARY_FILE
    _write_atomically(pa.Table.from_pandas(summary, schema=SUMMARY_SCHEMA, preserve_index=False), path)
    return path


def read_summary(out: Path) -> pd.DataFrame:
    path = Path(out) / SUMMARY_FILE
    if not path.exists():
        raise SetupError(f"{path} not found; is {out} a finished PhononBench run?")
    return pd.read_parquet(path)


def write_run_info(out: Path, info: dict) -> None:
    path = Path(out) / RUN_FILE
    partial = path.with_name(f".{RUN_FILE}.partial")
    partial.write_text(json.dumps(info, indent=2, default=str))
    os.replace(partial, path)


def read_run_info(out: Path) -> dict:
    path = Path(out) / RUN_FILE
    if not path.exists():
        raise SetupError(f"{path} not found; is {out} a PhononBench output folder?")
    return json.loads(path.read_text())
