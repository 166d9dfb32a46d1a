"""Verdict parity of two finished runs of the same inputs: the torchsim engine against the ASE reference.

    # SevenNet-0 (weights in its wheel; it has both an ASE calculator and a TorchSim model), both engines:
    phononbench run data/demo phonondb=../shared/data/phonondb_dev/poscar_unitcell --model sevennet \
        --engine batched --out runs/parity-batched --in-process
    phononbench run data/demo phonondb=../shared/data/phonondb_dev/poscar_unitcell --model sevennet \
        --engine torchsim --out runs/parity-torchsim --in-process
    python benchmarks/parity.py runs/parity-batched runs/parity-torchsim

``batched`` is the ASE reference engine (ASE's FIRE, FrechetCellFilter and FixSymmetry; it takes the serial
published path's steps exactly, tests/test_engine.py). Compared per structure that both runs computed: the
status, the verdict at the headline threshold on the published band path and on the Brillouin zone, and
the lowest frequency. Printed: agreement per generator, the largest lowest-frequency difference, every
disagreement with its two values; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from phononbench.records import Col, Status, bz_verdict_column, verdict_column
from phononbench.running.run_folder import read_structures


def compare(reference: pd.DataFrame, other: pd.DataFrame, threshold: float) -> dict:
    verdict, bz = verdict_column(threshold), bz_verdict_column(threshold)
    columns = [str(Col.STRUCTURE_ID), str(Col.GENERATOR), str(Col.STATUS), verdict, bz,
               str(Col.MIN_FREQUENCY_THZ), str(Col.RELAX_STEPS)]
    both = reference[columns].merge(other[columns], on=[str(Col.STRUCTURE_ID), str(Col.GENERATOR)],
                                    suffixes=("_ref", "_new"))
    computed = both[~both[f"{Col.STATUS}_ref"].isin([str(Status.INVALID_INPUT), str(Status.DUPLICATE)])]
    differ = (computed[f"{Col.STATUS}_ref"] != computed[f"{Col.STATUS}_new"]) | \
             (computed[f"{verdict}_ref"].fillna(False) != computed[f"{verdict}_new"].fillna(False)) | \
             (computed[f"{bz}_ref"].fillna(False) != computed[f"{bz}_new"].fillna(False))
    gap = (computed[f"{Col.MIN_FREQUENCY_THZ}_ref"] - computed[f"{Col.MIN_FREQUENCY_THZ}_new"]).abs()
    per_generator = {}
    for generator, group in computed.groupby(str(Col.GENERATOR)):
        n = len(group)
        agree = int((~differ[group.index]).sum())
        per_generator[generator] = {"structures": n, "agree": agree, "agreement": round(agree / n, 4) if n else None,
                                    "max_min_frequency_diff_thz": round(float(gap[group.index].max()), 4)}
    disagreements = [
        {"structure_id": row[str(Col.STRUCTURE_ID)],
         "status": [row[f"{Col.STATUS}_ref"], row[f"{Col.STATUS}_new"]],
         "verdict": [row[f"{verdict}_ref"], row[f"{verdict}_new"]], "bz_verdict": [row[f"{bz}_ref"], row[f"{bz}_new"]],
         "min_frequency_thz": [row[f"{Col.MIN_FREQUENCY_THZ}_ref"], row[f"{Col.MIN_FREQUENCY_THZ}_new"]],
         "relax_steps": [row[f"{Col.RELAX_STEPS}_ref"], row[f"{Col.RELAX_STEPS}_new"]]}
        for _, row in computed[differ].iterrows()]
    largest = gap.idxmax() if gap.notna().any() else None
    return {
        "threshold_thz": threshold, "structures": len(computed), "agree": int((~differ).sum()),
        "agreement": round(float((~differ).mean()), 4) if len(computed) else None,
        "max_min_frequency_diff_thz": round(float(gap.max()), 4) if largest is not None else None,
        "max_diff_structure": computed.loc[largest, str(Col.STRUCTURE_ID)] if largest is not None else None,
        "max_diff_values_thz": ([float(computed.loc[largest, f"{Col.MIN_FREQUENCY_THZ}_ref"]),
                                 float(computed.loc[largest, f"{Col.MIN_FREQUENCY_THZ}_new"])]
                                if largest is not None else None),
        "relax_steps_equal": int((computed[f"{Col.RELAX_STEPS}_ref"] == computed[f"{Col.RELAX_STEPS}_new"]).sum()),
        "per_generator": per_generator, "disagreements": disagreements,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=Path, help="run folder of the reference engine")
    parser.add_argument("other", type=Path, help="run folder of the engine compared")
    parser.add_argument("--threshold", type=float, default=-0.1)
    args = parser.parse_args()
    figures = compare(read_structures(args.reference), read_structures(args.other), args.threshold)
    figures.update(reference=str(args.reference), other=str(args.other))
    print(f"{'generator':20s} {'structures':>10s} {'agree':>6s} {'agreement':>9s} {'max |dfmin| THz':>16s}")
    for generator, g in figures["per_generator"].items():
        print(f"{generator:20s} {g['structures']:10d} {g['agree']:6d} {g['agreement']:9.4f} "
              f"{g['max_min_frequency_diff_thz']:16.4f}")
    print(f"{'all':20s} {figures['structures']:10d} {figures['agree']:6d} {figures['agreement']:9.4f} "
          f"{figures['max_min_frequency_diff_thz']:16.4f}  (largest: {figures['max_diff_structure']}, "
          f"{figures['max_diff_values_thz']})")
    print(f"relaxation step counts equal: {figures['relax_steps_equal']} / {figures['structures']}")
    for d in figures["disagreements"]:
        print(f"disagreement {d['structure_id']}: status {d['status']}, verdict {d['verdict']}, "
              f"BZ verdict {d['bz_verdict']}, min frequency {d['min_frequency_thz']} THz, steps {d['relax_steps']}")
    print(json.dumps(figures, default=str))


if __name__ == "__main__":
    main()
