"""benchmarks/gpu_check.py refuses at once, in one line, where no GPU is visible (CUDA_VISIBLE_DEVICES
empty hides any GPU, so this runs the same on every machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_refuses_at_once_without_a_gpu():
    started = time.monotonic()
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert errors == ["error: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
                      "benchmarks/gpu_check.py measures a GPU: run it on a machine with one"]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"error": "no CUDA GPU visible"}
    assert time.monotonic() - started < 120  # before any part starts
