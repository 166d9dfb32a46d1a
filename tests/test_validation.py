"""Validation against DFT labels: the validate command on a shipped labelled subset, with CHGNet."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from phononbench.cli import app


def test_validate_reports_scores_and_confusion_matrix(data_dir, tmp_path):
    subset = data_dir / "phonondb_subset"
    out = tmp_path / "validate"
    result = CliRunner().invoke(app, ["validate", "--labels", str(subset / "labels.csv"), "--structures",
                                      str(subset / "poscar_unitcell"), "--model", "chgnet", "--out", str(out),
                                      "--in-process"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "0.750" in result.output
    report = json.loads((out / "validation.json").read_text())
    assert report["n_scored"] == 4 and report["status_counts"] == {"ok": 4}
    headline = report["-0.1"]
    # PbHfO3 unstable (true negative), CaO and BaFCl stable (true positives), RbH missed (false negative)
    assert headline["confusion"] == {"tp": 2, "fp": 0, "fn": 1, "tn": 1}
    assert headline["accuracy"] == 0.75 and headline["precision"] == 1.0 and headline["recall"] == 2 / 3
    assert (out / "validation_scatter.png").stat().st_size > 1000


def test_validate_refuses_bad_labels(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("mp_id,label\nmp-1,maybe\n")
    result = CliRunner().invoke(app, ["validate", "--labels", str(bad), "--structures", str(tmp_path),
                                      "--model", "emt", "--in-process"])
    assert result.exit_code == 2 and "stable' or 'unstable'" in result.output
