"""Validation against DFT phonon labels: do our verdicts agree with first-principles phonons?

Labels: a CSV with an id column (``mp_id``, ``material_id`` or ``structure_id``) naming each structure
file by its stem (``mp-1190.POSCAR-unitcell`` -> ``mp-1190``), a ``label`` column (``stable`` /
``unstable``) and optionally a DFT lowest frequency (``fmin_comm_thz``). "Stable" is the positive class.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from phononbench.errors import SetupError
from phononbench.records import Col, Status, bz_verdict_column, is_stable, verdict_column
from phononbench.reading.report import markdown_cell

log = logging.getLogger(__name__)

ID_COLUMNS = ("mp_id", "material_id", "structure_id", "id")
DFT_FREQUENCY_COLUMNS = ("fmin_comm_thz", "dft_min_frequency_thz", "fmin_thz")


def load_labels(path: str | Path) -> pd.DataFrame:
    labels = pd.read_csv(path)
    id_column = next((c for c in ID_COLUMNS if c in labels.columns), None)
    if id_column is None or "label" not in labels.columns:
        raise SetupError(f"{path}: needs an id column ({', '.join(ID_COLUMNS)}) and a 'label' column")
    unknown = set(labels["label"]) - {"stable", "unstable"}
    if unknown:
        raise SetupError(f"{path}: labels must be 'stable' or 'unstable', found {sorted(unknown)}")
    repeated = labels[id_column][labels[id_column].duplicated()]
    if len(repeated):
        raise SetupError(f"{path}: each id once; {_first_five(repeated)} "
                         f"appear{'s' if repeated.nunique() == 1 else ''} more than once")
    return labels.rename(columns={id_column: "label_id"})


def _first_five(values) -> str:
    """Up to five of the values, once each, sorted: for messages that name what is wrong."""
    return ", ".join(map(str, sorted(set(values))[:5]))


def structure_key(source: str) -> str:
    """The label id a structure file answers to: its file name up to the first dot (a structure of a
    several-structure file is ``file#k``; a folder's name may hold a ``#`` too)."""
    return Path(str(source)).name.split("#")[0].split(".")[0]


def rows_by_material(folders, keep=None) -> pd.DataFrame:
    """The rows of several runs keyed by ``material`` (``structure_key``), one per material: of the rows
    ``keep`` (a function of the frame, giving a mask) accepts, the first run's. For the benchmarks that take
    up a run's structures again. A run that cannot be read raises SetupError, saying why."""
    from phononbench.running.run_folder import read_structures

    if not folders:
        raise SetupError("no run folders given")
    rows = pd.concat([read_structures(Path(folder)) for folder in folders], ignore_index=True)
    rows["material"] = rows[Col.SOURCE].map(structure_key)
    return rows[keep(rows) if keep is not None else slice(None)].drop_duplicates("material")


def with_duplicate_verdicts(rows: pd.DataFrame, thresholds_thz) -> pd.DataFrame:
    """A labelled duplicate (two ids of one crystal) takes the verdict of the structure it duplicates."""
    rows = rows.copy()
    columns = [Col.STATUS, Col.ERROR, Col.MIN_FREQUENCY_THZ, Col.MIN_FREQUENCY_BZ_THZ, Col.MIN_FREQUENCY_COMMENSURATE_THZ,
               Col.MIN_FREQUENCY_BEYOND_ACOUSTIC_DIPS_THZ, Col.MIN_FREQUENCY_BEYOND_ACOUSTIC_DIPS_QPOINT,
               Col.MIN_FREQUENCY_BZ_WITH_ACOUSTIC_DIPS_THZ, Col.HAS_FORCE_CONSTANTS, Col.MIN_FREQUENCY_QPOINT, Col.MIN_FREQUENCY_BZ_QPOINT]
    columns += [verdict_column(t) for t in thresholds_thz] + [bz_verdict_column(t) for t in thresholds_thz]
    columns = [c for c in columns if c in rows]  # rows from before a verdict lack its columns
    by_id = rows.set_index(Col.STRUCTURE_ID)
    keep = []
    for index, row in rows.iterrows():
        if row[Col.STATUS] == Status.DUPLICATE:
            if row[Col.DUPLICATE_OF] not in by_id.index:
                continue  # an interrupted run never reached the original
            rows.loc[index, columns] = by_id.loc[row[Col.DUPLICATE_OF], columns].values
        keep.append(index)
    return rows.loc[keep]


def scores(predicted_stable: pd.Series, dft_stable: pd.Series) -> dict:
    """Agreement of predicted with DFT verdicts. F1 both ways: with stable as the positive class (``f1``) and
    with "has imaginary modes" as the positive class (``f1_unstable``, as ffonons reports it); the
    false-unstable rate is matbench-discovery's phonon metric: DFT-stable materials called unstable."""
    from phononbench.rates import wilson_interval

    predicted_stable, dft_stable = predicted_stable.astype(bool), dft_stable.astype(bool)
    tp = int((predicted_stable & dft_stable).sum())
    tn = int((~predicted_stable & ~dft_stable).sum())
    fp = int((predicted_stable & ~dft_stable).sum())
    fn = int((~predicted_stable & dft_stable).sum())
    n = tp + tn + fp + fn
    low, high = wilson_interval(tp + tn, n)
    return {"n": n, "accuracy": (tp + tn) / n if n else float("nan"), "accuracy_ci": [low, high],
            "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "f1": _f1(tp, fp, fn),
            "f1_unstable": _f1(tn, fn, fp), "false_unstable_rate": _ratio(fn, tp + fn),
            "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn}}


def _ratio(k: int, n: int) -> float:
    return k / n if n else float("nan")


def _f1(true_positive: int, false_positive: int, false_negative: int) -> float:
    return _ratio(2 * true_positive, 2 * true_positive + false_positive + false_negative)


WHOLE_ZONE_QPOINT = "whole_zone_qpoint"  # where the whole zone's minimum is, where known


def with_whole_zone(rows: pd.DataFrame) -> pd.DataFrame:
    """The Brillouin zone's lowest frequency, acoustic dips next to Gamma included, on every row: a protocol that
    sets the dips aside keeps it in its own column; rows from before that column had it as the zone's minimum.
    Its q-point is known where it is the zone verdict's own minimum."""
    if Col.MIN_FREQUENCY_BZ_THZ not in rows:
        return rows
    zone = rows[Col.MIN_FREQUENCY_BZ_THZ].astype(float)
    whole = rows[Col.MIN_FREQUENCY_BZ_WITH_ACOUSTIC_DIPS_THZ].astype(float).fillna(zone) \
        if Col.MIN_FREQUENCY_BZ_WITH_ACOUSTIC_DIPS_THZ in rows else zone
    qpoint = rows[Col.MIN_FREQUENCY_BZ_QPOINT].where(whole == zone, None) if Col.MIN_FREQUENCY_BZ_QPOINT in rows else None
    return rows.assign(**{Col.MIN_FREQUENCY_BZ_WITH_ACOUSTIC_DIPS_THZ: whole, WHOLE_ZONE_QPOINT: qpoint})


def merge_with_labels(rows: pd.DataFrame, labels: pd.DataFrame, thresholds_thz) -> pd.DataFrame:
    rows = with_whole_zone(with_duplicate_verdicts(rows, thresholds_thz))
    rows = rows.assign(label_id=rows[Col.SOURCE].map(structure_key))
    return labels.merge(rows, on="label_id", how="inner", suffixes=("_labels", ""))  # the run's columns keep their names


# The verdicts scored: the published q-points; the whole Brillouin zone (high-symmetry path, commensurate points,
# mesh), acoustic dips included whatever the run's protocol did with them; the supercell's commensurate q-points
# alone (exact for the force constants: no interpolation); the Brillouin zone without acoustic dips next to
# Gamma (interpolated where the supercell measures nothing; the accurate preset's headline).
VERDICTS = ("path", "brillouin_zone", "commensurate", "beyond_acoustic_dips")
# the verdicts read off one recorded frequency, and how the report and tables prefix them
FREQUENCY_OF = {"brillouin_zone": Col.MIN_FREQUENCY_BZ_WITH_ACOUSTIC_DIPS_THZ,
                "commensurate": Col.MIN_FREQUENCY_COMMENSURATE_THZ,
                "beyond_acoustic_dips": Col.MIN_FREQUENCY_BEYOND_ACOUSTIC_DIPS_THZ}
_PREFIX = {"path": "", "brillouin_zone": "bz ", "commensurate": "commensurate ",
           "beyond_acoustic_dips": "beyond acoustic dips "}


def has_verdict(merged: pd.DataFrame, verdict: str, threshold_thz: float) -> bool:
    """Whether these rows carry the verdict. One read off a frequency column needs it on every computed row:
    rows computed before the column existed (a resumed or pooled run) leave the verdict out, rather than
    counting those rows unstable."""
    if verdict == "path":
        return verdict_column(threshold_thz) in merged
    column = FREQUENCY_OF[verdict]
    return column in merged and not merged.loc[merged[Col.STATUS] == Status.OK, column].isna().any()


def predicted_stable(merged: pd.DataFrame, verdict: str, threshold_thz: float) -> pd.Series:
    """Stable on one verdict at one threshold; a structure without phonons (any failure, the atom cap) is not:
    a material with no verdict is not one the potential got right. (The benchmark's rate leaves relaxation
    failures out of its denominator; against DFT labels every failure counts.)"""
    if verdict == "path":
        return is_stable(merged, threshold_thz)
    frequency = merged[FREQUENCY_OF[verdict]] if FREQUENCY_OF[verdict] in merged else None
    if frequency is None:
        return pd.Series(False, index=merged.index)
    return (merged[Col.STATUS] == Status.OK) & (frequency.astype(float) >= threshold_thz)


def validate(rows: pd.DataFrame, labels: pd.DataFrame, thresholds_thz) -> dict:
    """Scores per threshold and verdict. A structure that failed to relax or to give phonons is predicted
    unstable (``predicted_stable``); labelled ids that no structure answers to are listed, not scored."""
    merged = merge_with_labels(rows, labels, thresholds_thz)
    report = _report(merged, len(labels), thresholds_thz)
    report["label_ids_without_structure"] = sorted(set(labels["label_id"]) - set(merged["label_id"]))
    return report


def _report(merged: pd.DataFrame, n_labelled: int, thresholds_thz) -> dict:
    dft_stable = merged["label"] == "stable"
    computed = merged[merged[Col.STATUS] == Status.OK]
    report = {"n_labelled": n_labelled, "n_scored": len(merged), "n_labels_scored": int(merged["label_id"].nunique()),
              "status_counts": {str(k): int(v) for k, v in merged[Col.STATUS].value_counts().items()},
              "cost": {"mean_supercell_atoms": _mean(computed, Col.N_SUPERCELL_ATOMS),
                       "max_supercell_atoms": float(computed[Col.N_SUPERCELL_ATOMS].max())
                       if Col.N_SUPERCELL_ATOMS in computed and len(computed) else float("nan"),
                       "mean_relax_s": _mean(computed, Col.RELAX_WALL_S),
                       "mean_phonon_s": _mean(computed, Col.PHONON_WALL_S)}}
    for t in thresholds_thz:
        for verdict in VERDICTS:  # runs from before a verdict have none of it
            if has_verdict(merged, verdict, t):
                report[f"{_PREFIX[verdict]}{t:g}"] = scores(predicted_stable(merged, verdict, t), dft_stable)
    partly = [v for v, column in FREQUENCY_OF.items() if column in merged and not has_verdict(merged, v, 0.0)]
    if partly:
        log.warning("verdict%s left out: some computed rows have no %s (computed before the column, or its "
                    "computation failed)", "s" if len(partly) > 1 else "", " or ".join(partly))
    return report


def _mean(frame: pd.DataFrame, column: str) -> float:
    return float(frame[column].astype(float).mean()) if column in frame and len(frame) else float("nan")


def potential_label(potential: dict) -> str:
    """The potential's name, with its checkpoint file where the name alone does not say which weights."""
    from pathlib import Path

    name, checkpoint = potential["model"], potential.get("checkpoint")
    if name in ("sevennet", "mattersim") and checkpoint:
        return f"{name} ({Path(checkpoint).stem})"
    return name


def supercell_label(protocol: dict) -> str:
    """A run.json protocol's supercell as the tables name it: 2x2x2, or >=15 A for one sized by length
    (">=15 A zb": its zone-boundary supercell), with "cut" where its force constants were zeroed beyond half
    its width (the accurate preset before commit 423a994) and "-residual" where the undisplaced supercell's
    forces were subtracted; "?" for a run.json that names neither supercell."""
    length = protocol.get("supercell_min_length_a")
    label = ("x".join(map(str, protocol["supercell"])) if protocol.get("supercell")
             else f">={length:g} A" if isinstance(length, (int, float)) else "?")
    label += " zb" if protocol.get("supercell_zone_boundary") and not protocol.get("supercell") else ""
    label += " sym" if protocol.get("supercell_keeps_rotations") and not protocol.get("supercell") else ""
    label += " cut" if protocol.get("force_constants_cutoff_at_half_width") else ""
    return label + " -residual" if protocol.get("subtract_residual_forces") else label


def read_runs(folders, left_out: list[str] | None = None) -> dict[str, tuple[dict, pd.DataFrame]]:
    """Run name -> (its run.json with ``n_inputs`` and ``input_keys``, its rows), for ``table`` and
    ``differing_verdicts``. A run still going is read as far as it has come (``n_inputs`` says how far it
    will go); one with no rows yet is left out, saying so in ``left_out`` (else in the log), as is an id that
    several structures answer to; a folder given twice (or through a link) is read once."""
    from phononbench.running.run_folder import RUN_FILE, has_rows, read_manifest, read_run_info, read_structures

    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    runs, seen = {}, set()
    for folder in folders:
        where = Path(folder).resolve()
        if where in seen:
            continue
        seen.add(where)
        if (where / RUN_FILE).exists() and not has_rows(where):
            message = f"{folder} has no rows yet: left out"
            left_out.append(message) if left_out is not None else log.warning(message)
            continue
        manifest = read_manifest(where)
        info = {**read_run_info(where), "n_inputs": None if manifest is None else len(manifest),
                "input_keys": None if manifest is None else set(manifest[Col.SOURCE].map(structure_key))}
        rows = read_structures(where)
        keys = rows[Col.SOURCE].map(structure_key)
        shared = keys[keys.duplicated(keep=False)]
        if not shared.empty:  # each is scored: say so, a label counted more than once is not what one expects
            first = shared.iloc[0]
            message = (f"{folder}: {shared.nunique()} id(s) answer to more than one structure, each scored (e.g. "
                       f"{first}: {', '.join(rows.loc[keys == first, Col.STRUCTURE_ID].astype(str))})")
            left_out.append(message) if left_out is not None else log.warning(message)
        runs[where.name if where.name not in runs else str(where)] = (info, rows)
    return runs


def table(runs: dict[str, tuple[dict, pd.DataFrame]], labels: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, verdict, threshold) from validation runs: ``runs`` maps a run's name to its run.json
    and its rows. Runs made with the same settings (protocol, engine, potential and its weights) are also
    scored together, as one row per verdict and threshold named "pooled: ..." in which each material is taken
    from one run (one that computed it, else the first). The columns of docs/VALIDATION.md."""
    out = []
    for name, (info, rows) in runs.items():
        merged = merge_with_labels(rows, labels, tuple(info["protocol"]["thresholds_thz"]))
        out += _table_rows(name, info, info.get("status") == "complete", info.get("n_inputs", len(rows)), merged,
                           len(labels))
    for group in settings_groups(runs, labels):
        if len(group.names) > 1:
            out += _table_rows(group.name, group.info, group.complete, group.n_inputs, group.merged, len(labels))
    return pd.DataFrame(out)


@dataclass
class SettingsGroup:
    """The runs made with one set of settings, their labelled rows pooled (each material once)."""

    names: list[str]
    info: dict  # the first run's run.json
    merged: pd.DataFrame
    complete: bool
    n_inputs: int | None

    @property
    def name(self) -> str:
        return self.names[0] if len(self.names) == 1 else "pooled: " + " + ".join(self.names)

    @property
    def setting(self) -> str:
        """The settings in a few words: potential and supercell (and the preset where it is not these)."""
        protocol = self.info["protocol"]
        return f"{potential_label(self.info['potential'])} {supercell_label(protocol)} ({protocol.get('name', '?')})"


def settings_groups(runs: dict[str, tuple[dict, pd.DataFrame]], labels: pd.DataFrame) -> list[SettingsGroup]:
    """The runs grouped by their settings (protocol, engine, potential's weights), in the order first met."""
    groups: dict[str, list] = {}
    for name, (info, rows) in runs.items():
        merged = merge_with_labels(rows, labels, tuple(info["protocol"]["thresholds_thz"]))
        groups.setdefault(_settings(info), []).append((name, info, merged))
    out = []
    for group in groups.values():
        # the columns every run has (a verdict that some runs' rows predate is not pooled); a material in two
        # runs counts once: a computed row before a failed one (a worker lost in one run), else the first run's
        # (two files of one id in one run both count, as in that run's own rows)
        merged = pd.concat([m.assign(run=name) for name, _, m in group], join="inner", ignore_index=True)
        order = merged.assign(failed=merged[Col.STATUS] != Status.OK, rank=merged["run"].map(
            {name: k for k, (name, _, _) in enumerate(group)})).sort_values(["failed", "rank"], kind="stable")
        chosen = order.drop_duplicates("label_id").set_index("label_id")["run"]
        merged = merged[merged["run"] == merged["label_id"].map(chosen)]
        keys = [info.get("input_keys") for _, info, _ in group]
        n_inputs = None if any(k is None for k in keys) else len(set().union(*keys))
        out.append(SettingsGroup([name for name, _, _ in group], group[0][1], merged,
                                 all(info.get("status") == "complete" for _, info, _ in group), n_inputs))
    return out


def setting_names(groups: list[SettingsGroup]) -> list[str]:
    """Each group's settings in a few words; two that read alike (they differ elsewhere) named by their runs too."""
    named = [g.setting for g in groups]
    return [g.setting if named.count(g.setting) == 1 else f"{g.setting} [{g.name}]" for g in groups]


# per verdict: the lowest frequency and where it is
_MINIMUM = {"path": (Col.MIN_FREQUENCY_THZ, Col.MIN_FREQUENCY_QPOINT),
            "brillouin_zone": (Col.MIN_FREQUENCY_BZ_WITH_ACOUSTIC_DIPS_THZ, WHOLE_ZONE_QPOINT),
            "commensurate": (Col.MIN_FREQUENCY_COMMENSURATE_THZ, None),
            "beyond_acoustic_dips": (Col.MIN_FREQUENCY_BEYOND_ACOUSTIC_DIPS_THZ, Col.MIN_FREQUENCY_BEYOND_ACOUSTIC_DIPS_QPOINT)}


def differing_verdicts(runs: dict[str, tuple[dict, pd.DataFrame]], labels: pd.DataFrame,
                       verdict: str = "brillouin_zone", threshold_thz: float = -0.1) -> pd.DataFrame:
    """The materials whose verdict differs between settings (runs of one setting pooled, as ``table`` does), as
    ``verdict_changes`` gives them. Settings whose runs lack the verdict's column or threshold are left out."""
    frequency_column, q_column = _MINIMUM[verdict]
    groups = [g for g in settings_groups(runs, labels)
              if frequency_column in g.merged and has_verdict(g.merged, verdict, threshold_thz)]
    if len(groups) < 2:
        return pd.DataFrame()
    settings = {}
    for group, setting in zip(groups, setting_names(groups)):
        merged = group.merged.set_index("label_id")
        repeated = merged.index[merged.index.duplicated()]
        if len(repeated):
            log.warning("%s: %s given more than once; the first file's verdict is compared between settings",
                        setting, _first_five(repeated))
            merged = merged[~merged.index.duplicated()]
        settings[setting] = pd.DataFrame({
            "formula": merged[Col.FORMULA] if Col.FORMULA in merged else "", "dft": merged["label"],
            "status": merged[Col.STATUS], "frequency": merged[frequency_column].astype(float),
            "qpoint": merged[q_column] if q_column in merged else None,
            stable_column(threshold_thz): predicted_stable(merged, verdict, threshold_thz).astype(bool)})
    return verdict_changes(settings, (threshold_thz,))


def stable_column(threshold_thz: float) -> str:
    return f"stable at {threshold_thz:g}"


CHANGES_AT = "changes at (THz)"


def verdict_changes(settings: dict[str, pd.DataFrame], thresholds_thz) -> pd.DataFrame:
    """The materials whose verdict differs between settings at any of the thresholds, among the settings that
    computed them. ``settings`` maps a setting's name to its materials: a frame indexed by material with
    ``formula``, ``dft`` (the label), ``status``, ``frequency`` (the verdict's lowest, THz), ``qpoint`` (where it
    is; None where not known) and a ``stable_column`` per threshold (a failure unstable). One row per material:
    formula, DFT label, the thresholds at which it changes, and per setting the lowest frequency, its q-point and
    the verdict at each threshold, right or wrong ("not computed" where a setting has no row for it)."""
    thresholds_thz = tuple(thresholds_thz)
    for name, frame in settings.items():
        repeated = frame.index[frame.index.duplicated()]
        if len(repeated):
            raise ValueError(f"{name}: {_first_five(repeated)} more than once")
    out = []
    for material in sorted(set().union(*(frame.index for frame in settings.values()))):
        having = {name: frame.loc[material] for name, frame in settings.items() if material in frame.index}
        labels = {r["dft"] for r in having.values()}
        if len(labels) > 1:
            raise ValueError(f"{material}: labelled {' and '.join(sorted(labels))} in different settings")
        changes = [t for t in thresholds_thz if len({_stable(r, t) for r in having.values()}) > 1]
        if not changes:
            continue  # one verdict, or one setting only
        first = next(iter(having.values()))
        row = {"material": material, "formula": first["formula"], "dft": first["dft"],
               CHANGES_AT: ", ".join(f"{t:g}" for t in changes)}
        for name in settings:
            row[name] = _change_cell(having.get(name), thresholds_thz)
        out.append(row)
    return pd.DataFrame(out, columns=["material", "formula", "dft", CHANGES_AT, *settings])


def _stable(row: pd.Series, threshold_thz: float) -> bool:
    """Called stable; a verdict not there (NA) is not."""
    stable = row[stable_column(threshold_thz)]
    return False if pd.isna(stable) else bool(stable)


def _change_cell(row: pd.Series | None, thresholds_thz) -> str:
    if row is None:
        return "not computed"
    verdicts = " / ".join(f"{'stable' if stable else 'unstable'} ({'right' if stable == (row['dft'] == 'stable') else 'wrong'})"
                          for stable in (_stable(row, t) for t in thresholds_thz))
    if row["status"] != Status.OK:
        return f"{row['status']}: {verdicts}"
    if pd.isna(row["frequency"]):
        return f"not recorded: {verdicts}"
    frequency = float(row["frequency"])
    text = f"{frequency:.3f}"
    if any((float(text) >= t) != (frequency >= t) for t in thresholds_thz):
        text = f"{frequency:.6f}"  # rounded, it would read as on the other side of a threshold
    return f"{text} THz{_at(row.get('qpoint'))}: {verdicts}"


def _at(qpoint) -> str:
    """" at (0.5, 0, 0)" for a q-point as a run keeps it (numbers) or a CSV writes it ("[0.5, 0.0, 0.0]", or
    numpy's "[0.5 0. 0.]"); "" where there is none."""
    if isinstance(qpoint, str):
        text = qpoint.strip("[]() ").replace(",", " ").split()
        try:
            qpoint = [float(x) for x in text]
        except ValueError:
            return f" at {qpoint}"
    if qpoint is None or not hasattr(qpoint, "__len__") or len(qpoint) == 0:
        return ""
    return " at (" + ", ".join(f"{float(x):.3g}" for x in qpoint) + ")"


def differing_markdown(runs: dict[str, tuple[dict, pd.DataFrame]], labels: pd.DataFrame,
                       verdicts=("path", "brillouin_zone", "beyond_acoustic_dips"), threshold_thz: float = -0.1) -> str:
    """``differing_verdicts`` per verdict as Markdown, as docs/VALIDATION.md shows it; "" if none differ."""
    return "\n".join(changes_markdown(changes.rename(columns=markdown_cell),  # settings' names as written
                                       f"Verdicts that differ between settings ({verdict}, {threshold_thz:g} THz): "
                                       "lowest frequency, where, verdict")
                     for verdict in verdicts if not (changes := differing_verdicts(runs, labels, verdict, threshold_thz)).empty)


def changes_markdown(changes: pd.DataFrame, heading: str, with_thresholds: bool = False) -> str:
    """``verdict_changes``' rows as a Markdown table under ``heading``, with the column of the thresholds at which
    each changes where there are several. The settings' names (the columns) are Markdown already."""
    settings = [c for c in changes.columns if c not in ("material", "formula", "dft", CHANGES_AT)]
    first = ["DFT", CHANGES_AT] if with_thresholds else ["DFT"]
    lines = [heading, "", "| material | " + " | ".join(first + settings) + " |",
             "|---" * (1 + len(first) + len(settings)) + "|"]
    for r in changes.to_dict("records"):
        cells = [r["dft"], r[CHANGES_AT]] if with_thresholds else [r["dft"]]
        lines.append("| " + " | ".join(map(markdown_cell, [f"{r['formula']} ({r['material']})", *cells, *(r[c] for c in settings)])) + " |")
    return "\n".join(lines) + "\n"


# the per-material table's columns taken from the run, where the run has them
_PER_MATERIAL_COLUMNS = (Col.STRUCTURE_ID, Col.SOURCE, Col.DUPLICATE_OF, Col.STATUS, Col.ERROR, Col.N_ATOMS, Col.N_SUPERCELL_ATOMS, Col.SUPERCELL_MATRIX,
                         Col.MIN_FREQUENCY_THZ, Col.MIN_FREQUENCY_QPOINT, Col.MIN_FREQUENCY_BZ_THZ,
                         Col.MIN_FREQUENCY_BZ_QPOINT, Col.MIN_FREQUENCY_COMMENSURATE_THZ,
                         Col.MIN_FREQUENCY_BEYOND_ACOUSTIC_DIPS_THZ, Col.MIN_FREQUENCY_BEYOND_ACOUSTIC_DIPS_QPOINT,
                         Col.MIN_FREQUENCY_BZ_WITH_ACOUSTIC_DIPS_THZ, WHOLE_ZONE_QPOINT,
                         Col.RELAX_WALL_S, Col.PHONON_WALL_S)


def per_material(runs: dict[str, tuple[dict, pd.DataFrame]], labels: pd.DataFrame) -> pd.DataFrame:
    """Every scored material under every setting (runs of one setting pooled, as ``table`` does): its DFT
    label, what the run computed (lowest frequency and q-point per verdict, supercell, seconds) and, per
    verdict and threshold, whether it is called stable and whether that agrees with DFT. The evidence behind
    the table's counts, one row each, to keep beside it (``validate --per-material``)."""
    dft_frequency = next((c for c in DFT_FREQUENCY_COLUMNS if c in labels.columns), None)
    out = []
    groups = settings_groups(runs, labels)
    for group, setting in zip(groups, setting_names(groups)):
        merged = group.merged
        frame = pd.DataFrame({"setting": setting, "run": merged["run"], "run_complete": group.complete,
                              "material": merged["label_id"], "formula": merged.get(Col.FORMULA, ""),
                              "dft": merged["label"]})
        if dft_frequency is not None:
            frame["dft_min_frequency_thz"] = merged[dft_frequency]
        for column in _PER_MATERIAL_COLUMNS:
            if column in merged:
                frame[str(column)] = merged[column].map(_plain)
        dft_stable = merged["label"] == "stable"
        for verdict in VERDICTS:
            for t in group.info["protocol"]["thresholds_thz"]:
                if not has_verdict(merged, verdict, t):
                    continue  # rows from before the verdict
                stable = predicted_stable(merged, verdict, t).astype(bool)
                frame[f"stable_{verdict}_{t:g}"] = stable
                frame[f"right_{verdict}_{t:g}"] = stable == dft_stable
        out.append(frame)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _plain(value):
    """A q-point or supercell matrix as JSON text a CSV keeps (a matrix as 3 rows; not a number: null)."""
    if hasattr(value, "__len__") and not isinstance(value, str):
        import json

        import numpy as np

        numbers = np.round(np.asarray(value, dtype=float), 4)
        numbers = numbers.reshape(3, 3) if numbers.size == 9 else numbers
        return json.dumps(np.where(np.isfinite(numbers), numbers, None).tolist())
    return value


def _settings(info: dict) -> str:
    """What must be equal for two runs' verdicts to be scored as one: protocol, engine, potential's weights, the
    method's code (runs from before it was recorded pool with each other only), and the dedup (a run's duplicate
    takes its original's verdict, which a validation, computing every structure, does not)."""
    import json

    from phononbench.running.run_folder import RESUME_POTENTIAL_KEYS, protocol_as_recorded

    potential = info.get("potential") or {}
    protocol = protocol_as_recorded(info["protocol"])  # as a resume compares them
    return json.dumps([protocol, info.get("engine"), [potential.get(k) for k in RESUME_POTENTIAL_KEYS],
                       info.get("method_sha256"), info.get("deduplicate", True)], sort_keys=True, default=str)


def _table_rows(name: str, info: dict, complete: bool, n_inputs, merged: pd.DataFrame, n_labelled: int) -> list[dict]:
    protocol = info["protocol"]
    thresholds = tuple(protocol["thresholds_thz"])
    report = _report(merged, n_labelled, thresholds)
    supercell = supercell_label(protocol)
    out = []
    for verdict in VERDICTS:
        prefix = _PREFIX[verdict]
        for t in thresholds:
            if f"{prefix}{t:g}" not in report:
                continue
            r = report[f"{prefix}{t:g}"]
            out.append({"run": name, "complete": complete, "n_inputs": n_inputs,
                        "potential": potential_label(info["potential"]), "supercell": supercell,
                        "verdict": verdict, "threshold_thz": t, "n": r["n"], "accuracy": r["accuracy"],
                        "accuracy_low": r["accuracy_ci"][0], "accuracy_high": r["accuracy_ci"][1],
                        "f1_stable": r["f1"], "f1_unstable": r["f1_unstable"],
                        "false_unstable_rate": r["false_unstable_rate"], **r["confusion"],
                        "mean_supercell_atoms": report["cost"]["mean_supercell_atoms"],
                        "wall_s_per_structure": report["cost"]["mean_relax_s"] + report["cost"]["mean_phonon_s"]})
    return out


def run_label(row) -> str:
    """A run as the table names it: an unfinished one says so, with how many inputs it has."""
    return row.run if row.complete else f"{row.run} (unfinished: {row.n_inputs} inputs)"


def to_markdown(board: pd.DataFrame) -> str:
    """The validation table (``table``) as Markdown, as docs/VALIDATION.md shows it."""
    lines = ["| run | potential | supercell | verdict | threshold (THz) | n | accuracy (95% Wilson) | F1 stable | "
             "F1 imaginary | false unstable | TP | FP | FN | TN | supercell atoms | wall s / structure |",
             "|" + "---|" * 16]
    for r in board.itertuples(index=False):
        lines.append(f"| {markdown_cell(run_label(r))} | {markdown_cell(r.potential)} | {markdown_cell(r.supercell)} | {r.verdict} | {r.threshold_thz:g} | {r.n} | "
                     f"{r.accuracy:.3f} ({r.accuracy_low:.3f}-{r.accuracy_high:.3f}) | {r.f1_stable:.3f} | "
                     f"{r.f1_unstable:.3f} | {r.false_unstable_rate:.3f} | {r.tp} | {r.fp} | {r.fn} | {r.tn} | "
                     f"{r.mean_supercell_atoms:.0f} | {r.wall_s_per_structure:.1f} |")
    return "\n".join(lines) + "\n"


def scatter_plot(rows: pd.DataFrame, labels: pd.DataFrame, thresholds_thz, path: str | Path) -> Path | None:
    """Predicted against DFT lowest frequency, when the labels carry one."""
    column = next((c for c in DFT_FREQUENCY_COLUMNS if c in labels.columns), None)
    if column is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    merged = merge_with_labels(rows, labels, thresholds_thz)
    merged = merged[merged[Col.STATUS] == Status.OK]
    figure, axes = plt.subplots(figsize=(5, 5))
    for label, colour in (("stable", "tab:blue"), ("unstable", "tab:red")):
        part = merged[merged["label"] == label]
        axes.scatter(part[column], part[Col.MIN_FREQUENCY_THZ], s=14, c=colour, label=f"DFT {label}")
    lows = [merged[column].min(), merged[Col.MIN_FREQUENCY_THZ].min(), -0.5]
    highs = [merged[column].max(), merged[Col.MIN_FREQUENCY_THZ].max(), 0.5]
    low, high = min(lows), max(highs)
    axes.plot([low, high], [low, high], "k:", lw=0.8)
    axes.axhline(thresholds_thz[0], color="grey", lw=0.8, ls="--")
    axes.set_xlabel(f"DFT lowest frequency ({column}), THz")
    axes.set_ylabel("predicted lowest frequency, THz")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)
