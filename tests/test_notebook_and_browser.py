"""The analysis notebook runs on a real run folder; the HTML leaderboard loads and sorts in a real browser."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from typer.testing import CliRunner

from browser import chromium
from phononbench.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from ase.build import bulk

    root = tmp_path_factory.mktemp("nb")
    for generator, cells in {"gen_fcc": [bulk("Cu", "fcc", a=3.6), bulk("Al", "fcc", a=4.05)],
                             "gen_bcc": [bulk("Cu", "bcc", a=2.87), bulk("Ni", "fcc", a=3.52)]}.items():
        folder = root / "in" / generator
        folder.mkdir(parents=True)
        for k, atoms in enumerate(cells):
            atoms.write(folder / f"s{k}.cif")
    result = runner.invoke(app, ["run", str(root / "in"), "--out", str(root / "run"), "--model", "emt", "--in-process"])
    assert result.exit_code == 0, result.output
    return root / "run"


def test_analysis_notebook_executes_on_a_run(small_run, tmp_path, monkeypatch):
    monkeypatch.setenv("PHONONBENCH_RUN", str(small_run))
    notebook = nbformat.read(REPO / "notebooks" / "per_generator_analysis.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                      for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "emt published 4 structures" in outputs
    assert "gen_fcc" in outputs and "gen_bcc" in outputs
    assert not any(o.get("output_type") == "error" for c in notebook.cells if c.cell_type == "code" for o in c.outputs)


def _dom_after_load(page: Path, tmp_path: Path) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=2000", "--dump-dom"]
    done = subprocess.run([chromium(), *flags, page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    return done.stdout


def test_html_leaderboard_loads_and_sorts_in_headless_chromium(small_run, tmp_path):
    page = tmp_path / "board.html"
    result = runner.invoke(app, ["leaderboard", str(small_run), "--format", "html", "--output", str(page)])
    assert result.exit_code == 0, result.output
    dom = _dom_after_load(page, tmp_path)
    body = dom.split("<tbody>")[1].split("</tbody>")[0]
    generators = re.findall(r"<td data-value=\"(gen_\w+)\">", body)
    assert generators == ["gen_fcc", "gen_bcc"]  # one row per generator, best first

    # click the "generator" header once (ascending) in the browser and read the table back
    clicked = tmp_path / "clicked.html"
    clicked.write_text(page.read_text().replace("</body>", "<script>document.querySelectorAll('th')[1].click()</script></body>"))
    body = _dom_after_load(clicked, tmp_path).split("<tbody>")[1].split("</tbody>")[0]
    assert re.findall(r"<td data-value=\"(gen_\w+)\">", body) == ["gen_bcc", "gen_fcc"]
