"""Validation against DFT phonon labels: do our verdicts agree with first-principles phonons?

Labels: a CSV with an id column (``mp_id``, ``material_id`` or ``structure_id``) naming each structure
file by its stem (``mp-1190.POSCAR-unitcell`` -> ``mp-1190``), a ``label`` column (``stable`` /
``unstable``) and optionally a DFT lowest frequency (``fmin_comm_thz``). "Stable" is the positive class.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from phononbench.errors import SetupError
from phononbench.records import Col, Status, bz_verdict_column, is_stable, is_stable_bz, verdict_column

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
    return labels.rename(columns={id_column: "label_id"})


def structure_key(source: str) -> str:
    """The label id a structure file answers to: its file name up to the first dot."""
    return Path(str(source).split("#")[0]).name.split(".")[0]


def with_duplicate_verdicts(rows: pd.DataFrame, thresholds_thz) -> pd.DataFrame:
    """A labelled duplicate (two ids of one crystal) takes the verdict of the structure it duplicates."""
    rows = rows.copy()
    columns = [Col.STATUS, Col.MIN_FREQUENCY_THZ, Col.MIN_FREQUENCY_BZ_THZ]
    columns += [verdict_column(t) for t in thresholds_thz] + [bz_verdict_column(t) for t in thresholds_thz]
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
    predicted_stable, dft_stable = predicted_stable.astype(bool), dft_stable.astype(bool)
    tp = int((predicted_stable & dft_stable).sum())
    tn = int((~predicted_stable & ~dft_stable).sum())
    fp = int((predicted_stable & ~dft_stable).sum())
    fn = int((~predicted_stable & dft_stable).sum())
    n = tp + tn + fp + fn
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if (tp + fp) and (tp + fn) and precision + recall else float("nan")
    return {"n": n, "accuracy": (tp + tn) / n if n else float("nan"), "precision": precision, "recall": recall,
            "f1": f1, "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn}}


def merge_with_labels(rows: pd.DataFrame, labels: pd.DataFrame, thresholds_thz) -> pd.DataFrame:
    rows = with_duplicate_verdicts(rows, thresholds_thz)
    rows = rows.assign(label_id=rows[Col.SOURCE].map(structure_key))
    return labels.merge(rows, on="label_id", how="inner")


def validate(rows: pd.DataFrame, labels: pd.DataFrame, thresholds_thz) -> dict:
    """Scores per threshold. A structure that failed to relax or to give phonons is predicted unstable,
    as the benchmark counts it."""
    merged = merge_with_labels(rows, labels, thresholds_thz)
    dft_stable = merged["label"] == "stable"
    report = {"n_labelled": len(labels), "n_scored": len(merged),
              "status_counts": {str(k): int(v) for k, v in merged[Col.STATUS].value_counts().items()}}
    for t in thresholds_thz:
        report[f"{t:g}"] = scores(is_stable(merged, t), dft_stable)  # the published path
        report[f"bz {t:g}"] = scores(is_stable_bz(merged, t), dft_stable)  # the Brillouin zone
    return report


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
