"""Figures for a run (PNG): rates with intervals, rate against sample size, lowest-frequency
histograms, and the phonon band structure of one structure."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from phononbench.reading import analysis  # noqa: E402
from phononbench.records import Col  # noqa: E402


LABEL_LENGTH = 48  # a longer name is cut ("..."): whole, it would push the plot out of its figure


def label(text) -> str:
    """A name as matplotlib shows it literally, on one line and at most LABEL_LENGTH characters (the tables
    have it whole): ``$`` would start mathtext (and a stray one raises)."""
    text = " ".join(str(text).splitlines())
    if len(text) > LABEL_LENGTH:  # cut in the middle: an entry's qualifier "(potential, protocol)" is at the end
        head = (LABEL_LENGTH - 3) // 2
        text = text[:head] + "..." + text[len(text) - (LABEL_LENGTH - 3 - head):]
    return text.replace("$", r"\$")


def _save(figure, path: str | Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def rates_figure(board: pd.DataFrame, path: str | Path) -> Path:
    """Headline rate per generator with its 95% Wilson interval (board: from ``ranking.build``)."""
    figure, axes = plt.subplots(figsize=(6, 0.45 * len(board) + 1.2))
    y = np.arange(len(board))[::-1]
    rate = 100 * board[Col.STABILITY_RATE].to_numpy()
    errors = 100 * np.vstack([board[Col.STABILITY_RATE] - board[Col.CI_LOW], board[Col.CI_HIGH] - board[Col.STABILITY_RATE]])
    axes.errorbar(rate, y, xerr=errors, fmt="o", capsize=3)
    names = board[Col.GENERATOR] if Col.COMPLETE not in board else \
        [g if done else f"{g} (unfinished)" for g, done in zip(board[Col.GENERATOR], board[Col.COMPLETE])]
    axes.set_yticks(y, [label(g) for g in names])
    axes.set_xlabel("dynamically stable / relaxed (%)")
    axes.set_xlim(0, 100)
    return _save(figure, path)


def rate_vs_sample_size_figure(structures: pd.DataFrame, threshold_thz: float, path: str | Path,
                               brillouin_zone: bool = False) -> Path:
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for generator, frame in structures.groupby(Col.GENERATOR, sort=True):
        curve = analysis.rate_vs_sample_size(frame, threshold_thz, brillouin_zone=brillouin_zone)
        if curve.empty:
            continue
        line, = axes.plot(curve["sample_size"], 100 * curve["mean"], label=label(generator))
        axes.fill_between(curve["sample_size"], 100 * curve["low"], 100 * curve["high"], alpha=0.2,
                          color=line.get_color())
    axes.set_xscale("log")
    axes.set_xlabel("sample size (relaxed structures)")
    axes.set_ylabel(f"stable at {threshold_thz:g} THz{', zone' if brillouin_zone else ''} (%)")
    axes.legend(fontsize=7)
    return _save(figure, path)


def min_frequency_histogram(structures: pd.DataFrame, path: str | Path, thresholds_thz=(-0.1,),
                            brillouin_zone: bool = False) -> Path:
    """Lowest frequencies per generator, on the published path or over the Brillouin zone (``brillouin_zone``:
    what a zone-ranked board counts), with the thresholds drawn."""
    column = Col.MIN_FREQUENCY_BZ_THZ if brillouin_zone else Col.MIN_FREQUENCY_THZ
    data = analysis.min_frequencies(structures).dropna(subset=[column])
    figure, axes = plt.subplots(figsize=(6, 3.5))
    if len(data):
        low, high = min(data[column].min(), -1.0), max(data[column].max(), 0.5)
        bins = np.linspace(low, high, 40)
        for generator, frame in data.groupby(Col.GENERATOR, sort=True):
            axes.hist(frame[column], bins=bins, histtype="step", label=label(generator))
    for t in thresholds_thz:
        axes.axvline(t, color="grey", ls="--", lw=0.8)
    axes.set_xlabel(f"lowest frequency {'over the Brillouin zone' if brillouin_zone else 'on the band path'} (THz)")
    axes.set_ylabel("structures")
    axes.legend(fontsize=7)
    return _save(figure, path)


def _point_name(text: str) -> str:
    """A q-point label as plain text: phonopy's "$\\mathrm{M}$" and "$\\Gamma$", seekpath's "GAMMA"."""
    plain = re.sub(r"\\mathrm\{([^}]*)\}", r"\1", text).replace("$", "")
    return plain.replace("\\Gamma", "Γ").replace("GAMMA", "Γ")


def band_structure_figure(bands: dict, title: str, path: str | Path, threshold_thz: float = -0.1) -> Path:
    """Phonon bands along a path (``phonons.band_path`` or ``phonons.high_symmetry_band_path``); branches
    dipping below the threshold (imaginary, shown negative) in red, the lowest point marked."""
    labels, connections = bands["labels"], bands["path_connections"]
    figure, axes = plt.subplots(figsize=(7, 4))
    ticks, tick_labels, label_index, after_break = [], [], 0, False
    lowest = (np.inf, 0.0)
    for k, (distance, frequency) in enumerate(zip(bands["distances"], bands["frequencies"])):
        frequency = np.asarray(frequency)
        for branch in frequency.T:
            axes.plot(distance, branch, color="tab:red" if branch.min() < threshold_thz else "tab:blue", lw=0.9)
        iq = int(np.argmin(frequency.min(axis=1)))
        lowest = min(lowest, (float(frequency[iq].min()), float(distance[iq])))
        if not ticks:
            ticks.append(distance[0])
            tick_labels.append(labels[label_index])
        elif after_break:  # a jump in the path: both ends share one tick, "H|P"
            tick_labels[-1] = f"{tick_labels[-1]}|{labels[label_index]}"
        label_index += 1
        ticks.append(distance[-1])
        tick_labels.append(labels[label_index])
        after_break = not connections[k]
        if after_break:
            label_index += 1
    axes.axhline(0, color="black", lw=0.6)
    if lowest[0] < threshold_thz:
        axes.plot(lowest[1], lowest[0], "x", color="tab:red", ms=9, mew=2, label=f"lowest {lowest[0]:.3g} THz")
        axes.legend(loc="upper right", fontsize=8)
    for x in ticks:
        axes.axvline(x, color="grey", lw=0.4)
    axes.set_xticks(ticks, [_point_name(t) for t in tick_labels])
    axes.set_xlim(ticks[0], ticks[-1])
    axes.set_ylabel("frequency (THz)")
    axes.set_title(label(title))
    return _save(figure, path)
