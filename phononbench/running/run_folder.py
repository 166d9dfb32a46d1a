"""Stage 6, results: the run folder as a ledger. Per-structure rows as a Parquet dataset, the
per-generator summary, and run.json (settings, inputs, versions: what a resume must match).

Rows are flushed in small part files while the run goes, each written under a temporary name and
renamed, so a crash loses only the rows not yet flushed and never leaves a half-written file. The run
keeps a ledger of its part files and their row counts (``parts.json``): a part that goes missing or
cannot be read makes the run incomplete for every reader, with the file named. While a run goes,
``structures/`` may hold earlier rows of an input (an edited input's old verdict, a retried failure);
when it finishes, ``structures/`` holds exactly one row per current input, and the rows it replaced
move to ``superseded/`` (kept for the record, outside the dataset).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import logging
import os
import platform
import re
import time
import uuid
from importlib import metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from phononbench.errors import IncompleteRun, SetupError
from phononbench.rates import rate
from phononbench.records import (ALL_GENERATORS, LEFT_OUT, SUMMARY_SCHEMA, Col, StructureResult, bz_verdict_column, counts,
                                 structures_schema, verdict_column)
from phononbench.settings import PRESETS, ProtocolSettings

STRUCTURES_DIR = "structures"
SUPERSEDED_DIR = "superseded"  # rows no longer current (edited or removed inputs, retried failures)
DAMAGED_DIR = "damaged"  # part files a resume could not read, set aside (their structures are computed again)
PARTS_FILE = "parts.json"  # the ledger: part file name -> rows
PART_RUN_ID = b"phononbench_run_id"  # in a part file's metadata: the run that wrote it
SUMMARY_FILE = "summary.parquet"
RUN_FILE = "run.json"
LOG_FILE = "run.log"
MANIFEST_FILE = "manifest.parquet"  # the inputs of the latest run: structure_id, structure_hash, generator, source
LOCK_FILE = ".lock"
INGEST_CACHE_FILE = "inputs.parquet"  # the inputs as read, by file: a resume reads only changed files
DEDUP_FILE = "dedup.parquet"  # every valid input's dedup decision, reused by a resume for unchanged buckets
# what decided it: a dedup file from another matcher (or pymatgen) is not reused
log = logging.getLogger(__name__)
DEDUP_MATCHER = f"StructureMatcher() defaults, pymatgen {metadata.version('pymatgen')}"

PACKAGES = ("phononbench", "mattersim", "torch", "torch-sim-atomistic", "ase", "phonopy", "spglib", "seekpath", "pymatgen",
            "chgnet", "sevenn", "ray", "numpy", "pyarrow", "pandas")

# run.json keys that must match for a resume: anything that changes a verdict
RESUME_KEYS = ("protocol", "inputs", "limit_per_generator", "engine")
RESUME_POTENTIAL_KEYS = ("model", "checkpoint_sha256")
INGEST_KEYS = ("max_atoms", "min_distance_a")  # the protocol settings that decide what ingest and dedup give
# settings a preset changed between versions: why a run of that preset started before refuses to resume under it
PRESET_CHANGES = {
    ("accurate", "protocol.acoustic_dips"): "the accurate preset sets acoustic dips aside since 2026-12-04",
    ("accurate", "protocol.supercell_keeps_rotations"): "the accurate preset's supercells keep the crystal's "
                                                        "rotations since 2026-12-04",
}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _code(text: str) -> str:
    """A module's code without its comments, docstrings and layout: what a fix that changes a result changes."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def method_sha256(root: Path) -> str | None:
    """A fingerprint of the method's code: every module of the package but the readers, the web app and the command
    line, which store nothing a run computes. None where the sources are not installed (nothing to compare)."""
    digest, read = hashlib.sha256(), 0
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if parts[0] in ("app", "reading", "cli.py") or any(p.startswith(".") for p in parts) or not path.is_file():
            continue  # editor lock files and the like are not code
        digest.update("/".join(parts).encode() + b"\0" + _code(path.read_text(encoding="utf-8")).encode() + b"\0")
        read += 1
    return digest.hexdigest() if read else None


# taken when the package is imported, so a notebook that pulled new code without restarting records the code it runs;
# the version number stays 0.1.0 across fixes that change verdicts, so a resume compares this instead
METHOD_SHA256 = method_sha256(Path(__file__).resolve().parent.parent)


def environment() -> dict:
    """What ran the run: package versions, the method's code, Python, host."""
    return {"versions": package_versions(), "method_sha256": METHOD_SHA256, "python": platform.python_version(),
            "host": platform.node()}


def ensure_resumable(previous: dict, info: dict) -> None:
    """Refuse to resume a run made with other settings: the rows would mix two runs. A folder that
    ``phononbench dedup`` wrote (stage "dedup") is taken up by a run with the same inputs and ingest
    settings; ``dedup`` never writes into a run's folder (its rows hold the dedup already)."""
    if previous.get("stage") == "dedup" or info.get("stage") == "dedup":
        if info.get("stage") == "dedup" and previous.get("stage", "run") != "dedup":
            raise SetupError("this output folder holds a run, whose rows include its dedup; use another folder")
        differing = [k for k in ("inputs", "limit_per_generator") if previous.get(k) != info[k]]
        differing += _differing_protocol(previous, info, INGEST_KEYS)
    else:
        differing = [k for k in RESUME_KEYS if k != "protocol" and previous.get(k) != info[k]]
        differing += _differing_protocol(previous, info)
        differing += [f"potential.{k}" for k in RESUME_POTENTIAL_KEYS
                      if (previous.get("potential") or {}).get(k) != info["potential"].get(k)]
    # a validation computes every structure (no dedup): not to be mixed with rows or a dedup that ran one
    differing += ["deduplicate"] if previous.get("deduplicate", True) != info.get("deduplicate", True) else []
    # a run from before the fingerprint was recorded (or without sources to take it from) cannot be told apart: it
    # resumes, as it did then
    before, now = previous.get("method_sha256"), info.get("method_sha256")
    if before and now and before != now:
        differing.append(f"method_sha256: phononbench's code changed since the run started, {before[:8]} then, "
                         f"{now[:8]} now")
    if differing:
        # where a preset changed between versions, say so: the run can only be finished by the version that started it
        changed = "".join(f" ({why})" for (name, setting), why in PRESET_CHANGES.items()
                          if setting in differing and _preset_changed(name, setting.removeprefix("protocol."),
                                                                      previous, info))
        raise SetupError(
            f"the run in this output folder used other settings ({', '.join(differing)}){changed}; resuming would "
            "mix two runs. Use the same settings as before (or the version that started it), or another output "
            "folder (--out)."
        )


def _preset_changed(name: str, setting: str, previous: dict, info: dict) -> bool:
    """Whether a setting differs because the preset changed it: both runs are of that preset and this one has the
    preset's value (not one the user chose with an option)."""
    names = [p.get("name") if isinstance(p, dict) else None for p in (previous.get("protocol"), info["protocol"])]
    return names == [name, name] and info["protocol"].get(setting) == getattr(PRESETS[name], setting)


def headline_verdict(info: dict) -> str:
    """The verdict a run's preset ranks by: "path" (published q-points) or "brillouin_zone" (accurate)."""
    return info["protocol"].get("headline_verdict", "path")


def ranks_by_zone(info: dict) -> bool:
    """Whether a run (its run.json) ranks by the Brillouin-zone verdict: what every reader counts as stable."""
    return headline_verdict(info) == "brillouin_zone"


def protocol_as_recorded(protocol) -> dict | None:
    """A run.json's protocol with every setting added since it was written at its default (a new setting's
    default keeps the behaviour from before it existed), so an upgrade alone neither refuses a resume nor
    keeps ``validate`` from pooling two runs of one protocol; None if there is no protocol to read."""
    if not isinstance(protocol, dict):
        return None
    defaults = {f.name: f.default for f in dataclasses.fields(ProtocolSettings) if f.default is not dataclasses.MISSING}
    return {**json.loads(json.dumps(defaults)), **protocol}


def _differing_protocol(previous: dict, info: dict, keys=None) -> list[str]:
    """The protocol settings (all, or ``keys``) that differ, named one by one: a preset changed between
    versions says which of its settings did."""
    before, now = protocol_as_recorded(previous.get("protocol")), info["protocol"]
    if before is None:
        return ["protocol"]
    keys = sorted(set(before) | set(now)) if keys is None else keys
    return [f"protocol.{k}" for k in keys if before.get(k) != now.get(k)]


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


def has_rows(out: Path) -> bool:
    """Rows were written here (part files, or a ledger that lists some even if they are gone)."""
    if any((Path(out) / STRUCTURES_DIR).glob("part-*.parquet")):
        return True
    try:
        return bool(read_ledger(out))
    except IncompleteRun:
        return True  # a ledger that cannot be read: something was written (the readers say what)


def read_ledger(out: Path) -> dict[str, int] | None:
    """Part file name -> rows, as the run wrote them; None for a folder written before the ledger."""
    path = Path(out) / PARTS_FILE
    try:
        return {str(k): int(v) for k, v in json.loads(path.read_text())["parts"].items()}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IncompleteRun(f"{path} cannot be read ({type(exc).__name__}); `phononbench run` with the same "
                            f"settings into {out} rebuilds it") from exc


def write_ledger(out: Path, parts: dict[str, int]) -> None:
    path = Path(out) / PARTS_FILE
    partial = path.with_name(f".{PARTS_FILE}.partial")
    partial.write_text(json.dumps({"parts": parts}, indent=0))
    os.replace(partial, path)


def _read_parts(out: Path, skip: tuple[str, ...], repair: bool) -> tuple[list[pa.Table], list[Path]]:
    """Every part file's rows, checked against the ledger. A listed part that is missing, a part that
    cannot be read or whose row count differs from the ledger: IncompleteRun naming it; with ``repair``
    (a resume, which computes those structures again) it is set aside in DAMAGED_DIR with a line in
    run.log instead."""
    directory = Path(out) / STRUCTURES_DIR
    ledger = read_ledger(out) if not repair else _ledger_or_rebuild(out)
    on_disk = {p.name for p in directory.glob("part-*.parquet")}
    names = sorted(on_disk | set(ledger or {}))  # names sort in writing order
    run_id = run_id_of(out)
    tables, parts, problems = [], [], []
    for name in names:
        part = directory / name
        try:
            if name not in on_disk:
                raise FileNotFoundError("listed in parts.json, missing")
            columns = None if not skip else [c for c in pq.read_schema(part).names if c not in skip]
            _readable_lists(part)
            table = _variable_size_lists(pq.read_table(part, columns=columns))
            written_by = (table.schema.metadata or {}).get(PART_RUN_ID, b"").decode()
            if run_id and written_by and written_by != run_id:  # copied in from another run folder
                raise ValueError(f"written by another run ({written_by[:8]}), not this one ({run_id[:8]})")
            if ledger is not None and name in ledger and table.num_rows != ledger[name]:
                raise ValueError(f"{table.num_rows} rows, parts.json says {ledger[name]}")
        except (OSError, ValueError, pa.ArrowException) as exc:
            if isinstance(exc, FileNotFoundError) and ledger is not None and name not in ledger:
                continue  # an unlisted part a finishing run has just replaced: its rows are in the new parts
            problem = f"{STRUCTURES_DIR}/{name}: {' '.join(str(exc).split())[:200] or type(exc).__name__}"
            if not repair:
                raise _incomplete(out, problem) from exc
            problems.append(problem)
            if part.exists():
                (Path(out) / DAMAGED_DIR).mkdir(exist_ok=True)
                os.replace(part, Path(out) / DAMAGED_DIR / name)
            continue
        tables.append(table)
        parts.append(part)
    if repair and (problems or ledger is None or set(ledger) != {p.name for p in parts}):
        for problem in problems:
            log.warning("part file set aside (its structures are computed again): %s", problem)
        write_ledger(out, {p.name: t.num_rows for p, t in zip(parts, tables)})
    return tables, parts


def _readable_lists(part: Path) -> None:
    """A part written with fixed-size lists (before records._column made them variable-size) holds null lists
    that pyarrow before 26 cannot read back: said so, and never set aside as damaged (it is not)."""
    if int(pa.__version__.split(".")[0]) >= 26:
        return
    if any(pa.types.is_fixed_size_list(f.type) for f in pq.read_schema(part)):
        raise SetupError(f"{part} was written by an earlier PhononBench with fixed-size lists, which pyarrow "
                         f"{pa.__version__} cannot read back (apache/arrow#35692); install pyarrow 26 or later "
                         "to read or resume this run")


def _record(out: Path) -> dict:
    """run.json as written, {} where it cannot be read (the readers that need it whole say why)."""
    try:
        record = json.loads((Path(out) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def run_id_of(out: Path) -> str | None:
    """run.json's run_id, or None where there is none to read (a folder from before it, or damaged)."""
    run_id = _record(out).get("run_id")
    return run_id if isinstance(run_id, str) else None


def _write_part(table: pa.Table, path: Path, run_id: str | None) -> None:
    """A part file, with the run that wrote it in its metadata: a part copied in from another run is refused."""
    if run_id:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), PART_RUN_ID: run_id.encode()})
    _write_atomically(table, path)


def _variable_size_lists(table: pa.Table) -> pa.Table:
    """A part written before the lists became variable-size (records._column), as parts are written now."""
    fixed = [i for i, f in enumerate(table.schema) if pa.types.is_fixed_size_list(f.type)]
    for i in fixed:
        f = table.schema.field(i)
        table = table.set_column(i, f.name, table.column(i).cast(pa.list_(f.type.value_type)))
    return table


def _incomplete(out: Path, problem: str) -> IncompleteRun:
    return IncompleteRun(f"run {out} is incomplete: {problem}; `phononbench run` with the same settings into "
                         f"{out} computes its structures again")


def _ledger_stamp(out: Path) -> int | None:
    try:
        return (Path(out) / PARTS_FILE).stat().st_mtime_ns
    except OSError:
        return None


def _ledger_or_rebuild(out: Path) -> dict[str, int] | None:
    try:
        return read_ledger(out)
    except IncompleteRun as exc:
        log.warning("%s; rebuilt from the part files", exc)
        return None


def _latest_rows(out: Path, skip: tuple[str, ...] = (), repair: bool = False
                 ) -> tuple[pa.Table | None, pa.Table | None, list[Path]]:
    """Every row written under OUT/structures: the latest one per (structure_id, structure_hash), as one
    Arrow table (types as written; the columns in ``skip`` left unread), every row as written, and the
    part files they came from."""
    for attempt in range(3):  # a run finishing meanwhile replaces its parts: read them again as they now are
        stamp = _ledger_stamp(out)
        try:
            tables, parts = _read_parts(out, skip, repair)
            break
        except IncompleteRun:
            if attempt == 2 or _ledger_stamp(out) == stamp:
                raise
    if not tables:
        return None, None, parts
    table = pa.concat_tables(tables, promote_options="default")
    if Col.STRUCTURE_HASH not in table.column_names:
        table = table.append_column(str(Col.STRUCTURE_HASH), pa.nulls(table.num_rows, pa.string()))
    keys = table.select([str(Col.STRUCTURE_ID), str(Col.STRUCTURE_HASH)]).to_pandas()
    latest = keys.drop_duplicates(keep="last").index.to_numpy()
    return (table if len(latest) == table.num_rows else table.take(latest)), table, parts


def recorded_rows(out: Path, skip: tuple[str, ...] = (), repair: bool = False) -> pd.DataFrame:
    """Every row ever written under OUT/structures, the latest one per (structure_id, structure_hash);
    ``repair``: a damaged or missing part is set aside (a resume computes its structures again)."""
    table, _, _ = _latest_rows(out, skip, repair)
    if table is None:
        return pd.DataFrame(columns=[str(Col.STRUCTURE_ID), str(Col.STRUCTURE_HASH), str(Col.STATUS)])
    return table.to_pandas()


def _current_index(rows: pa.Table, manifest: pd.DataFrame | None) -> "np.ndarray":
    """Positions in ``rows`` of the current row of each input: the latest for its id and content, inputs
    of the manifest only (all ids when there is none)."""
    import numpy as np

    keys = rows.select([str(Col.STRUCTURE_ID), str(Col.STRUCTURE_HASH)]).to_pandas()
    keys["position"] = np.arange(len(keys))
    if manifest is not None:
        keys = manifest[[str(Col.STRUCTURE_ID), str(Col.STRUCTURE_HASH)]].merge(
            keys, on=[str(Col.STRUCTURE_ID), str(Col.STRUCTURE_HASH)], how="inner")
    keys = keys.drop_duplicates(subset=[str(Col.STRUCTURE_ID), str(Col.STRUCTURE_HASH)], keep="last")
    keys = keys.drop_duplicates(subset=[str(Col.STRUCTURE_ID)], keep="last")
    return np.sort(keys["position"].to_numpy())


def finalize_rows(out: Path, rows_per_part: int = 50_000) -> pa.Table | None:
    """At the end of a run: OUT/structures holds exactly one row per input of the manifest (any Parquet
    reader gets what ``read_structures`` gives), in few large parts; every other row written moves to
    OUT/superseded. New parts are written (atomically) and the ledger switched before old parts go, so a
    crash in between leaves rows twice, never none. Returns the current rows."""
    import numpy as np

    _, every, parts = _latest_rows(out)
    if every is None:
        return None
    keep = _current_index(every, read_manifest(out))
    current = every.take(keep)
    if len(keep) == every.num_rows and len(parts) <= 1:
        return current  # already one row per input, in one part
    tag = f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}"
    run_id = run_id_of(out)
    superseded = np.setdiff1d(np.arange(every.num_rows), keep)
    if len(superseded):
        (Path(out) / SUPERSEDED_DIR).mkdir(exist_ok=True)
        _write_part(every.take(superseded), Path(out) / SUPERSEDED_DIR / f"part-{tag}.parquet", run_id)
    ledger = {}
    for n, start in enumerate(range(0, max(current.num_rows, 1), rows_per_part)):
        name = f"part-{tag}-final-{n:05d}.parquet"
        piece = current.slice(start, rows_per_part)
        _write_part(piece, Path(out) / STRUCTURES_DIR / name, run_id)
        ledger[name] = piece.num_rows
    write_ledger(out, ledger)
    for part in parts:
        if part.name not in ledger:
            part.unlink(missing_ok=True)
    return current


def write_manifest(out: Path, items) -> None:
    """The inputs of this run, by id and content: the rows that count are the ones matching it."""
    table = pa.table({
        str(Col.STRUCTURE_ID): [i.structure_id for i in items],
        str(Col.STRUCTURE_HASH): [i.structure_hash for i in items],
        str(Col.GENERATOR): [i.generator for i in items],
        str(Col.SOURCE): [i.source for i in items],
    })
    _write_atomically(table, Path(out) / MANIFEST_FILE)


def _stamped(table: pa.Table, made_by: str) -> pa.Table:
    """A cache table with what made it (settings, matcher, versions) in its metadata."""
    return table.replace_schema_metadata({"made_by": made_by})


def _read_stamped(path: Path, made_by: str) -> pa.Table | None:
    """A cache table, if it exists and the same thing made it; else None (it is made again)."""
    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:  # a cache: made again, never a reason to stop
        log.warning("%s cannot be read (%s); it is made again", path.name, " ".join(str(exc).split())[:200])
        return None
    return table if (table.schema.metadata or {}).get(b"made_by", b"").decode() == made_by else None


def write_ingest_cache(out: Path, items, settings: dict) -> None:
    """The inputs as read (packed), by the file they came from (``read_key``): a resume does not read or
    parse a file whose key (input, path, size and modification time) is unchanged."""
    cached = [i for i in items if i.read_key is not None]
    cells = [i.cell for i in cached]
    table = pa.table({
        "read_key": [i.read_key for i in cached],
        str(Col.STRUCTURE_ID): [i.structure_id for i in cached],
        str(Col.GENERATOR): [i.generator for i in cached],
        str(Col.SOURCE): [i.source for i in cached],
        str(Col.ERROR): [i.error for i in cached],
        str(Col.STRUCTURE_HASH): [i.structure_hash for i in cached],
        str(Col.FORMULA): [i.formula for i in cached],
        str(Col.N_ATOMS): pa.array([i.n_atoms for i in cached], pa.int64()),
        "lattice": pa.array([None if c is None else c[0].ravel() for c in cells], pa.list_(pa.float64())),
        "species": pa.array([None if c is None else list(c[1]) for c in cells], pa.list_(pa.string())),
        "fractional": pa.array([None if c is None else c[2].ravel() for c in cells], pa.list_(pa.float64())),
    })
    _write_atomically(_stamped(table, json.dumps(settings, sort_keys=True)), Path(out) / INGEST_CACHE_FILE)


def read_ingest_cache(out: Path, settings: dict) -> dict[str, list]:
    """read key -> its inputs (packed), as ``write_ingest_cache`` left them under the same settings."""
    import numpy as np

    from phononbench.science.ingest import InputStructure

    table = _read_stamped(Path(out) / INGEST_CACHE_FILE, json.dumps(settings, sort_keys=True))
    if table is None:
        return {}
    columns = {name: table.column(name).to_pylist() for name in table.column_names if name not in
               ("lattice", "fractional")}
    # the coordinates as two flat arrays and offsets: views, not 110k small Python lists
    arrays = {}
    for name in ("lattice", "fractional"):
        column = table.column(name).combine_chunks()
        arrays[name] = (column.flatten().to_numpy(zero_copy_only=False), column.offsets.to_numpy())
    cache: dict[str, list] = {}
    for k, key in enumerate(columns["read_key"]):
        species = columns["species"][k]
        lattice, fractional = ((values[offsets[k]:offsets[k + 1]] for values, offsets in
                                (arrays["lattice"], arrays["fractional"])))
        cell = None if species is None else (lattice.reshape(3, 3), tuple(species), fractional.reshape(-1, 3))
        cache.setdefault(key, []).append(InputStructure(
            columns[Col.STRUCTURE_ID][k], columns[Col.GENERATOR][k], columns[Col.SOURCE][k],
            error=columns[Col.ERROR][k], structure_hash=columns[Col.STRUCTURE_HASH][k],
            formula=columns[Col.FORMULA][k], n_atoms=columns[Col.N_ATOMS][k], cell=cell, read_key=key))
    return cache


def write_dedup(out: Path, items, duplicate_of: dict[str, str]) -> None:
    """Each valid input's dedup decision, in input order, with what decided it (its bucket's members): a
    later run reuses a bucket whose members are unchanged instead of matching it again."""
    valid = [i for i in items if i.valid]
    table = pa.table({
        str(Col.GENERATOR): [i.generator for i in valid],
        str(Col.FORMULA): [i.formula for i in valid],
        str(Col.STRUCTURE_ID): [i.structure_id for i in valid],
        str(Col.STRUCTURE_HASH): [i.structure_hash for i in valid],
        str(Col.DUPLICATE_OF): [duplicate_of.get(i.structure_id) for i in valid],
    })
    _write_atomically(_stamped(table, DEDUP_MATCHER), Path(out) / DEDUP_FILE)


def read_dedup(out: Path) -> dict[tuple[str, str], tuple[tuple, dict[str, str]]]:
    """(generator, formula) -> (the bucket's (structure_id, structure_hash) in order, its duplicates), as
    ``write_dedup`` left them; empty when there is none or another matcher wrote it."""
    table = _read_stamped(Path(out) / DEDUP_FILE, DEDUP_MATCHER)
    if table is None:
        return {}
    frame = table.to_pandas()
    buckets: dict[tuple[str, str], tuple[list, dict]] = {}
    for generator, formula, sid, digest, duplicate in zip(
            frame[Col.GENERATOR], frame[Col.FORMULA], frame[Col.STRUCTURE_ID], frame[Col.STRUCTURE_HASH],
            frame[Col.DUPLICATE_OF]):
        members, duplicates = buckets.setdefault((generator, formula), ([], {}))
        members.append((sid, digest))
        if isinstance(duplicate, str):
            duplicates[sid] = duplicate
    return {key: (tuple(members), duplicates) for key, (members, duplicates) in buckets.items()}


def read_manifest(out: Path) -> pd.DataFrame | None:
    path = Path(out) / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        return pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise _incomplete(out, f"{MANIFEST_FILE}: {' '.join(str(exc).split())[:200]}") from None


class RunLock:
    """One run per output folder: OUT/.lock holds the writer's host and pid. A lock whose process is gone
    (a killed run on this host) is taken over; one held by a live process refuses the second run."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self.held = False

    def refuse_if_held(self) -> None:
        """Raise if a live run holds the folder; remove the lock of a killed run on this host."""
        import psutil

        try:
            holder = json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            holder = {}
        same_host = holder.get("host") == platform.node()
        if same_host and not psutil.pid_exists(int(holder.get("pid", -1))):
            self.path.unlink(missing_ok=True)  # its run was killed: taken over
            return
        where = f"pid {holder.get('pid')} on {holder.get('host')}"
        raise SetupError(f"another run ({where}) is writing to {self.path.parent}; wait for it to finish or use "
                         f"another output folder" + ("" if same_host else f" (if that run is gone, delete {self.path})"))

    def __enter__(self) -> "RunLock":
        mine = json.dumps({"host": platform.node(), "pid": os.getpid(), "since": time.time()})
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self.refuse_if_held()
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(mine)
            self.held = True
            return self
        raise SetupError(f"cannot take the lock {self.path}")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def safe_file_name(text: str, limit: int | None = 120, default: str = "structure") -> str:
    """A name made of letters, digits and ._- only (an id or an upload's name never becomes a path as is)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:limit] or default


def _write_atomically(table: pa.Table, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table, partial)
    os.replace(partial, path)


def _plain(value):
    """A value read back from Parquet as Arrow takes it again (arrays as lists, NaN as no value)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return None if isinstance(value, float) and value != value else value


class ResultWriter:
    """Collects rows and flushes them to OUT/structures/part-NNNNN.parquet every few rows or seconds."""

    def __init__(self, out: Path, thresholds_thz: tuple[float, ...], every_rows: int = 50, every_s: float = 60.0):
        self.directory = Path(out) / STRUCTURES_DIR
        self.thresholds_thz = tuple(thresholds_thz)
        self.schema = structures_schema(self.thresholds_thz)
        self.every_rows, self.every_s = every_rows, every_s
        self.pending: list[dict] = []
        self.last_flush = time.monotonic()
        # names sort in writing order (a later row for the same structure wins); a resumed run never
        # overwrites an earlier one's parts
        self.run_tag = f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}"
        self.n_parts = 0
        self.out = Path(out)
        self.ledger = read_ledger(out) or {}  # a resume has set aside what it could not read
        self.run_id = run_id_of(out)

    def add(self, result: StructureResult | dict) -> None:
        """A row: a StructureResult, or a row already written once (copied under another id)."""
        row = result.to_row(self.thresholds_thz) if isinstance(result, StructureResult) else \
            {name: _plain(result.get(name)) for name in self.schema.names}
        self.pending.append(row)
        if len(self.pending) >= self.every_rows or time.monotonic() - self.last_flush > self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            table = pa.Table.from_pylist(self.pending, schema=self.schema)
            name = f"part-{self.run_tag}-{self.n_parts:05d}.parquet"
            _write_part(table, self.directory / name, self.run_id)
            self.ledger[name] = table.num_rows
            write_ledger(self.out, self.ledger)  # after the part: a crash between leaves an unlisted part, read all the same
            self.n_parts += 1
            self.pending = []
        self.last_flush = time.monotonic()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()  # also on an exception: what was computed is kept


def read_structures(out: Path, current: pa.Table | None = None, skip: tuple[str, ...] = ()) -> pd.DataFrame:
    """The run's rows: one per input of its manifest, the latest computed for that input's content. Rows of
    inputs since removed, or of an earlier content of an edited input, are left out. ``current``: the rows
    as ``finalize_rows`` just left them (else they are read here); ``skip``: columns not needed (not read).
    A finished run with an input that has no row (a part file lost) is IncompleteRun, naming what is missing."""
    directory = Path(out) / STRUCTURES_DIR
    if not has_rows(out):
        if (Path(out) / RUN_FILE).exists():
            if read_run_info(out).get("stage") == "dedup":
                raise SetupError(f"{out} holds a deduplication only (phononbench dedup): no phonon rows")
            raise SetupError(f"{out} has no rows yet: its run has not finished a structure")
        raise SetupError(f"no results under {directory}; is {out} a PhononBench output folder?")
    manifest = read_manifest(out)  # read once: the current rows and the completeness check both use it
    if current is None:
        _, every, _ = _latest_rows(out, skip)
        if every is None:
            raise SetupError(f"no results under {directory}; is {out} a PhononBench output folder?")
        current = every.take(_current_index(every, manifest))
    rows = current.to_pandas()
    record = _record(out)
    finished = record.get("status") == "complete"
    for column in [] if finished else _verdict_columns(record):
        if column not in rows:  # a run going that has written only the rows of the dedup it took up
            rows[column] = pd.Series(pd.NA, index=rows.index, dtype="boolean")
    if manifest is not None and len(rows) < len(manifest) and finished and record.get("stage", "run") != "dedup":
        missing = manifest.loc[~manifest[Col.STRUCTURE_ID].isin(rows[Col.STRUCTURE_ID]), Col.STRUCTURE_ID]
        raise IncompleteRun(f"run {out} is incomplete: {len(missing)} of its {len(manifest)} inputs have no row "
                            f"(first: {missing.iloc[0]}); `phononbench run` with the same settings into {out} "
                            "computes them")
    return rows.reset_index(drop=True)


def _status(out: Path) -> str | None:
    return _record(out).get("status")


def _verdict_columns(record: dict) -> list[str]:
    """The verdict columns of a run record's thresholds; none where it cannot say."""
    try:
        thresholds = record["protocol"]["thresholds_thz"]
        return [c for t in thresholds for c in (verdict_column(float(t)), bz_verdict_column(float(t)))]
    except (KeyError, TypeError, ValueError):
        return []


def _finished(out: Path) -> bool:
    return _status(out) == "complete"


def summarize(structures: pd.DataFrame, thresholds_thz: tuple[float, ...], brillouin_zone: bool = False) -> pd.DataFrame:
    """One row per (generator, threshold), plus the pooled ``(all)`` rows.

    stability_rate = stable / relaxed on the published path (the published rate; relaxed as the published
    script counts it, records.is_relaxed; n_phonon_failed counts every phonon failure);
    stability_rate_bz the same over the Brillouin zone; phonon failures count as unstable;
    n_stable_not_3d: how many of the stable structures are not 3D-bonded, stable by the verdict the run ranks
    by (``brillouin_zone``: the zone under accurate, else the published path).
    """
    rows = []
    groups = [(g, False, df) for g, df in structures.groupby(Col.GENERATOR, sort=True)]
    groups.append((ALL_GENERATORS, True, structures))
    for generator, pooled, df in groups:
        tally = counts(df, thresholds_thz, brillouin_zone)
        n_relaxed, n_unique = tally[Col.N_RELAXED], tally[Col.N_UNIQUE]
        for threshold in thresholds_thz:
            n_stable = tally["n_stable_at"][threshold]
            rows.append(
                {
                    Col.GENERATOR: generator,
                    Col.POOLED: pooled,
                    Col.THRESHOLD_THZ: float(threshold),
                    **{c: tally[c] for c in (Col.N_INPUT, Col.N_VALID, Col.N_UNIQUE, Col.N_RELAXED, Col.N_PHONON,
                                               Col.N_PHONON_FAILED, *LEFT_OUT)},
                    Col.N_STABLE: n_stable,
                    Col.STABILITY_RATE: rate(n_stable, n_relaxed),
                    Col.STABILITY_RATE_UNIQUE: rate(n_stable, n_unique),
                    Col.N_STABLE_BZ: tally["n_stable_bz_at"][threshold],
                    Col.STABILITY_RATE_BZ: rate(tally["n_stable_bz_at"][threshold], n_relaxed),
                    Col.N_STABLE_NOT_3D: tally["n_stable_not_3d_at"][threshold],
                }
            )
    return pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA).to_pandas()


def write_summary(out: Path, summary: pd.DataFrame) -> Path:
    path = Path(out) / SUMMARY_FILE
    _write_atomically(pa.Table.from_pandas(summary, schema=SUMMARY_SCHEMA, preserve_index=False), path)
    return path


def read_summary(out: Path) -> pd.DataFrame:
    """The per-generator table of a finished run, made again from its rows as they are now (seconds, even for
    a large run): summary.parquet is that table for readers of the files, and a copy from another run, or one
    edited, must not be what is shown. ``summary_file_differs`` says whether the file still matches."""
    info = read_verdict_run_info(out)
    if not _finished(out):  # a resume going or stopped: the summary would be an earlier finish's
        raise IncompleteRun(f"the run in {out} has not finished (run.json says "
                            f"{_status(out)!r}); `phononbench run` with the same settings finishes it")
    return summarize(read_structures(out, skip=(Col.RELAXED_CIF,)), tuple(info["protocol"]["thresholds_thz"]),
                     ranks_by_zone(info))


def summary_file_differs(out: Path, summary: pd.DataFrame) -> bool:
    """summary.parquet is missing, unreadable, or not ``summary`` (the table its run's rows give)."""
    try:
        written = pd.read_parquet(Path(out) / SUMMARY_FILE)
    except (OSError, ValueError, pa.ArrowException):
        return True
    return not written.equals(summary)


def write_run_info(out: Path, info: dict) -> None:
    path = Path(out) / RUN_FILE
    partial = path.with_name(f".{RUN_FILE}.partial")
    partial.write_text(json.dumps(info, indent=2, default=str))
    os.replace(partial, path)


def read_run_info(out: Path) -> dict:
    path = Path(out) / RUN_FILE
    if not path.exists():
        raise SetupError(f"{path} not found; is {out} a PhononBench output folder?")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SetupError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(info, dict):
        raise SetupError(f"{path} is not a run's record (a JSON object)")
    return info


def read_verdict_run_info(out: Path) -> dict:
    """run.json of a folder that holds verdicts (not only a dedup), with what its readers take from it there:
    the protocol's name and thresholds (those its rows were computed at) and the potential's name."""
    info = read_run_info(out)
    if info.get("stage") == "dedup":
        raise SetupError(f"{out} holds only a dedup, no verdicts yet; `phononbench run` with the same inputs "
                         f"and --out {out} computes them")
    protocol, potential = info.get("protocol"), info.get("potential")
    thresholds = protocol.get("thresholds_thz") if isinstance(protocol, dict) else None
    if not (isinstance(thresholds, list) and thresholds and all(isinstance(t, (int, float)) for t in thresholds)
            and isinstance(protocol.get("name"), str) and isinstance(potential, dict)
            and isinstance(potential.get("model"), str)):
        raise SetupError(f"{Path(out) / RUN_FILE} lacks its protocol's name and thresholds or its potential's "
                         "name (edited or damaged?)")
    # a finished run's newest part is its finish's, with every verdict column (one going may have written only
    # the parts of the dedup it took up, computed at other thresholds: read_structures gives it empty verdicts)
    part = max((Path(out) / STRUCTURES_DIR).glob("part-*.parquet"), default=None) if _finished(out) else None
    try:
        columns = set(pq.read_schema(part).names) if part is not None else None
    except (OSError, pa.ArrowException):
        columns = None  # a damaged part: the rows' readers say which
    missing = [t for t in thresholds if columns is not None and verdict_column(t) not in columns]
    if missing:
        raise SetupError(f"{Path(out) / RUN_FILE} names thresholds its rows were not computed at "
                         f"({', '.join(f'{t:g}' for t in missing)} THz; edited?)")
    missing = [bz_verdict_column(t) for t in thresholds if columns is not None and bz_verdict_column(t) not in columns]
    if missing:  # the readers count it: absent, every structure would read unstable over the zone
        raise SetupError(f"{out}: its rows have no {missing[0]} (written before that verdict); run it again with "
                         "this version into a new folder")
    return info
