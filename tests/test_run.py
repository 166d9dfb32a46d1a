"""The whole run through the CLI: files, schema, summary, refusal to mix runs, one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import pyarrow.parquet as pq
from typer.testing import CliRunner

from phononbench.cli import app
from phononbench.records import SUMMARY_SCHEMA, Col, Status, structures_schema, verdict_column
from phononbench.running.run_folder import read_structures

runner = CliRunner()


def test_run_writes_schema_rows_and_summary(copper_folder, data_dir, tmp_path):
    out = tmp_path / "out"
    inputs = [str(copper_folder), f"traps={data_dir / 'mattergpt_sample.csv'}"]
    result = runner.invoke(app, ["run", *inputs, "--out", str(out), "--model", "emt", "--threshold", "-0.1",
                                 "--threshold", "-0.001", "--max-atoms", "16", "--in-process"])
    assert result.exit_code == 0, result.output
    assert "metals" in result.output and "(all)" in result.output

    # structures: one row per input structure, the schema of records.py exactly
    parts = sorted((out / "structures").glob("part-*.parquet"))
    assert parts and not list((out / "structures").glob(".*partial"))
    assert pq.read_schema(parts[0]).remove_metadata() == structures_schema((-0.1, -0.001))
    rows = read_structures(out).set_index(Col.STRUCTURE_ID)
    assert len(rows) == 4 + 3
    statuses = rows[Col.STATUS].to_dict()
    assert statuses["metals/Cu_fcc.cif"] == Status.OK
    assert statuses["metals/Cu_bcc.cif"] == Status.OK
    assert statuses["metals/broken.cif"] == Status.INVALID_INPUT
    assert statuses["metals/Cu_fcc_conventional.cif"] == Status.DUPLICATE
    assert rows.loc["metals/Cu_fcc_conventional.cif", Col.DUPLICATE_OF] == "metals/Cu_fcc.cif"
    assert rows.loc["metals/Cu_fcc.cif", verdict_column(-0.1)] == True  # noqa: E712
    assert rows.loc["metals/Cu_bcc.cif", verdict_column(-0.1)] == False  # noqa: E712
    assert rows.loc["metals/Cu_fcc.cif", Col.RELAXED_CIF].startswith("# generated using pymatgen")
    # MatterGPT rows hold elements EMT does not know: they fail relaxation, with a reason, or are invalid
    traps = rows[rows[Col.GENERATOR] == "traps"]
    assert set(traps[Col.STATUS]) <= {Status.RELAX_FAILED, Status.INVALID_INPUT}
    assert traps[Col.ERROR].notna().all()

    # summary: per (generator, threshold); rate = stable / relaxed
    summary = pd.read_parquet(out / "summary.parquet")
    assert pq.read_schema(out / "summary.parquet").remove_metadata() == SUMMARY_SCHEMA
    metals = summary[(summary[Col.GENERATOR] == "metals") & (summary[Col.THRESHOLD_THZ] == -0.1)].iloc[0]
    assert (metals[Col.N_INPUT], metals[Col.N_VALID], metals[Col.N_UNIQUE], metals[Col.N_RELAXED],
            metals[Col.N_STABLE]) == (4, 3, 2, 2, 1)
    assert metals[Col.STABILITY_RATE] == 0.5 and metals[Col.STABILITY_RATE_UNIQUE] == 0.5
    assert set(summary[Col.GENERATOR]) == {"metals", "traps", "(all)"}

    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete"
    assert info["protocol"]["relax_fmax_ev_per_a"] == 0.005 and info["protocol"]["supercell"] == [2, 2, 2]
    assert info["potential"]["model"] == "emt" and info["versions"]["phonopy"]

    same = runner.invoke(app, ["run", *inputs, "--out", str(out), "--model", "emt", "--threshold", "-0.1",
                               "--threshold", "-0.001", "--max-atoms", "16"])
    assert same.exit_code == 0, same.output  # resumed: nothing left to do, no row twice
    assert sum(pq.read_metadata(p).num_rows for p in (out / "structures").glob("part-*.parquet")) == 7
    changed = runner.invoke(app, ["run", *inputs, "--out", str(out), "--model", "emt", "--threshold", "-0.05",
                                  "--max-atoms", "16"])
    assert changed.exit_code == 2 and "other settings (protocol.thresholds_thz)" in changed.output
    assert len(read_structures(out)) == 7  # nothing was mixed in

    table = runner.invoke(app, ["summarize", str(out)])
    assert table.exit_code == 0 and "metals" in table.output and "50.0%" in table.output


def test_errors_are_one_line(tmp_path):
    missing = runner.invoke(app, ["run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--model", "emt"])
    assert missing.exit_code == 2 and "input not found" in missing.output and "Traceback" not in missing.output
    unknown = runner.invoke(app, ["run", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "nope"])
    assert unknown.exit_code == 2 and "unknown model" in unknown.output
    not_a_run = runner.invoke(app, ["summarize", str(tmp_path)])
    assert not_a_run.exit_code == 2 and "run.json" in not_a_run.output


def test_serial_and_batched_engines_write_the_same_verdicts(copper_folder, tmp_path):
    columns = [Col.STRUCTURE_ID, Col.STATUS, verdict_column(-0.1), Col.N_DISPLACEMENTS, Col.RELAX_STEPS]
    tables = {}
    for engine in ("serial", "batched"):
        out = tmp_path / engine
        result = runner.invoke(app, ["run", str(copper_folder), "--out", str(out), "--model", "emt",
                                     "--engine", engine, "--batch-atoms", "4", "--chunk-size", "2", "--in-process"])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "run.json").read_text())["engine"] == engine
        tables[engine] = read_structures(out)[columns].sort_values(Col.STRUCTURE_ID).reset_index(drop=True)
    pd.testing.assert_frame_equal(tables["serial"], tables["batched"])
    bad = runner.invoke(app, ["run", str(copper_folder), "--out", str(tmp_path / "x"), "--model", "emt",
                              "--engine", "warp"])
    assert bad.exit_code == 2 and "unknown engine" in bad.output


def test_serial_engine_screens_like_the_batched_one_under_the_tiered_preset(tmp_path):
    """Every engine runs the one method: ``--engine serial --preset tiered`` screens cubic BaTiO3 out at
    Gamma exactly as the batched engine does, and sends silicon on to the supercell."""
    from ase.build import bulk
    from pymatgen.core import Lattice, Structure

    folder = tmp_path / "in" / "oxides"
    folder.mkdir(parents=True)
    Structure(Lattice.cubic(4.0), ["Ba", "Ti", "O", "O", "O"],
              [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]).to(filename=str(folder / "BaTiO3.cif"))
    bulk("Si", "diamond", a=5.45).write(folder / "Si.cif")
    columns = [Col.STRUCTURE_ID, Col.STATUS, Col.PHONON_METHOD, Col.N_DISPLACEMENTS, verdict_column(-0.1),
               verdict_column(-0.001)]
    tables = {}
    for engine in ("serial", "batched"):
        out = tmp_path / engine
        result = runner.invoke(app, ["run", str(folder), "--out", str(out), "--model", "chgnet", "--preset", "tiered",
                                     "--engine", engine, "--in-process"])
        assert result.exit_code == 0, result.output
        tables[engine] = read_structures(out).sort_values(Col.STRUCTURE_ID).reset_index(drop=True)
    serial, lockstep = tables["serial"], tables["batched"]
    pd.testing.assert_frame_equal(serial[columns], lockstep[columns])
    assert list(serial[Col.PHONON_METHOD]) == ["gamma_screen", "supercell"]  # BaTiO3 screened, Si not
    assert serial[Col.MIN_FREQUENCY_THZ].tolist() == pytest.approx(lockstep[Col.MIN_FREQUENCY_THZ].tolist(), abs=0.02)


def test_a_batched_call_that_falls_back_is_logged_in_the_run_log(copper_folder, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(copper_folder), "--out", str(out), "--in-process",
                                 "--model", "python:tests.potentials_for_tests:breaks_on_batches"])
    assert result.exit_code == 0, result.output
    statuses = read_structures(out).set_index(Col.STRUCTURE_ID)[Col.STATUS]
    assert statuses["metals/Cu_fcc.cif"] == Status.OK and statuses["metals/Cu_bcc.cif"] == Status.OK
    log = (out / "run.log").read_text()
    assert "retrying one structure at a time" in log and "batched inference broke on 2 structures" in log
    assert "Traceback" in log  # the exception itself, not just a word about it


def test_the_schema_is_the_row_definition():
    from phononbench.records import StructureResult

    row = StructureResult("g/x", generator="g", source="x", status=Status.OK).to_row((-0.1, -0.001))
    assert list(row) == structures_schema((-0.1, -0.001)).names
