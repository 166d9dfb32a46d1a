"""`phononbench serve` in a real headless Chromium: the structure table filters, a structure page shows its band
structures, an uploaded fcc Cu is stable and bcc Cu unstable under EMT, a file that is not a structure starts
nothing; and `phononbench export` gives exactly the rows marked stable."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import psutil
import pytest
from typer.testing import CliRunner

from browser import Browser
from phononbench.cli import app
from phononbench.records import Col, is_relaxed, is_stable, is_stable_bz
from phononbench.reading.report import percent
from phononbench.running.run_folder import read_structures

runner = CliRunner()


@pytest.fixture(scope="module")
def emt_run(tmp_path_factory):
    """Two generators under EMT: fcc Cu, fcc Al, bcc Cu, fcc Ni, a file that is not a crystal."""
    from ase.build import bulk

    root = tmp_path_factory.mktemp("web")
    for generator, cells in {"gen_fcc": {"Cu_fcc": bulk("Cu", "fcc", a=3.6), "Al_fcc": bulk("Al", "fcc", a=4.05)},
                             "gen_bcc": {"Cu_bcc": bulk("Cu", "bcc", a=2.87), "Ni_fcc": bulk("Ni", "fcc", a=3.52)}}.items():
        folder = root / "in" / generator
        folder.mkdir(parents=True)
        for name, atoms in cells.items():
            atoms.write(folder / f"{name}.cif")
    (root / "in" / "gen_bcc" / "broken.cif").write_text("data_broken\n_cell_length_a 3\n")
    result = runner.invoke(app, ["run", str(root / "in"), "--out", str(root / "run"), "--model", "emt", "--in-process"])
    assert result.exit_code == 0, result.output
    return root / "run"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(emt_run, tmp_path_factory):
    """`phononbench serve RUN` as a user starts it (default host), with small upload and atom limits."""
    checks = tmp_path_factory.mktemp("checks")
    process, url = _serve(emt_run, checks, "--max-upload-kb", "8", "--max-atoms", "8")
    yield {"url": url, "checks": checks, "process": process, "run": emt_run}
    process.terminate()
    process.wait(20)


def _serve(run: Path, checks: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """`phononbench serve RUN` in a process of its own, once it answers."""
    port = _free_port()
    log = open(Path(checks).parent / f"serve-{port}.log", "w")  # a file, never a pipe nobody reads: a full pipe blocks the app
    process = subprocess.Popen(
        [sys.executable, "-m", "phononbench.cli", "serve", str(run), "--port", str(port), "--checks", str(checks),
         *options], stdout=log, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    process.log_path = log.name
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=5)
            return process, url
        except OSError:  # not listening yet (URLError), or busy starting (a read timeout)
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the app did not start: {Path(process.log_path).read_text()[-2000:]}")
            time.sleep(0.5)


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


SHOW_IDS = "[...document.querySelectorAll('#structures tbody tr')].map(r => r.dataset.id)"


def test_served_on_localhost_only_and_ids_never_become_paths(server):
    listening = {c.laddr.ip for c in psutil.Process(server["process"].pid).net_connections() if c.status == "LISTEN"}
    assert listening == {"127.0.0.1"}
    for path in ["/runs/1", "/runs/..%2F..%2Fetc", "/runs/0/structure?id=..%2F..%2Fetc%2Fpasswd",
                 "/runs/0/relaxed.cif?id=%2Fetc%2Fpasswd", "/checks/..%2F..", "/runs/0/bands/..%2Frun.json.png?id=x",
                 "/runs/20260101-000000-deadbeef"]:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server["url"] + path)
        assert refused.value.code == 404, path


def test_the_leaderboard_shows_the_numbers_of_phononbench_leaderboard(server, browser):
    expected = pd.read_csv(io.StringIO(runner.invoke(app, ["leaderboard", str(server["run"]), "--format", "csv"]).output))
    browser.goto(server["url"] + "/")
    shown = browser.evaluate("[...document.querySelectorAll('#leaderboard tbody tr')].map(r => "
                             "[r.querySelector('.generator').textContent, r.querySelector('.rate').textContent, "
                             "r.querySelector('.rate-bz').textContent, r.querySelector('.rate-strict').textContent])")
    assert shown == [[r.generator, percent(r.stability_rate), percent(r.stability_rate_bz),
                      percent(r.strict_stability_rate)] for r in expected.itertuples()]
    assert shown[0][:2] == ["gen_fcc", "100.0%"]  # fcc Cu and Al are stable under EMT


def test_the_structure_table_filters_to_the_expected_rows(server, browser, tmp_path):
    rows = read_structures(server["run"])
    browser.goto(server["url"] + "/runs/0")
    assert sorted(browser.evaluate(SHOW_IDS)) == sorted(rows[Col.STRUCTURE_ID])

    # choosing a generator submits the form (as a user does it), and the page shows that generator's rows
    browser.evaluate("const s = document.querySelector('select[name=generator]'); s.value = 'gen_bcc';"
                     "s.dispatchEvent(new Event('change'))")
    browser.wait_for("location.search.includes('generator=gen_bcc') && document.readyState === 'complete'")
    assert sorted(browser.evaluate(SHOW_IDS)) == sorted(rows[rows[Col.GENERATOR] == "gen_bcc"][Col.STRUCTURE_ID])

    # unstable at the headline threshold: relaxed but not stable, as the rate counts it
    browser.evaluate("const v = document.querySelector('select[name=\"stable_at_-0.1_thz\"]'); v.value = 'unstable';"
                     "v.dispatchEvent(new Event('change'))")
    browser.wait_for("location.search.includes('unstable') && document.readyState === 'complete'")
    unstable = rows[(rows[Col.GENERATOR] == "gen_bcc") & is_relaxed(rows) & ~is_stable(rows, -0.1)]
    assert browser.evaluate(SHOW_IDS) == list(unstable[Col.STRUCTURE_ID]) == ["gen_bcc/Cu_bcc.cif"]

    # an element typed in, then the filter button; the other filters cleared first
    browser.goto(server["url"] + "/runs/0?status=ok")
    browser.evaluate("document.querySelector('input[name=element]').value = 'cu'; document.getElementById('apply').click()")
    browser.wait_for("location.search.includes('element=cu') && document.readyState === 'complete'")
    assert sorted(browser.evaluate(SHOW_IDS)) == ["gen_bcc/Cu_bcc.cif", "gen_fcc/Cu_fcc.cif"]

    # stable over the Brillouin zone at the strict threshold, sorted by lowest frequency, descending
    browser.goto(server["url"] + "/runs/0?stable_bz_at_-0.001_thz=stable&sort=min_frequency_thz&order=desc")
    stable = rows[is_stable_bz(rows, -0.001)].sort_values(Col.MIN_FREQUENCY_THZ, ascending=False, kind="stable")
    assert browser.evaluate(SHOW_IDS) == list(stable[Col.STRUCTURE_ID])
    assert browser.evaluate("document.getElementById('n-chosen').textContent") == str(len(stable))
    browser.goto(server["url"] + "/runs/0?status=invalid_input")
    assert browser.evaluate(SHOW_IDS) == ["gen_bcc/broken.cif"]
    browser.screenshot(tmp_path / "run_browser.png")


def test_a_structure_page_shows_its_band_structures_and_relaxed_cif(server, browser, tmp_path):
    rows = read_structures(server["run"])
    browser.goto(server["url"] + "/runs/0?generator=gen_bcc")
    browser.evaluate("[...document.querySelectorAll('#structures a')].find(a => a.textContent === 'gen_bcc/Cu_bcc.cif').click()")
    browser.wait_for("document.getElementById('structure-id')?.textContent === 'gen_bcc/Cu_bcc.cif'")
    assert "unstable" in browser.evaluate("document.getElementById('verdict').textContent")
    assert "Im-3m (229)" in browser.evaluate("document.getElementById('spacegroup').textContent")
    # both images load in the browser (their force constants computed once with EMT, then cached in the run folder)
    loaded = browser.wait_for("['bands-published', 'bands-bz'].every(i => document.getElementById(i).dataset.loaded) && "
                              "['bands-published', 'bands-bz'].map(i => [document.getElementById(i).dataset.loaded, "
                              "document.getElementById(i).naturalWidth])", timeout=180)
    assert [state for state, _ in loaded] == ["yes", "yes"] and all(width > 400 for _, width in loaded)
    assert len(list((server["run"] / "bands").glob("*/force_constants.npy"))) >= 1
    browser.screenshot(tmp_path / "structure_page.png")

    href = browser.evaluate("document.getElementById('cif').href")
    cif = urllib.request.urlopen(href).read().decode()
    assert cif == rows.set_index(Col.STRUCTURE_ID).loc["gen_bcc/Cu_bcc.cif", Col.RELAXED_CIF]


def _check(browser, server, path: Path, potential: str = "emt") -> None:
    browser.goto(server["url"] + "/check")
    browser.set_files("#structure", [path])
    browser.evaluate(f"document.getElementById('potential').value = {json.dumps(potential)}; "
                     "document.getElementById('submit').click()")
    browser.wait_for("location.pathname !== '/check' || !!document.getElementById('error')")


def test_checked_fcc_copper_is_stable_and_bcc_copper_unstable(server, browser, tmp_path):
    from ase.build import bulk

    verdicts = {}
    for name, atoms in {"fcc": bulk("Cu", "fcc", a=3.6), "bcc": bulk("Cu", "bcc", a=2.87)}.items():
        atoms.write(tmp_path / f"Cu_{name}.cif")
        _check(browser, server, tmp_path / f"Cu_{name}.cif")
        assert browser.evaluate("location.pathname").startswith("/checks/")
        state = browser.wait_for("document.getElementById('state')?.dataset.state === 'done' && "
                                 "document.getElementById('verdict')?.textContent", timeout=180)
        verdicts[name] = " ".join(state.split())
        browser.wait_for("document.getElementById('bands-bz')?.dataset.loaded === 'yes'", timeout=180)
        browser.screenshot(tmp_path / f"check_{name}.png")
    assert verdicts["fcc"].startswith("at -0.1 THz: stable (Brillouin zone: stable)")
    assert verdicts["bcc"].startswith("at -0.1 THz: unstable (Brillouin zone: unstable)")
    # each check is a run folder of its own, listed on the front page
    folders = [p for p in server["checks"].iterdir() if (p / "run.json").exists()]
    assert len(folders) == 2 and all(json.loads((p / "run.json").read_text())["status"] == "complete" for p in folders)
    browser.goto(server["url"] + "/")
    listed = browser.evaluate("[...document.querySelectorAll('#checks tbody tr')].map(r => r.cells[1].textContent)")
    assert listed == ["Cu_bcc.cif", "Cu_fcc.cif"]  # newest first


def test_a_check_page_whose_check_is_removed_says_so_and_stops_looking(server, browser, tmp_path):
    """The page polls the check's state; a check removed meanwhile (or a server restarted on other checks)
    answers 404, and the page says the check is gone instead of polling a blank state for ever."""
    import shutil
    from ase.build import bulk

    pages = []
    for name, a in (("first", 3.62), ("second", 3.64)):  # the second waits behind the first
        bulk("Cu", "fcc", a=a).write(tmp_path / f"Cu_{name}.cif")
        _check(browser, server, tmp_path / f"Cu_{name}.cif")
        pages.append(browser.evaluate("location.pathname"))
    shutil.rmtree(server["checks"] / pages[1].split("/")[-1])
    said = browser.wait_for("document.querySelector('#state strong').textContent === 'gone' && "
                            "document.getElementById('stage').textContent", timeout=60)
    assert "this check is no longer on the server" in said
    assert browser.evaluate("location.pathname") == pages[1]
    browser.wait_for(f"fetch('{pages[0]}/state').then(r => r.json()).then(s => s.state === 'done')", timeout=120)


@pytest.mark.parametrize("what", ["not a structure", "too large", "too many atoms"])
def test_a_refused_upload_says_why_and_starts_nothing(server, browser, tmp_path, what):
    from ase.build import bulk

    path = tmp_path / "upload.cif"
    if what == "not a structure":
        path = tmp_path / "notes.txt"
        path.write_text("these are my notes, not a crystal\n")
        expected = "notes.txt is not a CIF or POSCAR structure"
    elif what == "too large":  # the app was started with --max-upload-kb 8
        bulk("Cu", "fcc", a=3.6).write(path)
        path.write_text(path.read_text() + "#" + "x" * 10_000 + "\n")
        expected = "the limit is 8 KiB"
    else:  # --max-atoms 8
        (bulk("Cu", "fcc", a=3.6) * (3, 3, 3)).write(path)
        expected = "over 8 atoms in the cell once its symmetry is applied"  # counted before pymatgen reads it
    before = sorted(p.name for p in server["checks"].iterdir())
    _check(browser, server, path)
    assert browser.evaluate("location.pathname") == "/check"
    assert expected in browser.evaluate("document.getElementById('error').textContent")
    assert sorted(p.name for p in server["checks"].iterdir()) == before  # nothing written, nothing queued


def _ids_in(path: Path, fmt: str, relaxed: dict[str, str]) -> list[str]:
    if fmt == "cif-zip":
        with zipfile.ZipFile(path) as archive:
            index = pd.read_csv(archive.open("index.csv"))
            assert index[Col.N_ATOMS].dtype == "int64" and index[Col.SPACEGROUP_NUMBER].dtype == "int64"  # not 1.0
            for name, sid in zip(index["file"], index[Col.STRUCTURE_ID]):  # each file is the relaxed cell
                assert archive.read(name).decode() == relaxed[sid]
            return list(index[Col.STRUCTURE_ID])
    if fmt == "extxyz":
        import numpy as np
        from ase.io import read

        frames = read(path, index=":", format="extxyz")
        for atoms in frames:
            assert isinstance(atoms.info["min_frequency_thz"], float) and atoms.info["generator"]
            assert all(isinstance(atoms.info[c], (int, np.integer)) for c in (Col.N_ATOMS, Col.SPACEGROUP_NUMBER))
        return [atoms.info[Col.STRUCTURE_ID] for atoms in frames]
    table = pd.read_parquet(path)
    assert table[Col.N_ATOMS].dtype == "Int64"
    assert list(table[Col.RELAXED_CIF]) == [relaxed[s] for s in table[Col.STRUCTURE_ID]]
    return list(table[Col.STRUCTURE_ID])


@pytest.mark.parametrize("fmt", ["cif-zip", "extxyz", "parquet"])
def test_the_exported_set_is_the_rows_marked_stable(emt_run, tmp_path, fmt):
    rows = read_structures(emt_run)
    relaxed = dict(zip(rows[Col.STRUCTURE_ID], rows[Col.RELAXED_CIF]))
    for options, expected in [([], is_stable(rows, -0.1)), (["--threshold", "-0.001"], is_stable(rows, -0.001)),
                              (["--bz"], is_stable_bz(rows, -0.1))]:
        target = tmp_path / f"set-{len(options)}.{fmt}"
        result = runner.invoke(app, ["export", str(emt_run), "--stable", "--format", fmt, "--output", str(target), *options])
        assert result.exit_code == 0, result.output
        assert _ids_in(target, fmt, relaxed) == list(rows[expected][Col.STRUCTURE_ID])
    assert sorted(rows[is_stable(rows, -0.1)][Col.STRUCTURE_ID]) == ["gen_bcc/Ni_fcc.cif", "gen_fcc/Al_fcc.cif",
                                                                    "gen_fcc/Cu_fcc.cif"]


def test_export_refuses_what_the_run_cannot_answer(emt_run):
    result = runner.invoke(app, ["export", str(emt_run), "--stable", "--threshold", "-0.05"])
    assert result.exit_code == 2 and "verdicts at -0.1, -0.001 THz only" in result.output
    result = runner.invoke(app, ["export", str(emt_run), "--stable", "--format", "xlsx"])
    assert result.exit_code == 2 and "unknown format 'xlsx'" in result.output
    assert "--stable" in runner.invoke(app, ["export", str(emt_run)]).output


def test_an_extxyz_export_refuses_a_name_with_a_line_break_and_leaves_nothing(tmp_path):
    """A line break in an id or generator would make the whole extxyz file unreadable: refused in one line,
    with no half-written file; the zip (names in its index) takes it."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    cif = str(CifWriter(Structure(Lattice.cubic(3.6), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])))
    pd.DataFrame({"cif": [cif], "generator": ["Matter\nGen"]}).to_csv(tmp_path / "table.csv", index=False)
    out = tmp_path / "out"
    assert runner.invoke(app, ["run", str(tmp_path / "table.csv"), "--out", str(out), "--model", "emt", "--in-process"]).exit_code == 0
    refused = runner.invoke(app, ["export", str(out), "--stable", "--format", "extxyz"])
    assert refused.exit_code == 2 and "has a line break, which extxyz cannot hold" in refused.output
    assert not list(out.glob("*stable*")) and not list(out.glob(".*partial"))
    assert runner.invoke(app, ["export", str(out), "--stable", "--format", "cif-zip"]).exit_code == 0


def test_the_web_export_is_the_same_set(server):
    query = urllib.parse.urlencode({"format": "parquet", "threshold": -0.1, "bz": "true"})
    table = pd.read_parquet(io.BytesIO(urllib.request.urlopen(f"{server['url']}/runs/0/export?{query}").read()))
    rows = read_structures(server["run"])
    assert list(table[Col.STRUCTURE_ID]) == list(rows[is_stable_bz(rows, -0.1)][Col.STRUCTURE_ID])


def test_an_upload_far_over_the_limit_is_refused_before_it_is_read(server):
    body = b"--x\r\nContent-Disposition: form-data; name=\"structure\"; filename=\"big.cif\"\r\n\r\n" + b"#" * 200_000
    request = urllib.request.Request(server["url"] + "/check", data=body, method="POST",
                                     headers={"Content-Type": "multipart/form-data; boundary=x"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 413 and "the limit is 8 KiB" in refused.value.read().decode()


def test_a_check_left_unfinished_resumes_when_the_checks_start_again(tmp_path):
    """A check the app had queued or was running when it stopped: the next start runs it to the end."""
    from ase.build import bulk

    from phononbench.app.checks import Checks

    first = Checks(tmp_path, start=False)  # an app that stopped before its worker ran the check
    bulk("Cu", "fcc", a=3.6).write(tmp_path / "Cu.cif")
    check_id = first.submit("Cu.cif", (tmp_path / "Cu.cif").read_bytes(), "emt")
    first._write_meta(check_id, state="running")
    assert not (tmp_path / check_id / "run.json").exists()

    checks = Checks(tmp_path)
    deadline = time.monotonic() + 120
    while checks.state(check_id)["state"] != "done":
        assert checks.state(check_id)["state"] in ("queued", "running") and time.monotonic() < deadline
        time.sleep(0.2)
    rows = read_structures(tmp_path / check_id)
    assert list(rows[Col.STATUS]) == ["ok"] and bool(rows["stable_at_-0.1_thz"].iloc[0])


def test_bands_that_cannot_be_computed_say_why(emt_run, tmp_path):
    """A run whose potential's weights are not on this machine: the band structure is refused in words, and
    nothing is cached."""
    import shutil

    from fastapi.testclient import TestClient

    from phononbench.app.webapp import create_app

    moved = tmp_path / "elsewhere"
    shutil.copytree(emt_run, moved, ignore=shutil.ignore_patterns("bands", ".lock"))
    info = json.loads((moved / "run.json").read_text())
    info["potential"] = {"model": "mattersim", "checkpoint": "/nowhere/mattersim-v1.0.0-5M.pth",
                         "checkpoint_sha256": "0" * 64}
    (moved / "run.json").write_text(json.dumps(info))
    client = TestClient(create_app([moved], tmp_path / "checks"))
    page = client.get("/runs/0/structure", params={"id": "gen_fcc/Cu_fcc.cif"})
    assert page.status_code == 200 and "bandsFailed" in page.text
    refused = client.get("/runs/0/bands/bz.png", params={"id": "gen_fcc/Cu_fcc.cif"})  # drawn in the background
    assert refused.status_code == 500 and "cannot compute the bands" in refused.json()["detail"]
    assert "checkpoint" in refused.json()["detail"]
    assert not (moved / "bands").exists()


def test_elements_are_read_as_typed():
    from phononbench.reading.explore import element_symbols

    assert element_symbols("cu o") == element_symbols("Cu,O") == element_symbols("CuO") == element_symbols("CU O") == {"Cu", "O"}
    assert element_symbols("Co") == {"Co"} and element_symbols("CO") == {"Co"}  # typed in capitals: one symbol


# issue 19: the app never blocks, never lies ------------------------------------------------------------


def _upload(url: str, filename: str, data: bytes, potential: str = "emt") -> tuple[int, str]:
    """POST /check as a browser's form does it; (status, page)."""
    body = (f'--x\r\nContent-Disposition: form-data; name="structure"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + (
        f'\r\n--x\r\nContent-Disposition: form-data; name="potential"\r\n\r\n{potential}\r\n--x--\r\n').encode()
    request = urllib.request.Request(url + "/check", data=body, method="POST",
                                     headers={"Content-Type": "multipart/form-data; boundary=x"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def _expanding_cif(n_sites: int, group: str = "F m -3 m") -> bytes:
    """A CIF of ``n_sites`` general positions under the group's symbol: Fm-3m's 192 operations make
    15,360 atoms of 80 sites, from about 3 KB."""
    import numpy as np

    rng = np.random.default_rng(0)
    sites = "".join(f"C{k} C {x:.4f} {y:.4f} {z:.4f} 1\n" for k, (x, y, z) in enumerate(rng.uniform(0.05, 0.45, (n_sites, 3))))
    return ("data_big\n_cell_length_a 60\n_cell_length_b 60\n_cell_length_c 60\n_cell_angle_alpha 90\n"
            f"_cell_angle_beta 90\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M '{group}'\nloop_\n"
            "_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
            f"_atom_site_fract_z\n_atom_site_occupancy\n{sites}").encode()


def _timed_get(url: str) -> float:
    started = time.monotonic()
    urllib.request.urlopen(url, timeout=60).read()
    return time.monotonic() - started


def test_an_upload_that_expands_to_15360_atoms_is_refused_while_pages_stay_quick(server):
    import threading

    data = _expanding_cif(80)
    assert len(data) < 4 * 1024
    alone = min(_timed_get(server["url"] + "/") for _ in range(3))  # the page's own time on this machine now
    answer = {}
    upload = threading.Thread(target=lambda: answer.update(result=_upload(server["url"], "many.cif", data)))
    started = time.monotonic()
    upload.start()
    time.sleep(0.05)
    front = _timed_get(server["url"] + "/")
    upload.join(60)
    status, page = answer["result"]
    assert front < 1.0 + alone, f"the front page took {front:.1f} s beside the upload ({alone:.1f} s alone)"
    assert status == 400 and "over 8 atoms in the cell once its symmetry is applied" in page
    assert time.monotonic() - started < 10  # counted from its sites and operations, never expanded


def test_a_ten_thousand_atom_cif_is_refused_at_once_under_the_default_limits():
    from phononbench.app.uploads import Limits, UploadRefused, read_upload

    data = _expanding_cif(10_000, "P 1")
    assert len(data) < Limits().max_upload_bytes
    started = time.monotonic()
    with pytest.raises(UploadRefused, match="over 40 atoms in the cell once its symmetry is applied"):
        read_upload("p1.cif", data, Limits())
    assert time.monotonic() - started < 3


def test_band_figures_are_drawn_in_the_background_and_never_starve_a_page(emt_run, tmp_path):
    """45 image requests for figures not yet drawn, then the front page: the figures are drawn one at a time
    by a thread of their own while the requests wait on the event loop, so the page is answered at once."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    run = tmp_path / "run"
    shutil.copytree(emt_run, run, ignore=shutil.ignore_patterns("bands", ".lock"))
    process, url = _serve(run, tmp_path / "checks")
    try:
        rows = read_structures(run)
        ids = list(rows[rows[Col.STATUS] == "ok"][Col.STRUCTURE_ID])
        requests = [f"{url}/runs/0/bands/{kind}.png?{urllib.parse.urlencode({'id': i})}"
                    for k in range(45) for kind, i in [(("published", "bz")[k % 2], ids[k % len(ids)])]]

        def status(address: str) -> tuple[int, float]:
            started = time.monotonic()
            try:
                with urllib.request.urlopen(address, timeout=60) as answer:
                    return answer.status, time.monotonic() - started
            except urllib.error.HTTPError as refused:
                return refused.code, time.monotonic() - started

        alone = min(_timed_get(url + "/") for _ in range(3))
        with ThreadPoolExecutor(45) as pool:
            answers = pool.map(status, requests)
            time.sleep(0.5)  # all 45 waiting for their figures
            front = _timed_get(url + "/")
            answers = list(answers)
        assert front < 1.0 + alone, f"the front page took {front:.1f} s beside 45 band requests ({alone:.1f} s alone)"
        assert {code for code, _ in answers} == {200}  # each waited (on the event loop) for its figure
    finally:
        process.terminate()
        process.wait(20)


def test_run_keys_are_ascii_digits_with_one_spelling(server):
    for key in ("%C2%B2", "00", "%D9%A1", "%EF%BC%91", "0x0", "-0", "+0", "1e0"):  # ², 00, Arabic 1, fullwidth 1
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{server['url']}/runs/{key}")
        assert refused.value.code == 404, key
    assert urllib.request.urlopen(f"{server['url']}/runs/0").status == 200


def test_queued_checks_are_capped_and_an_empty_check_file_is_a_failed_check(emt_run, tmp_path):
    from ase.build import bulk
    from fastapi.testclient import TestClient

    from phononbench.app.checks import Checks
    from phononbench.app.uploads import Limits
    from phononbench.app.webapp import create_app

    checks_dir = tmp_path / "checks"
    (checks_dir / "20260101-000000-deadbeef").mkdir(parents=True)
    (checks_dir / "20260101-000000-deadbeef" / "check.json").write_text("")  # an empty check.json
    client = TestClient(create_app([emt_run], checks_dir, Limits(max_queued=2)))
    state = client.get("/checks/20260101-000000-deadbeef/state").json()
    assert state["state"] == "failed" and "check.json cannot be read" in state["error"]
    assert client.get("/").status_code == 200

    checks: Checks = client.app.state.checks
    with checks.lock:  # the worker is busy: hold the queue as a long check would
        checks.progress["x"] = {"state": "running"}
        checks.waiting.extend(["a", "b"])
    buffer = io.BytesIO()
    bulk("Cu", "fcc", a=3.6).write(buffer, format="cif")
    answer = client.post("/check", files={"structure": ("Cu.cif", buffer.getvalue())}, data={"potential": "emt"})
    assert answer.status_code == 429 and "2 checks are waiting already (the limit is 2)" in answer.text


def test_a_served_run_with_a_plugin_potential_runs_no_plugin_code_without_the_flag(emt_run, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from phononbench.app.webapp import create_app

    run = tmp_path / "run"
    shutil.copytree(emt_run, run, ignore=shutil.ignore_patterns("bands", ".lock"))
    marker = tmp_path / "ran"
    plugin = tmp_path / "their_plugin.py"
    plugin.write_text(f"from pathlib import Path\ndef build(name, device, checkpoint):\n    Path({str(marker)!r}).write_text('ran')\n")
    info = json.loads((run / "run.json").read_text())
    info["potential"] = {"model": "python:their_plugin:build"}
    (run / "run.json").write_text(json.dumps(info))
    sys.path.insert(0, str(tmp_path))
    try:
        client = TestClient(create_app([run], tmp_path / "checks"))
        answer = client.get("/runs/0/bands/bz.png?id=gen_fcc%2FCu_fcc.cif")
        assert answer.status_code == 500 and "--allow-plugins" in answer.json()["detail"]
        assert not marker.exists()
    finally:
        sys.path.remove(str(tmp_path))


def _expanding_cif_with(key: str, value: str, n_sites: int) -> bytes:
    return _expanding_cif(n_sites).replace(b"_symmetry_space_group_name_H-M 'F m -3 m'", f"{key} '{value}'".encode())


def test_uploads_pymatgen_would_expand_are_refused_within_their_budget_in_a_process_of_their_own(tmp_path):
    """Every key pymatgen reads a space group from is counted (here the underscore spelling of H-M); a file
    within the atom limit that still takes pymatgen long (15,360 atoms under a limit of 20,000) is read in
    a reader process and cut off at the budget; more than 192 operations is no space group. The app's own
    process never parses an upload."""
    from phononbench.app.checks import Checks
    from phononbench.app.uploads import Limits, UploadRefused

    checks = Checks(tmp_path / "checks", Limits(max_atoms=8, read_budget_s=3), start=False)
    checks.reader.warm()  # the reader processes started, as the app starts them
    started = time.monotonic()
    with pytest.raises(UploadRefused, match="over 8 atoms in the cell once its symmetry is applied"):
        checks.submit("underscore.cif", _expanding_cif_with("_symmetry_space_group_name_H_M", "F m -3 m", 40), "emt")
    slow = Checks(tmp_path / "checks", Limits(max_atoms=20_000, read_budget_s=3), start=False)
    slow.reader.warm()
    with pytest.raises(UploadRefused, match="took over 3 s"):
        slow.submit("slow.cif", _expanding_cif(80), "emt")
    operations = "".join(f"'x+{k}/400,y,z'\n" for k in range(400))
    many = _expanding_cif(1).replace(b"_symmetry_space_group_name_H-M 'F m -3 m'",
                                     f"loop_\n_symmetry_equiv_pos_as_xyz\n{operations}".encode())
    with pytest.raises(UploadRefused, match="400 symmetry operations"):
        checks.submit("many.cif", many, "emt")
    assert time.monotonic() - started < 60
    assert not any((tmp_path / "checks").iterdir())  # nothing written for a refused upload


def test_a_generator_chosen_in_the_browser_is_found_whatever_its_line_breaks():
    """A browser submits a chosen name with a line break as CRLF: the filter still finds its rows, and only them."""
    from phononbench.reading.explore import Filters, select

    rows = pd.DataFrame({Col.STRUCTURE_ID: ["a", "b", "c"], Col.GENERATOR: ["Matter\nGen", "MatterGen", "Matter Gen"],
                         Col.STATUS: "ok", Col.CRYSTAL_SYSTEM: "cubic"})
    chosen = select(rows, pd.Series([set()] * 3), Filters(generator="Matter\r\nGen"), (-0.1,))
    assert list(chosen[Col.STRUCTURE_ID]) == ["a"]


@pytest.fixture(scope="module")
def accurate_run(tmp_path_factory):
    """fcc Cu and Al under EMT with the accurate preset (ranked by the Brillouin zone), strict at -0.01 THz."""
    from ase.build import bulk

    root = tmp_path_factory.mktemp("accurate")
    (root / "in" / "metals").mkdir(parents=True)
    bulk("Cu", "fcc", a=3.6).write(root / "in" / "metals" / "Cu.cif")
    bulk("Al", "fcc", a=4.05).write(root / "in" / "metals" / "Al.cif")
    result = runner.invoke(app, ["run", str(root / "in"), "--out", str(root / "run"), "--model", "emt", "--in-process",
                                 "--preset", "accurate", "--threshold", "-0.1", "--threshold", "-0.01"])
    assert result.exit_code == 0, result.output
    return root / "run"


def test_the_web_leaderboard_says_what_its_rates_measure(emt_run, accurate_run, tmp_path):
    """The board's text and headers say the verdict it ranks by (the published path, or the Brillouin zone
    under accurate) and the strict threshold, as `phononbench leaderboard` does."""
    from fastapi.testclient import TestClient

    from phononbench.app.webapp import create_app

    from phononbench.reading.ranking import strict_name

    assert (strict_name(-0.001, -0.1), strict_name(-0.1, -0.001), strict_name(None)) == \
        ("strict, -0.001 THz", "at -0.1 THz", "strict")  # thresholds given the other way round: not "strict"
    page = TestClient(create_app([emt_run], tmp_path / "checks")).get("/").text
    assert "on the published\nq-points" in page and "strict, -0.001 THz</th>" in page and "Brillouin zone</th>\n<th>95%" not in page
    page = TestClient(create_app([accurate_run], tmp_path / "checks")).get("/").text
    assert "over the Brillouin zone: the high-symmetry path" in page and "acoustic dips next to &Gamma; set aside" in page
    assert "stable at -0.1 THz, Brillouin zone</th>" in page and "strict, -0.01 THz</th>" in page
    assert "on the published\nq-points" not in page


def test_an_accurate_run_exports_and_summarizes_the_set_its_headline_counts(accurate_run, tmp_path):
    """Under accurate the stable set is the Brillouin zone's unless --path says otherwise, in the CLI and in the
    web app's form, and the summary and board count it first, with the stable structures not 3D-bonded among
    it: the set the headline rate counts, not the published path's."""
    from fastapi.testclient import TestClient

    from phononbench.app.webapp import create_app

    run = tmp_path / "run"
    shutil.copytree(accurate_run, run)
    (part,) = (run / "structures").glob("part-*.parquet")
    table = pq.read_table(part)  # Al stable on the path, not over the zone: the two sets differ
    column = table.column_names.index("stable_bz_at_-0.1_thz")
    zone = [s != "metals/Al.cif" for s in table.column(Col.STRUCTURE_ID).to_pylist()]
    table = table.set_column(column, "stable_bz_at_-0.1_thz", pa.array(zone))
    layered = table.column_names.index(Col.DIMENSIONALITY)  # Al, stable on the path alone, read as a layer
    table = table.set_column(layered, Col.DIMENSIONALITY, pa.array(["3D" if z else "2D" for z in zone]))
    pq.write_table(table, part)
    rows = read_structures(run)
    assert list(rows[is_stable(rows, -0.1)][Col.STRUCTURE_ID].sort_values()) == ["metals/Al.cif", "metals/Cu.cif"]
    relaxed = dict(zip(rows[Col.STRUCTURE_ID], rows[Col.RELAXED_CIF]))
    for options, expected, said in [([], ["metals/Cu.cif"], "over the Brillouin zone"),
                                    (["--path"], sorted(relaxed), "on the published q-points")]:
        target = tmp_path / f"set{len(options)}.parquet"
        result = runner.invoke(app, ["export", str(run), "--stable", "--format", "parquet", "--output", str(target), *options])
        assert result.exit_code == 0 and f"structures stable {said} written" in result.output, result.output
        assert sorted(_ids_in(target, "parquet", relaxed)) == expected
    board = json.loads(runner.invoke(app, ["leaderboard", str(run), "--format", "json"]).output)
    assert board["rows"][0]["n_stable"] == 1 and board["rows"][0]["n_stable_not_3d"] == 0  # the exported set
    summary = runner.invoke(app, ["summarize", str(run)]).stdout
    header, metals = next(line for line in summary.splitlines() if "generator" in line), \
        next(line for line in summary.splitlines() if "metals" in line)
    assert header.index("BZ@-0.1THz") < header.index("path@-0.1") and "stable@" not in header, summary
    cells = [c.strip() for c in metals.split("│")[1:-1]]
    assert cells[8:10] == ["50.0% 1/2", "100.0%"] and cells[-1] == "0", summary
    client = TestClient(create_app([run], tmp_path / "checks"))
    page = client.get("/runs/0").text
    assert '<option value="true" selected>over the Brillouin zone (the verdict this run ranks by)</option>' in page
    assert '<th id="verdict">at -0.1, BZ</th>' in page and '<span class="unstable">unstable</span>' in page
    for query, expected in (("", ["metals/Cu.cif"]), ("&bz=true", ["metals/Cu.cif"]), ("&bz=false", sorted(relaxed)),
                            ("&bz=", ["metals/Cu.cif"]), ("&bz=0&threshold=-0.1", sorted(relaxed))):
        got = client.get(f"/runs/0/export?format=parquet{query}")
        assert sorted(pd.read_parquet(io.BytesIO(got.content))[Col.STRUCTURE_ID]) == expected, query
    for query, said in (("bz=maybe", "bz must be true (over the Brillouin zone) or false"),
                        ("threshold=abc", "threshold must be a number of THz, not 'abc'"),
                        ("threshold=-0.05", "verdicts at -0.1, -0.01 THz only")):
        refused = client.get(f"/runs/0/export?format=parquet&{query}")
        assert refused.status_code == 400 and said in refused.text, (query, refused.text)


def test_runs_ranked_by_other_verdicts_are_refused_by_name_and_an_unfinished_export_says_so(emt_run, accurate_run, tmp_path):
    published = tmp_path / "published"  # the accurate run's thresholds, the published preset
    assert runner.invoke(app, ["run", str(accurate_run.parent / "in"), "--out", str(published), "--model", "emt",
                               "--in-process", "--threshold", "-0.1", "--threshold", "-0.01"]).exit_code == 0
    refused = runner.invoke(app, ["leaderboard", str(published), str(accurate_run)])
    assert refused.exit_code == 2 and "published by the published path, run by the Brillouin zone" in \
        " ".join(refused.output.split()), refused.output
    going = tmp_path / "going"
    shutil.copytree(emt_run, going)
    info = json.loads((going / "run.json").read_text())
    (going / "run.json").write_text(json.dumps({**info, "status": "running"}))
    result = runner.invoke(app, ["export", str(going), "--stable"])
    assert result.exit_code == 0 and "warning: the run has not finished (run.json says 'running')" in result.stderr
