"""The per-generator table printed at the end of a run and by ``phononbench summarize``."""

from __future__ import annotations

import math

import pandas as pd
from rich.table import Table
from rich.text import Text

from phononbench.records import ALL_GENERATORS, Col


def percent(value: float | None) -> str:
    """A rate as a percentage with one decimal; "-" where there is none."""
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


_MARKDOWN_ACTIVE = str.maketrans({c: "\\" + c for c in "\\|<>&*`[]"})


def markdown_cell(text) -> str:
    """A name (a generator's, a run folder's) as one Markdown table cell, shown as written: a "|" or a line
    break would split the row, raw HTML would add cells or run script where the table is rendered, and
    emphasis, code or links would change what it reads. Underscores, common in names, are left as they are."""
    return " ".join(str(text).splitlines()).translate(_MARKDOWN_ACTIVE)


GENERATOR_WIDTH = 40  # a longer name folds onto more lines rather than squeezing the numbers out of the table


def summary_table(summary: pd.DataFrame, title: str = "PhononBench stability", brillouin_zone: bool = False) -> Table:
    """Counts once per generator, then per threshold (headline first) the rate on the verdict the run ranks by
    with its counts (the published path; the Brillouin zone, ``brillouin_zone``, under accurate), the other
    verdict's rate, and how many stable structures are not 3D-bonded at the headline threshold."""
    thresholds = list(dict.fromkeys(summary[Col.THRESHOLD_THZ]))
    table = Table(title=Text(title))  # names shown as they are, never as markup
    table.add_column("generator", style="bold", overflow="fold", max_width=GENERATOR_WIDTH)
    for name in ("input", "valid", "unique", "relaxed", "phonons", "phonon failed", "not relaxed"):
        table.add_column(name, justify="right", no_wrap=True)
    for t in thresholds:  # the verdict the run ranks by first, with its counts
        table.add_column(f"{'BZ' if brillouin_zone else 'stable'}@{t:g}THz", justify="right", no_wrap=True)
        table.add_column(f"{'path' if brillouin_zone else 'BZ'}@{t:g}", justify="right", no_wrap=True)
    table.add_column("stable not 3D", justify="right", no_wrap=True)
    per_generator = summary[~summary[Col.POOLED]]
    generators = list(dict.fromkeys(per_generator[Col.GENERATOR]))
    sections = [(g, per_generator[per_generator[Col.GENERATOR] == g]) for g in generators]
    sections.append((ALL_GENERATORS, summary[summary[Col.POOLED]]))
    for k, (generator, rows) in enumerate(sections):
        rows = rows.set_index(Col.THRESHOLD_THZ)
        if rows.empty:
            continue
        first = rows.iloc[0]
        cells = [str(int(first[c])) for c in (Col.N_INPUT, Col.N_VALID, Col.N_UNIQUE, Col.N_RELAXED, Col.N_PHONON)]
        cells.append(str(int(first[Col.N_PHONON_FAILED])) if Col.N_PHONON_FAILED in first and pd.notna(first[Col.N_PHONON_FAILED]) else "-")
        cells.append(_not_relaxed(first))
        for t in thresholds:
            r = rows.loc[t]
            (rate, n), other = (((Col.STABILITY_RATE_BZ, Col.N_STABLE_BZ), Col.STABILITY_RATE) if brillouin_zone else
                                ((Col.STABILITY_RATE, Col.N_STABLE), Col.STABILITY_RATE_BZ))
            cells.append(f"{percent(r[rate])} {int(r[n])}/{int(r[Col.N_RELAXED])}")
            cells.append(percent(r[other]))
        cells.append(str(int(first[Col.N_STABLE_NOT_3D])))
        table.add_row(_generator_cell(generator, k == len(sections) - 1), *cells, end_section=k == len(sections) - 2)
    return table


def _not_relaxed(row: pd.Series) -> str:
    """The structures that left the denominator before their force constants, by why ("-": an older run)."""
    named = {"relax failed": Col.N_RELAX_FAILED, "not converged": Col.N_RELAX_NOT_CONVERGED,
             "timeout": Col.N_TIMEOUT, "crashed": Col.N_WORKER_CRASHED, "not 3D": Col.N_LOW_DIMENSIONAL}
    if any(column not in row or pd.isna(row[column]) for column in named.values()):
        return "-"
    total = sum(int(row[column]) for column in named.values())
    detail = ", ".join(f"{int(row[c])} {name}" for name, c in named.items() if row[c])
    return f"{total}" + (f" ({detail})" if detail else "")


def unique_table(counts: pd.DataFrame, title: str = "PhononBench inputs") -> Table:
    """Input, valid and unique structures per generator (``pipeline.unique_counts``), pooled row last."""
    table = Table(title=Text(title))
    table.add_column("generator", style="bold", overflow="fold", max_width=GENERATOR_WIDTH)
    for name in ("input", "valid", "unique"):
        table.add_column(name, justify="right", no_wrap=True)
    rows = list(counts.itertuples(index=False))
    for k, row in enumerate(rows):
        table.add_row(_generator_cell(getattr(row, Col.GENERATOR), bool(getattr(row, Col.POOLED))), *(f"{int(getattr(row, c)):,}" for c in (Col.N_INPUT, Col.N_VALID, Col.N_UNIQUE)),
                      end_section=k == len(rows) - 2)
    return table


def _generator_cell(generator: str, pooled: bool) -> Text:
    """A generator's name as it is, never read as rich markup; one that could be taken for another (the pooled
    row's label, a line break, a space at an end, an invisible character) is quoted with its escapes, the pooled
    row in italics."""
    plain = pooled or (generator != ALL_GENERATORS and generator.isprintable() and generator == generator.strip())
    return Text(generator if plain else repr(generator), style="italic" if pooled else "")
