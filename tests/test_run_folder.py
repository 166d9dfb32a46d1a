"""A run folder that never lies (issue 10): one test per way a run could mislead, on real structures.

EMT on small metals for most; CHGNet where the failure needs a real universal potential (curium, an
element CHGNet has no embedding for). Each test asserts the rows: counts, statuses, reasons, no duplicates.
"""

from __future__ import annotations

import gzip
import html
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ase.build import bulk
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

import phononbench
from phononbench.cli import app
from phononbench.errors import RunAborted, SetupError
from phononbench.running.executors import InProcessExecutor, RayExecutor
from phononbench.science.ingest import SkippedFiles, read_inputs
from phononbench.running.pipeline import run_benchmark
from phononbench.records import Col, Status, verdict_column
from phononbench.running.run_folder import RunLock, read_structures
from phononbench.settings import PUBLISHED
from phononbench.running.worker import WorkerSpec

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
EMT_RUN = ["--model", "emt", "--in-process"]


def _cif(atoms) -> str:
    buffer = io.BytesIO()
    atoms.write(buffer, format="cif")
    return buffer.getvalue().decode()


def _metals(folder: Path, **cells) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, atoms in cells.items():
        (folder / f"{stem}.cif").write_text(_cif(atoms))
    return folder


def _run(*args, cwd: Path | None = None):
    previous = Path.cwd()
    if cwd:
        os.chdir(cwd)
    try:
        return runner.invoke(app, ["run", *map(str, args)])
    finally:
        os.chdir(previous)


def _raw_ids(out: Path) -> list[str]:
    parts = sorted((out / "structures").glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default").column(
        Col.STRUCTURE_ID).to_pylist()


def _info(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def _error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


# 1. Resume follows contents, not paths --------------------------------------------------------------


def test_resume_recomputes_edited_drops_removed_reuses_moved_and_refuses_foreign_parts(tmp_path):
    inputs = _metals(tmp_path / "in" / "metals", Cu_fcc=bulk("Cu", "fcc", a=3.6), Cu_bcc=bulk("Cu", "bcc", a=2.87),
                     Al_fcc=bulk("Al", "fcc", a=4.05))
    out = tmp_path / "out"
    assert _run(tmp_path / "in", "--out", out, *EMT_RUN).exit_code == 0
    rows = read_structures(out).set_index(Col.STRUCTURE_ID)
    assert rows.loc["metals/Cu_bcc.cif", verdict_column(-0.1)] == False  # noqa: E712  bcc Cu is unstable

    # an edited file is computed again: the same name now holds fcc Ni, which is stable
    (inputs / "Cu_bcc.cif").write_text(_cif(bulk("Ni", "fcc", a=3.52)))
    assert _run(tmp_path / "in", "--out", out, *EMT_RUN).exit_code == 0
    rows = read_structures(out).set_index(Col.STRUCTURE_ID)
    assert _info(out)["n_computed_this_time"] == 1
    assert rows.loc["metals/Cu_bcc.cif", Col.FORMULA] == "Ni"
    assert rows.loc["metals/Cu_bcc.cif", verdict_column(-0.1)] == True  # noqa: E712

    # a removed file leaves the results; a renamed (moved) one takes its result without computing
    (inputs / "Al_fcc.cif").unlink()
    (inputs / "Cu_fcc.cif").rename(inputs / "Cu_fcc_renamed.cif")
    assert _run(tmp_path / "in", "--out", out, *EMT_RUN).exit_code == 0
    rows = read_structures(out).set_index(Col.STRUCTURE_ID)
    assert sorted(rows.index) == ["metals/Cu_bcc.cif", "metals/Cu_fcc_renamed.cif"]
    assert _info(out)["n_computed_this_time"] == 0
    assert rows.loc["metals/Cu_fcc_renamed.cif", Col.STATUS] == Status.OK
    summary = pd.read_parquet(out / "summary.parquet")
    assert summary[summary[Col.GENERATOR] == "metals"][Col.N_INPUT].tolist() == [2, 2]
    # issue 19.1: any Parquet reader of the folder gets the current rows, one per input; the rows they
    # replaced (bcc Cu's verdict, Al, the name before the rename) are kept outside the dataset
    on_disk = pd.read_parquet(out / "structures")
    assert sorted(on_disk[Col.STRUCTURE_ID]) == ["metals/Cu_bcc.cif", "metals/Cu_fcc_renamed.cif"]
    assert on_disk.set_index(Col.STRUCTURE_ID).loc["metals/Cu_bcc.cif", Col.FORMULA] == "Ni"
    superseded = pd.read_parquet(out / "superseded")
    assert {"metals/Al_fcc.cif", "metals/Cu_fcc.cif"} <= set(superseded[Col.STRUCTURE_ID])
    assert "Cu" in set(superseded.loc[superseded[Col.STRUCTURE_ID] == "metals/Cu_bcc.cif", Col.FORMULA])

    # "in/" and "in" are one input; the same relative path from another directory is another input
    again = _run(f"{tmp_path / 'in'}/", "--out", out, *EMT_RUN)
    assert again.exit_code == 0 and _info(out)["n_computed_this_time"] == 0
    elsewhere = tmp_path / "elsewhere"
    _metals(elsewhere / "in" / "metals", Cu_fcc=bulk("Cu", "fcc", a=3.6))
    assert "other settings" in _error_line(_run("in", "--out", out, *EMT_RUN, cwd=elsewhere))

    # parts without a run.json are nobody's run: refused, never relabelled as this run's
    foreign = tmp_path / "foreign"
    shutil.copytree(out / "structures", foreign / "structures")
    assert "no run.json" in _error_line(_run(tmp_path / "in", "--out", foreign, "--model", "chgnet", "--in-process"))
    assert not (foreign / "run.json").exists()


# 2. Failures stay with their structure; a failure that is not a structure's stops the run --------------


@pytest.fixture
def curium_and_copper(tmp_path) -> Path:
    return _metals(tmp_path / "in" / "actinides", Cm=bulk("Cm", "fcc", a=5.0), Cu=bulk("Cu", "fcc", a=3.6)).parent


@pytest.mark.parametrize("executor", ["--in-process", "--workers=1"])
def test_a_potential_error_on_one_structure_is_its_relax_failed_row(curium_and_copper, tmp_path, executor):
    out = tmp_path / "out"
    result = _run(curium_and_copper, "--out", out, "--model", "chgnet", "--chunk-size", "1", executor)
    assert result.exit_code == 0, result.output
    rows = read_structures(out).set_index(Col.STRUCTURE_ID)
    assert rows.loc["actinides/Cm.cif", Col.STATUS] == Status.RELAX_FAILED
    error = rows.loc["actinides/Cm.cif", Col.ERROR]
    assert error.startswith("RuntimeError: mat1 and mat2 shapes cannot be multiplied")  # CHGNet's own message
    assert "\x1b" not in error and "ray" not in error.lower()
    assert rows.loc["actinides/Cu.cif", Col.STATUS] == Status.OK


@pytest.mark.parametrize("where", ["in-process", "ray"])
def test_a_worker_that_cannot_start_stops_the_run_resumably(tmp_path, where, monkeypatch):
    monkeypatch.chdir(REPO)  # Ray workers import tests.potentials_for_tests from here
    inputs = _metals(tmp_path / "in" / "metals", Cu=bulk("Cu", "fcc", a=3.6), Al=bulk("Al", "fcc", a=4.05))
    (inputs / "broken.cif").write_text("data_broken\n_cell_length_a nonsense\n")
    model, checkpoint = "python:tests.potentials_for_tests:needs_its_checkpoint", tmp_path / "weights.bin"
    spec = WorkerSpec(model, "cpu", str(checkpoint), None, PUBLISHED.with_overrides(model=model))
    out = tmp_path / "out"

    def run():
        executor = InProcessExecutor() if where == "in-process" else RayExecutor(workers=1)
        return run_benchmark([str(inputs.parent)], out, spec, {"model": model}, executor)

    try:
        with pytest.raises(RunAborted, match="could not start: FileNotFoundError: checkpoint .* is not on this node"):
            run()
        assert _info(out)["status"] == "running"  # resumable: the invalid row is kept, nothing else
        assert _raw_ids(out) == ["metals/broken.cif"]
        checkpoint.write_bytes(b"weights")  # the cause fixed, the same run resumes
        run()
    finally:
        if where == "ray":
            import ray

            ray.shutdown()
    rows = read_structures(out).set_index(Col.STRUCTURE_ID)[Col.STATUS]
    assert rows.to_dict() == {"metals/Al.cif": Status.OK, "metals/Cu.cif": Status.OK,
                              "metals/broken.cif": Status.INVALID_INPUT}
    assert sorted(_raw_ids(out)) == sorted(rows.index)


# 3. Every file in, every file out -----------------------------------------------------------------


def test_every_file_is_read_made_a_row_or_counted(tmp_path):
    folder = tmp_path / "in" / "gen"
    folder.mkdir(parents=True)
    copper, aluminium, nickel = _cif(bulk("Cu", "fcc", a=3.6)), _cif(bulk("Al", "fcc", a=4.05)), _cif(bulk("Ni", "fcc", a=3.52))
    (folder / "plain.cif").write_text(copper)
    (folder / "compressed.cif.gz").write_bytes(gzip.compress(aluminium.encode()))
    (folder / "corrupt.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    with zipfile.ZipFile(folder / "twice.zip", "w") as archive:
        archive.writestr("a.cif", copper)
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("a.cif", nickel)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("deep.cif", nickel)
    with zipfile.ZipFile(folder / "outer.zip", "w") as archive:
        archive.writestr("inner.zip", inner.getvalue())
    (folder / ".hidden.cif").write_text(copper)
    (folder / "notes.txt").write_text("not a structure")
    (folder / "dangling.cif").symlink_to(tmp_path / "gone.cif")
    (folder / "linked.cif").symlink_to(folder / "plain.cif")
    (tmp_path / "elsewhere").mkdir()
    (folder / "linked_folder").symlink_to(tmp_path / "elsewhere", target_is_directory=True)

    skipped = SkippedFiles()
    items = {i.structure_id: i for i in read_inputs([str(tmp_path / "in")], 64, 0.5, skipped=skipped)}
    formulas = {sid: i.structure.composition.reduced_formula for sid, i in items.items() if i.valid}
    # zips inside the generator's folder are that generator's (issue 19.6), named under their path
    assert formulas == {"gen/plain.cif": "Cu", "gen/compressed.cif": "Al", "gen/twice.zip/a.cif": "Cu",
                        "gen/twice.zip/a~2.cif": "Ni", "gen/outer.zip/inner.zip/deep.cif": "Ni", "gen/linked.cif": "Cu"}
    assert {i.generator for i in items.values()} == {"gen"}
    invalid = {sid: i.error for sid, i in items.items() if not i.valid}
    assert set(invalid) == {"gen/corrupt.zip", "gen/dangling.cif"}
    assert invalid["gen/corrupt.zip"].startswith("unreadable zip archive: BadZipFile")
    assert invalid["gen/dangling.cif"].startswith("unreadable file: FileNotFoundError")
    assert {reason: len(paths) for reason, paths in skipped.by_reason.items()} == {
        "hidden": 1, "with no structure reader (extension)": 1, "linked folder": 1}

    out = tmp_path / "out"
    result = _run(tmp_path / "in", "--out", out, *EMT_RUN)
    assert result.exit_code == 0, result.output
    assert ("3 files skipped: 1 linked folder (linked_folder); 1 hidden (.hidden.cif); 1 with no structure reader "
            "(extension) (notes.txt)") in " ".join(result.output.split())
    assert _info(out)["skipped_files"]["hidden"]["count"] == 1
    assert len(read_structures(out)) == 8


# 4. One run per folder; a run never reads its own output ------------------------------------------


def test_a_second_run_into_the_same_folder_is_refused_and_a_stale_lock_is_not(tmp_path):
    inputs = _metals(tmp_path / "in" / "metals", Cu=bulk("Cu", "fcc", a=3.6)).parent
    out = tmp_path / "out"
    assert _run(inputs, "--out", out, *EMT_RUN).exit_code == 0
    with RunLock(out):  # a live run (this process) holds the folder
        assert "another run (pid" in _error_line(_run(inputs, "--out", out, *EMT_RUN))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".lock").write_text(json.dumps({"host": os.uname().nodename, "pid": int(gone.stdout)}))
    resumed = _run(inputs, "--out", out, *EMT_RUN)  # the lock of a killed run
    assert resumed.exit_code == 0, resumed.output
    assert not (out / ".lock").exists() and _raw_ids(out) == ["metals/Cu.cif"]


def test_an_output_folder_inside_the_input_is_never_read(tmp_path):
    inputs = _metals(tmp_path / "in" / "metals", Cu=bulk("Cu", "fcc", a=3.6)).parent
    for _ in range(2):
        assert _run(inputs, "--out", inputs / "results", *EMT_RUN).exit_code == 0
    rows = read_structures(inputs / "results")
    assert rows[Col.STRUCTURE_ID].tolist() == ["metals/Cu.cif"]
    assert _info(inputs / "results")["skipped_files"]["PhononBench output folder"]["count"] == 1


# 5 and 6. Settings checked before any work, one line each, no debris ---------------------------------


@pytest.mark.parametrize("arguments, message", [
    (["--threshold", "-0.1", "--threshold", "-0.1"], "threshold -0.1 THz is given twice"),
    # issue 19.2: near-equal thresholds would name one column twice
    (["--threshold", "0", "--threshold", "-0"], "threshold -0.0 THz is given twice"),  # one value, two spellings
    (["--threshold", "-0.1", "--threshold", "-0.10000000001"],
     "threshold -0.10000000001 THz is the same as -0.1 to 6 significant digits (both would be the column "
     "stable_at_-0.1_thz)"),
    (["--threshold", "0.1"], "positive"),
    (["--threshold", "nan"], "not a finite number"),
    (["--threshold", "-inf"], "not a finite number"),
    (["--chunk-size", "0"], "chunk size must be at least 1 (got 0) (option --chunk-size)"),
    (["--batch-atoms", "0"], "atoms per batch must be at least 1 (got 0) (option --batch-atoms)"),
    (["--max-atoms", "0"], "max_atoms must be positive (got 0) (option --max-atoms)"),
    (["--cpus-per-worker", "0"], "cpus_per_worker must be positive (got 0.0) (option --cpus-per-worker)"),
])
def test_settings_that_make_no_sense_are_refused_before_any_work(tmp_path, arguments, message):
    inputs = _metals(tmp_path / "in" / "metals", Cu=bulk("Cu", "fcc", a=3.6)).parent
    out = tmp_path / "out"
    ray = [] if "--cpus-per-worker" in arguments else ["--in-process"]
    assert message in _error_line(_run(inputs, "--out", out, "--model", "emt", *ray, *arguments))
    assert not out.exists()


def test_resources_the_cluster_lacks_are_refused_and_leave_no_debris(tmp_path):
    inputs = _metals(tmp_path / "in" / "metals", Cu=bulk("Cu", "fcc", a=3.6)).parent
    out = tmp_path / "out"

    def cli(*args):  # a process of its own: a local Ray per command, as a user runs it
        done = subprocess.run([sys.executable, "-m", "phononbench.cli", "run", str(inputs), "--out", str(out),
                               "--model", "emt", *args], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        return done.returncode, errors, done.stderr

    code, errors, log = cli("--cpus-per-worker", "512")
    assert code == 2 and len(errors) == 1, log
    assert f"a worker asks for 512 CPUs but the largest node has {os.cpu_count()}" in errors[0]
    code, errors, log = cli("--gpus-per-worker", "1")
    assert code == 2 and "a worker asks for 1 GPUs but no node has that many (the cluster has" in errors[0], log
    assert not out.exists()
    code, errors, log = cli("--workers", "1")  # the corrected command is not refused as "other settings"
    assert code == 0, log
    assert _raw_ids(out) == ["metals/Cu.cif"]


def test_positive_thresholds_need_their_flag(tmp_path):
    inputs = _metals(tmp_path / "in" / "metals", Cu=bulk("Cu", "fcc", a=3.6)).parent
    result = _run(inputs, "--out", tmp_path / "out", *EMT_RUN, "--threshold", "0.05", "--allow-positive-threshold")
    assert result.exit_code == 0, result.output
    assert verdict_column(0.05) in read_structures(tmp_path / "out")


# 7. Any name works end to end ----------------------------------------------------------------------


def test_generator_names_that_look_like_labels_markup_or_tex(tmp_path):
    names = ["(all)", "x[bold]y", "a$\\b$c", "Gen ", "L" * 120]  # "$\b$": mathtext that cannot render
    for k, name in enumerate(names):
        _metals(tmp_path / "in" / name, **{f"Cu{k}": bulk("Cu", "fcc", a=3.6 + 0.01 * k)})
    out = tmp_path / "out"
    result = _run(tmp_path / "in", "--out", out, *EMT_RUN)
    assert result.exit_code == 0, result.output
    for name in names[1:3]:
        assert name in result.output
    assert "'(all)'" in result.output  # a generator called (all) is quoted, the pooled row is not
    assert "'Gen '" in result.output  # not to be taken for "Gen"
    # a long name folds onto more lines, its numbers shown beside it
    assert any("L" * 30 in line and "1/1" in line for line in result.output.splitlines()), result.output
    summary = pd.read_parquet(out / "summary.parquet")
    headline = summary[summary[Col.THRESHOLD_THZ] == -0.1]
    assert headline[~headline[Col.POOLED]].set_index(Col.GENERATOR)[Col.N_INPUT].to_dict() == {n: 1 for n in names}
    assert headline[headline[Col.POOLED]][Col.N_INPUT].tolist() == [len(names)]

    page = tmp_path / "board.html"
    board = runner.invoke(app, ["leaderboard", str(out), "--format", "html", "--output", str(page)])
    assert board.exit_code == 0, board.output
    text = page.read_text()
    assert "x[bold]y" in text and "a$\\b$c" in text

    missing = _error_line(_run(tmp_path / "no[such]folder", "--out", tmp_path / "o2", *EMT_RUN))
    assert "no[such]folder" in missing


# 8. The leaderboard cannot mislead -------------------------------------------------------------------


def test_leaderboard_entries_are_generator_potential_protocol_and_unfinished_runs_say_so(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    inputs = _metals(tmp_path / "in" / "metals", Cu_fcc=bulk("Cu", "fcc", a=3.6), Cu_bcc=bulk("Cu", "bcc", a=2.87),
                     Al=bulk("Al", "fcc", a=4.05)).parent
    emt, slow = tmp_path / "emt", tmp_path / "slow"
    assert _run(inputs, "--out", emt, *EMT_RUN).exit_code == 0
    delayed = "python:tests.potentials_for_tests:slow_on_palladium"  # EMT too, under another name
    assert _run(inputs, "--out", slow, "--model", delayed, "--in-process").exit_code == 0
    # an unfinished run: its worker cannot start, so only the invalid row is written
    (tmp_path / "in2" / "metals").mkdir(parents=True)
    (tmp_path / "in2" / "metals" / "broken.cif").write_text("data_broken\n")
    shutil.copy(inputs / "metals" / "Al.cif", tmp_path / "in2" / "metals")
    model = "python:tests.potentials_for_tests:needs_its_checkpoint"
    spec = WorkerSpec(model, "cpu", str(tmp_path / "missing"), None, PUBLISHED.with_overrides(model=model))
    with pytest.raises(RunAborted):
        run_benchmark([str(tmp_path / "in2")], tmp_path / "half", spec, {"model": model}, InProcessExecutor())

    result = runner.invoke(app, ["leaderboard", str(emt), str(slow), str(emt), str(tmp_path / "half"),
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    entries = {(r["generator"], r["model"]): r for r in rows}
    assert set(entries) == {("metals (emt, published)", "emt"), (f"metals ({delayed}, published)", delayed),
                            (f"metals ({model}, published)", model)}
    assert entries[("metals (emt, published)", "emt")]["n_relaxed"] == 3  # the run given twice counts once
    unfinished = entries[(f"metals ({model}, published)", model)]
    assert (unfinished["rank"], unfinished["complete"], unfinished["n_decided"], unfinished["n_input"]) == \
        (None, False, 1, 2)
    assert sorted(r["rank"] for r in rows if r["complete"]) == [1, 2]
    md = runner.invoke(app, ["leaderboard", str(emt), str(tmp_path / "half")]).output
    assert f"metals ({model}, published) (unfinished: 1 of 2 decided)" in md


def _as_another_run(copy: Path, info: dict) -> None:
    """A copied run folder made another run's (its run.json ``info`` under a new run_id), as an earlier run's
    would be: a copy with the same run_id counts once, as the same run, and its parts name the run that wrote
    them (parts written before they did name none)."""
    (copy / "run.json").write_text(json.dumps({**info, "run_id": "another-run"}))
    for part in (copy / "structures").glob("part-*.parquet"):
        pq.write_table(pq.read_table(part).replace_schema_metadata(None), part)


def test_accurate_runs_from_before_and_after_acoustic_dips_were_set_aside_never_share_a_board(tmp_path):
    """An accurate run written before the preset set acoustic dips aside ranked by the whole zone: labelled
    apart from a new one, and one leaderboard refuses the two (its Brillouin-zone column would mix them)."""
    from phononbench.reading.ranking import _protocol_label

    inputs = _metals(tmp_path / "in" / "metals", Cu=bulk("Cu", "fcc", a=3.6)).parent
    new = tmp_path / "new"
    assert _run(inputs, "--out", new, *EMT_RUN, "--preset", "accurate").exit_code == 0
    old = tmp_path / "old"
    shutil.copytree(new, old)
    info = _info(old)
    del info["protocol"]["acoustic_dips"]
    _as_another_run(old, info)
    assert _protocol_label(_info(new)["protocol"]) == "accurate"
    assert _protocol_label(info["protocol"]).startswith("accurate#")
    refused = runner.invoke(app, ["leaderboard", str(new), str(old)])
    assert refused.exit_code == 2 and "acoustic dips next to Gamma counted in some" in refused.output
    board = runner.invoke(app, ["leaderboard", str(new), "--format", "json"])
    assert board.exit_code == 0 and json.loads(board.output)["acoustic_dips"] == "set_aside"
    assert "Brillouin zone (acoustic dips next to Gamma set aside)" in runner.invoke(app, ["leaderboard", str(new)]).output


def test_a_board_is_the_same_in_any_order_and_refuses_what_would_mix_thresholds_or_entries(tmp_path):
    """Copies of one run pool (a structure once, an entry finished only when all its runs are), in any order;
    rows without a verdict the board counts, runs that share no strict threshold, and a generator named as
    another's entry label are refused, each in one line: any of them would put a wrong number on the board."""
    inputs = _metals(tmp_path / "in" / "metals", Cu=bulk("Cu", "fcc", a=3.6), Al=bulk("Al", "fcc", a=4.05)).parent
    run, copy = tmp_path / "run", tmp_path / "copy"
    assert _run(inputs, "--out", run, *EMT_RUN).exit_code == 0
    shutil.copytree(run, copy)
    (part,) = (copy / "structures").glob("part-*.parquet")  # the same rows under another part name, as a resume
    part.rename(part.with_name("part-99999999999999999999-copy00-final-00000.parquet"))  # of a large run leaves them
    (copy / "parts.json").write_text(json.dumps({"parts": {"part-99999999999999999999-copy00-final-00000.parquet": 2}}))
    board = runner.invoke(app, ["leaderboard", str(run), str(copy), "--format", "json"])
    assert board.exit_code == 0 and json.loads(board.output)["rows"][0]["n_relaxed"] == 2  # the same rows: once
    _metals(inputs / "metals", Ni=bulk("Ni", "fcc", a=3.52))
    assert _run(inputs, "--out", copy, *EMT_RUN).exit_code == 0  # the copy resumed with one more input
    info = _info(copy)
    (copy / "run.json").write_text(json.dumps({**info, "status": "running"}))  # as while it is resumed again
    boards = [runner.invoke(app, ["leaderboard", *map(str, order), "--format", "json"]) for order in ((run, copy), (copy, run))]
    rows = [json.loads(b.output)["rows"] for b in boards]
    assert rows[0] == rows[1] and len(rows[0]) == 1
    assert (rows[0][0]["n_relaxed"], rows[0][0]["n_input"], rows[0][0]["complete"]) == (3, 3, False)
    (copy / "run.json").write_text(json.dumps(info))

    flip = tmp_path / "flip"  # a run of the entry whose verdict on one structure differs: counted once, and said
    shutil.copytree(run, flip)
    (part,) = (flip / "structures").glob("part-*.parquet")
    table = pq.read_table(part)
    verdicts = table.column("stable_at_-0.1_thz").to_pylist()
    flipped = table.set_column(table.column_names.index("stable_at_-0.1_thz"), "stable_at_-0.1_thz",
                               pa.array([not verdicts[0], *verdicts[1:]], pa.bool_()))
    pq.write_table(flipped.replace_schema_metadata(table.schema.metadata), part)
    said = f"'{table.column('structure_id')[0]}' of 'metals' (emt, published): -0.1 THz: " \
           f"{'unstable' if verdicts[0] else 'stable'} in flip, {'stable' if verdicts[0] else 'unstable'} in run)"
    news = "1 structure(s) computed in more than one run of an entry have other verdicts or dimensionality; each " \
           "counts once, from the run first by path"
    for order in ((run, flip), (flip, run)):
        board = runner.invoke(app, ["leaderboard", *map(str, order)])
        assert board.exit_code == 0 and f"warning: {news}" in board.stderr and said in board.stderr, board.output
        assert f"Note: {news}" in board.stdout and "| 1/2 |" in board.stdout  # the row of the run first by path counts
    shown = runner.invoke(app, ["leaderboard", str(run), str(flip), "--format", "json"])
    assert json.loads(shown.stdout)["notes"] == [line.removeprefix("warning: ") for line in shown.stderr.splitlines()]
    shown = runner.invoke(app, ["leaderboard", str(run), str(flip), "--format", "html"])
    assert f"<b>Note:</b> {news}" in shown.stdout and html.escape(said) in shown.stdout
    with pytest.warns(UserWarning, match="have other verdicts"):
        assert phononbench.leaderboard([run, flip])["n_stable"].tolist() == [1]
    board = runner.invoke(app, ["leaderboard", str(run), str(copy)])  # the same verdicts: nothing to say
    assert board.exit_code == 0 and "other verdicts" not in board.output
    from fastapi.testclient import TestClient

    from phononbench.app.webapp import create_app

    page = TestClient(create_app([run, flip], tmp_path / "checks")).get("/").text  # the web app's board says it too
    assert "have other verdicts" in page and "flip" in page
    # two folders of one name: named by their paths, and the board the same in either order
    shutil.copytree(run, tmp_path / "d1" / "out")
    shutil.copytree(flip, tmp_path / "d2" / "out")
    boards = [runner.invoke(app, ["leaderboard", *map(str, order), "--format", "json"]) for order in
              ((tmp_path / "d2" / "out", tmp_path / "d1" / "out"), (tmp_path / "d1" / "out", tmp_path / "d2" / "out"))]
    assert boards[0].stdout == boards[1].stdout and boards[0].stderr == boards[1].stderr
    assert f"stable in {tmp_path / 'd1' / 'out'}" in boards[0].stderr, boards[0].stderr
    # which row counts goes by path: a third folder of the same name (a copy) changes no number
    shutil.copytree(tmp_path / "d2" / "out", tmp_path / "d0" / "flip")
    shutil.copytree(run, tmp_path / "d3" / "flip")
    two = json.loads(runner.invoke(app, ["leaderboard", str(tmp_path / "d0" / "flip"), str(run), "--format", "json"]).stdout)
    three = json.loads(runner.invoke(app, ["leaderboard", str(tmp_path / "d0" / "flip"), str(run), str(tmp_path / "d3" / "flip"),
                                           "--format", "json"]).stdout)
    assert two["rows"][0]["n_stable"] == three["rows"][0]["n_stable"] == 1
    strict = tmp_path / "strict-flip"  # verdicts that differ only at the strict threshold or over the zone: said too
    shutil.copytree(run, strict)
    (part,) = (strict / "structures").glob("part-*.parquet")
    table = pq.read_table(part)
    for column in ("stable_at_-0.001_thz", "stable_bz_at_-0.1_thz"):
        table = table.set_column(table.column_names.index(column), column, pa.array([False] * table.num_rows))
    pq.write_table(table, part)
    board = runner.invoke(app, ["leaderboard", str(run), str(strict)])
    assert "have other verdicts" in board.stderr and "-0.1 THz, Brillouin zone: stable in run, unstable in strict-flip; " \
        "-0.001 THz (strict): stable in run, unstable in strict-flip" in board.stderr, board.stderr
    # the run's rows but for the zone at the strict threshold, which a published board does not show: no note
    table = pq.read_table(next((run / "structures").glob("part-*.parquet")))
    column = table.column_names.index("stable_bz_at_-0.001_thz")
    pq.write_table(table.set_column(column, "stable_bz_at_-0.001_thz", pa.array([False] * table.num_rows)), part)
    board = runner.invoke(app, ["leaderboard", str(run), str(strict)])
    assert board.exit_code == 0 and "other verdicts" not in board.output, board.output
    layered = tmp_path / "layered"  # flip's rows, every structure 2D: the "stable, not 3D" count differs by the
    shutil.copytree(flip, layered)  # one stable in both (said), not by the one unstable in both
    (part,) = (layered / "structures").glob("part-*.parquet")
    table = pq.read_table(part)
    assert set(table.column("dimensionality").to_pylist()) == {"3D"}
    verdicts = table.column("stable_at_-0.1_thz").to_pylist()
    assert sorted(verdicts) == [False, True], verdicts
    stable = table.column("structure_id")[verdicts.index(True)]
    pq.write_table(table.set_column(table.column_names.index("dimensionality"), "dimensionality",
                                    pa.array(["2D"] * table.num_rows, pa.string())), part)
    board = runner.invoke(app, ["leaderboard", str(flip), str(layered)])
    assert board.exit_code == 0 and "1 structure(s) computed in more than one run" in board.stderr, board.stderr
    assert f"'{stable}' of 'metals' (emt, published): stable, not 3D: no in flip, yes in layered)" in board.stderr

    nobz = tmp_path / "nobz"  # rows from before the zone verdict: refused, not counted unstable
    shutil.copytree(run, nobz)
    (part,) = (nobz / "structures").glob("part-*.parquet")
    table = pq.read_table(part)
    pq.write_table(table.drop([c for c in table.column_names if c.startswith("stable_bz_at")]), part)
    for command in (["leaderboard", nobz], ["summarize", nobz], ["export", nobz, "--stable"]):
        refused = runner.invoke(app, list(map(str, command)))
        assert refused.exit_code == 2 and "its rows have no stable_bz_at_-0.1_thz" in refused.output, command

    strict = tmp_path / "strict"
    assert _run(inputs, "--out", strict, *EMT_RUN, "--threshold", "-0.1", "--threshold", "-0.01").exit_code == 0
    for order in ((run, strict), (strict, run)):
        refused = runner.invoke(app, ["leaderboard", *map(str, order)])
        assert refused.exit_code == 2 and "share no threshold besides the headline" in refused.output
    three = tmp_path / "three"  # the same strict threshold among others: one board, in either order
    assert _run(inputs, "--out", three, *EMT_RUN, "--threshold", "-0.1", "--threshold", "-0.001", "--threshold", "-0.01").exit_code == 0
    for order in ((run, three), (three, run)):
        board = runner.invoke(app, ["leaderboard", *map(str, order)])
        assert board.exit_code == 0 and "strict, -0.001 THz" in board.output, board.output
    shown = json.loads(runner.invoke(app, ["leaderboard", str(strict), "--format", "json"]).stdout)
    assert (shown["strict_threshold_thz"], shown["rows"][0]["strict_threshold_thz"], shown["rows"][0]["verdict"]) == (-0.01, -0.01, "path")
    shown = pd.read_csv(io.StringIO(runner.invoke(app, ["leaderboard", str(run), str(three), "--format", "csv"]).stdout))
    assert (shown["strict_threshold_thz"].tolist(), shown["verdict"].tolist()) == ([-0.001], ["path"])  # a CSV says it too

    # one dedup taken up by two runs of other protocols: two runs (they share the dedup's run_id), two entries
    dedup = tmp_path / "dedup"
    assert runner.invoke(app, ["dedup", str(inputs), "--out", str(dedup), "--in-process"]).exit_code == 0
    for protocol in ("published", "tiered"):
        shutil.copytree(dedup, tmp_path / protocol)
        assert _run(inputs, "--out", tmp_path / protocol, *EMT_RUN, "--preset", protocol).exit_code == 0
    board = runner.invoke(app, ["leaderboard", str(tmp_path / "published"), str(tmp_path / "tiered"), "--format", "json"])
    assert board.exit_code == 0, board.output
    assert sorted(r["generator"] for r in json.loads(board.output)["rows"]) == ["metals (emt, published)", "metals (emt, tiered)"]

    tiered, named = tmp_path / "tiered", tmp_path / "named"
    assert _run(inputs, "--out", tiered, *EMT_RUN, "--preset", "tiered").exit_code == 0
    _metals(tmp_path / "in3" / "metals (emt, tiered)", Cu=bulk("Cu", "fcc", a=3.6))
    assert _run(tmp_path / "in3", "--out", named, *EMT_RUN).exit_code == 0
    refused = runner.invoke(app, ["leaderboard", str(run), str(tiered), str(named)])
    assert refused.exit_code == 2 and "'metals (emt, tiered)' reads as another entry's label" in refused.output
    shutil.move(tmp_path / "in3" / "metals (emt, tiered)", tmp_path / "in3" / "metals (emt, published)")  # same protocol as run's
    assert _run(tmp_path / "in3", "--out", tmp_path / "named2", *EMT_RUN).exit_code == 0
    refused = runner.invoke(app, ["leaderboard", str(run), str(tiered), str(tmp_path / "named2")])
    assert refused.exit_code == 2 and "'metals (emt, published)' reads as another entry's label" in refused.output


def test_an_input_edited_between_two_runs_of_an_entry_counts_twice_and_the_board_says_so(tmp_path):
    """Two runs of one entry that read one input id with other contents (a CIF edited in between) pool both
    contents, as two structures; the board says which id, and in which runs, rather than count it in silence."""
    inputs = _metals(tmp_path / "in" / "metals", Cu=bulk("Cu", "fcc", a=3.6), Al=bulk("Al", "fcc", a=4.05)).parent
    assert _run(inputs, "--out", tmp_path / "before", *EMT_RUN).exit_code == 0
    _metals(inputs / "metals", Cu=bulk("Cu", "fcc", a=3.62))
    assert _run(inputs, "--out", tmp_path / "after", *EMT_RUN).exit_code == 0
    board = runner.invoke(app, ["leaderboard", str(tmp_path / "before"), str(tmp_path / "after")])
    assert board.exit_code == 0 and "| 3/3 |" in board.stdout
    assert "1 input id(s) were read with other contents by runs of an entry, each content counted as a structure of " \
        "its own (e.g. 'metals/Cu.cif' of 'metals' (emt, published) in after, before)" in board.stderr, board.output


def test_a_generator_with_nothing_relaxed_is_listed_unranked(tmp_path):
    inputs = _metals(tmp_path / "in" / "metals", Cu=bulk("Cu", "fcc", a=3.6)).parent
    (inputs / "broken").mkdir()
    (inputs / "broken" / "x.cif").write_text("data_broken\n_cell_length_a 3\n")
    assert _run(inputs, "--out", tmp_path / "run", *EMT_RUN).exit_code == 0
    rows = json.loads(runner.invoke(app, ["leaderboard", str(tmp_path / "run"), "--format", "json"]).stdout)["rows"]
    assert [(r["generator"], r["rank"], r["n_relaxed"]) for r in rows] == [("metals", 1, 1), ("broken", None, 0)]


# 9. Threads -----------------------------------------------------------------------------------------


def test_the_method_runs_numpy_on_one_blas_thread(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    inputs = _metals(tmp_path / "in" / "metals", Cu=bulk("Cu", "fcc", a=3.6), Al=bulk("Al", "fcc", a=4.05)).parent
    model = "python:tests.potentials_for_tests:one_blas_thread"  # raises if BLAS has more than one thread
    with threadpool_limits(limits=2, user_api="blas"):  # a pool of two outside, as on this 2-core machine
        result = _run(inputs, "--out", tmp_path / "out", "--model", model, "--in-process")
    assert result.exit_code == 0, result.output
    assert set(read_structures(tmp_path / "out")[Col.STATUS]) == {Status.OK}


def test_a_long_run_leaves_few_part_files(tmp_path):
    folder = tmp_path / "in"
    for k in range(18):  # 18 generators of one structure each, one chunk each: 18 part files before compaction
        _metals(folder / f"g{k:02d}", Cu=bulk("Cu", "fcc", a=3.55 + 0.01 * k))
    out = tmp_path / "out"
    assert _run(folder, "--out", out, *EMT_RUN, "--chunk-size", "1").exit_code == 0
    assert len(list((out / "structures").glob("part-*.parquet"))) == 1
    ids = _raw_ids(out)
    assert len(ids) == len(set(ids)) == len(read_structures(out)) == 18
    assert _run(folder, "--out", out, *EMT_RUN).exit_code == 0 and _info(out)["n_computed_this_time"] == 0


def test_a_run_with_no_rows_yet_says_so_and_a_stranger_folder_is_named(tmp_path):
    """`validate --runs` on a run that has just started: the error says the run has no rows yet, not that
    the folder is not ours."""
    from phononbench.errors import SetupError
    from phononbench.running.run_folder import read_structures

    with pytest.raises(SetupError, match="is .* a PhononBench output folder"):
        read_structures(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(SetupError, match="has no rows yet: its run has not finished a structure"):
        read_structures(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"stage": "dedup", "status": "complete"}))
    with pytest.raises(SetupError, match="holds a deduplication only"):
        read_structures(tmp_path)


def test_a_run_made_before_a_setting_existed_resumes_at_its_default():
    """A run.json written before ``subtract_residual_forces`` existed lacks it: read at its default (off, as
    every run then was), a published run resumes; an accurate one, which now subtracts and sizes its supercells
    for the zone boundary, is refused with both settings named."""
    from phononbench.running.run_folder import ensure_resumable
    from phononbench.settings import ACCURATE

    def info(protocol, drop=()):
        settings = {k: v for k, v in json.loads(json.dumps(protocol.to_dict())).items() if k not in drop}
        return {"protocol": settings, "inputs": ["in"], "limit_per_generator": None, "engine": "ase",
                "potential": {"name": "emt"}}

    old = ("subtract_residual_forces", "supercell_zone_boundary")
    ensure_resumable(info(PUBLISHED, drop=old), info(PUBLISHED))
    with pytest.raises(SetupError, match=r"protocol\.subtract_residual_forces, .*protocol\.supercell_zone_boundary\)"):
        ensure_resumable(info(ACCURATE.with_supercell("15"), drop=old), info(ACCURATE))
    # an accurate run from before it set acoustic dips aside counted them: refused, the setting named; a
    # published run from then resumes (its dips were and are counted)
    ensure_resumable(info(PUBLISHED, drop=("acoustic_dips",)), info(PUBLISHED))
    with pytest.raises(SetupError, match=r"protocol\.acoustic_dips\)"):
        ensure_resumable(info(ACCURATE, drop=("acoustic_dips",)), info(ACCURATE))
    # one from before its supercells kept the crystal's rotations: refused, saying the preset changed; a run whose
    # --supercell the user changed is refused without that (the preset did not change it)
    with pytest.raises(SetupError, match=r"supercell_keeps_rotations\) \(the accurate preset's supercells keep"):
        ensure_resumable(info(ACCURATE, drop=("supercell_keeps_rotations",)), info(ACCURATE))
    for before, now in ((PUBLISHED.with_supercell("8zb-sym"), PUBLISHED.with_supercell("8zb")),
                        (ACCURATE, ACCURATE.with_supercell("15zb"))):
        with pytest.raises(SetupError, match=r"supercell_keeps_rotations\); resuming"):
            ensure_resumable(info(before), info(now))
    # validate pools runs by the same rule: the old published run and a new one are one protocol
    from phononbench.reading.validation import _settings

    assert _settings(info(PUBLISHED, drop=old)) == _settings(info(PUBLISHED)) != _settings(info(ACCURATE))
    for missing in (None, [], "accurate"):  # a run.json without a readable protocol is refused, not read as published
        with pytest.raises(SetupError, match=r"other settings \(protocol\)"):
            ensure_resumable({**info(PUBLISHED), "protocol": missing}, info(PUBLISHED))


def test_list_columns_are_variable_size_and_parts_written_fixed_size_still_read(tmp_path):
    """pyarrow before 26 cannot read back a null fixed-size list from Parquet (apache/arrow#35692): on such a
    pyarrow (a GPU node's image had one) one failed structure made its part file unreadable. Lists are written
    variable-size; a part written fixed-size by an earlier version, beside a new part, still reads."""
    from phononbench.records import structures_schema

    assert not [f.name for f in structures_schema((-0.1,)) if pa.types.is_fixed_size_list(f.type)]
    folder = _metals(tmp_path / "in" / "metals", Cu=bulk("Cu", "fcc", a=3.6))
    (folder / "broken.cif").write_text("data_broken\n_cell_length_a nonsense\n")
    out = tmp_path / "out"
    assert _run(folder.parent, "--out", out, *EMT_RUN).exit_code == 0
    [part] = (out / "structures").glob("part-*.parquet")
    written = pq.read_table(part)
    assert not [f.name for f in written.schema if pa.types.is_fixed_size_list(f.type)]
    rows = read_structures(out).set_index(Col.STATUS)
    assert rows.loc["invalid_input", Col.SUPERCELL_MATRIX] is None
    assert list(rows.loc["ok", Col.SUPERCELL_MATRIX]) == [2, 0, 0, 0, 2, 0, 0, 0, 2]

    # the same part as the previous version wrote it: fixed-size lists (nulls included, which this pyarrow reads)
    old = written
    for name, size in ((Col.SUPERCELL_MATRIX, 9), (Col.MIN_FREQUENCY_QPOINT, 3), (Col.MIN_FREQUENCY_BZ_QPOINT, 3)):
        i = old.schema.get_field_index(str(name))
        old = old.set_column(i, str(name), old.column(i).cast(pa.list_(old.schema.field(i).type.value_type, size)))
    pq.write_table(old, part)
    _metals(folder, Al=bulk("Al", "fcc", a=4.05))  # a new input: the resume writes a new-format part beside it
    assert _run(folder.parent, "--out", out, *EMT_RUN).exit_code == 0 and _info(out)["n_computed_this_time"] == 1
    rows = read_structures(out)
    assert len(rows) == 3 and len(list((out / "structures").glob("part-*.parquet"))) >= 1
    ok = rows[rows[Col.STATUS] == "ok"]
    assert len(ok) == 2 and all(list(m) == [2, 0, 0, 0, 2, 0, 0, 0, 2] for m in ok[Col.SUPERCELL_MATRIX])
    assert all(len(q) == 3 for q in ok[Col.MIN_FREQUENCY_BZ_QPOINT])


def test_a_part_with_fixed_size_lists_under_an_older_pyarrow_is_said_and_never_set_aside(tmp_path, monkeypatch):
    """Where pyarrow is older than 26, a part written fixed-size by an earlier version cannot be read back: reading
    says why in one line, and a resume refuses instead of setting the intact part aside as damaged."""
    folder = _metals(tmp_path / "in" / "metals", Cu=bulk("Cu", "fcc", a=3.6))
    out = tmp_path / "out"
    assert _run(folder.parent, "--out", out, *EMT_RUN).exit_code == 0
    [part] = (out / "structures").glob("part-*.parquet")
    table = pq.read_table(part)
    i = table.schema.get_field_index(str(Col.SUPERCELL_MATRIX))
    pq.write_table(table.set_column(i, str(Col.SUPERCELL_MATRIX), table.column(i).cast(pa.list_(pa.int32(), 9))), part)
    monkeypatch.setattr(pa, "__version__", "25.0.1")
    with pytest.raises(SetupError, match="fixed-size lists, which pyarrow 25.0.1 cannot read back"):
        read_structures(out)
    result = _run(folder.parent, "--out", out, *EMT_RUN)
    assert result.exit_code == 2 and "install pyarrow 26 or later" in result.output
    assert part.exists() and not (out / "damaged").exists()


def test_the_method_fingerprint_follows_the_code_not_its_comments_layout_or_readers(tmp_path):
    """run.json's method_sha256: a comment, a docstring, CRLF line ends, an editor's lock file or a reader's change
    leave it; a change of code anywhere a run computes or stores a result (records.py here) changes it; an install
    without sources has none (nothing to compare)."""
    from phononbench.running.run_folder import METHOD_SHA256, method_sha256

    package = tmp_path / "phononbench"
    shutil.copytree(REPO / "phononbench", package, ignore=shutil.ignore_patterns("__pycache__"))
    assert method_sha256(package) == METHOD_SHA256 and len(METHOD_SHA256) == 64
    stability = package / "science" / "stability.py"
    text = stability.read_text()
    stability.write_bytes(('"""Reworded."""\n# a new comment\n' + text.split('"""', 2)[2]).replace("\n", "\r\n")
                          .encode())
    (package / "science" / ".#phonons.py").symlink_to(tmp_path / "nowhere")  # Emacs' lock file: dangling
    (package / "reading" / "analysis.py").write_text("x = 1\n")
    assert method_sha256(package) == METHOD_SHA256
    records = package / "records.py"
    records.write_text(records.read_text() + "\nROUNDING = 0.1\n")
    assert method_sha256(package) not in (None, METHOD_SHA256)
    assert method_sha256(tmp_path / "empty") is None


def test_a_run_started_by_other_method_code_refuses_to_resume_pool_or_start_a_worker(tmp_path, monkeypatch):
    """The package's version number stays 0.1.0 across fixes that change verdicts: a run records the method's
    fingerprint, and a resume (or a run into a dedup's folder) under other code is refused, naming both; a run.json
    from before the fingerprint existed resumes, as it did then. A worker that imports other code than the run's
    refuses to start; the leaderboard keeps runs of other code apart."""
    from phononbench.running.run_folder import METHOD_SHA256, ensure_resumable
    from phononbench.running.worker import Worker

    monkeypatch.chdir(REPO)
    inputs = _metals(tmp_path / "in" / "metals", Cu=bulk("Cu", "fcc", a=3.6)).parent
    out, other = tmp_path / "out", tmp_path / "other"
    assert _run(inputs, "--out", out, *EMT_RUN).exit_code == 0
    now = _info(out)
    assert now["method_sha256"] == METHOD_SHA256
    ensure_resumable(dict(now), now)
    ensure_resumable({k: v for k, v in now.items() if k != "method_sha256"}, now)
    for stage in ("run", "dedup"):
        with pytest.raises(SetupError, match=rf"\(method_sha256: phononbench's code changed since the run started, "
                                             rf"00000000 then, {METHOD_SHA256[:8]} now\)"):
            ensure_resumable({**now, "stage": stage, "method_sha256": "0" * 64}, now)

    shutil.copytree(out, other)
    _as_another_run(other, {**now, "method_sha256": "0" * 64})
    assert "00000000 then" in _error_line(_run(inputs, "--out", other, *EMT_RUN))
    board = runner.invoke(app, ["leaderboard", str(out), str(other), "--format", "json"])
    assert board.exit_code == 0, board.output
    labels = {r["generator"] for r in json.loads(board.output)["rows"]}
    assert labels == {f"metals (emt, published, code {METHOD_SHA256[:8]})", "metals (emt, published, code 00000000)"}

    spec = WorkerSpec("emt", "cpu", None, None, PUBLISHED.with_overrides(model="emt"), method_sha256="0" * 64)
    assert f"imports other phononbench code ({METHOD_SHA256[:8]}, from" in Worker(spec).startup_error()


@pytest.mark.parametrize("record", ["{not json", "[1]", None])
def test_a_run_record_that_cannot_be_read_is_one_line_for_every_reader(tmp_path, record):
    """A corrupt run.json (bad JSON, not an object, a folder in its place) is a SetupError saying so, for the
    commands and for the benchmarks that read runs (validation.rows_by_material), never a traceback."""
    from phononbench.reading.validation import _settings, rows_by_material

    if record is None:
        (tmp_path / "run.json").mkdir()
    else:
        (tmp_path / "run.json").write_text(record)
    with pytest.raises(SetupError, match=r"run\.json (cannot be read|is not a run's record)"):
        rows_by_material([tmp_path])
    with pytest.raises(SetupError, match="no run folders given"):
        rows_by_material([])
    # validate pools runs only under one method's code
    info = {"protocol": json.loads(json.dumps(PUBLISHED.to_dict())), "engine": "ase", "potential": {"model": "emt"}}
    assert _settings({**info, "method_sha256": "a" * 64}) != _settings({**info, "method_sha256": "b" * 64})
