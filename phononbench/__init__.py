"""PhononBench: how many generated crystals are dynamically stable.

The public API, four verbs that mirror the command line (everything else is internal)::

    import phononbench as pb
    summary = pb.run(["data/demo"], "runs/demo", model="chgnet")   # phononbench run ... --in-process
    results = pb.load("runs/demo")                                 # results.rows, .summary, .info
    board = pb.leaderboard(["runs/demo"])                          # phononbench leaderboard
    table = pb.validate("labels.csv", ["runs/validate-chgnet"])     # phononbench validate --runs

The folders are the layers (README, "Layout"): ``science`` (ingest -> dedup -> relax -> phonons -> stability),
``compute`` (potentials, engines, and ``method``, composed once for every engine), ``running`` (worker,
executors, the run folder, the pipeline, and ``composition``, which turns settings into a potential, an
engine and an executor), ``reading`` (finished runs) and ``app``; ``cli`` is the command line.
``phononbench.Potential`` is the base of a plugin potential (``--model python:module:function``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__version__ = "0.1.0"
__all__ = ["run", "load", "leaderboard", "validate", "Results", "Potential"]


def __getattr__(name: str):
    if name == "Potential":  # imported on use: it brings torch
        from phononbench.compute.potentials import Potential

        return Potential
    raise AttributeError(f"module 'phononbench' has no attribute {name!r}")


def run(inputs, out, *, model: str | None = None, preset: str = "published", checkpoint: str | None = None,
        thresholds=None, supercell: str | None = None, max_atoms: int | None = None, device: str = "cpu",
        engine: str = "batched", limit: int | None = None, chunk_size: int | None = None, workers: int | None = None,
        ray: bool = False):
    """Run the benchmark on ``inputs`` (a path or a list of paths, as ``phononbench run`` takes them) into
    ``out`` and return the per-generator summary (a DataFrame). In this process by default; ``ray=True`` runs
    on a local Ray (or the cluster Ray finds), ``workers`` slots. An ``out`` with the same settings resumes."""
    from phononbench.running.composition import compose, default_chunk_size, protocol_for
    from phononbench.running.pipeline import run_benchmark

    inputs = [str(inputs)] if isinstance(inputs, (str, Path)) else [str(i) for i in inputs]
    protocol = protocol_for(preset, model=model, thresholds=thresholds, max_atoms=max_atoms, supercell=supercell)
    composed = compose(protocol, device, checkpoint, engine=engine, in_process=not ray, workers=workers)
    return run_benchmark(inputs, out, composed.spec, composed.described, composed.executor, limit_per_generator=limit,
                         command=f"phononbench.run({inputs!r}, {str(out)!r})",
                         chunk_size=chunk_size or default_chunk_size(engine, device))


@dataclass
class Results:
    """A run folder read back: one row per input (``rows``), the per-generator ``summary``, run.json (``info``)."""

    rows: object
    summary: object
    info: dict


def load(out) -> Results:
    """The run in ``out``: its rows (``run_folder.read_structures``), summary (None while the run has not
    finished) and settings. An incomplete run (a part file lost) raises, naming the file."""
    from phononbench.running.run_folder import read_structures, read_summary, read_verdict_run_info

    info = read_verdict_run_info(out)
    rows = read_structures(out)
    return Results(rows, read_summary(out) if info.get("status") == "complete" else None, info)


def leaderboard(runs, with_published: bool = False):
    """The leaderboard of one or more run folders (a DataFrame, the rows of ``phononbench leaderboard``); what
    the CLI warns of (runs of an entry with other verdicts on a structure) is a Python warning."""
    import warnings

    from phononbench.reading.ranking import board_of

    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    notes: list[str] = []
    board = board_of(runs, with_published, notes)[0]
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return board


def validate(labels, runs):
    """The agreement of runs with DFT labels (a CSV: an id column and label = stable/unstable): the table
    ``phononbench validate --runs`` prints, one row per run, verdict and threshold; a run that has not
    finished is scored on its rows so far, with ``complete`` False and ``n_inputs`` its inputs."""
    from phononbench.reading import validation

    return validation.table(validation.read_runs(runs), validation.load_labels(labels))
