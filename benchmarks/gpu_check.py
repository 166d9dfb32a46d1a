"""One command for a machine with a CUDA GPU (issue 20): within about 8 minutes, one JSON line with

- the GPU tests (tests/test_gpu.py: the torchsim engine on the GPU against the CPU reference, MatterSim's
  model code on the GPU);
- the torchsim engine's CPU overhead on cuda (benchmarks/engine_overhead.py, 256 in flight);
- the torchsim engine at the published preset on 240 real generated crystals (benchmarks/data) with
  SevenNet-0 (weights in its wheel), one and two workers per GPU (--gpus-per-worker 1 and 0.5) and the
  default (as many workers as the machine has CPUs for, at most 8):
  structures/h, atom-evaluations/s, mean GPU utilisation, peak GPU memory, projected hours for 110k;
- a randomly initialised MatterSim 5M (M3GNet, 4 blocks of 256 units, written here): atom-evaluations/s
  of its model on states of generated crystals and supercells (random weights give no physical
  relaxation, so not a pipeline throughput), and the 110k projection scaled from SevenNet-0's by it.

    python benchmarks/gpu_check.py [--structures 240] [--budget-s 480]

Where no GPU is visible it refuses at once, in one line (exit code 2). Each part runs in a process of its
own with its share of the budget; a part cut off reports what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERATED = REPO / "benchmarks" / "data" / "generated_crystals"
STRUCTURES_110K = 110_000


def refuse_without_gpu() -> None:
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
              "benchmarks/gpu_check.py measures a GPU: run it on a machine with one", file=sys.stderr)
        print(json.dumps({"error": "no CUDA GPU visible"}))
        sys.exit(2)


class GpuSampler:
    """nvidia-smi's utilisation and memory every half second while a part runs."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.process = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "500"],
                stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self):
        for line in self.process.stdout:
            try:
                utilisation, memory = (float(x) for x in line.split(",")[:2])
                self.samples.append((utilisation, memory))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self.process:
            self.process.terminate()

    def figures(self) -> dict:
        if not self.samples:
            return {"mean_gpu_utilisation_percent": None, "peak_gpu_memory_mib": None}
        return {"mean_gpu_utilisation_percent": round(sum(u for u, _ in self.samples) / len(self.samples), 1),
                "peak_gpu_memory_mib": max(m for _, m in self.samples)}


LOGS: Path | None = None  # --logs: each part's whole output is kept there, for a part that fails


def run_part(command: list[str], timeout_s: float, env: dict | None = None, name: str = "") -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(timeout_s, 1), cwd=REPO,
                              env={**os.environ, **(env or {})})
        code, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        text = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                       for x in (expired.stdout, expired.stderr))
        code = 124
    if LOGS and name:
        (LOGS / f"{name}.log").write_text(text)
    return code, text, time.monotonic() - started


def failure_tail(text: str, lines: int = 6) -> list[str]:
    """The last lines of a failed part, less Python's warning lines (``file:line: SomeWarning: ...`` and the
    source line under it)."""
    kept, skip_next = [], False
    for line in text.strip().splitlines():
        if re.search(r":\d+: \w*Warning: ", line):
            skip_next = True
            continue
        if skip_next and line.startswith("  "):
            skip_next = False
            continue
        skip_next = False
        kept.append(line)
    return kept[-lines:]


def last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def sample_inputs(folder: Path, n: int) -> Path:
    """n valid generated crystals (no _symmetrized twins) written as CIFs into a folder of their own."""
    from pymatgen.io.cif import CifWriter

    from phononbench.science.ingest import read_inputs

    items = [i for i in read_inputs([str(GENERATED)], 20, 0.5) if i.valid and "_symmetrized" not in i.structure_id]
    out = folder / "generated"
    for k, item in enumerate(items[:n]):
        target = out / item.generator.split("/")[0]
        target.mkdir(parents=True, exist_ok=True)
        CifWriter(item.structure).write_file(str(target / f"{k:04d}.cif"))
    return out


def pipeline_throughput(inputs: Path, out: Path, gpus_per_worker: float | None, timeout_s: float,
                        chunk_size: int | None = None) -> dict:
    """One run; ``gpus_per_worker`` None is the default (the GPU shared by as many workers as there are CPUs)."""
    share = ["--gpus-per-worker", str(gpus_per_worker)] if gpus_per_worker else []
    # a chunk's rows land when the chunk ends: smaller chunks let a run cut off by its budget still count
    share += ["--chunk-size", str(chunk_size)] if chunk_size else []
    with GpuSampler() as gpu:
        code, text, wall = run_part([sys.executable, "-m", "phononbench.cli", "run", str(inputs), "--out", str(out),
                                     "--model", "sevennet-0", "--engine", "torchsim", "--device", "cuda", *share],
                                    timeout_s, name=f"run-{gpus_per_worker or 'default'}")
    from phononbench.running.run_folder import recorded_rows

    rows = recorded_rows(out) if (out / "structures").exists() else None
    # a run cut off before its first chunk landed has rows with no columns beyond the keys
    done = 0 if rows is None or rows.empty else int(rows["status"].isin(["ok", "phonon_failed", "relax_failed",
                                                                        "relax_not_converged"]).sum())
    steps = 0 if rows is None or rows.empty else float((rows["relax_steps"].fillna(0) * rows["n_atoms"].fillna(0)).sum())
    per_hour = done / wall * 3600 if wall else None
    executor = json.loads((out / "run.json").read_text()).get("executor", {}) if (out / "run.json").exists() else {}
    return {"gpus_per_worker": gpus_per_worker or "default", "workers_per_gpu": executor.get("workers_per_gpu", 1),
            "exit_code": code, "structures_done": done, "wall_s": round(wall, 1),
            "structures_per_hour": round(per_hour) if per_hour else None,
            "relaxation_atom_evaluations_per_s": round(steps / wall) if wall else None,
            "projected_hours_for_110k": round(STRUCTURES_110K / per_hour, 2) if per_hour else None,
            **gpu.figures(), "tail": failure_tail(text) if code else []}


MATTERSIM_RATE = """
import json, time, torch, sys
from mattersim.forcefield.m3gnet.m3gnet import M3Gnet
sys.path.insert(0, "benchmarks")
from method_overhead import generated_sample
from phononbench.compute.potentials import load_potential, to_state
torch.manual_seed(0)
model = M3Gnet(device="cpu", num_blocks=4, units=256)
path = sys.argv[1]
torch.save({"model_name": "m3gnet", "model_args": model.model_args, "model": model.state_dict()}, path)
potential = load_potential("mattersim", device="cuda", checkpoint=path)
ts = potential.torchsim_model()
from pymatgen.io.ase import AseAtomsAdaptor
cells = [AseAtomsAdaptor.get_atoms(i.unpacked().structure) for i in generated_sample(sys.argv[2], 240)]
out = {"parameters": sum(p.numel() for p in model.parameters())}
for name, batch in (("unit_cells", cells), ("supercells_2x2x2", [c * (2, 2, 2) for c in cells[:40]])):
    state = to_state(batch, ts)
    ts(state); torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(10):
        ts(state)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / 10
    out[name] = {"atoms": int(state.n_atoms), "atom_evaluations_per_s": round(int(state.n_atoms) / seconds),
                 "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20)}
print(json.dumps(out))
"""


def main() -> None:
    global LOGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=240)
    parser.add_argument("--budget-s", type=float, default=480)
    parser.add_argument("--logs", type=Path, help="keep each part's whole output here")
    parser.add_argument("--chunk-size", type=int, help="the runs' --chunk-size (default: the CLI's, 512 on cuda)")
    args = parser.parse_args()
    refuse_without_gpu()
    LOGS = args.logs
    if LOGS:
        LOGS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    left = lambda share: max(30.0, share * (args.budget_s - (time.monotonic() - started)))  # noqa: E731
    figures: dict = {}

    def part(name, measure):
        """One part; a part that breaks is recorded as such and the next one still runs. The figures so far
        are printed after each part, so a check cut off from outside still leaves them."""
        try:
            figures[name] = measure()
        except Exception as error:  # noqa: BLE001 - a broken part must not cost the others' figures
            figures[name] = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps({"so_far": figures}), flush=True)

    def gpu_tests():
        code, text, wall = run_part([sys.executable, "-m", "pytest", "-q", "tests/test_gpu.py"], left(0.15),
                                    name="gpu_tests")
        return {"exit_code": code, "summary": text.strip().splitlines()[-1:], "wall_s": round(wall, 1)}

    def engine_overhead():
        code, text, _ = run_part([sys.executable, "benchmarks/engine_overhead.py", "--device", "cuda", "--engines",
                                  "torchsim", "--in-flight", "256", "--steps", "50"], left(0.15), name="engine_overhead")
        return last_json(text) if code == 0 else {"exit_code": code, "tail": failure_tail(text)}

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        part("gpu_tests", gpu_tests)
        part("engine_overhead_cuda", engine_overhead)
        inputs = sample_inputs(scratch, args.structures)
        for g, share in ((1.0, 0.3), (0.5, 0.45), (None, 0.9)):
            part(f"throughput_sevennet_0_gpus_per_worker_{g or 'default'}",
                 lambda g=g, share=share: pipeline_throughput(inputs, scratch / f"run-{g}", g, left(share), args.chunk_size))

        def mattersim_rate():
            code, text, _ = run_part([sys.executable, "-c", MATTERSIM_RATE, str(scratch / "m3gnet-5m-random.pth"),
                                      str(GENERATED)], left(0.9), name="mattersim")
            return last_json(text) if code == 0 else {"exit_code": code, "tail": failure_tail(text)}

        part("mattersim_5m_random_weights", mattersim_rate)
    figures["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
