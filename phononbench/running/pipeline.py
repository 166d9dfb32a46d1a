"""A whole run: read -> dedup -> map chunks over workers -> write, into a resumable run folder.

The Ray Data idiom, ``read -> map_batches(Worker) -> write_parquet``: ingest and dedup happen here, the
chunks are planned here (the one place that decides chunk sizes), workers (``worker.Worker``, which runs
``method.compute``) turn chunks into rows wherever the executor puts them, and ``results`` keeps the
ledger. The executor is the caller's choice (in-process by default, or Ray), never decided here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Protocol

import pandas as pd
from threadpoolctl import threadpool_limits

from phononbench.running import run_folder as results_io
from phononbench.science.dedup import buckets_of, find_duplicates
from phononbench.compute.engines import ensure_engine
from phononbench.errors import SetupError
from phononbench.running.executors import InProcessExecutor
from phononbench.science.ingest import READER_VERSION, InputStructure, SkippedFiles, read_inputs, split_input
from phononbench.records import ALL_GENERATORS, COMPUTED_STATUSES, RETRYABLE_STATUSES, Col, Status, StructureResult
from phononbench.settings import ProtocolSettings
from phononbench.running.worker import WorkerSpec, attach_log_file

log = logging.getLogger(__name__)

# rows per part file when rows are written in bulk (invalid and duplicate inputs); a finished chunk is
# flushed on its own, whatever its size
ROWS_PER_PART = 5000


class Reporter(Protocol):
    def start(self, total: int, done: int = 0) -> None: ...
    def advance(self, result: StructureResult) -> None: ...
    def stop(self) -> None: ...


def plan_chunks(todo: list[InputStructure], chunk_size: int, slots: int) -> list[list[InputStructure]]:
    """Chunks of ``chunk_size`` structures; with several workers, smaller when there are too few to
    keep every worker busy (at least two chunks per worker, so a small run on many workers spreads)."""
    if not todo:
        return []
    size = max(1, chunk_size)
    if slots > 1 and -(-len(todo) // size) < 2 * slots:
        size = max(1, -(-len(todo) // (2 * slots)))
    return [todo[k:k + size] for k in range(0, len(todo), size)]


def normalize_input(spec: str) -> str:
    """An input as run.json records it: its resolved path (``NAME=`` kept), so ``good/`` and ``good`` are
    one input and the same relative path from another working directory is another input."""
    forced, path = split_input(spec)
    return f"{forced}={path.resolve()}" if forced else str(path.resolve())


def ensure_run_settings(chunk_size: int, limit_per_generator: int | None) -> None:
    if chunk_size < 1:
        raise SetupError(f"chunk size must be at least 1 (got {chunk_size})", setting="chunk_size")
    if limit_per_generator is not None and limit_per_generator < 1:
        raise SetupError(f"the per-generator limit must be at least 1 (got {limit_per_generator})", setting="limit")


def ensure_output_folder(out: str | Path) -> None:
    """Refuse, before anything loads, a folder no run of ours can write to: one a live run holds, or one with
    result files but no run.json (nobody's settings to resume under)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SetupError(f"{out} is a file, not an output folder")
    if not (out / results_io.RUN_FILE).exists() and results_io.has_rows(out):
        raise SetupError(f"{out} holds result files but no run.json: it is not a run this version can resume; "
                         "use another output folder")
    results_io.RunLock(out).refuse_if_held()


def _plan(items, duplicate_of, recorded: pd.DataFrame, retry_failed: bool):
    """What this run must do for each input, given the rows already written (resume by content):
    rows to write (``_rows``: made one at a time as they are written, so 110k of them never sit in memory
    together), structures to compute (with their attempt number)."""
    columns = [Col.STRUCTURE_ID, Col.STRUCTURE_HASH, Col.STATUS, Col.DUPLICATE_OF, Col.ATTEMPT]
    narrow = recorded.reindex(columns=columns).astype(object)
    narrow = narrow.where(narrow.notna(), None)  # NaN is no value
    by_key = {(sid, digest): (k, status, duplicate, attempt) for k, (sid, digest, status, duplicate, attempt)
              in enumerate(narrow.itertuples(index=False, name=None))}
    computed_by_hash = {digest: k for (_, digest), (k, status, _, _) in by_key.items() if status in COMPUTED_STATUSES}
    write, todo, attempts, n_kept = [], [], {}, 0
    for item in items:
        _, status, duplicate, attempt = by_key.get((item.structure_id, item.structure_hash), (None,) * 4)
        if not item.valid:
            if status != Status.INVALID_INPUT:
                write.append((item, Status.INVALID_INPUT, None))
        elif item.structure_id in duplicate_of:
            if status != Status.DUPLICATE or duplicate != duplicate_of[item.structure_id]:
                write.append((item, Status.DUPLICATE, duplicate_of[item.structure_id]))
        elif status in COMPUTED_STATUSES:
            n_kept += 1
        elif status in RETRYABLE_STATUSES and not (retry_failed and (attempt or 1) < 2):
            n_kept += 1
        elif status is None and item.structure_hash in computed_by_hash:
            # the same structure under another id (a moved or renamed file): its result, under this id
            copy = recorded.iloc[computed_by_hash[item.structure_hash]].to_dict()
            copy.update({Col.STRUCTURE_ID: item.structure_id, Col.GENERATOR: item.generator, Col.SOURCE: item.source})
            write.append(copy)  # a few: a row as written before
        else:
            attempts[item.structure_id] = 2 if status in RETRYABLE_STATUSES else 1
            todo.append(item)
    return write, todo, attempts, n_kept


def _rows(write):
    """The rows ``_plan`` decided to write, made one at a time."""
    for entry in write:
        if isinstance(entry, dict):
            yield entry
        else:
            item, status, duplicate = entry
            yield StructureResult.for_input(item, status, duplicate_of=duplicate)


def run_benchmark(
    inputs: list[str],
    out: str | Path,
    spec: WorkerSpec,
    potential_info: dict,
    executor=None,
    limit_per_generator: int | None = None,
    reporter: Reporter | None = None,
    command: str | None = None,
    chunk_size: int = 32,
    retry_failed: bool = True,
    deduplicate_within_generators: bool = True,
):
    """Run the benchmark on ``inputs`` into ``out``; returns the summary DataFrame.

    Every setting is checked before anything is written. An ``out`` that already holds a run with the same
    settings is resumed by content: a structure whose input is unchanged keeps its row, an edited one is
    computed again, a removed one leaves the results, a moved copy takes its result; rows of structures
    whose worker timed out or died are computed once more (``retry_failed``). A folder that ``dedup`` wrote
    is taken up (its dedup reused). ``deduplicate_within_generators=False`` computes every structure (a
    validation: DFT-labelled polymorphs that StructureMatcher calls one crystal are two materials). One run at
    a time may write to ``out``. ``executor`` decides where workers and the ingest and dedup tasks run
    (in-process by default, or Ray).
    """
    ensure_engine(spec.engine)
    spec.protocol.ensure_runnable()
    ensure_run_settings(chunk_size, limit_per_generator)
    executor = executor or InProcessExecutor()
    info = _run_info("run", inputs, spec.protocol, executor, command, limit_per_generator,
                     engine=spec.engine, chunk_size=chunk_size, potential=potential_info,
                     **({} if deduplicate_within_generators else {"deduplicate": False}))
    return _in_run_folder(Path(out), info, executor, spec, lambda out, info, previous: _run(
        out, spec, info, previous, executor, limit_per_generator, reporter, chunk_size, retry_failed))


def deduplicate_inputs(
    inputs: list[str],
    out: str | Path,
    protocol: ProtocolSettings,
    executor=None,
    limit_per_generator: int | None = None,
    reporter: Reporter | None = None,
    command: str | None = None,
) -> pd.DataFrame:
    """Ingest and dedup only (``phononbench dedup``): the rows ``run`` writes for invalid and duplicate
    inputs, the manifest and the dedup decisions, into a folder that a later ``run`` takes up. Returns the
    input / valid / unique counts per generator."""
    protocol.ensure_runnable()
    ensure_run_settings(1, limit_per_generator)
    executor = executor or InProcessExecutor()
    info = _run_info("dedup", inputs, protocol, executor, command, limit_per_generator)

    def body(out: Path, info: dict, previous: dict | None) -> pd.DataFrame:
        items, duplicate_of, rows = _prepare(out, info, protocol, executor, limit_per_generator, reporter)
        write, _, _, _ = _plan(items, duplicate_of, rows, retry_failed=False)
        with results_io.ResultWriter(out, protocol.thresholds_thz, every_rows=ROWS_PER_PART) as writer:
            for row in _rows(write):
                writer.add(row)
        results_io.finalize_rows(out)
        counts = unique_counts(items, duplicate_of)
        _finish_run(out, info, items, n_computed=0, n_kept=0, dedup=counts.to_dict(orient="records"))
        return counts

    return _in_run_folder(Path(out), info, executor, None, body)


def unique_counts(items: list[InputStructure], duplicate_of: dict[str, str]) -> pd.DataFrame:
    """Per generator (and pooled): inputs, valid ones, unique ones (the "unique CIFs" users quote)."""
    frame = pd.DataFrame({Col.GENERATOR: [i.generator for i in items], Col.N_VALID: [i.valid for i in items],
                          Col.N_UNIQUE: [i.valid and i.structure_id not in duplicate_of for i in items]})
    per_generator = frame.groupby(Col.GENERATOR, sort=True).agg(
        **{Col.N_INPUT: (Col.N_VALID, "size"), Col.N_VALID: (Col.N_VALID, "sum"), Col.N_UNIQUE: (Col.N_UNIQUE, "sum")})
    per_generator[Col.POOLED] = False
    pooled = pd.DataFrame({Col.N_INPUT: [len(frame)], Col.N_VALID: [int(frame[Col.N_VALID].sum())],
                           Col.N_UNIQUE: [int(frame[Col.N_UNIQUE].sum())], Col.POOLED: [True]},
                          index=pd.Index([ALL_GENERATORS], name=Col.GENERATOR))
    return pd.concat([per_generator, pooled]).reset_index()


def _run_info(stage, inputs, protocol, executor, command, limit_per_generator, **settings) -> dict:
    info = {
        "stage": stage,
        "status": "running",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(),
        "command": command,
        "inputs": [normalize_input(i) for i in inputs],
        "limit_per_generator": limit_per_generator,
        "engine": None,
        "chunk_size": None,
        "potential": None,
        **settings,
        "executor": executor.describe(),
        "protocol": protocol.to_dict(),
        **results_io.environment(),
    }
    # JSON round trip so tuples compare equal to what run.json holds
    return json.loads(json.dumps(info, default=str))


def _in_run_folder(out: Path, info: dict, executor, spec: WorkerSpec | None, body):
    """Checks (folder, resumability, resources) before anything is made; then ``body(out, info, previous)``
    under the folder's lock and with its log. A setup error before the first row leaves no folder behind."""
    ensure_output_folder(out)
    previous = results_io.read_run_info(out) if (out / results_io.RUN_FILE).exists() else None
    if previous is not None and results_io.has_rows(out):
        results_io.ensure_resumable(previous, info)  # a folder with no rows yet takes the new settings
    if spec is not None:
        executor.ensure_runnable(spec)  # resources the executor can provide, before any folder is made
        info["executor"] = executor.describe()  # as the cluster resolved it (GPUs shared by how many workers)
        batch_atoms = executor.worker_spec(spec).max_atoms_per_batch
        if batch_atoms is not None and info.get("potential"):
            info["potential"]["max_atoms_per_batch"] = batch_atoms  # a worker's, where workers share a GPU
    created = not out.exists()
    results_io.prepare_output(out)
    try:
        with results_io.RunLock(out):
            info["run_id"] = (previous or {}).get("run_id") or uuid.uuid4().hex
            if previous is not None:
                info["resumed_from"] = previous.get("started")
            handler = attach_log_file(str((out / results_io.LOG_FILE).resolve()))
            try:
                results_io.write_run_info(out, info)
                log.info("%s %s: %s", info["stage"], "resumed" if previous else "started",
                         info["command"] or info["inputs"])
                return body(out, info, previous)
            finally:
                logging.getLogger("phononbench").removeHandler(handler)
                handler.close()
    except SetupError:
        if created and not results_io.has_rows(out):
            shutil.rmtree(out, ignore_errors=True)  # a run that never started leaves nothing behind
        raise


def _prepare(out: Path, info: dict, protocol: ProtocolSettings, executor, limit_per_generator, reporter):
    """Ingest (tasks on the executor, structures kept packed), dedup (unchanged buckets reused), the rows
    already written; records the manifest and the skipped files."""
    skipped = SkippedFiles()
    started = time.perf_counter()
    settings = {"max_atoms": protocol.max_atoms, "min_distance_a": protocol.min_distance_a,
                "reader": READER_VERSION}
    cache = results_io.read_ingest_cache(out, settings)
    with threadpool_limits(limits=1, user_api="blas"), _stage(reporter, "read inputs") as step:
        items = read_inputs(info["inputs"], protocol.max_atoms, protocol.min_distance_a, limit_per_generator,
                            skipped=skipped, exclude=(out,), executor=executor, pack=True, progress=step,
                            cache=cache)
    del cache
    if not items:
        raise SetupError(f"no structure files in {', '.join(info['inputs'])}" +
                         (f" ({skipped.summary()})" if skipped.count() else ""))
    results_io.write_ingest_cache(out, items, settings)
    results_io.write_manifest(out, items)
    info["skipped_files"] = skipped.to_dict()
    if skipped.count():
        log.info(skipped.summary())
    read = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        duplicate_of = deduplicate(items, out, executor, reporter) if info.get("deduplicate", True) else {}
    deduplicated = time.perf_counter()
    rows = results_io.recorded_rows(out, repair=True)  # a lost or damaged part: its structures computed again
    info["stage_s"] = {"read_inputs": round(read - started, 2), "dedup": round(deduplicated - read, 2),
                       "read_rows": round(time.perf_counter() - deduplicated, 2)}
    return items, duplicate_of, rows


def deduplicate(items: list[InputStructure], out: Path, executor, reporter=None) -> dict[str, str]:
    """``find_duplicates`` on the buckets whose members changed since the folder's last dedup; the others'
    decisions are reused. Writes the decisions back (OUT/dedup.parquet)."""
    cached = results_io.read_dedup(out)
    duplicate_of: dict[str, str] = {}
    fresh: list[InputStructure] = []
    for key, members in buckets_of(items).items():
        before = cached.get(key)
        if before is not None and before[0] == tuple((m.structure_id, m.structure_hash) for m in members):
            duplicate_of.update(before[1])
        else:
            fresh.extend(members)
    log.info("dedup: %d structures to match, %d decided before", len(fresh),
             sum(i.valid for i in items) - len(fresh))
    with _stage(reporter, "dedup", len(fresh)) as step:
        duplicate_of.update(find_duplicates(fresh, executor, progress=step))
    results_io.write_dedup(out, items, duplicate_of)
    return duplicate_of


@contextlib.contextmanager
def _stage(reporter, name: str, total: int | None = None):
    """The reporter's progress for a stage before the physics, or nothing."""
    if reporter is not None and hasattr(reporter, "stage"):
        with reporter.stage(name, total) as step:
            yield step
    else:
        yield None


def _finish_run(out: Path, info: dict, items, n_computed: int, n_kept: int, **extra) -> None:
    info.update(status="complete", finished=dt.datetime.now(dt.timezone.utc).isoformat(),
                wall_s=round(time.time() - dt.datetime.fromisoformat(info["started"]).timestamp(), 2),
                n_input=len(items), n_computed_this_time=n_computed, n_kept=n_kept,
                **_driver_usage(), **extra)
    results_io.write_run_info(out, info)
    log.info("%s complete in %.1f s", info["stage"], info["wall_s"])


def _driver_usage() -> dict:
    """This process's (the driver's) peak memory and CPU time so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"driver_peak_rss_mb": round(usage.ru_maxrss / 1024),  # KiB on Linux
            "driver_cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}


def _run(out, spec, info, previous, executor, limit_per_generator, reporter, chunk_size, retry_failed):
    protocol = spec.protocol
    items, duplicate_of, rows = _prepare(out, info, protocol, executor, limit_per_generator, reporter)
    write, todo, attempts, n_kept = _plan(items, duplicate_of, rows, retry_failed)
    del rows
    chunks = plan_chunks(todo, chunk_size, executor.slots() if todo else 1)
    log.info("%d input structures: %d kept from before, %d to compute in %d chunks",
             len(items), n_kept, len(todo), len(chunks))

    spec = dataclasses.replace(spec, log_file=str((out / results_io.LOG_FILE).resolve()))
    with results_io.ResultWriter(out, protocol.thresholds_thz, every_rows=ROWS_PER_PART) as writer:
        for row in _rows(write):
            writer.add(row)
        writer.flush()
        if reporter:
            reporter.start(len(todo))
        try:
            for rows in executor.map(spec, chunks):
                for row in rows:
                    row.attempt = attempts.get(row.structure_id, 1)
                    writer.add(row)
                    if reporter:
                        reporter.advance(row)
                writer.flush()  # a finished chunk is on disk before the next one is awaited
        finally:
            if reporter:
                reporter.stop()

    current = results_io.finalize_rows(out)  # one row per input on disk, read once for it and the summary
    summary = results_io.summarize(results_io.read_structures(out, current), protocol.thresholds_thz,
                                   protocol.ranks_by_zone)
    results_io.write_summary(out, summary)
    _finish_run(out, info, items, n_computed=len(todo), n_kept=n_kept)
    return summary
