"""Agreement of a potential's stability verdicts with DFT phonon labels (phonondb_dev), resumable.

    python benchmarks/phonondb_agreement.py --labels LABELS.csv --structures POSCAR_DIR --model chgnet --out runs/pdb-chgnet
    python benchmarks/phonondb_agreement.py ... --score-only            # score what an interrupted run wrote
    python benchmarks/phonondb_agreement.py ... --score-only --only-ids IDS.txt   # compare potentials on one set

The same science as ``phononbench validate`` (in-process, published protocol); the scoring lives in
``phononbench.reading.validation``. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from phononbench.reading.validation import load_labels, validate
from phononbench.running.composition import compose, protocol_for
from phononbench.running.pipeline import run_benchmark
from phononbench.running.run_folder import read_structures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", required=True)
    parser.add_argument("--structures", required=True)
    parser.add_argument("--model", default="chgnet")
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=None, help="only the first N materials (by file name)")
    parser.add_argument("--score-only", action="store_true", help="score the rows already in --out")
    parser.add_argument("--only-ids", help="file of label ids to score (to compare potentials on one set)")
    args = parser.parse_args()

    protocol = protocol_for("published", model=args.model)
    if not args.score_only:
        run = compose(protocol, args.device)  # the composition root, as the command line builds a run
        run_benchmark([f"phonondb={args.structures}"], args.out, run.spec, run.described, run.executor,
                      limit_per_generator=args.limit)
    labels = load_labels(args.labels)
    if args.only_ids:
        labels = labels[labels["label_id"].isin(Path(args.only_ids).read_text().split())]
    report = validate(read_structures(args.out), labels, protocol.thresholds_thz)
    report["model"] = args.model
    for t in protocol.thresholds_thz:
        print(f"threshold {t:g} THz:", report[f"{t:g}"])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
