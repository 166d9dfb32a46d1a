"""One validation table over materials measured in different ways with the same settings: the per-material
CSVs of ``phononbench validate --per-material`` (run folders) and of ``benchmarks/force_constant_fits.py
--csv`` (refits of cached forces), each material once. docs/VALIDATION.md uses it to score all of
phonondb_dev under ``accurate`` when part of it was refitted and part run.

    python benchmarks/validation_union.py --per-material runs.csv --fits fits.csv --fit residual_subtracted

Per verdict (Brillouin zone, commensurate q-points alone, Brillouin zone beyond acoustic dips next to Gamma)
and threshold: accuracy with its 95% Wilson interval, F1 both ways, the false-unstable rate and the
materials behind each error; last line JSON. A material given twice is refused (say which source to keep by
leaving it out of the other, or with ``--instead``): two measurements of one material would be counted twice.

    python benchmarks/validation_union.py --per-material runs.csv --fits fits.csv --instead again.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from phononbench.reading.validation import FREQUENCY_OF
from phononbench.records import Col

# per verdict, the lowest frequency's column in validate's per-material CSV ("path": the published path's)
_RUN_COLUMNS = {"path": Col.MIN_FREQUENCY_THZ, **FREQUENCY_OF}

# the per-material columns of each source, by verdict: validate's are the run's own columns, as validate reads
# them (the whole zone: its own column where a protocol set acoustic dips aside in min_frequency_bz_thz; an older
# CSV has only min_frequency_bz_thz, then the whole zone's)
_FIT_COLUMNS = {"path": None, "brillouin_zone": "bz", "commensurate": "commensurate", "beyond_acoustic_dips": "bz_beyond_acoustic_dips"}


def _column(frame: pd.DataFrame, column) -> pd.Series:
    """A column of the CSV, or not-a-number where the CSV is from before it (or a refit has none)."""
    return frame[column] if column is not None and column in frame else pd.Series(float("nan"), index=frame.index)


def _read(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise SystemExit(f"{path}: cannot read it as a CSV ({type(error).__name__}: {error})") from None


def from_runs(path: Path, setting: str | None, choose: str = "pick one (--setting, or setting = in a recipe)") -> pd.DataFrame:
    frame = _read(path)
    if "setting" not in frame or "status" not in frame:
        raise SystemExit(f"{path}: not a CSV of validate --per-material (no setting or status column)")
    if setting is not None:
        if not (frame["setting"] == setting).any():
            raise SystemExit(f"{path}: no rows of the setting {setting!r} (it has: {', '.join(frame['setting'].unique())})")
        frame = frame[frame["setting"] == setting]
    if frame["setting"].nunique() > 1:
        raise SystemExit(f"{path}: several settings ({', '.join(frame['setting'].unique())}); {choose}")
    ok = frame["status"] == "ok"  # a failure counts as unstable, as the benchmark counts it
    out = pd.DataFrame({"material": frame["material"], "formula": frame["formula"], "dft": frame["dft"],
                        "source": str(path), "setting": frame["setting"], "status": frame["status"],
                        "headline_qpoint": _column(frame, Col.MIN_FREQUENCY_BEYOND_ACOUSTIC_DIPS_QPOINT),
                        "n_supercell_atoms": _column(frame, Col.N_SUPERCELL_ATOMS),
                        "wall_s": (_column(frame, Col.RELAX_WALL_S) + _column(frame, Col.PHONON_WALL_S)).where(ok)})
    for verdict, column in _RUN_COLUMNS.items():
        values = _column(frame, column)
        if verdict == "brillouin_zone" and Col.MIN_FREQUENCY_BZ_THZ in frame:  # a CSV from before the column
            values = values.fillna(frame[Col.MIN_FREQUENCY_BZ_THZ])
        out[verdict] = values.where(ok)
        out[f"missing {verdict}"] = ok & values.isna()  # computed before the run recorded this verdict
    return out


def from_fits(path: Path, fit: str) -> pd.DataFrame:
    frame = _read(path)
    if "fit" not in frame:
        raise SystemExit(f"{path}: not a CSV of force_constant_fits.py --csv (no fit column)")
    frame = frame[frame["fit"] == fit]
    if frame.empty:
        raise SystemExit(f"{path}: no rows of the fit {fit!r}")
    # a refit of cached forces: no relaxation time, so no wall seconds to compare with a run's
    out = pd.DataFrame({"material": frame["material"], "formula": frame["formula"], "dft": frame["dft"],
                        "source": str(path), "setting": None, "potential": _column(frame, "potential"),
                        "headline_qpoint": _column(frame, "qpoint_beyond_acoustic_dips"),
                        "n_supercell_atoms": _column(frame, "n_supercell_atoms"), "wall_s": float("nan")})
    failed = frame["error"].notna() if "error" in frame else pd.Series(False, index=frame.index)
    out["status"] = failed.map({True: "failed", False: "ok"})
    for verdict, column in _FIT_COLUMNS.items():
        values = _column(frame, column)
        out[verdict] = values
        out[f"missing {verdict}"] = ~failed & values.isna()
    return out


def _replacing(replaced: pd.DataFrame, replacing: pd.DataFrame) -> pd.DataFrame:
    """``--instead``'s rows, once each is known to replace a material of the other sources with the same DFT label,
    computed with the same potential (a setting's first word), saying on stderr what replaces what."""
    twice = replacing[replacing["material"].duplicated()]
    if len(twice):
        raise SystemExit(f"--instead gives these twice: {', '.join(sorted(set(twice['material'])))}")
    unknown = sorted(set(replacing["material"]) - set(replaced.index))
    if unknown:
        raise SystemExit(f"--instead: not in the other sources: {', '.join(unknown)}")
    before = replaced.loc[replacing["material"]]
    relabelled = replacing.loc[before["dft"].to_numpy() != replacing["dft"].to_numpy(), "material"]
    if len(relabelled):
        raise SystemExit(f"--instead: another DFT label for {', '.join(relabelled)}")
    potential = {setting.split(" ")[0] for setting in pd.concat([before["setting"], replacing["setting"]]).dropna()}
    if len(potential) > 1:
        raise SystemExit(f"--instead: another potential ({', '.join(sorted(potential))}); replace a material's "
                         "verdict only with one of the same potential")
    for setting, group in replacing.groupby("setting"):
        print(f"--instead: {len(group)} materials at {setting} replace those of "
              f"{', '.join(sorted(before.loc[group['material'], 'source'].unique()))}", file=sys.stderr)
    return replacing


def union(per_material, fits=(), instead=(), setting=None, fit="residual_subtracted") -> pd.DataFrame:
    """Each material once: the rows of the per-material and refit CSVs, with ``instead``'s in place of the same
    materials' (in the order given: a later one replaces what an earlier one put in)."""
    rows = pd.concat([from_runs(p, setting) for p in per_material] + [from_fits(p, fit) for p in fits],
                     ignore_index=True)
    for path in instead:
        replacing = from_runs(path, None, "give --instead a CSV of one setting")
        rows = pd.concat([rows[~rows["material"].isin(replacing["material"])],
                          _replacing(rows.drop_duplicates("material").set_index("material"), replacing)],
                         ignore_index=True)
    # a setting begins with its potential's name; refits name theirs (those written before the column do not,
    # and are the caller's to keep apart)
    named = rows["setting"].dropna().map(lambda s: str(s).split(" ")[0])
    potentials = sorted(set(named) | set(rows.get("potential", pd.Series(dtype=object)).dropna()))
    if len(potentials) > 1:
        raise SystemExit(f"several potentials in one table ({', '.join(potentials)}): score each on its own")
    twice = rows[rows["material"].duplicated(keep=False)]
    if len(twice):
        raise SystemExit("given twice: " + ", ".join(f"{m} ({', '.join(g['source'])})" for m, g in twice.groupby("material")))
    return rows


def table(rows: pd.DataFrame, thresholds=(-0.1, -0.001)) -> list[dict]:
    from phononbench.reading.validation import scores

    dft_stable = rows["dft"] == "stable"
    out = []
    for verdict in _RUN_COLUMNS:
        missing = rows.loc[rows[f"missing {verdict}"].astype(bool), "material"]
        if len(missing):  # not counted unstable: left out, saying so
            print(f"{verdict}: left out, not recorded for {', '.join(sorted(missing))}", file=sys.stderr)
            continue
        for threshold in thresholds:
            stable = rows[verdict].astype(float) >= threshold  # NaN: failed, unstable
            s = scores(stable, dft_stable)
            out.append({"verdict": verdict, "threshold_thz": threshold, "n": s["n"], "accuracy": s["accuracy"],
                        "accuracy_ci": s["accuracy_ci"], "f1_stable": s["f1"], "f1_unstable": s["f1_unstable"],
                        "false_unstable_rate": s["false_unstable_rate"], **s["confusion"],
                        "false_unstable": _named(rows[dft_stable & ~stable]),
                        "false_stable": _named(rows[~dft_stable & stable])})
    return out


def _named(rows: pd.DataFrame) -> list[str]:
    """The materials as "formula (id)": two polymorphs of one formula (KNbO3) are two materials."""
    return sorted(f"{f} ({m})" for f, m in zip(rows["formula"], rows["material"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-material", type=Path, nargs="*", default=[], help="validate --per-material CSVs")
    parser.add_argument("--setting", help="the setting to take from the per-material CSVs (if several)")
    parser.add_argument("--fits", type=Path, nargs="*", default=[], help="force_constant_fits.py --csv files")
    parser.add_argument("--fit", default="residual_subtracted", help="which fit to take from --fits")
    parser.add_argument("--instead", type=Path, nargs="*", default=[],
                        help="validate --per-material CSVs whose materials replace the same materials of the other "
                             "sources (some materials run again with another setting), each in turn")
    args = parser.parse_args(argv)
    if not args.per_material and not args.fits:
        parser.error("give --per-material and/or --fits")
    rows = union(args.per_material, args.fits, args.instead, args.setting, args.fit)
    results = table(rows)
    for r in results:
        low, high = r["accuracy_ci"]
        print(f"{r['verdict']:21s} {r['threshold_thz']:7g}  n={r['n']}  accuracy={r['accuracy']:.3f} ({low:.3f}-{high:.3f})"
              f"  F1 stable={r['f1_stable']:.3f}  F1 imaginary={r['f1_unstable']:.3f}"
              f"  false-unstable={r['fn']}/{r['tp'] + r['fn']}  false-stable={r['fp']}/{r['fp'] + r['tn']}")
        print(f"    false-unstable: {', '.join(r['false_unstable']) or '-'};  false-stable: {', '.join(r['false_stable']) or '-'}")
    print(json.dumps({"n": len(rows), "scores": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
