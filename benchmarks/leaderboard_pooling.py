"""What the leaderboard's pooling notes cost: two runs of one entry, ``--size`` rows each, pooled by
``ranking.load_runs`` with and without ``notes`` (the check for rows whose verdicts differ between runs, and for
input ids read with other contents), side by side in one process.

    python benchmarks/leaderboard_pooling.py --size 110000 --differ 0.3

The first run is benchmarks/webapp.py's generated 110k-row run (no physics); the second, a copy of it with the
verdicts of a fraction ``--differ`` of its computed rows turned over (every verdict column), as two runs that
disagree would have them. Each variant is timed ``--repeat`` times, alternating; the median is reported. The
last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO / "tests")]

from webapp import run_options, write_run  # noqa: E402

from phononbench.reading import ranking  # noqa: E402


def turn_over(run: Path, fraction: float, seed: int) -> int:
    """Turn over every verdict of ``fraction`` of the run's rows that have verdicts; returns how many."""
    rng = np.random.default_rng(seed)
    turned = 0
    for part in sorted((run / "structures").glob("part-*.parquet")):
        table = pq.read_table(part)
        chosen = pa.array((rng.random(table.num_rows) < fraction) & table.column("stable_at_-0.1_thz").is_valid().to_numpy(
            zero_copy_only=False))
        turned += int(pc.sum(chosen).as_py() or 0)
        for name in [n for n in table.column_names if n.startswith("stable_")]:
            column = table.column(name)
            table = table.set_column(table.column_names.index(name), name, pc.if_else(chosen, pc.invert(column), column))
        pq.write_table(table.replace_schema_metadata(table.schema.metadata), part)
    return turned


def main() -> None:
    parser = run_options(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--differ", type=float, default=0.3, help="fraction of the copy's computed rows turned over")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    first = args.root / f"run-{args.size}"
    n_rows = write_run(first, args.size, args.bucket, args.seed)
    second = args.root / f"run-{args.size}-differing"
    shutil.rmtree(second, ignore_errors=True)
    shutil.copytree(first, second)
    turned = turn_over(second, args.differ, seed=1)
    walls: dict[str, list[float]] = {"without_notes": [], "with_notes": []}
    said: list[str] = []
    for _ in range(args.repeat):
        for variant in walls:
            notes: list[str] | None = [] if variant == "with_notes" else None
            start = time.perf_counter()
            ranking.load_runs([first, second], notes=notes)
            walls[variant].append(time.perf_counter() - start)
            said = notes if notes is not None else said
    median = {k: statistics.median(v) for k, v in walls.items()}
    print(f"two runs of {n_rows} rows, {turned} rows of the second with other verdicts: load_runs "
          f"{median['without_notes']:.2f} s without notes, {median['with_notes']:.2f} s with them (median of "
          f"{args.repeat}); {said[0][:90] if said else 'no note'}...")
    print(json.dumps({"rows_per_run": n_rows, "rows_differing": turned, "repeat": args.repeat,
                      "load_runs_s": {k: round(v, 2) for k, v in median.items()},
                      "notes_extra_s": round(median["with_notes"] - median["without_notes"], 2)}))


if __name__ == "__main__":
    main()
