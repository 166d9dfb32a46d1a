"""A run folder that never lies (issue 19): lost and damaged files, inputs that expand, inputs that hide in
zips, edits that keep size and time, caches that cannot be read, cells no crystal has, the ASE the
relaxation needs. Real runs (EMT on small metals), real files, the CLI as a user calls it."""

from __future__ import annotations

import gzip
import json
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from ase.build import bulk
from typer.testing import CliRunner

from phononbench.cli import app
from phononbench.errors import IncompleteRun
from phononbench.science.ingest import MAX_DECOMPRESSED_BYTES, read_inputs
from phononbench.records import Col, Status
from phononbench.running.run_folder import read_structures
from tests.test_run_folder import _cif, _metals  # the same small metals, written as CIFs

runner = CliRunner()
EMT_RUN = ["--model", "emt", "--in-process"]


def _cli(*args):
    return runner.invoke(app, [*map(str, args)])


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def finished(tmp_path) -> tuple[Path, Path]:
    inputs = tmp_path / "in"
    _metals(inputs / "fcc", Cu=bulk("Cu", "fcc", a=3.6), Al=bulk("Al", "fcc", a=4.05))
    _metals(inputs / "bcc", Cu=bulk("Cu", "bcc", a=2.87), Ni=bulk("Ni", "fcc", a=3.52))
    out = tmp_path / "out"
    assert _cli("run", inputs, "--out", out, *EMT_RUN).exit_code == 0
    return inputs, out


# 5. Parts are accounted for ----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_lost_or_damaged_part_makes_the_run_incomplete_everywhere_until_a_resume_recomputes_it(finished, damage, tmp_path):
    inputs, out = finished
    (part,) = (out / "structures").glob("part-*.parquet")
    ledger = json.loads((out / "parts.json").read_text())["parts"]
    assert ledger == {part.name: 4}
    if damage == "deleted":
        part.unlink()
    else:
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])

    # every reader says so, naming the file, in one line
    for command in (["summarize", out], ["leaderboard", out], ["export", out, "--stable"]):
        line = _one_error_line(_cli(*command))
        assert f"is incomplete: structures/{part.name}" in line and "computes its structures again" in line, command
    with pytest.raises(IncompleteRun):
        read_structures(out)

    # a resume sets the damaged file aside, says so in run.log, computes those structures again
    assert _cli("run", inputs, "--out", out, *EMT_RUN).exit_code == 0
    assert json.loads((out / "run.json").read_text())["n_computed_this_time"] == 4
    assert "part file set aside" in (out / "run.log").read_text()
    assert (out / "damaged" / part.name).exists() == (damage == "truncated")
    assert len(read_structures(out)) == 4 and _cli("summarize", out).exit_code == 0


def test_a_part_or_summary_copied_in_from_another_run_is_never_counted(finished, tmp_path):
    """A part file copied from another run folder (listed in no ledger, or under this run's own part's name)
    is refused by every reader and set aside by a resume; a summary.parquet copied from another run is not
    what summarize shows."""
    inputs, out = finished
    other = tmp_path / "other"
    assert _cli("run", inputs / "bcc", "--out", other, *EMT_RUN, "--max-atoms", "1").exit_code == 0
    (foreign,) = (other / "structures").glob("part-*.parquet")
    (own,) = (out / "structures").glob("part-*.parquet")
    expected = read_structures(out).sort_values(Col.STRUCTURE_ID).reset_index(drop=True)
    table = _cli("summarize", out).output

    shutil.copy(other / "summary.parquet", out / "summary.parquet")
    shown = _cli("summarize", out)
    assert shown.exit_code == 0 and shown.output.startswith(table) and "differs from the run's rows" in shown.output

    for copied in (out / "structures" / foreign.name, own):  # beside this run's part, then in its place
        saved = own.read_bytes()
        shutil.copy(foreign, copied)
        for command in (["summarize", out], ["leaderboard", out], ["export", out, "--stable"]):
            line = _one_error_line(_cli(*command))
            assert f"structures/{copied.name}: written by another run" in line, command
        assert _cli("run", inputs, "--out", out, *EMT_RUN).exit_code == 0  # sets it aside, computes what it lacks
        assert (out / "damaged" / copied.name).exists()
        again = read_structures(out).sort_values(Col.STRUCTURE_ID).reset_index(drop=True)
        pd.testing.assert_frame_equal(again[[Col.STRUCTURE_ID, Col.STATUS, Col.MIN_FREQUENCY_THZ]],
                                      expected[[Col.STRUCTURE_ID, Col.STATUS, Col.MIN_FREQUENCY_THZ]])
        shutil.rmtree(out / "damaged")
        (own,) = (out / "structures").glob("part-*.parquet")


@pytest.mark.parametrize("edit, why", [
    (lambda info: info["protocol"].update(thresholds_thz=[-0.05]), "names thresholds its rows were not computed at (-0.05 THz"),
    (lambda info: info.pop("protocol"), "lacks its protocol's name and thresholds"),
    (lambda info: info["potential"].pop("model"), "lacks its protocol's name and thresholds or its potential's name")])
def test_a_run_record_edited_out_of_step_with_its_rows_is_one_line_for_every_reader(finished, edit, why):
    _, out = finished
    info = json.loads((out / "run.json").read_text())
    edit(info)
    (out / "run.json").write_text(json.dumps(info))
    for command in (["summarize", out], ["leaderboard", out], ["export", out, "--stable"]):
        assert why in _one_error_line(_cli(*command)), command


def test_a_run_taking_up_a_dedup_at_other_thresholds_is_unfinished_not_edited_until_its_first_rows(tmp_path):
    """A run started on a dedup folder with other thresholds, killed before its first chunk: the folder holds the
    dedup's rows only, without the run's verdict columns. Readers show an unfinished run, not an edited record."""
    inputs = _metals(tmp_path / "in" / "fcc", Cu=bulk("Cu", "fcc", a=3.6), Cu2=bulk("Cu", "fcc", a=3.6),
                     Al=bulk("Al", "fcc", a=4.05)).parent
    out = tmp_path / "out"
    assert _cli("dedup", inputs, "--out", out, "--in-process").exit_code == 0  # a row: Cu2, a duplicate
    # the record such a run leaves when killed at once: a real one's, running, on the dedup's run_id
    assert _cli("run", inputs, "--out", tmp_path / "real", *EMT_RUN, "--threshold", "-0.05").exit_code == 0
    record = json.loads((tmp_path / "real" / "run.json").read_text())
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    (out / "run.json").write_text(json.dumps({**record, "status": "running", "run_id": run_id}))
    board = _cli("leaderboard", out, "--format", "json")
    assert board.exit_code == 0, board.output
    (row,) = json.loads(board.output)["rows"]
    assert (row["complete"], row["n_stable"], row["n_decided"]) == (False, 0, 1)
    assert "has not finished" in _one_error_line(_cli("summarize", out))
    assert _cli("run", inputs, "--out", out, *EMT_RUN, "--threshold", "-0.05").exit_code == 0  # finishes it
    assert _cli("summarize", out).exit_code == 0


def test_a_folder_from_before_the_ledger_still_knows_an_input_without_a_row(finished):
    _, out = finished
    (out / "parts.json").unlink()
    rows = pd.read_parquet(out / "structures")
    (part,) = (out / "structures").glob("part-*.parquet")
    rows[rows[Col.STRUCTURE_ID] != "fcc/Al.cif"].to_parquet(part)  # a row lost, the footer intact
    with pytest.raises(IncompleteRun, match=r"1 of its 4 inputs have no row \(first: fcc/Al.cif\)"):
        read_structures(out)


def test_the_app_shows_the_healthy_runs_beside_a_damaged_one(finished, tmp_path):
    from fastapi.testclient import TestClient

    from phononbench.app.webapp import create_app

    _, out = finished
    damaged = tmp_path / "damaged_copy"
    shutil.copytree(out, damaged)
    info = json.loads((damaged / "run.json").read_text())
    (damaged / "run.json").write_text(json.dumps({**info, "run_id": "another run"}))  # not the same run twice
    (part,) = (damaged / "structures").glob("part-*.parquet")
    part.write_bytes(b"PAR1 not a parquet file")
    client = TestClient(create_app([out, damaged], tmp_path / "checks"))
    front = client.get("/")
    assert front.status_code == 200
    assert "is incomplete" in front.text and part.name in front.text
    assert ">fcc<" in front.text  # the healthy run is on the board
    assert client.get("/runs/0").status_code == 200
    refused = client.get("/runs/1")
    assert refused.status_code == 404 and "is incomplete" in refused.json()["detail"]


def test_a_resume_that_was_stopped_has_no_summary_to_show(finished):
    """A summary is an earlier finish's once a resume has started: summarize says so instead of showing it."""
    _, out = finished
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**info, "status": "running"}))  # as a killed resume leaves it
    line = _one_error_line(_cli("summarize", out))
    assert "has not finished" in line and "finishes it" in line


def test_an_input_folder_with_no_structures_says_so_in_one_line(tmp_path):
    (tmp_path / "in" / "empty").mkdir(parents=True)
    (tmp_path / "in" / "empty" / "notes.txt").write_text("no structure here")
    result = _cli("run", tmp_path / "in", "--out", tmp_path / "out", *EMT_RUN)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert "no structure files in" in errors[0] and "1 with no structure reader" in errors[0]
    assert not (tmp_path / "out").exists()  # nothing left behind


# 6. A zip inside a generator's folder is that generator's ---------------------------------------------


def test_a_zip_inside_a_generator_folder_keeps_that_generator(tmp_path):
    inputs = tmp_path / "in"
    for generator, a in (("g1", 3.60), ("g2", 3.62)):
        (inputs / generator).mkdir(parents=True)
        with zipfile.ZipFile(inputs / generator / "x.zip", "w") as archive:  # both: one top folder genA/
            archive.writestr("genA/Cu.cif", _cif(bulk("Cu", "fcc", a=a)))
    (inputs / "g1" / "Cu.cif").write_text(_cif(bulk("Cu", "fcc", a=3.64)))  # beside the zip, the same entry name
    items = read_inputs([str(inputs)], None, 0.5)
    assert sorted((i.generator, i.structure_id) for i in items) == [
        ("g1", "g1/Cu.cif"), ("g1", "g1/x.zip/Cu.cif"), ("g2", "g2/x.zip/Cu.cif")]
    assert all(i.valid for i in items)


# 7. Decompressed size is capped --------------------------------------------------------------------------


def test_a_gz_or_zip_entry_over_the_cap_is_invalid_input_and_stays_small(tmp_path, monkeypatch):
    import resource

    import phononbench.science.ingest as ingest

    cap = 8 * 1024 * 1024
    monkeypatch.setattr(ingest, "MAX_DECOMPRESSED_BYTES", cap)  # the same rule, a cap a test can reach
    assert MAX_DECOMPRESSED_BYTES == 512 * 1024 * 1024  # the cap as the README states it
    inputs = tmp_path / "in" / "bombs"
    inputs.mkdir(parents=True)
    bomb = b"# " + b" " * (4 * cap)  # 32 MiB of spaces, a few tens of KB compressed
    (inputs / "table.csv.gz").write_bytes(gzip.compress(bomb))
    with zipfile.ZipFile(inputs / "a.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Cu.cif", bomb)
    (inputs / "Cu.cif.gz").write_bytes(gzip.compress(_cif(bulk("Cu", "fcc", a=3.6)).encode()))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    items = {i.structure_id: i for i in read_inputs([str(tmp_path / "in")], None, 0.5)}
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert "decompresses to over 8 MiB" in items["bombs/table.csv"].error
    assert "decompresses to" in items["bombs/a.zip/Cu.cif"].error and "8 MiB" in items["bombs/a.zip/Cu.cif"].error
    assert items["bombs/Cu.cif"].valid
    assert grown_mib < 4 * cap / 2**20  # never the whole 32 MiB bomb in memory


# 9. Edits by content, caches rebuilt, CIFs with their reasons, absurd cells ---------------------------------


def test_an_edit_that_keeps_size_and_mtime_is_read_again(tmp_path):
    import os

    inputs = _metals(tmp_path / "in" / "metals", Cu=bulk("Cu", "fcc", a=3.6))
    out = tmp_path / "out"
    assert _cli("run", tmp_path / "in", "--out", out, *EMT_RUN).exit_code == 0
    path = inputs / "Cu.cif"
    stat = path.stat()
    edited = path.read_text().replace("Cu", "Ni")  # same length: fcc Ni at Cu's lattice constant
    assert len(edited) == stat.st_size
    path.write_text(edited)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p leaves it
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_size == stat.st_size
    assert _cli("run", tmp_path / "in", "--out", out, *EMT_RUN).exit_code == 0
    assert read_structures(out)[Col.FORMULA].tolist() == ["Ni"]


@pytest.mark.parametrize("cache", ["inputs.parquet", "dedup.parquet"])
def test_a_cache_that_cannot_be_read_is_rebuilt_with_a_line_in_the_log(finished, cache):
    inputs, out = finished
    (out / cache).write_bytes((out / cache).read_bytes()[:100])
    assert _cli("run", inputs, "--out", out, *EMT_RUN).exit_code == 0
    assert f"{cache} cannot be read" in (out / "run.log").read_text()
    assert json.loads((out / "run.json").read_text())["n_computed_this_time"] == 0
    assert len(read_structures(out)) == 4


CELL = "data_x\n_cell_length_a {a}\n_cell_length_b 3.6\n_cell_length_c 3.6\n_cell_angle_alpha {alpha}\n" \
       "_cell_angle_beta 90\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1'\nloop_\n" \
       "_symmetry_equiv_pos_as_xyz\n  'x, y, z'\nloop_\n_atom_site_label\n_atom_site_type_symbol\n" \
       "_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n_atom_site_occupancy\n{sites}"


@pytest.mark.parametrize("a, alpha, sites, reason", [
    ("3.6", "90", "Cu1 Cu 0 0 0 1\nCu2 Cu 0.01 0 0 1\n", "overlapping atoms"),
    ("0", "90", "Cu1 Cu 0 0 0 1\n", "cell length a = 0 A"),
    ("-3.6", "90", "Cu1 Cu 0 0 0 1\n", "cell length a = -3.6 A"),
    ("3.6", "180", "Cu1 Cu 0 0 0 1\n", "cell angle alpha = 180 degrees"),
    ("1e308", "90", "Cu1 Cu 0 0 0 1\n", "cell length a = 1e+308 A"),
    ("1e6", "90", "Cu1 Cu 0 0 0 1\n", "cell length a = 1e+06 A"),
])
def test_a_cif_keeps_its_real_reason_and_absurd_cells_are_invalid_input(tmp_path, a, alpha, sites, reason):
    folder = tmp_path / "in" / "bad"
    folder.mkdir(parents=True)
    (folder / "x.cif").write_text(CELL.format(a=a, alpha=alpha, sites=sites))
    (item,) = read_inputs([str(tmp_path / "in")], None, 0.5)
    assert not item.valid and reason in item.error and "no structures" not in item.error, item.error


def test_one_absurd_block_of_a_multi_block_cif_leaves_the_others(tmp_path):
    folder = tmp_path / "in" / "blocks"
    folder.mkdir(parents=True)
    blocks = [CELL.format(a=a, alpha="90", sites="Cu1 Cu 0 0 0 1\n").replace("data_x", f"data_{k}")
              for k, a in enumerate(["3.6", "3.7"])]
    huge = CELL.format(a="3.6", alpha="90", sites="Cu1 Cu 0 0 0 1\n").replace("data_x", "data_2").replace(
        "_cell_length_c 3.6", "_cell_length_c 600")
    (folder / "three.cif").write_text("\n".join(blocks + [huge]))
    items = {i.structure_id: i for i in read_inputs([str(tmp_path / "in")], None, 0.5)}
    assert sorted(items) == ["blocks/three.cif#0", "blocks/three.cif#1", "blocks/three.cif#2"]
    assert items["blocks/three.cif#0"].valid and items["blocks/three.cif#1"].valid
    assert "over 500 A" in items["blocks/three.cif#2"].error


def test_a_poscar_with_an_absurd_cell_is_invalid_input(tmp_path):
    folder = tmp_path / "in" / "bad"
    folder.mkdir(parents=True)
    (folder / "huge.vasp").write_text("huge\n1.0\n1e308 0 0\n0 3.6 0\n0 0 3.6\nCu\n1\nDirect\n0 0 0\n")
    (item,) = read_inputs([str(tmp_path / "in")], None, 0.5)
    assert not item.valid and "not a crystal's cell" in item.error, item.error


# 11. The ASE the relaxation needs ------------------------------------------------------------------------


def test_the_ase_floor_is_the_release_with_the_optimizer_api_the_relaxation_calls():
    """relax.py asks the optimizer whether the gradient converged (Optimizer.gradient_converged) and for the
    gradient (optimizable.get_gradient): ASE 3.28.0 is the first release with both (3.26 has get_gradient
    only; 3.23-3.25 neither). The floor in pyproject.toml says so, and the installed ASE has them."""
    import tomllib

    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "ase>=3.28" in project["project"]["dependencies"]
    optimizer = FIRE(FrechetCellFilter(bulk("Cu", "fcc", a=3.6)), logfile=None)
    assert callable(optimizer.gradient_converged) and callable(optimizer.optimizable.get_gradient)
