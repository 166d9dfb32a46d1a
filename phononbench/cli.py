"""Command line: ``phononbench run``, ``dedup``, ``summarize``, ``leaderboard``, ``export``, ``validate``,
``serve`` and ``plot-bands``. Errors are one line, never a traceback."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from phononbench.errors import SetupError
from phononbench.records import Col, Status, StructureResult

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Dynamical stability of generated crystals.")
# Wide enough for the summary table when output goes to a file or CI log.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


def _quiet_libraries() -> None:
    """MatterSim and friends log every model load at INFO; keep the terminal for our progress bar."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    try:
        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="WARNING")
    except ImportError:
        pass


class ProgressReporter:
    """A rich progress bar over the structures being relaxed, with running stable/unstable counts (by the
    verdict the run ranks by: the Brillouin zone's, ``brillouin_zone``, under accurate)."""

    def __init__(self, headline_threshold_thz: float, brillouin_zone: bool = False):
        self.threshold, self.brillouin_zone = headline_threshold_thz, brillouin_zone
        self.counts: dict[str, int] = {}
        self.progress = Progress(
            TextColumn("[bold]relax + phonons"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(),
            console=err_console,
        )

    def start(self, total: int, done: int = 0) -> None:
        self.progress.start()
        self.started = time.monotonic()
        self.task = self.progress.add_task("run", total=total, counts="", rate="")

    def advance(self, result: StructureResult) -> None:
        key = str(result.status)
        if result.status == Status.OK:
            key = "stable" if (result.bz_verdicts if self.brillouin_zone else result.verdicts).get(self.threshold) else "unstable"
        self.counts[key] = self.counts.get(key, 0) + 1
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        done = sum(self.counts.values())
        rate = f"{3600 * done / max(time.monotonic() - self.started, 1e-9):.0f}/h"
        self.progress.update(self.task, advance=1, counts=counts, rate=rate)

    def stop(self) -> None:
        self.progress.stop()

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None):
        """A bar for a stage before the physics (reading inputs, dedup); yields ``step(n)``."""
        with Progress(TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err_console) as progress:
            task = progress.add_task(name, total=total)
            yield lambda n: progress.advance(task, n)


def _fail(message: str) -> None:
    err_console.print("[red]error:[/red] ", end="", highlight=False)
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


# The command-line option behind each setting a library error can name.
OPTIONS = {"checkpoint": "--checkpoint", "model": "--model", "device": "--device", "engine": "--engine",
           "max_atoms": "--max-atoms", "preset": "--preset", "thresholds_thz": "--threshold",
           "chunk_size": "--chunk-size", "limit": "--limit", "workers": "--workers",
           "cpus_per_worker": "--cpus-per-worker", "gpus_per_worker": "--gpus-per-worker",
           "timeout_per_structure_s": "--timeout-per-structure", "max_retries": "--max-retries",
           "max_atoms_per_batch": "--batch-atoms", "format": "--format", "supercell": "--supercell",
           "supercell_min_length_a": "--supercell", "max_supercell_atoms": "--max-supercell-atoms"}


def _guarded(action):
    try:
        return action()
    except SetupError as exc:
        hint = f" (option {OPTIONS[exc.setting]})" if exc.setting in OPTIONS else ""
        _fail(f"{exc}{hint}")
    except KeyboardInterrupt:
        _fail("interrupted; rows written so far are kept in the output folder")
    except typer.Exit:
        raise
    except Exception as exc:
        if os.environ.get("PHONONBENCH_DEBUG"):
            raise
        _fail(f"{type(exc).__name__}: {exc} (set PHONONBENCH_DEBUG=1 for the traceback)")


# Options that run and dedup share
Inputs = Annotated[list[str], typer.Argument(help="Folders, .zip, CIF/POSCAR/extxyz files or CSV/JSON/JSONL/Parquet tables; NAME=PATH sets the generator.")]
Limit = Annotated[Optional[int], typer.Option(help="At most N structures per generator (in input order).")]
MaxAtoms = Annotated[Optional[int], typer.Option(help="Largest input cell accepted (atoms; default: no limit).")]
Supercell = Annotated[Optional[str], typer.Option(help="NxNxN (published: 2x2x2 of the input cell), a minimum width in A (15: the smallest supercell at least that wide in every direction), or a zone-boundary one (15zb: twice the smallest at least 7.5 A wide, so every q-point with coordinates 0 or 1/2 is exact); -sym after a length (15zb-sym: accurate's) keeps the crystal's rotations. It replaces the preset's supercell whole: 20zb alone does not keep them.")]
MaxSupercellAtoms = Annotated[Optional[int], typer.Option(help="Skip (phonon_failed, saying so) a structure whose supercell has more atoms (default: the preset's; accurate 2000).")]
RayAddress = Annotated[Optional[str], typer.Option(help="Join a Ray cluster: auto or HOST:PORT (default: a local Ray).")]


@app.command()
def run(
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (must not hold a run already).")],
    model: Annotated[Optional[str], typer.Option(help="Potential: mattersim-5m (published), mattersim-1m, mattersim (--checkpoint), sevennet-l3i5, sevennet-0, sevennet-mf-0, chgnet, emt.")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="Local checkpoint file for the potential.")] = None,
    threshold: Annotated[Optional[list[float]], typer.Option("--threshold", help="Stability threshold in THz (repeatable; first is the headline). Default -0.1 and -0.001.")] = None,
    limit: Limit = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    preset: Annotated[str, typer.Option(help="Protocol preset: published, tiered (Gamma screen), bulk (sets aside structures that relax into molecules, chains or layers in vacuum) or accurate (supercells by length, the Brillouin-zone verdict as the headline, acoustic dips next to Gamma set aside).")] = "published",
    max_atoms: MaxAtoms = None,
    supercell: Supercell = None,
    max_supercell_atoms: MaxSupercellAtoms = None,
    engine: Annotated[str, typer.Option(help="batched (default), torchsim (every structure in flight in one TorchSim state on the device; mattersim and sevennet) or serial (one structure and displacement per call, as published).")] = "batched",
    batch_atoms: Annotated[Optional[int], typer.Option(help="Atoms per batched model call (default 256 on cpu, 16384 on cuda, split between the workers that share a GPU).")] = None,
    chunk_size: Annotated[Optional[int], typer.Option(help="Structures relaxed and phonon-computed together, per worker call (default 32; 512 for the torchsim engine on cuda, which keeps them all in flight on the GPU).")] = None,
    ray_address: RayAddress = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker slots (default: all CPUs, or GPUs / --gpus-per-worker).")] = None,
    cpus_per_worker: Annotated[float, typer.Option(help="CPUs (and torch threads) per worker.")] = 1.0,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs per worker; fractional shares a GPU (e.g. 0.25). Default with --device cuda: each GPU shared by as many workers as its node has CPUs for, at most 8.")] = 0.0,
    timeout_per_structure: Annotated[Optional[float], typer.Option(help="Seconds a structure may take before it is cut off (status timeout).")] = None,
    max_retries: Annotated[int, typer.Option(help="Ray retries of a chunk whose worker died.")] = 2,
    in_process: Annotated[bool, typer.Option("--in-process", help="Run in this process without Ray (debugging).")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed/--no-retry-failed", help="On resume, compute once more the structures whose worker timed out or died.")] = True,
    allow_positive_threshold: Annotated[bool, typer.Option("--allow-positive-threshold", help="Accept a threshold above 0 THz (almost always a sign slip).")] = False,
) -> None:
    """Relax every structure, compute its phonons and report per-generator stability rates."""
    _quiet_libraries()
    from phononbench.running.composition import default_chunk_size

    if chunk_size is None:
        chunk_size = default_chunk_size(engine, device)

    def action():
        from phononbench.running.composition import compose, protocol_for
        from phononbench.running.pipeline import run_benchmark
        from phononbench.reading.report import summary_table

        protocol = protocol_for(preset, model=model, thresholds=threshold, max_atoms=max_atoms, supercell=supercell,
                                max_supercell_atoms=max_supercell_atoms,
                                allow_positive_thresholds=allow_positive_threshold or None)
        _ensure_before_loading(inputs, out, chunk_size, limit)
        start = time.time()
        run = compose(protocol, device, checkpoint, batch_atoms, engine, in_process, ray_address, workers,
                      cpus_per_worker, gpus_per_worker, timeout_per_structure, max_retries)
        summary = run_benchmark(
            inputs, out, run.spec, run.described, run.executor, limit_per_generator=limit,
            reporter=ProgressReporter(protocol.headline_threshold_thz, protocol.ranks_by_zone),
            command=shlex.join(["phononbench", *sys.argv[1:]]), chunk_size=chunk_size, retry_failed=retry_failed,
        )
        console.print(summary_table(summary, title=f"PhononBench ({protocol.name} protocol, {protocol.model})",
                                    brillouin_zone=protocol.ranks_by_zone))
        _print_skipped(out)
        console.print(f"results in {out}/ ({time.time() - start:.0f} s)", markup=False, highlight=False)

    _guarded(action)


def _ensure_before_loading(inputs: list[str], out: Path, chunk_size: int, limit: int | None) -> None:
    """What can be refused before a potential or Ray loads: sizes, the output folder, a typo in a path."""
    from phononbench.science.ingest import split_input
    from phononbench.running.pipeline import ensure_output_folder, ensure_run_settings

    ensure_run_settings(chunk_size, limit)
    ensure_output_folder(out)
    for spec in inputs:
        split_input(spec)


def _print_skipped(out: Path) -> None:
    """The files a run passed over on purpose, in one line (the list is in run.json)."""
    from phononbench.science.ingest import describe_skipped
    from phononbench.running.run_folder import read_run_info

    skipped = read_run_info(out).get("skipped_files") or {}
    if skipped:
        console.print(f"{describe_skipped(skipped)}; see {out}/run.json", markup=False, highlight=False)


@app.command()
def dedup(
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder; `phononbench run` with the same inputs into it takes it up.")],
    limit: Limit = None,
    max_atoms: MaxAtoms = None,
    preset: Annotated[str, typer.Option(help="Protocol preset whose ingest settings apply (as run).")] = "published",
    ray_address: RayAddress = None,
    workers: Annotated[Optional[int], typer.Option(help="Task slots (default: all CPUs).")] = None,
    in_process: Annotated[bool, typer.Option("--in-process", help="Run in this process without Ray.")] = False,
) -> None:
    """Ingest and deduplicate only: input / valid / unique structures per generator, before any GPU time."""
    _quiet_libraries()

    def action():
        from phononbench.running.executors import InProcessExecutor, RayExecutor
        from phononbench.running.pipeline import deduplicate_inputs
        from phononbench.reading.report import unique_table
        from phononbench.running.composition import protocol_for

        protocol = protocol_for(preset, max_atoms=max_atoms)
        _ensure_before_loading(inputs, out, 1, limit)
        start = time.time()
        executor = InProcessExecutor() if in_process else RayExecutor(ray_address, workers)
        counts = deduplicate_inputs(inputs, out, protocol, executor, limit, ProgressReporter(protocol.headline_threshold_thz),
                                    command=shlex.join(["phononbench", *sys.argv[1:]]))
        console.print(unique_table(counts))
        _print_skipped(out)
        console.print(f"rows in {out}/ ({time.time() - start:.0f} s); `phononbench run` with the same inputs and "
                      f"--out {out} takes it up", markup=False, highlight=False)

    _guarded(action)


@app.command()
def validate(
    labels: Annotated[Path, typer.Option(help="CSV of DFT labels: an id column (mp_id, ...) and label = stable/unstable.")],
    structures: Annotated[Optional[Path], typer.Option(help="Folder of the labelled structures, files named by id (mp-1190.POSCAR-unitcell); leave out to score --runs only.")] = None,
    model: Annotated[str, typer.Option(help="Potential (see run).")] = "mattersim-5m",
    checkpoint: Annotated[Optional[str], typer.Option(help="Local checkpoint file for the potential.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default runs/validate-MODEL-PRESET[-SUPERCELL]); resumes if it exists.")] = None,
    threshold: Annotated[Optional[list[float]], typer.Option("--threshold", help="Thresholds in THz (repeatable).")] = None,
    preset: Annotated[str, typer.Option(help="Protocol preset (see run).")] = "published",
    supercell: Supercell = None,
    max_supercell_atoms: MaxSupercellAtoms = None,
    engine: Annotated[str, typer.Option(help="batched, torchsim or serial (see run).")] = "batched",
    workers: Annotated[Optional[int], typer.Option(help="Worker slots of the local Ray (default: all CPUs).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    in_process: Annotated[bool, typer.Option("--in-process", help="Run in this process without Ray.")] = False,
    runs: Annotated[Optional[list[Path]], typer.Option("--runs", help="Validation folders to score beside this one (repeatable): one table; runs of the same settings are also pooled, each material once.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Also write the table as Markdown to this file.")] = None,
    per_material: Annotated[Optional[Path], typer.Option(help="Also write every scored material (DFT label, lowest frequencies and q-points, verdicts, supercell, seconds) to this CSV.")] = None,
) -> None:
    """Relax and compute phonons for DFT-labelled structures; print accuracy (95% Wilson), F1 with either class
    positive, the false-unstable rate and the cost per structure, on every verdict and threshold, for this run
    and any --runs."""
    _quiet_libraries()

    def action():
        import json

        from phononbench.reading import validation
        from phononbench.running.composition import compose, protocol_for
        from phononbench.running.pipeline import run_benchmark
        from phononbench.running.run_folder import read_structures

        label_table = validation.load_labels(labels)
        folders = list(runs or [])
        if structures is not None:
            if not structures.is_dir():
                raise SetupError(f"--structures {structures} is not a folder")
            protocol = protocol_for(preset, model=model, thresholds=threshold, supercell=supercell,
                                    max_supercell_atoms=max_supercell_atoms)
            name = f"validate-{model}-{protocol.name}" + (f"-{supercell}" if supercell else "")
            folder = out or Path("runs") / name
        _ensure_report_files({"--markdown": markdown, "--per-material": per_material}, labels,
                             folders + ([folder] if structures is not None else []))
        if structures is not None:
            run = compose(protocol, device, checkpoint, None, engine, in_process, workers=workers)
            # every labelled file is a material of its own: StructureMatcher calls KNbO3's R3m and P4mm (mp-7375
            # DFT-stable, mp-4342 not) one crystal, and a duplicate would take the other's verdict
            run_benchmark([f"validation={structures}"], folder, run.spec, run.described, run.executor,
                          reporter=ProgressReporter(protocol.headline_threshold_thz, protocol.ranks_by_zone),
                          command=shlex.join(["phononbench", *sys.argv[1:]]), deduplicate_within_generators=False)
            rows = read_structures(folder)
            report = validation.validate(rows, label_table, protocol.thresholds_thz)
            missing = report["label_ids_without_structure"]
            if missing:
                err_console.print(f"warning: {len(missing)} labelled id(s) have no structure under {structures}, not "
                                  f"scored (e.g. {', '.join(missing[:3])})",
                                  markup=False, highlight=False, soft_wrap=True)
            report["model"] = model
            (folder / "validation.json").write_text(json.dumps(report, indent=2))
            validation.scatter_plot(rows, label_table, protocol.thresholds_thz, folder / "validation_scatter.png")
            folders.insert(0, folder)
        if not folders:
            raise SetupError("give --structures to compute, or --runs with finished validation folders to score")
        left_out: list[str] = []
        scored = validation.read_runs(folders, left_out)
        for message in left_out:
            err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)
        if not scored:
            raise SetupError("none of the --runs has rows yet: nothing to score")
        board = validation.table(scored, label_table)
        for name in board.loc[~board["complete"], "run"].unique():
            err_console.print(f"warning: {name} has not finished: scored on the rows it has so far",
                              markup=False, highlight=False)
        for name in board.loc[board["n"] == 0, "run"].unique():
            err_console.print(f"warning: no structure of {name} matches a label id (file names like mp-1190.POSCAR)",
                              markup=False, highlight=False)
        console.print(_validation_table(board, f"Against DFT labels ({len(label_table)} labelled)"))
        changes = validation.differing_markdown(scored, label_table)  # between settings, e.g. two supercells
        if changes:
            console.print(changes, markup=False, highlight=False)
        if markdown:
            markdown.write_text(validation.to_markdown(board) + ("\n" + changes if changes else ""))
            console.print(f"table written to {markdown}", markup=False)
        if per_material:
            validation.per_material(scored, label_table).to_csv(per_material, index=False)
            console.print(f"per-material verdicts written to {per_material}", markup=False)

    _guarded(action)


def _ensure_report_files(files: dict[str, Optional[Path]], labels: Path, run_folders: list[Path]) -> None:
    """Files written at the end of a validation: refused before hours of work if they cannot be written there,
    would overwrite the labels or each other, or lie inside a run folder (whose files they could replace)."""
    import os

    given = {option: path.resolve() for option, path in files.items() if path is not None}
    for option, path in given.items():
        inside = next((f for f in run_folders if path.is_relative_to(f.resolve())), None)
        if inside is not None:
            raise SetupError(f"{option} {files[option]}: inside the run folder {inside}; write it beside it")
        if path == labels.resolve() or list(given.values()).count(path) > 1:
            raise SetupError(f"{option} {files[option]}: the same file as --labels or another report")
        if path.is_dir() or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise SetupError(f"{option} {files[option]}: not a file in an existing, writable folder")


def _validation_table(board, title: str):
    from rich.table import Table
    from rich.text import Text

    from phononbench.reading import validation

    table = Table(title=Text(title))
    for name in ("run", "potential", "supercell", "verdict", "THz", "n", "accuracy (95% CI)", "F1 stable",
                 "F1 imaginary", "false unstable", "TP", "FP", "FN", "TN", "atoms", "wall s"):
        table.add_column(name, justify="left" if name in ("run", "potential", "supercell", "verdict") else "right")
    for r in board.itertuples(index=False):
        table.add_row(Text(validation.run_label(r)), r.potential, r.supercell, r.verdict, f"{r.threshold_thz:g}", str(r.n),
                      f"{r.accuracy:.3f} ({r.accuracy_low:.2f}-{r.accuracy_high:.2f})", f"{r.f1_stable:.3f}",
                      f"{r.f1_unstable:.3f}", f"{r.false_unstable_rate:.3f}", str(r.tp), str(r.fp), str(r.fn),
                      str(r.tn), f"{r.mean_supercell_atoms:.0f}", f"{r.wall_s_per_structure:.1f}")
    return table


@app.command()
def leaderboard(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run folders; their generators are ranked together.")],
    format: Annotated[str, typer.Option("--format", help="md, csv, json or html (one self-contained page).")] = "md",
    output: Annotated[Optional[Path], typer.Option(help="Write to this file (default: print).")] = None,
    plots_dir: Annotated[Optional[Path], typer.Option(help="Also write the plots as PNG files here.")] = None,
    with_published: Annotated[bool, typer.Option("--with-published", help="Add the published PhononBench figures (README at -0.001 THz, paper v3 at -0.1 THz), each labelled with its threshold.")] = False,
) -> None:
    """Rank generators by headline stability rate, with 95% intervals and counts."""

    def action():
        from phononbench.reading.ranking import export, write_figures

        notes: list[str] = []
        text = export(run_dirs, format, with_published, notes)
        for note in notes:
            err_console.print(f"warning: {note}", markup=False, highlight=False, soft_wrap=True)
        if plots_dir:
            for path in write_figures(run_dirs, plots_dir):
                err_console.print(f"wrote {path}", markup=False)
        if output:
            output.write_text(text)
            console.print(f"leaderboard written to {output}", markup=False)
        else:
            sys.stdout.write(text)

    _guarded(action)


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="Run folder.")],
    stable: Annotated[bool, typer.Option("--stable", help="Export the stable structures (the one selection there is; say it).")] = False,
    threshold: Annotated[Optional[float], typer.Option(help="Threshold in THz, one of the run's (default: its headline).")] = None,
    bz: Annotated[Optional[bool], typer.Option("--bz/--path", help="Stable over the Brillouin zone (as the run's protocol reads the zone: accurate sets acoustic dips next to Gamma aside), or on the published q-points (default: the verdict the run ranks by, as its run.json records it: the zone under accurate).", show_default=False)] = None,
    format: Annotated[str, typer.Option("--format", help="cif-zip (CIF files and index.csv), extxyz (ASE reads a number-like id or generator back as a number) or parquet.")] = "cif-zip",
    output: Annotated[Optional[Path], typer.Option(help="File to write (default OUT/stable_at_T_thz[_bz].zip|.extxyz|.parquet).")] = None,
) -> None:
    """The stable set: relaxed cells of the stable structures, with ids, generators and lowest frequencies."""

    def action():
        from phononbench.reading.export import export_stable

        if not stable:
            raise SetupError("say which structures to export: --stable (the stable set)")
        from phononbench.running.run_folder import read_verdict_run_info

        status = read_verdict_run_info(out).get("status")
        if status != "complete":
            err_console.print(f"warning: the run has not finished (run.json says {status!r}): the stable set of the "
                              "rows so far", markup=False, highlight=False, soft_wrap=True)
        target, n, zone = export_stable(out, format, threshold, bz, output)
        verdict = "over the Brillouin zone" if zone else "on the published q-points"
        console.print(f"{n} structures stable {verdict} written to {target}", markup=False, highlight=False)

    _guarded(action)


@app.command()
def serve(
    run_dirs: Annotated[Optional[list[Path]], typer.Argument(help="Run folders to explore (their leaderboard, structures and bands).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 keeps the app to this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    checks: Annotated[Path, typer.Option(help="Folder of the structure checks (each a run folder of its own).")] = Path("runs/checks"),
    max_upload_kb: Annotated[int, typer.Option(help="Largest structure file a check accepts (KiB).")] = 512,
    max_atoms: Annotated[int, typer.Option(help="Most atoms in an uploaded cell (keeps one check quick; the published protocol has no limit).")] = 40,
    device: Annotated[str, typer.Option(help="cpu or cuda, for checks and band structures.")] = "cpu",
    allow_plugins: Annotated[bool, typer.Option("--allow-plugins", help="Let a served run whose potential is a python: plugin run that code, and load a checkpoint from the path its run.json records, to draw band structures (off: a run folder someone sent you runs and unpickles nothing of theirs; the registry's own weights are used, checked by sha256).")] = False,
) -> None:
    """A local web app: the leaderboard, a structure browser per run, band structures, checks of one structure."""
    _quiet_libraries()

    def action():
        from phononbench.app.uploads import Limits
        from phononbench.app.webapp import create_app, serve_app

        if max_upload_kb < 1 or max_atoms < 1:
            raise SetupError("--max-upload-kb and --max-atoms must be at least 1")
        web = create_app(list(run_dirs or []), checks, Limits(max_upload_kb * 1024, max_atoms), device, allow_plugins)  # checks the runs
        if host not in ("127.0.0.1", "localhost", "::1"):
            err_console.print(f"warning: listening on {host}: anyone who reaches this address can browse these runs "
                              "and start checks", markup=False)
        console.print(f"PhononBench on http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}/ "
                      f"({len(run_dirs or [])} runs; checks in {checks}/); Ctrl-C stops it", markup=False, highlight=False)
        serve_app(web, host, port)

    _guarded(action)


@app.command("plot-bands")
def plot_bands(
    out: Annotated[Path, typer.Argument(help="Run folder.")],
    structure_id: Annotated[str, typer.Argument(help="structure_id of a relaxed structure in that run.")],
    output: Annotated[Optional[Path], typer.Option(help="PNG file (default OUT/bands/<key>/published_path.png; the force constants are cached there too).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Recompute (with the run's potential and protocol) and plot one structure's phonon bands."""
    _quiet_libraries()

    def action():
        from phononbench.reading import explore
        from phononbench.science.phonons import band_path
        from phononbench.reading.plots import band_structure_figure
        from phononbench.running.run_folder import read_structures, read_verdict_run_info
        from phononbench.settings import ProtocolSettings

        info = read_verdict_run_info(out)
        try:
            row = explore.row_of(read_structures(out), structure_id)
        except KeyError:
            raise SetupError(f"no structure {structure_id!r} in {out}") from None
        protocol = ProtocolSettings.from_dict(info["protocol"])
        phonon = explore.force_constants(out, row, info, lambda described: explore.run_potential(described, device))
        target = output or explore.bands_folder(out, row, info) / explore.FIGURES["published"]
        target.parent.mkdir(parents=True, exist_ok=True)
        title = f"{structure_id} ({row[Col.FORMULA]}), min {row[Col.MIN_FREQUENCY_THZ]:.3g} THz"
        band_structure_figure(band_path(phonon, protocol.band_npoints), title, target, protocol.headline_threshold_thz)
        console.print(f"band structure written to {target}", markup=False)

    _guarded(action)


@app.command()
def summarize(out: Annotated[Path, typer.Argument(help="Output folder of a run.")]) -> None:
    """Print the per-generator table of a finished run again, from its files."""

    def action():
        from phononbench.reading.report import summary_table
        from rich.markup import escape

        from phononbench.running.run_folder import (SUMMARY_FILE, ranks_by_zone, read_summary, read_verdict_run_info,
                                                    summary_file_differs)

        info = read_verdict_run_info(out)
        summary = read_summary(out)
        title = f"PhononBench ({info['protocol']['name']} protocol, {info['potential']['model']})"
        console.print(summary_table(summary, title=title, brillouin_zone=ranks_by_zone(info)))
        if summary_file_differs(out, summary):
            err_console.print(f"[yellow]{escape(str(out / SUMMARY_FILE))} is missing or differs from the run's rows (edited, "
                              "copied from another run, or written by an older phononbench): the table above is made from "
                              "the rows, as every reader makes it; a resume with the same code writes the file again[/]",
                              highlight=False)

    _guarded(action)


if __name__ == "__main__":
    app()
