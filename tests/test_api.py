"""The public API (phononbench.run, load, leaderboard, validate) runs the bundled demo and reads it back: the
same rows, summary and board the command line gives."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

import phononbench as pb
from phononbench.cli import app
from phononbench.records import Col, Status
from phononbench.running.run_folder import read_structures

REPO = Path(__file__).resolve().parents[1]


def test_the_public_api_runs_the_demo_and_reads_it_back(tmp_path):
    out = tmp_path / "demo"
    summary = pb.run(REPO / "data" / "demo", out, model="chgnet")
    results = pb.load(out)
    assert results.info["potential"]["model"] == "chgnet" and results.info["status"] == "complete"
    assert len(results.rows) == results.info["n_input"] == len(pd.read_parquet(out / "structures"))
    assert set(results.rows[Col.STATUS]) <= {str(s) for s in Status}
    assert (results.rows[Col.STATUS] == Status.OK).sum() > 10
    pooled = summary[summary[Col.POOLED]].reset_index(drop=True)
    assert pooled.equals(results.summary[results.summary[Col.POOLED]].reset_index(drop=True))
    assert list(results.rows[Col.STRUCTURE_ID]) == list(read_structures(out)[Col.STRUCTURE_ID])

    board = pb.leaderboard(out)
    printed = pd.read_csv(io.StringIO(CliRunner().invoke(app, ["leaderboard", str(out), "--format", "csv"]).output))
    assert list(board["generator"]) == list(printed["generator"])
    assert board["stability_rate"].round(6).tolist() == printed["stability_rate"].round(6).tolist()

    again = pb.run(REPO / "data" / "demo", out, model="chgnet")  # the same settings resume: nothing computed
    assert again.equals(summary) and pb.load(out).info["n_computed_this_time"] == 0
