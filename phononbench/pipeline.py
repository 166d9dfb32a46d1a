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
import time
from pathlib import Path
from typing import Protocol as TypingProtocol

from phononbench import results as results_io
from phononbench.dedup import find_duplicates
from phononbench.engines import check_engine
from phononbench.executors import InProcessExecutor
from phononbench.ingest import InputStructure, read_inputs
from phononbench.records import Status, StructureResult
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
):
    """Run the benchmark on ``inputs`` into ``out``; returns the summary DataFrame.

    An ``out`` that already holds a run with the same settings is resumed: structures already written
    are skipped, so running the same command twice never duplicates a row. ``executor`` decides where
    workers run (``InProcessExecutor`` by default, ``RayExecutor`` for a local Ray or a cluster).
    """
    check_engine(spec.engine)
    executor = executor or InProcessExecutor()
    protocol = spec.protocol
    started = time.time()
    out = Path(out)
    info = {
        "status": "running",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(),
        "command": command,
        "inputs": [str(i) for i in inputs],
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
    if (out / results_io.RUN_FILE).exists():
        previous = results_io.read_run_info(out)
        results_io.check_resumable(previous, info)
        info["resumed_from"] = previous.get("started")
    out = results_io.prepare_output(out)
    log_file = out / results_io.LOG_FILE
    handler = attach_log_file(str(log_file.resolve()))
    try:
        results_io.write_run_info(out, info)
        done = results_io.finished_ids(out)
        log.info("run %s: %s", "resumed" if done else "started", command or inputs)

        items = read_inputs(inputs, protocol.max_atoms, protocol.min_distance_a, limit_per_generator)
        duplicate_of = find_duplicates(items)
        todo = [i for i in items if i.valid and i.structure_id not in duplicate_of and i.structure_id not in done]
        chunks = plan_chunks(todo, chunk_size, executor.slots() if todo else 1)
        log.info("%d input structures, %d already done, %d to compute in %d chunks",
                 len(items), len(done), len(todo), len(chunks))

        spec = dataclasses.replace(spec, log_file=str(log_file.resolve()))
        with results_io.ResultWriter(out, protocol.thresholds_thz) as writer:
            for item in items:
                if item.structure_id in done:
                    continue
                if not item.valid:
                    writer.add(StructureResult.for_input(item, Status.INVALID_INPUT))
                elif item.structure_id in duplicate_of:
                    writer.add(StructureResult.for_input(item, Status.DUPLICATE,
                                                         duplicate_of=duplicate_of[item.structure_id]))
            writer.flush()
            if reporter:
                reporter.start(len(todo))
            try:
                for rows in executor.map(spec, chunks):
                    for row in rows:
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
            n_already_done=len(done),
        )
        results_io.write_run_info(out, info)
        log.info("run complete in %.1f s", info["wall_s"])
        return summary
    finally:
        logging.getLogger("phononbench").removeHandler(handler)
        handler.close()
