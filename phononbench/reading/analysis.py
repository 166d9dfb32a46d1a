"""Reading a run: stability rates with their uncertainty, and where generators succeed or fail.

Plain functions over the structures table (``run_folder.read_structures``); notebooks and the leaderboard
call these, so a number means the same thing everywhere.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
from pymatgen.core import Composition

from phononbench.rates import rate_columns, wilson_interval  # noqa: F401  (analysis.wilson_interval, as notebooks call it)
from phononbench.records import Col, Status, is_relaxed, is_stable, is_stable_bz
from phononbench.running.run_folder import ranks_by_zone

def relaxed(structures: pd.DataFrame) -> pd.DataFrame:
    """The published denominator: structures whose relaxation converged (``records.is_relaxed``)."""
    return structures[is_relaxed(structures)]


def rate_with_interval(frame: pd.DataFrame, threshold_thz: float, brillouin_zone: bool = False) -> dict:
    """Stable / all rows of ``frame`` (pass relaxed rows for the published rate), with its Wilson interval;
    stable on the published path, or over the Brillouin zone."""
    stable = (is_stable_bz if brillouin_zone else is_stable)(frame, threshold_thz)
    return rate_columns(int(stable.sum()), len(frame))


def rates(structures: pd.DataFrame, thresholds_thz, brillouin_zone: bool = False) -> pd.DataFrame:
    """Per generator and threshold: stable / relaxed with its 95% Wilson interval (stable on the published
    path, or over the Brillouin zone: pass the verdict the run's preset ranks by, ``brillouin_zone_headline``)."""
    pool = relaxed(structures)
    rows = []
    for generator, frame in pool.groupby(Col.GENERATOR, sort=True):
        for t in thresholds_thz:
            rows.append({Col.GENERATOR: generator, Col.THRESHOLD_THZ: t, **rate_with_interval(frame, t, brillouin_zone)})
    return pd.DataFrame(rows)


def rate_vs_sample_size(
    structures: pd.DataFrame, threshold_thz: float, sizes=None, n_bootstrap: int = 200, seed: int = 0,
    brillouin_zone: bool = False,
) -> pd.DataFrame:
    """How the rate settles as the sample grows: for each size, the mean and 2.5-97.5% band of the rate
    over bootstrap samples (drawn with replacement) of the relaxed structures."""
    verdicts = (is_stable_bz if brillouin_zone else is_stable)(relaxed(structures), threshold_thz).to_numpy()
    if len(verdicts) == 0:
        return pd.DataFrame(columns=["sample_size", "mean", "low", "high"])
    if sizes is None:
        sizes = np.unique(np.geomspace(1, len(verdicts), num=min(20, len(verdicts))).astype(int))
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        draws = rng.choice(verdicts, size=(n_bootstrap, int(size)), replace=True).mean(axis=1)
        rows.append({"sample_size": int(size), "mean": float(draws.mean()),
                     "low": float(np.percentile(draws, 2.5)), "high": float(np.percentile(draws, 97.5))})
    return pd.DataFrame(rows)


def _elements(formula: str) -> list[str]:
    return sorted(str(e) for e in Composition(formula).elements)


def breakdown(structures: pd.DataFrame, by: str, threshold_thz: float, brillouin_zone: bool = False) -> pd.DataFrame:
    """Rate per crystal system, space group number, number of elements, or element.

    ``by``: ``crystal_system``, ``spacegroup_number``, ``n_elements`` or ``element`` (a structure counts
    once for each element it contains).
    """
    pool = relaxed(structures).copy()
    if by == "n_elements":
        pool["n_elements"] = pool[Col.FORMULA].map(lambda f: len(_elements(f)))
    elif by == "element":
        pool["element"] = pool[Col.FORMULA].map(_elements)
        pool = pool.explode("element")
    elif by not in (Col.CRYSTAL_SYSTEM, Col.SPACEGROUP_NUMBER):
        raise ValueError(f"cannot break down by {by!r}")
    rows = [{by: key, **rate_with_interval(frame, threshold_thz, brillouin_zone)} for key, frame in pool.groupby(by, sort=True)]
    table = pd.DataFrame(rows)
    if by == "element" and len(table):
        overall = rate_with_interval(relaxed(structures), threshold_thz, brillouin_zone)[Col.STABILITY_RATE]
        table["rate_minus_overall"] = table[Col.STABILITY_RATE] - overall  # which elements raise or lower it
    return table


def brillouin_zone_headline(info: dict) -> bool:
    """Whether a run (its run.json) ranks by the Brillouin-zone verdict (accurate) rather than the published path:
    the ``brillouin_zone`` to pass the functions above for the rate its summary and leaderboard show."""
    return ranks_by_zone(info)


def min_frequencies(structures: pd.DataFrame) -> pd.DataFrame:
    """Lowest frequency per structure that has one, on the published path and over the Brillouin zone (the one
    the zone verdict reads), with its generator (for histograms)."""
    done = structures[structures[Col.STATUS] == Status.OK]
    return done.reindex(columns=[Col.GENERATOR, Col.STRUCTURE_ID, Col.MIN_FREQUENCY_THZ,
                                 Col.MIN_FREQUENCY_BZ_THZ]).reset_index(drop=True)
