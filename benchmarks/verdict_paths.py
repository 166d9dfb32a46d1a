"""What the Brillouin-zone verdict adds to a finished run: both rates per generator, the structures whose
verdict differs between the published path and the Brillouin zone, the relaxation step counts under the
published cycles, and the cost of the Brillouin-zone verdict.

    python benchmarks/verdict_paths.py runs/demo

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json

from phononbench.records import Col, Status, bz_verdict_column, verdict_column
from phononbench.running.run_folder import read_run_info, read_structures, read_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    args = parser.parse_args()

    info, rows, summary = read_run_info(args.run), read_structures(args.run), read_summary(args.run)
    thresholds = tuple(info["protocol"]["thresholds_thz"])
    done = rows[rows[Col.STATUS] == Status.OK]
    report = {"run": args.run, "model": info["potential"]["model"], "n_ok": len(done), "rates": [], "changed": {}}
    for _, r in summary.iterrows():
        report["rates"].append({k: (r[k] if isinstance(r[k], str) else float(r[k])) for k in
                                (Col.GENERATOR, Col.THRESHOLD_THZ, Col.N_RELAXED, Col.N_STABLE, Col.STABILITY_RATE,
                                 Col.N_STABLE_BZ, Col.STABILITY_RATE_BZ, Col.N_STABLE_NOT_3D)})
    for t in thresholds:
        differ = done[done[verdict_column(t)] != done[bz_verdict_column(t)]]
        report["changed"][f"{t:g}"] = [
            {"structure_id": r[Col.STRUCTURE_ID], "published_path_thz": round(float(r[Col.MIN_FREQUENCY_THZ]), 4),
             "brillouin_zone_thz": round(float(r[Col.MIN_FREQUENCY_BZ_THZ]), 4),
             "bz_source": r[Col.MIN_FREQUENCY_BZ_SOURCE]} for _, r in differ.iterrows()]
        print(f"{len(differ)} of {len(done)} structures change verdict at {t:g} THz between the two paths")
    relaxed = rows[rows[Col.RELAX_STEPS].notna()]
    steps = relaxed[Col.RELAX_STEPS]
    report["relax_steps"] = {"n": int(len(steps)), "median": float(steps.median()), "max": int(steps.max()),
                             "mean": round(float(steps.mean()), 1),
                             "more_than_one_cycle": int((relaxed[Col.RELAX_CYCLES] > 1).sum())}
    supercell = done[done[Col.PHONON_BZ_WALL_S].notna()]
    report["bz_cost"] = {
        "mean_bz_s_per_structure": round(float(supercell[Col.PHONON_BZ_WALL_S].mean()), 4),
        "mean_phonon_s_per_structure": round(float(supercell[Col.PHONON_WALL_S].mean()), 4),
        "bz_share_of_phonon_stage": round(float(supercell[Col.PHONON_BZ_WALL_S].sum() / supercell[Col.PHONON_WALL_S].sum()), 4),
    }
    report["bz_minimum_source"] = {str(k): int(v) for k, v in done[Col.MIN_FREQUENCY_BZ_SOURCE].value_counts().items()}
    print("relaxation steps:", report["relax_steps"])
    print("Brillouin-zone verdict cost:", report["bz_cost"])
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
