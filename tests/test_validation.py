"""Validation against DFT labels: the validate command on a shipped labelled subset, with CHGNet."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from phononbench.cli import app


def test_validate_reports_scores_and_confusion_matrix(data_dir, tmp_path):
    """The command on a real run (CHGNet, 4 labelled materials): its confusion matrix is the one the run's own
    rows and the labels give, whatever CHGNet says, and the counts add up."""
    import pandas as pd

    from phononbench.records import is_stable
    from phononbench.running.run_folder import read_structures
    from phononbench.reading.validation import load_labels, structure_key

    subset = data_dir / "phonondb_subset"
    out = tmp_path / "validate"
    result = CliRunner().invoke(app, ["validate", "--labels", str(subset / "labels.csv"), "--structures",
                                      str(subset / "poscar_unitcell"), "--model", "chgnet", "--out", str(out),
                                      "--in-process"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "validation.json").read_text())
    rows = read_structures(out)
    labels = load_labels(subset / "labels.csv").set_index("label_id")["label"]
    dft_stable = pd.Series([labels[structure_key(s)] == "stable" for s in rows["source"]])
    predicted = is_stable(rows, -0.1).reset_index(drop=True)
    expected = {"tp": int((predicted & dft_stable).sum()), "fp": int((predicted & ~dft_stable).sum()),
                "fn": int((~predicted & dft_stable).sum()), "tn": int((~predicted & ~dft_stable).sum())}
    headline = report["-0.1"]
    assert report["n_scored"] == len(rows) == 4 and sum(headline["confusion"].values()) == 4
    assert headline["confusion"] == expected
    assert headline["accuracy"] == (expected["tp"] + expected["tn"]) / 4
    assert f"{headline['accuracy']:.3f}" in result.output
    assert (out / "validation_scatter.png").stat().st_size > 1000

    # a run still going is scored on its rows so far, and every table says so
    import phononbench as pb
    from phononbench.reading.validation import to_markdown

    assert pb.validate(subset / "labels.csv", out)["complete"].all()
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**info, "status": "running"}))
    board = pb.validate(subset / "labels.csv", out)
    assert not board["complete"].any() and set(board["n_inputs"]) == {4}
    assert "| validate (unfinished: 4 inputs) |" in to_markdown(board)
    again = CliRunner().invoke(app, ["validate", "--labels", str(subset / "labels.csv"), "--runs", str(out)])
    assert again.exit_code == 0 and "warning: validate has not finished" in again.output

    # runs of the same settings are also scored together, each material once; other settings are not pooled
    import shutil

    shutil.copytree(out, tmp_path / "copy")
    board = pb.validate(subset / "labels.csv", [out, tmp_path / "copy"])
    pooled, alone = board[board["run"] == "pooled: validate + copy"], board[board["run"] == "validate"]
    columns = ["verdict", "threshold_thz", "n", "tp", "fp", "fn", "tn"]
    assert len(pooled) == len(alone) > 0 and set(pooled["n"]) == {4} and set(pooled["n_inputs"]) == {4}
    assert pooled[columns].reset_index(drop=True).equals(alone[columns].reset_index(drop=True))
    info = json.loads((tmp_path / "copy" / "run.json").read_text())
    info["protocol"]["displacement_a"] = 0.03
    (tmp_path / "copy" / "run.json").write_text(json.dumps(info))
    assert not pb.validate(subset / "labels.csv", [out, tmp_path / "copy"])["run"].str.startswith("pooled").any()

    # materials whose verdict differs between two settings: named, with both frequencies and the q-point
    from phononbench.records import Col, bz_verdict_column, verdict_column
    from phononbench.reading import validation

    runs = validation.read_runs([out, tmp_path / "copy"])
    assert validation.differing_verdicts(runs, load_labels(subset / "labels.csv")).empty  # same rows
    info, other = runs["copy"]
    k = other.index[0]
    flipped = not bool(other.loc[k, bz_verdict_column(-0.1)])
    frequency = 0.5 if flipped else -3.25  # the whole zone's, as a protocol that counts acoustic dips records it
    other.loc[k, [Col.MIN_FREQUENCY_BZ_THZ, Col.MIN_FREQUENCY_BZ_WITH_ACOUSTIC_DIPS_THZ, bz_verdict_column(-0.1)]] = [
        frequency, frequency, flipped]
    changes = validation.differing_verdicts(runs, load_labels(subset / "labels.csv"), "brillouin_zone", -0.1)
    assert changes["material"].tolist() == [structure_key(other.loc[k, "source"])]
    assert [c for c in changes.columns if c.startswith("chgnet 2x2x2 (published) [")] == [
        "chgnet 2x2x2 (published) [validate]", "chgnet 2x2x2 (published) [copy]"]  # alike in words: runs named
    text = validation.differing_markdown(runs, load_labels(subset / "labels.csv"), ("brillouin_zone",))
    assert ("0.500 THz" if flipped else "-3.250 THz") in text and f"{rows.loc[k, Col.MIN_FREQUENCY_BZ_THZ]:.3f} THz" in text
    assert " at (" in text and ("stable (" if flipped else "unstable (") in text

    # the same folder twice (or through a link) is one run; a run with no rows yet is left out, saying so
    (tmp_path / "link").symlink_to(out)
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "run.json").write_text(json.dumps({"stage": "run", "status": "running"}))
    left_out = []
    assert list(validation.read_runs([out, tmp_path / "link", str(out) + "/", tmp_path / "started"], left_out)) == [
        "validate"] and left_out == [f"{tmp_path / 'started'} has no rows yet: left out"]

    # pooling: a computed row is taken before another run's failed row of the same material, whatever the
    # order; a verdict that one run's rows predate is not pooled; a threshold a setting lacks is not compared
    same_info, first = runs["validate"]
    failed = first.copy()
    called_stable = first.index[is_stable(first, -0.1)]
    assert len(called_stable) > 0  # a failure there changes the counts: the test can fail
    failed.loc[called_stable[0], Col.STATUS] = "worker_died"
    labels_table = load_labels(subset / "labels.csv")
    for order in ((("a", failed), ("b", first)), (("b", first), ("a", failed))):
        board = validation.table({name: (same_info, frame) for name, frame in order}, labels_table)
        one = board[board["run"].str.startswith("pooled") & (board["verdict"] == "path") & (board["threshold_thz"] == -0.1)]
        assert one[["tp", "fp", "fn", "tn"]].iloc[0].to_dict() == expected
    older = first.drop(columns=[Col.MIN_FREQUENCY_COMMENSURATE_THZ, Col.MIN_FREQUENCY_BEYOND_ACOUSTIC_DIPS_THZ])
    board = validation.table({"a": (same_info, first), "b": (same_info, older)}, labels_table)
    assert set(board.loc[board["run"].str.startswith("pooled"), "verdict"]) == {"path", "brillouin_zone"}
    # a run resumed across a new verdict's column: its older rows have none, so the verdict is left out rather
    # than those rows counted unstable
    assert set(validation.table({"a": (same_info, first)}, labels_table)["verdict"]) == {
        "path", "brillouin_zone", "commensurate", "beyond_acoustic_dips"}
    mixed = first.copy()
    mixed.loc[mixed.index[mixed[Col.STATUS] == "ok"][0], Col.MIN_FREQUENCY_BEYOND_ACOUSTIC_DIPS_THZ] = float("nan")
    assert "beyond_acoustic_dips" not in set(validation.table({"a": (same_info, mixed)}, labels_table)["verdict"])
    # leaving modes out can only raise the lowest frequency
    computed = first[first[Col.STATUS] == "ok"]
    assert (computed[Col.MIN_FREQUENCY_BEYOND_ACOUSTIC_DIPS_THZ] >= computed[Col.MIN_FREQUENCY_BZ_THZ]).all()
    other_threshold = {**info, "protocol": {**info["protocol"], "thresholds_thz": [-0.05]}}
    at_other = other.rename(columns={verdict_column(-0.1): verdict_column(-0.05),
                                     bz_verdict_column(-0.1): bz_verdict_column(-0.05)})
    pair = {"a": (same_info, first), "b": (other_threshold, at_other)}
    # the path verdict exists at the run's thresholds alone: a run without -0.1 is left out
    assert validation.differing_verdicts(pair, labels_table, "path", -0.1).empty
    # the Brillouin zone's is read off its lowest frequency, at any threshold: the flipped material is named
    assert validation.differing_verdicts(pair, labels_table, "brillouin_zone", -0.1)["material"].tolist() == [
        structure_key(other.loc[k, "source"])]

    # every scored material, one row per setting, with what the table counts: its right verdicts are TP + TN
    table_file = tmp_path / "per_material.csv"
    written = CliRunner().invoke(app, ["validate", "--labels", str(subset / "labels.csv"), "--runs", str(out),
                                       "--per-material", str(table_file)])
    assert written.exit_code == 0, written.output
    each = pd.read_csv(table_file)
    assert sorted(each["material"]) == sorted(rows["source"].map(structure_key)) and set(each["setting"]) == {
        "chgnet 2x2x2 (published)"}
    assert each["right_path_-0.1"].sum() == expected["tp"] + expected["tn"]
    assert (each["stable_path_-0.1"] == (each["min_frequency_thz"] >= -0.1) & (each["status"] == "ok")).all()
    assert each["min_frequency_bz_qpoint"].str.startswith("[").all()
    two = validation.per_material({"a": (same_info, first), "b": (other_threshold, at_other)}, labels_table)
    assert len(two) == 2 * len(rows) and "right_brillouin_zone_-0.05" in two and "right_brillouin_zone_-0.1" in two

    # two files of one id in a run count twice in its row and in the pool, and the evidence says so: the CSV
    # and the table agree; a material is taken from one run of a pool, with the run named
    second_file = first.iloc[[0]].assign(**{Col.STRUCTURE_ID: "again", Col.SOURCE: first.iloc[0][Col.SOURCE] + ".cif"})
    doubled = pd.concat([first, second_file], ignore_index=True)
    pool = {"a": (same_info, doubled), "b": (same_info, first)}
    board = validation.table(pool, labels_table)
    counts = board[(board["verdict"] == "path") & (board["threshold_thz"] == -0.1)].set_index("run")["n"]
    assert counts.to_dict() == {"a": len(rows) + 1, "b": len(rows), "pooled: a + b": len(rows) + 1}
    each = validation.per_material(pool, labels_table)
    assert len(each) == len(rows) + 1 and set(each["run"]) == {"a"} and each["structure_id"].is_unique

    # a labelled duplicate takes its original's verdict, also in rows from before the Brillouin-zone verdict
    duplicate = first.iloc[[0]].assign(**{Col.STRUCTURE_ID: "dup", Col.STATUS: "duplicate",
                                         Col.DUPLICATE_OF: first.iloc[0][Col.STRUCTURE_ID]})
    older = pd.concat([first, duplicate], ignore_index=True).drop(
        columns=[Col.MIN_FREQUENCY_BZ_THZ, Col.MIN_FREQUENCY_BZ_QPOINT, Col.MIN_FREQUENCY_BZ_WITH_ACOUSTIC_DIPS_THZ,
                 *(bz_verdict_column(t) for t in same_info["protocol"]["thresholds_thz"])])
    each = validation.per_material({"old": (same_info, older)}, labels_table).set_index("structure_id")
    assert each.loc["dup", "duplicate_of"] == first.iloc[0][Col.STRUCTURE_ID]
    assert each.loc["dup", "stable_path_-0.1"] == each.loc[first.iloc[0][Col.STRUCTURE_ID], "stable_path_-0.1"]
    assert not any(c.startswith("stable_brillouin_zone") for c in each.columns)


def test_scores_of_a_hand_made_verdict_table():
    """7 materials: 4 DFT-stable (3 called stable, 1 not), 3 DFT-unstable (1 called stable, 2 not)."""
    import pandas as pd
    import pytest

    from phononbench.reading.validation import scores

    predicted = pd.Series([True, True, True, False, True, False, False])
    dft = pd.Series([True, True, True, True, False, False, False])
    got = scores(predicted, dft)
    assert got["confusion"] == {"tp": 3, "fp": 1, "fn": 1, "tn": 2} and got["n"] == 7
    assert got["accuracy"] == pytest.approx(5 / 7)
    assert got["precision"] == pytest.approx(3 / 4) and got["recall"] == pytest.approx(3 / 4)
    assert got["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # stable as the positive class
    assert got["f1_unstable"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # "has imaginary modes" positive
    assert got["false_unstable_rate"] == pytest.approx(1 / 4)  # DFT-stable called unstable
    low, high = got["accuracy_ci"]
    assert low < 5 / 7 < high
    flipped = scores(~predicted, dft)  # every verdict wrong way round
    assert flipped["confusion"] == {"tp": 1, "fp": 2, "fn": 3, "tn": 1}


def test_validate_refuses_bad_labels(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("mp_id,label\nmp-1,maybe\n")
    result = CliRunner().invoke(app, ["validate", "--labels", str(bad), "--structures", str(tmp_path),
                                      "--model", "emt", "--in-process"])
    assert result.exit_code == 2 and "stable' or 'unstable'" in result.output
    good = tmp_path / "good.csv"
    good.write_text("mp_id,label\nmp-1,stable\n")
    for option, path, why in (("--markdown", tmp_path / "missing" / "table.md", "not a file in an existing, writable folder"),
                              ("--per-material", tmp_path, "not a file in an existing, writable folder"),
                              ("--per-material", good, "the same file as --labels or another report"),
                              ("--markdown", tmp_path / "out" / "run.json", f"inside the run folder {tmp_path / 'out'}")):
        result = CliRunner().invoke(app, ["validate", "--labels", str(good), "--structures", str(tmp_path),
                                          "--model", "emt", "--in-process", "--out", str(tmp_path / "out"),
                                          option, str(path)])
        assert result.exit_code == 2 and f"{option} {path}: {why}" in " ".join(result.output.split()), result.output
        assert not (tmp_path / "out").exists()  # refused before any work
    twice = tmp_path / "twice.csv"
    twice.write_text("mp_id,label\nmp-1,stable\nmp-1,unstable\n")
    result = CliRunner().invoke(app, ["validate", "--labels", str(twice), "--runs", str(tmp_path)])
    assert result.exit_code == 2 and "each id once; mp-1 appears more than once" in " ".join(result.output.split())


def test_labelled_polymorphs_that_structure_matcher_calls_one_crystal_are_scored_apart(data_dir, tmp_path):
    """KNbO3 R3m (DFT-stable) and P4mm (DFT-unstable) match at StructureMatcher's default tolerances: validate
    computes every labelled file (no dedup), so neither is a duplicate taking the other's verdict. The folder
    resumes as such, and a benchmark run (which deduplicates) is refused in it."""
    import shutil

    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from phononbench.running.run_folder import read_structures

    source = data_dir / "phonondb_knbo3"
    folder = tmp_path / "in"
    shutil.copytree(source / "poscar_unitcell", folder)
    r3m, p4mm = (Structure.from_file(folder / f"mp-{k}.POSCAR-unitcell") for k in (7375, 4342))
    assert StructureMatcher().fit(r3m, p4mm)  # one crystal to the benchmark's dedup
    out = tmp_path / "out"
    command = ["validate", "--labels", str(source / "labels.csv"), "--structures", str(folder), "--model", "emt",
               "--out", str(out), "--in-process"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    rows = read_structures(out).set_index("structure_id")
    assert len(rows) == 2 and "duplicate" not in set(rows["status"]), rows["status"]
    # each computed, each failing with its own reason (EMT has no K), not the failed one's wreck of a calculator
    assert rows["error"].str.contains("No EMT-potential for K").all(), rows["error"]
    report = json.loads((out / "validation.json").read_text())
    assert report["n_scored"] == 2 and report["-0.1"]["confusion"] == {"tp": 0, "fp": 0, "fn": 1, "tn": 1}
    assert json.loads((out / "run.json").read_text())["deduplicate"] is False
    again = CliRunner().invoke(app, command)  # resumes: the same rows
    assert again.exit_code == 0 and read_structures(out).set_index("structure_id").equals(rows)
    run = CliRunner().invoke(app, ["run", f"validation={folder}", "--out", str(out), "--model", "emt", "--in-process"])
    assert run.exit_code != 0 and "other settings (deduplicate)" in run.output, run.output


def test_validate_names_an_id_that_several_files_answer_to_and_reads_ids_under_a_folder_with_a_hash(tmp_path):
    """Two files of one id (mp-1.cif, mp-1.POSCAR) are both scored, and validate says so; a '#' in the folder's
    name (several-structure files name theirs file#k) does not change the ids."""
    from ase.build import bulk
    from ase.io import write

    folder = tmp_path / "set#1"
    folder.mkdir()
    write(folder / "mp-1.cif", bulk("Cu", "fcc", a=3.61))
    write(folder / "mp-1.POSCAR", bulk("Cu", "fcc", a=3.61, cubic=True), format="vasp")
    write(folder / "mp-2.cif", bulk("Al", "fcc", a=4.05))
    (tmp_path / "labels.csv").write_text("mp_id,label\nmp-1,stable\nmp-2,stable\nmp-3,unstable\n")
    result = CliRunner().invoke(app, ["validate", "--labels", str(tmp_path / "labels.csv"), "--structures", str(folder),
                                      "--model", "emt", "--out", str(tmp_path / "out"), "--in-process"])
    assert result.exit_code == 0, result.output
    assert "1 id(s) answer to more than one structure, each scored (e.g. mp-1: validation/mp-1.POSCAR, " \
        "validation/mp-1.cif)" in result.stderr, result.stderr
    assert f"warning: 1 labelled id(s) have no structure under {folder}, not scored (e.g. mp-3)" in result.stderr
    report = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert (report["n_labelled"], report["n_scored"], report["n_labels_scored"]) == (3, 3, 2)

    # a benchmark run of the same folder deduplicates (the cubic copper is the primitive's duplicate): not pooled
    # with the validation, whose every structure has its own verdict, on either board
    import phononbench as pb

    run = CliRunner().invoke(app, ["run", f"validation={folder}", "--out", str(tmp_path / "run"), "--model", "emt",
                                   "--in-process"])
    assert run.exit_code == 0, run.output
    board = pb.validate(tmp_path / "labels.csv", [tmp_path / "run", tmp_path / "out"])
    assert not board["run"].str.startswith("pooled").any(), board["run"].unique()
    entries = pb.leaderboard([tmp_path / "run", tmp_path / "out"])
    assert sorted(entries["n_unique"]) == [2, 3] and entries["protocol"].str.endswith("no dedup").sum() == 1


def test_validate_takes_the_supercell_atom_cap(data_dir, tmp_path):
    """--max-supercell-atoms reaches validate's protocol: a structure above it is phonon_failed, saying so,
    and scored as predicted unstable (a 20 A run of phonondb_dev has supercells above 1000 atoms)."""
    import shutil

    subset = data_dir / "phonondb_subset"
    (tmp_path / "in").mkdir()
    shutil.copy(subset / "poscar_unitcell" / "mp-2605.POSCAR-unitcell", tmp_path / "in")
    out = tmp_path / "capped"
    result = CliRunner().invoke(app, ["validate", "--labels", str(subset / "labels.csv"), "--structures",
                                      str(tmp_path / "in"), "--model", "chgnet", "--max-supercell-atoms", "16",
                                      "--out", str(out), "--in-process"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["protocol"]["max_supercell_atoms"] == 16
    from phononbench.running.run_folder import read_structures

    row = read_structures(out).iloc[0]
    assert row["status"] == "phonon_failed" and "64 atoms, above the cap of 16" in row["error"]
    report = json.loads((out / "validation.json").read_text())
    assert report["-0.1"]["confusion"] == {"tp": 0, "fp": 0, "fn": 1, "tn": 0}  # CaO is DFT-stable


def test_a_supercell_label_says_how_its_force_constants_were_made():
    """Runs of the accurate preset from before and after it dropped the half-width cut, and before and after it
    subtracted residual forces, read apart in tables; so does a zone-boundary supercell."""
    from phononbench.reading import validation
    from phononbench.settings import ACCURATE, PUBLISHED

    assert validation.supercell_label(PUBLISHED.to_dict()) == "2x2x2"
    assert validation.supercell_label(ACCURATE.to_dict()) == ">=15 A zb sym -residual"
    plain = {**ACCURATE.to_dict(), "subtract_residual_forces": False, "supercell_zone_boundary": False,
             "supercell_keeps_rotations": False}
    assert validation.supercell_label(plain) == ">=15 A"
    assert validation.supercell_label({**plain, "force_constants_cutoff_at_half_width": True}) == ">=15 A cut"
    assert validation.supercell_label({**plain, "subtract_residual_forces": True}) == ">=15 A -residual"
    assert validation.supercell_label(ACCURATE.with_supercell("12zb").to_dict()).startswith(">=12 A zb")
    assert validation.supercell_label({}) == validation.supercell_label({"supercell": None}) == "?"


def test_validation_union_replaces_materials_only_with_the_same_potential_and_dft_labels(capsys, tmp_path):
    """The CHGNet 15zb table with the 43 materials run again at 15zb-sym gives the documented headline (87 of
    120 right at -0.1 THz); another potential's CSV or a CSV with other DFT labels is refused."""
    import sys
    from pathlib import Path

    import pandas as pd
    import pytest

    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    from validation_union import main

    docs = Path(__file__).parent.parent / "docs" / "validation"
    main(["--per-material", str(docs / "chgnet-15zb.csv"), "--instead", str(docs / "chgnet-15zb-sym-43.csv")])
    captured = capsys.readouterr()
    headline = next(s for s in json.loads(captured.out.splitlines()[-1])["scores"]
                    if s["verdict"] == "beyond_acoustic_dips" and s["threshold_thz"] == -0.1)
    assert headline["tp"] + headline["tn"] == 87 and "43 materials" in captured.err
    with pytest.raises(SystemExit, match="another potential"):
        main(["--per-material", str(docs / "chgnet-15zb.csv"), "--instead", str(docs / "sevennet-0-15zb.csv")])
    with pytest.raises(SystemExit, match="not a CSV of validate"):
        main(["--per-material", str(docs / "chgnet-15zb.csv"), "--instead", str(docs / "sevennet-l3i5-15zb-fits.csv")])
    named = pd.read_csv(docs / "sevennet-l3i5-15zb-fits.csv").assign(potential="sevennet-l3i5")
    named.to_csv(tmp_path / "fits.csv", index=False)  # refits name their potential (since the column exists)
    with pytest.raises(SystemExit, match="several potentials in one table \\(chgnet, sevennet-l3i5\\)"):
        main(["--per-material", str(docs / "chgnet-15zb.csv"), "--fits", str(tmp_path / "fits.csv")])
    main(["--per-material", str(docs / "sevennet-l3i5-15zb-first69.csv"), "--fits", str(tmp_path / "fits.csv")])
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n"] == 120
    relabelled = pd.read_csv(docs / "chgnet-15zb-sym-43.csv").head(2).assign(dft="unstable")
    relabelled.to_csv(tmp_path / "relabelled.csv", index=False)
    with pytest.raises(SystemExit, match="another DFT label for mp-1190"):
        main(["--per-material", str(docs / "chgnet-15zb.csv"), "--instead", str(tmp_path / "relabelled.csv")])


def test_the_validation_table_is_built_from_the_committed_csvs_and_says_what_is_not_measured(capsys, tmp_path):
    """docs/validation/table.toml's SevenNet-l3i5 `accurate` row gives the documented headline (110 of 120 right at
    -0.1 THz, 5 DFT-stable called unstable), the materials whose verdict changes with the supercell come with their
    frequencies, and a row whose CSV is not there is listed as not measured, not scored."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    from validation_table import main

    docs = Path(__file__).parent.parent / "docs" / "validation"
    recipe = tmp_path / "table.toml"
    recipe.write_text((docs / "table.toml").read_text().replace('"sevennet-', f'"{docs}/sevennet-')
                      + '\n[[row]]\npotential = "SevenNet-l3i5"\nsupercell = "30zb-sym"\nper_material = ["absent.csv"]\n')
    main([str(recipe), "--markdown", str(tmp_path / "table.md")])
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    accurate = next(r for r in result["rows"] if r["potential"] == "SevenNet-l3i5" and r["supercell"] == "15zb-sym")
    headline = next(s for s in accurate["scores"] if s["verdict"] == "beyond_acoustic_dips" and s["threshold_thz"] == -0.1)
    assert (headline["tp"] + headline["tn"], headline["fn"]) == (110, 5)
    assert headline["false_unstable"] == ["Cs2TeI6 (mp-540957)", "LaBO3 (mp-7492)", "Li2CeN2 (mp-8181)",
                                          "SrBiClO2 (mp-547244)", "ThCl4 (mp-567431)"]  # the documented five
    markdown = (tmp_path / "table.md").read_text()
    assert "| SevenNet-l3i5 | 30zb-sym | not measured (no absent.csv) |" in markdown
    assert ("| TbCl2F (mp-560119) | stable | -0.1, -0.001 | -6.174 THz at (0, 0, 0): unstable (wrong) / unstable (wrong) |"
            in markdown)
    assert "| AgI (mp-567809) | stable |" in markdown and "-0.009 THz at (0, 0.179, -0): stable (right) / unstable (wrong) |" in markdown

    import pytest

    typo = tmp_path / "typo.toml"  # a misspelt instead would score the 15zb rows under the 15zb-sym name
    typo.write_text(f'[[row]]\npotential = "CHGNet"\nsupercell = "15zb-sym"\nper_material = ["{docs}/chgnet-15zb.csv"]\n'
                    f'instaed = ["{docs}/chgnet-15zb-sym-43.csv"]\n')
    with pytest.raises(SystemExit, match="unknown keys instaed"):
        main([str(typo)])
    twice = tmp_path / "twice.toml"  # two rows of one name: the second would hide the first's changes
    twice.write_text(2 * f'[[row]]\npotential = "CHGNet"\nsupercell = "15zb"\nper_material = ["{docs}/chgnet-15zb.csv"]\n')
    with pytest.raises(SystemExit, match="CHGNet 15zb: more than one row"):
        main([str(twice)])


def test_verdict_changes_names_each_change_once_with_digits_enough_to_see_the_threshold():
    """The materials whose verdict changes between settings: at the thresholds where it changes, a frequency that
    three decimals would round onto the threshold's other side printed in full, a missing verdict unstable, and a
    material given twice in one setting, or labelled two ways, refused rather than compared."""
    import pandas as pd
    import pytest

    from phononbench.reading.validation import CHANGES_AT, stable_column, verdict_changes

    def setting(frequency, dft="stable", status="ok", material="mp-1"):
        return pd.DataFrame({"formula": ["ZnSe"], "dft": [dft], "status": [status], "frequency": [frequency],
                             "qpoint": ["[0.5 0.  0. ]"], **{stable_column(t): [status == "ok" and frequency >= t]
                                                            for t in (-0.1, -0.001)}}, index=[material])

    changes = verdict_changes({"12 A": setting(-0.0012), "15 A": setting(0.0), "20 A": setting(0.0, material="mp-2")},
                              iter((-0.1, -0.001)))
    assert changes.to_dict("records") == [{
        "material": "mp-1", "formula": "ZnSe", "dft": "stable", CHANGES_AT: "-0.001",
        "12 A": "-0.001200 THz at (0.5, 0, 0): stable (right) / unstable (wrong)",
        "15 A": "0.000 THz at (0.5, 0, 0): stable (right) / stable (right)", "20 A": "not computed"}]
    failed = setting(float("nan"), status="phonon_failed")
    assert verdict_changes({"a": failed, "b": setting(0.0)}, (-0.1,))["a"].tolist() == ["phonon_failed: unstable (wrong)"]
    with pytest.raises(ValueError, match="labelled stable and unstable"):
        verdict_changes({"a": setting(-0.05), "b": setting(-0.2, dft="unstable")}, (-0.1,))
    with pytest.raises(ValueError, match="mp-1 more than once"):
        verdict_changes({"a": pd.concat([setting(-0.05), setting(0.1)]), "b": setting(-0.2)}, (-0.1,))
