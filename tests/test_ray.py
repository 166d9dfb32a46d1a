"""Cluster-scale behaviour on a local Ray, for real: kill and resume, a worker killed mid-batch, a hang.

The structures are EMT metals, each in a generator of its own (nothing deduplicates); the potentials in
tests/potentials_for_tests.py are EMT with a delay on Pd (slow) or Au (hangs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ase.build import bulk
from ase.io import write

from phononbench.errors import SetupError
from phononbench.running.executors import SHARE_GPUS, RayExecutor, workers_per_gpu
from phononbench.running.worker import WorkerSpec
from phononbench.running.pipeline import run_benchmark
from phononbench.records import Col, Status, verdict_column
from phononbench.running.run_folder import read_structures
from phononbench.settings import PUBLISHED

REPO = Path(__file__).resolve().parents[1]
SLOW = "python:tests.potentials_for_tests:slow_on_palladium"
HANGS = "python:tests.potentials_for_tests:hangs_on_gold"


def _metals(path: Path, elements=("Cu", "Al", "Ni", "Pd", "Ag", "Au", "Pt"), prototypes=("fcc", "bcc", "hcp")):
    frames = []
    for element in elements:
        a_fcc = bulk(element, "fcc").cell.cellpar()[0] * 2**0.5
        cells = {"fcc": bulk(element, "fcc", a=a_fcc),
                 "bcc": bulk(element, "bcc", a=a_fcc / 2 ** (1 / 3)),
                 "hcp": bulk(element, "hcp", a=a_fcc / 2**0.5, c=1.633 * a_fcc / 2**0.5)}
        for prototype in prototypes:
            atoms = cells[prototype]
            atoms.info["generator"] = f"{element}-{prototype}"
            frames.append(atoms)
    write(path, frames, format="extxyz")
    return path


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "phononbench.cli", "run", *map(str, args)]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def _raw_rows(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted((out / "structures").glob("part-*.parquet"))])


def _verdicts(out: Path) -> dict:
    rows = read_structures(out)
    return {r[Col.STRUCTURE_ID]: (r[Col.STATUS], r[verdict_column(-0.1)]) for _, r in rows.iterrows()}


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_rows(tmp_path):
    inputs = _metals(tmp_path / "metals.extxyz")
    reference = tmp_path / "reference"
    done = subprocess.run(_cli(inputs, "--out", reference, "--model", SLOW, "--in-process"),
                          env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    out = tmp_path / "interrupted"
    command = _cli(inputs, "--out", out, "--model", SLOW, "--chunk-size", "1")
    first = subprocess.Popen(command, env=_env(), cwd=REPO, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: len(list((out / "structures").glob("part-*.parquet"))) >= 3, 300, "first parts")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-run
        first.wait()
    partial = _raw_rows(out).num_rows
    assert 0 < partial < 21, "the kill should land mid-run"

    second = subprocess.run(command, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    rows = _raw_rows(out).column(Col.STRUCTURE_ID).to_pylist()
    assert len(rows) == len(set(rows)) == 21  # nothing lost, nothing twice
    assert _verdicts(out) == _verdicts(reference)

    again = subprocess.run(command, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and _raw_rows(out).num_rows == 21  # the same command twice: no new rows


def test_worker_killed_mid_batch_loses_nothing(tmp_path):
    inputs = _metals(tmp_path / "metals.extxyz", elements=("Cu", "Pd", "Ni", "Al"))
    out = tmp_path / "out"
    run = subprocess.Popen(_cli(inputs, "--out", out, "--model", SLOW, "--chunk-size", "3"), env=_env(),
                           cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = []

    def kill_a_busy_worker():
        for process in psutil.process_iter(["pid", "cmdline"]):
            if any("ray::Worker.__call__" in part for part in (process.info["cmdline"] or [])):
                process.send_signal(signal.SIGKILL)
                killed.append(process.info["pid"])
                return True
        return False

    try:
        _wait_for(kill_a_busy_worker, 300, "a worker busy with a chunk")
        output, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 0, output[-2000:]
    assert killed
    statuses = read_structures(out)[Col.STATUS]
    assert len(statuses) == 12 and set(statuses) == {Status.OK}  # Ray retried the killed worker's chunk


@pytest.fixture
def local_ray():
    import ray

    yield
    ray.shutdown()


def test_hanging_structure_is_cut_off_while_its_neighbours_finish(tmp_path, local_ray, monkeypatch):
    monkeypatch.chdir(REPO)  # workers import tests.potentials_for_tests from here
    inputs = _metals(tmp_path / "metals.extxyz", elements=("Cu", "Au", "Ni"), prototypes=("fcc", "bcc"))
    protocol = PUBLISHED.with_overrides(model=HANGS)
    # deadlines with room for a loaded 2-core machine: a replacement worker imports the package within them
    executor = RayExecutor(workers=2, timeout_per_structure_s=6, grace_s=20, poll_s=0.2)
    spec = WorkerSpec(HANGS, "cpu", None, None, protocol)
    run_benchmark([str(inputs)], tmp_path / "out", spec, {"model": HANGS}, executor, chunk_size=3)
    rows = read_structures(tmp_path / "out").set_index(Col.GENERATOR)
    assert rows.loc["Au-fcc", Col.STATUS] == Status.TIMEOUT and rows.loc["Au-bcc", Col.STATUS] == Status.TIMEOUT
    assert "longer than 6 s" in rows.loc["Au-fcc", Col.ERROR]
    others = rows.drop(index=["Au-fcc", "Au-bcc"])
    assert set(others[Col.STATUS]) == {Status.OK} and len(others) == 4

    # a resume tries the timed-out structures once more (attempt 2), then keeps them; the flag keeps them at once
    run_benchmark([str(inputs)], tmp_path / "out", spec, {"model": HANGS}, executor, chunk_size=3)
    again = read_structures(tmp_path / "out").set_index(Col.GENERATOR)
    assert again.loc["Au-fcc", Col.STATUS] == Status.TIMEOUT and again.loc["Au-fcc", Col.ATTEMPT] == 2
    assert again.loc["Cu-fcc", Col.ATTEMPT] == 1
    for retry_failed in (True, False):
        run_benchmark([str(inputs)], tmp_path / "out", spec, {"model": HANGS}, executor, chunk_size=3,
                      retry_failed=retry_failed)
        assert json.loads((tmp_path / "out" / "run.json").read_text())["n_computed_this_time"] == 0
    fresh = tmp_path / "no-retry"
    run_benchmark([str(inputs)], fresh, spec, {"model": HANGS}, executor, chunk_size=3)
    run_benchmark([str(inputs)], fresh, spec, {"model": HANGS}, executor, chunk_size=3, retry_failed=False)
    assert json.loads((fresh / "run.json").read_text())["n_computed_this_time"] == 0


def test_workers_share_each_gpu_as_its_node_has_cpus_for():
    """A worker spends most of a structure on the CPU, so `--device cuda` puts several on each GPU: the node's
    CPUs less one, at most 8, the least over the GPU nodes; CPU-only nodes have no say."""
    assert workers_per_gpu([{"CPU": 16.0, "GPU": 1.0}], 1.0) == 8
    assert workers_per_gpu([{"CPU": 64.0, "GPU": 8.0}], 1.0) == 7
    assert workers_per_gpu([{"CPU": 64.0, "GPU": 8.0}], 2.0) == 3
    assert workers_per_gpu([{"CPU": 2.0, "GPU": 1.0}], 1.0) == 1
    assert workers_per_gpu([{"CPU": 1.0, "GPU": 4.0}], 1.0) == 1
    assert workers_per_gpu([{"CPU": 128.0}, {"CPU": 32.0, "GPU": 4.0}, {"CPU": 96.0, "GPU": 4.0}], 1.0) == 7


def test_a_gpu_shared_by_workers_runs_every_structure(tmp_path, local_ray):
    """On a Ray whose one (declared) GPU is shared by three workers, each takes a third of it, and every
    structure is computed; run.json says how the GPU was shared."""
    import ray

    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    inputs = _metals(tmp_path / "metals.extxyz", elements=("Cu", "Ni", "Al"), prototypes=("fcc", "bcc"))
    executor = RayExecutor(gpus_per_worker=SHARE_GPUS)
    spec = WorkerSpec("emt", "cpu", None, None, PUBLISHED.with_overrides(model="emt"))
    run_benchmark([str(inputs)], tmp_path / "out", spec, {"model": "emt"}, executor, chunk_size=2)
    assert executor.slots() == 3
    described = json.loads((tmp_path / "out" / "run.json").read_text())["executor"]
    assert described["workers_per_gpu"] == 3 and abs(described["gpus_per_worker"] - 1 / 3) < 1e-9
    # each worker's model calls hold a third of a GPU's 16,384 atoms, as run.json records
    assert json.loads((tmp_path / "out" / "run.json").read_text())["potential"]["max_atoms_per_batch"] == 5461
    assert set(read_structures(tmp_path / "out")[Col.STATUS]) == {Status.OK}

    # workers asked for share the GPUs between them; what cannot be placed is refused before any work
    asked = RayExecutor(workers=4, gpus_per_worker=SHARE_GPUS)
    asked.ensure_runnable(spec)
    assert asked.slots() == 4 and asked.describe()["workers_per_gpu"] == 4
    assert asked.worker_spec(spec).max_atoms_per_batch == 4096
    assert asked.worker_spec(dataclasses.replace(spec, max_atoms_per_batch=100)).max_atoms_per_batch == 100  # as asked
    with pytest.raises(SetupError, match=r"2 workers with 0.6 GPUs each do not fit .*; 1 such workers do"):
        RayExecutor(workers=2, gpus_per_worker=0.6).ensure_runnable(spec)
    assert RayExecutor(gpus_per_worker=0.6).slots() == 1 and RayExecutor(gpus_per_worker=0.6).describe()["workers_per_gpu"] == 1
    with pytest.raises(SetupError, match="gpus_per_worker must be zero or more"):
        RayExecutor(gpus_per_worker=-1.0)


def test_gpu_workers_where_no_node_has_a_gpu_are_refused_in_one_line(tmp_path):
    inputs = _metals(tmp_path / "metals.extxyz", elements=("Cu",), prototypes=("fcc",))
    done = subprocess.run(_cli(inputs, "--out", tmp_path / "out", "--model", "emt", "--device", "cuda"),
                          capture_output=True, text=True, timeout=300, env=_env(), cwd=REPO)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-2000:]
    assert "GPU workers were asked for (--device cuda) but no node has a GPU (the cluster has" in errors[0]
    assert not (tmp_path / "out").exists()
