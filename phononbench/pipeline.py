"""A whole run: read -> dedup -> map chunks over workers -> write, into a resumable run folder.

The Ray Data idiom, ``read -> map_batches(Worker) -> write_parquet``: ingest and dedup happen here, the
chunks are planned here (the one place that decides chunk sizes), workers (``worker.Worker``, which runs
``method.compute``) turn chunks into rows wherever the executor puts them, and ``results`` keeps the
ledger. The executor is the caller's choice (in-process by default, or Ray), never decided here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Protocol as TypingProtocol

from threadpoolctl import threadpool_limits

from phononbench import results as results_io
from phononbench.dedup import find_duplicates
from phononbench.engines import check_engine
from phononbench.errors import SetupError
from phononbench.executors import InProcessExecutor
from phononbench.ingest import InputStructure, SkippedFiles, read_inputs, split_input
from phononbench.records import COMPUTED_STATUSES, RETRYABLE_STATUSES, Col, Status, StructureResult
from phononbench.worker import WorkerSpec, attach_log_file

log = logging.getLogger(__name__)


class Reporter(TypingProtocol):
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


def check_run_settings(chunk_size: int, limit_per_generator: int | None) -> None:
    if chunk_size < 1:
        raise SetupError(f"chunk size must be at least 1 (got {chunk_size})", setting="chunk_size")
    if limit_per_generator is not None and limit_per_generator < 1:
        raise SetupError(f"the per-generator limit must be at least 1 (got {limit_per_generator})", setting="limit")


def check_output_folder(out: str | Path) -> None:
    """Refuse, before anything loads, a folder no run of ours can write to: one a live run holds, or one with
    result files but no run.json (nobody's settings to resume under)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SetupError(f"{out} is a file, not an output folder")
    if not (out / results_io.RUN_FILE).exists() and results_io.has_rows(out):
        raise SetupError(f"{out} holds result files but no run.json: it is not a run this version can resume; "
                         "use another output folder")
    results_io.RunLock(out).refuse_if_held()


def _plan(items, duplicate_of, recorded, retry_failed: bool):
    """What this run must do for each input, given the rows already written (resume by content):
    rows to write as they are, structures to compute (with their attempt number)."""
    recorded = recorded.astype(object).where(recorded.notna(), None)  # NaN is no value
    by_key = {(r[Col.STRUCTURE_ID], r[Col.STRUCTURE_HASH]): r for r in recorded.to_dict("records")}
    computed_by_hash = {r[Col.STRUCTURE_HASH]: r for r in by_key.values() if r[Col.STATUS] in COMPUTED_STATUSES}
    write, todo, attempts, n_kept = [], [], {}, 0
    for item in items:
        previous = by_key.get((item.structure_id, item.structure_hash))
        status = previous[Col.STATUS] if previous is not None else None
        if not item.valid:
            if status != Status.INVALID_INPUT:
                write.append(StructureResult.for_input(item, Status.INVALID_INPUT))
        elif item.structure_id in duplicate_of:
            if status != Status.DUPLICATE or previous[Col.DUPLICATE_OF] != duplicate_of[item.structure_id]:
                write.append(StructureResult.for_input(item, Status.DUPLICATE,
                                                       duplicate_of=duplicate_of[item.structure_id]))
        elif status in COMPUTED_STATUSES:
            n_kept += 1
        elif status in RETRYABLE_STATUSES and not (retry_failed and (previous.get(Col.ATTEMPT) or 1) < 2):
            n_kept += 1
        elif status is None and item.structure_hash in computed_by_hash:
            # the same structure under another id (a moved or renamed file): its result, under this id
            copy = dict(computed_by_hash[item.structure_hash])
            copy.update({Col.STRUCTURE_ID: item.structure_id, Col.GENERATOR: item.generator, Col.SOURCE: item.source})
            write.append(copy)
        else:
            attempts[item.structure_id] = 2 if status in RETRYABLE_STATUSES else 1
            todo.append(item)
    return write, todo, attempts, n_kept


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
):
    """Run the benchmark on ``inputs`` into ``out``; returns the summary DataFrame.

    Every setting is checked before anything is written. An ``out`` that already holds a run with the same
    settings is resumed by content: a structure whose input is unchanged keeps its row, an edited one is
    computed again, a removed one leaves the results, a moved copy takes its result; rows of structures
    whose worker timed out or died are computed once more (``retry_failed``). One run at a time may write
    to ``out``. ``executor`` decides where workers run (in-process by default, or Ray).
    """
    check_engine(spec.engine)
    spec.protocol.check()
    check_run_settings(chunk_size, limit_per_generator)
    executor = executor or InProcessExecutor()
    protocol = spec.protocol
    started = time.time()
    out = Path(out)
    inputs = [normalize_input(i) for i in inputs]
    info = {
        "status": "running",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(),
        "command": command,
        "inputs": inputs,
        "limit_per_generator": limit_per_generator,
        "engine": spec.engine,
        "chunk_size": chunk_size,
        "executor": executor.describe(),
        "protocol": protocol.to_dict(),
        "potential": potential_info,
        **results_io.environment(),
    }
    # JSON round trip so tuples compare equal to what run.json holds
    info = json.loads(json.dumps(info, default=str))
    check_output_folder(out)
    previous = results_io.read_run_info(out) if (out / results_io.RUN_FILE).exists() else None
    if previous is not None and results_io.has_rows(out):
        results_io.check_resumable(previous, info)  # a folder with no rows yet takes the new settings
    executor.check(spec)  # resources the executor can provide, before any folder is made

    created = not out.exists()
    results_io.prepare_output(out)
    try:
        with results_io.RunLock(out):
            return _run(inputs, out, spec, info, previous, executor, limit_per_generator, reporter, chunk_size,
                        retry_failed, started)
    except SetupError:
        if created and not results_io.has_rows(out):
            shutil.rmtree(out, ignore_errors=True)  # a run that never started leaves nothing behind
        raise


def _run(inputs, out, spec, info, previous, executor, limit_per_generator, reporter, chunk_size, retry_failed,
         started):
    protocol = spec.protocol
    if previous is not None:
        info["run_id"] = previous.get("run_id") or uuid.uuid4().hex
        info["resumed_from"] = previous.get("started")
    else:
        info["run_id"] = uuid.uuid4().hex
    log_file = out / results_io.LOG_FILE
    handler = attach_log_file(str(log_file.resolve()))
    try:
        results_io.write_run_info(out, info)
        log.info("run %s: %s", "resumed" if previous else "started", info["command"] or inputs)

        skipped = SkippedFiles()
        with threadpool_limits(limits=spec.blas_threads, user_api="blas"):  # small matrices, as in the workers
            items = read_inputs(inputs, protocol.max_atoms, protocol.min_distance_a, limit_per_generator,
                                skipped=skipped, exclude=(out,))
            duplicate_of = find_duplicates(items)
        write, todo, attempts, n_kept = _plan(items, duplicate_of, results_io.recorded_rows(out), retry_failed)
        results_io.write_manifest(out, items)
        info["skipped_files"] = skipped.to_dict()
        if skipped.count():
            log.info(skipped.summary())
        chunks = plan_chunks(todo, chunk_size, executor.slots() if todo else 1)
        log.info("%d input structures: %d kept from before, %d to compute in %d chunks",
                 len(items), n_kept, len(todo), len(chunks))

        spec = dataclasses.replace(spec, log_file=str(log_file.resolve()))
        with results_io.ResultWriter(out, protocol.thresholds_thz) as writer:
            for row in write:
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

        summary = results_io.summarize(results_io.read_structures(out), protocol.thresholds_thz)
        results_io.write_summary(out, summary)
        info.update(
            status="complete",
            finished=dt.datetime.now(dt.timezone.utc).isoformat(),
            wall_s=round(time.time() - started, 2),
            n_input=len(items),
            n_computed_this_time=len(todo),
            n_kept=n_kept,
        )
        results_io.write_run_info(out, info)
        log.info("run complete in %.1f s", info["wall_s"])
        return summary
    finally:
        logging.getLogger("phononbench").removeHandler(handler)
        handler.close()
