"""Agreement of a potential's stability verdicts with DFT phonon labels (phonondb_dev).

    python benchmarks/phonondb_agreement.py --labels LABELS.csv --structures POSCAR_DIR --model chgnet --out runs/pdb-chgnet

Runs the benchmark pipeline (published protocol) on the labelled unit cells, then prints accuracy,
precision, recall and F1 at each threshold, taking "stable" as the positive class, and as its last
line one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from phononbench.executors import InProcessExecutor, WorkerSpec
from phononbench.pipeline import run_benchmark
from phononbench.potentials import load_potential
from phononbench.records import Col, Status, verdict_column
from phononbench.results import read_structures
from phononbench.settings import PUBLISHED


def scores(predicted_stable: pd.Series, dft_stable: pd.Series) -> dict:
    tp = int((predicted_stable & dft_stable).sum())
    tn = int((~predicted_stable & ~dft_stable).sum())
    fp = int((predicted_stable & ~dft_stable).sum())
    fn = int((~predicted_stable & dft_stable).sum())
    n = tp + tn + fp + fn
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else float("nan")
    return {"n": n, "accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
            "tp": tp, "tn": tn, "fp": fp, "fn": fn}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", required=True)
    parser.add_argument("--structures", required=True)
    parser.add_argument("--model", default="chgnet")
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--score-only", action="store_true",
                        help="score the rows already in --out (e.g. of an interrupted run) without running")
    parser.add_argument("--only-ids", help="file of mp-ids to score (to compare potentials on one set)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N materials (by mp-id file name)")
    args = parser.parse_args()

    protocol = PUBLISHED.with_overrides(model=args.model)
    start = time.time()
    if not args.score_only:
        potential = load_potential(args.model, args.device)
        spec = WorkerSpec(args.model, args.device, None, None, protocol)
        run_benchmark([f"phonondb={args.structures}"], args.out, spec, potential.describe(),
                      InProcessExecutor(potential), limit_per_generator=args.limit)
    wall = time.time() - start
    rows = read_structures(args.out)
    # a duplicate (two mp-ids of one crystal) takes the verdict of the structure it duplicates
    by_id = rows.set_index(Col.STRUCTURE_ID)
    verdict_columns = [Col.STATUS] + [verdict_column(t) for t in protocol.thresholds_thz]
    for index in rows.index[rows[Col.STATUS] == Status.DUPLICATE]:
        original = rows.at[index, Col.DUPLICATE_OF]
        if original in by_id.index:
            rows.loc[index, verdict_columns] = by_id.loc[original, verdict_columns].values
        else:  # interrupted run: the original was not reached
            rows = rows.drop(index)
    rows["mp_id"] = rows[Col.SOURCE].map(lambda s: Path(s).name.split(".")[0])
    labels = pd.read_csv(args.labels)
    merged = labels.merge(rows, on="mp_id", how="inner")
    if args.only_ids:
        merged = merged[merged["mp_id"].isin(Path(args.only_ids).read_text().split())]
    dft_stable = merged["label"] == "stable"
    report = {"model": args.model, "wall_s": round(wall, 1), "n_labelled": len(merged),
              "status_counts": merged[Col.STATUS].value_counts().to_dict()}
    for t in protocol.thresholds_thz:
        # not relaxed / phonon failure -> predicted unstable, as the benchmark counts it
        predicted = (merged[Col.STATUS] == Status.OK) & (merged[verdict_column(t)] == True)  # noqa: E712
        report[f"{t:g}"] = scores(predicted.astype(bool), dft_stable)
        print(f"threshold {t:g} THz:", report[f"{t:g}"])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
