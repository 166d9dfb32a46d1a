"""Reading a run: Wilson intervals, bootstrap convergence, breakdowns, leaderboard exports, band plots."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pandas as pd
import pytest
from typer.testing import CliRunner

from phononbench.reading import analysis
from phononbench.cli import app
from phononbench.records import Col
from phononbench.running.run_folder import read_structures

runner = CliRunner()


@pytest.mark.parametrize("k, n, low, high", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (41, 100, 0.3187, 0.5080)])
def test_wilson_interval_matches_reference_values(k, n, low, high):
    got = analysis.wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=1e-4)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, request):
    """Two EMT runs: metals A (fcc Cu, bcc Cu, fcc Al, fcc Ni) and metals B (bcc Cu only)."""
    from ase.build import bulk

    root = tmp_path_factory.mktemp("runs")
    for name, cells in {"A": {"Cu_fcc": bulk("Cu", "fcc", a=3.6), "Cu_bcc": bulk("Cu", "bcc", a=2.87),
                              "Al_fcc": bulk("Al", "fcc", a=4.05), "Ni_fcc": bulk("Ni", "fcc", a=3.52)},
                        "B": {"Cu_bcc": bulk("Cu", "bcc", a=2.87)}}.items():
        folder = root / "in" / f"metals{name}"
        folder.mkdir(parents=True)
        for stem, atoms in cells.items():
            atoms.write(folder / f"{stem}.cif")
        result = runner.invoke(app, ["run", str(folder), "--out", str(root / f"run{name}"), "--model", "emt",
                                     "--in-process"])
        assert result.exit_code == 0, result.output
    return root / "runA", root / "runB"


def test_rates_breakdowns_and_convergence(two_runs):
    rows = read_structures(two_runs[0])
    table = analysis.rates(rows, (-0.1,)).iloc[0]
    assert (table["n_relaxed"], table["n_stable"]) == (4, 3) and table["stability_rate"] == 0.75
    assert table["ci_low"] < 0.75 < table["ci_high"]
    by_element = analysis.breakdown(rows, "element", -0.1).set_index("element")
    assert by_element.loc["Cu", "stability_rate"] == 0.5 and by_element.loc["Al", "stability_rate"] == 1.0
    assert by_element.loc["Cu", "rate_minus_overall"] == pytest.approx(-0.25)
    by_system = analysis.breakdown(rows, Col.CRYSTAL_SYSTEM, -0.1)
    assert list(by_system[Col.CRYSTAL_SYSTEM]) == ["cubic"]
    curve = analysis.rate_vs_sample_size(rows, -0.1, sizes=[1, 4, 100], n_bootstrap=400)
    assert list(curve["sample_size"]) == [1, 4, 100]
    assert curve["mean"].iloc[-1] == pytest.approx(0.75, abs=0.03)
    widths = (curve["high"] - curve["low"]).tolist()
    assert widths[0] > widths[-1]  # the band narrows as the sample grows


def test_the_brillouin_zone_rates_are_the_ones_an_accurate_board_shows(two_runs, tmp_path):
    """With ``brillouin_zone`` the rates, breakdowns and convergence read the zone verdict, as the summary and
    leaderboard of an accurate run do; here fcc Ni is made stable on the path but not over the zone."""
    rows = read_structures(two_runs[0])
    ni = rows[Col.STRUCTURE_ID].str.contains("Ni_fcc")
    rows.loc[ni, "stable_bz_at_-0.1_thz"] = False
    assert analysis.brillouin_zone_headline({"protocol": {"headline_verdict": "brillouin_zone"}})
    assert not analysis.brillouin_zone_headline({"protocol": {}})  # runs from before the setting: the path
    path, zone = (analysis.rates(rows, (-0.1,), brillouin_zone=bz).iloc[0] for bz in (False, True))
    assert (path["n_stable"], zone["n_stable"]) == (3, 2) and zone["stability_rate"] == 0.5
    by_element = analysis.breakdown(rows, "element", -0.1, brillouin_zone=True).set_index("element")
    assert by_element.loc["Ni", "stability_rate"] == 0.0 and by_element.loc["Ni", "rate_minus_overall"] == -0.5
    curve = analysis.rate_vs_sample_size(rows, -0.1, sizes=[100], n_bootstrap=400, brillouin_zone=True)
    assert curve["mean"].iloc[-1] == pytest.approx(0.5, abs=0.03)
    lowest = analysis.min_frequencies(rows).set_index(Col.STRUCTURE_ID)  # the zone's, beside the path's
    done = rows[rows[Col.STATUS] == "ok"].set_index(Col.STRUCTURE_ID)
    assert lowest[Col.MIN_FREQUENCY_BZ_THZ].equals(done[Col.MIN_FREQUENCY_BZ_THZ])
    from phononbench.reading import plots

    assert plots.min_frequency_histogram(rows, tmp_path / "zone.png", (-0.1,), brillouin_zone=True).stat().st_size > 0


class _Table(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.in_body, self.images = 0, False, 0

    def handle_starttag(self, tag, attrs):
        self.in_body |= tag == "tbody"
        self.rows += tag == "tr" and self.in_body
        self.images += tag == "img" and dict(attrs).get("src", "").startswith("data:image/png;base64,")


def test_leaderboard_merges_runs_in_every_format(two_runs, tmp_path):
    md = runner.invoke(app, ["leaderboard", *map(str, two_runs)])
    assert md.exit_code == 0, md.output
    assert md.output.splitlines()[2].startswith("| 1 | metalsA | 75.0%")  # ranked by headline rate
    assert "| 2 | metalsB | 0.0%" in md.output

    as_json = json.loads(runner.invoke(app, ["leaderboard", *map(str, two_runs), "--format", "json"]).output)
    assert [r["generator"] for r in as_json["rows"]] == ["metalsA", "metalsB"]
    assert as_json["rows"][0]["n_stable"] == 3 and as_json["headline_threshold_thz"] == -0.1

    csv = tmp_path / "board.csv"
    runner.invoke(app, ["leaderboard", *map(str, two_runs), "--format", "csv", "--output", str(csv),
                        "--plots-dir", str(tmp_path / "plots")])
    assert list(pd.read_csv(csv)["rank"]) == [1, 2]
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == [
        "min_frequency_histogram.png", "rate_vs_sample_size.png", "stability_rates.png"]

    page = tmp_path / "board.html"
    result = runner.invoke(app, ["leaderboard", *map(str, two_runs), "--format", "html", "--output", str(page)])
    assert result.exit_code == 0, result.output
    parser = _Table()
    parser.feed(page.read_text())
    assert parser.rows == 2 and parser.images == 3  # one row per generator, three inlined plots
    assert "http" not in page.read_text()  # self-contained: nothing fetched


def test_markdown_leaderboard_keeps_one_row_per_generator_whatever_its_name(two_runs):
    """A generator's name comes from a folder or a table's column: a "|", a line break or raw HTML in it must
    not split the Markdown row (nor shift the rate into the generator's column)."""
    from phononbench.reading import ranking

    board, _, thresholds, bz, dips = ranking.board_of(list(two_runs))
    board[Col.GENERATOR] = ["Matter|Gen", "<td>DiffCSP\nMP-20"]
    rows = ranking.to_markdown(board, thresholds[0], bz, dips).splitlines()
    assert len(rows) == 4 and {row.replace("\\|", "").count("|") for row in rows} == {11}
    assert rows[2].startswith("| 1 | Matter\\|Gen | 75.0%") and rows[3].startswith("| 2 | \\<td\\>DiffCSP MP-20 | 0.0%")


def test_plot_bands_of_unstable_bcc_copper(two_runs, tmp_path):
    target = tmp_path / "bands.png"
    result = runner.invoke(app, ["plot-bands", str(two_runs[1]), "metalsB/Cu_bcc.cif", "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = runner.invoke(app, ["plot-bands", str(two_runs[1]), "nope"])
    assert missing.exit_code == 2 and "no structure" in missing.output


def test_bands_of_a_supercell_the_run_left_out_as_too_large_are_not_computed(tmp_path):
    """A structure whose supercell was over the run's atom cap (phonon_failed, saying so) is refused by
    plot-bands with one line, not computed at full size after all."""
    from ase.build import bulk

    folder = tmp_path / "in"
    folder.mkdir()
    bulk("Cu", "fcc", a=3.61).write(folder / "Cu.cif")
    out = tmp_path / "capped"
    result = runner.invoke(app, ["run", str(folder), "--out", str(out), "--model", "emt", "--in-process",
                                 "--preset", "accurate", "--max-supercell-atoms", "400"])
    assert result.exit_code == 0, result.output
    refused = runner.invoke(app, ["plot-bands", str(out), "in/Cu.cif", "--output", str(tmp_path / "bands.png")])
    assert refused.exit_code == 2 and "(15zb-sym) has 512 atoms, above the cap of 400" in refused.output
    assert "bands are not computed" in refused.output and not (tmp_path / "bands.png").exists()


def test_plot_labels_are_one_short_line_shown_literally():
    """A 10 kB or multi-line generator name would push the plot out of its figure: cut, on one line; "$" literal."""
    from phononbench.reading.plots import LABEL_LENGTH, label

    assert len(label("L" * 10_000)) == LABEL_LENGTH and label("Matter\nGen") == "Matter Gen"
    qualified = "mattergen_alex_mp20_guided_by_chemistry (emt, published, code 335147d9)"
    assert label(qualified).endswith("code 335147d9)") and label(qualified).startswith("mattergen_alex")
    assert label("a$b") == r"a\$b"
