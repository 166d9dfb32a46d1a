"""The leaderboard: generators ranked by headline stability rate (published path), with intervals, counts
and the Brillouin-zone rate beside it, from one or more run folders; optionally the PhononBench paper's own
rows beside them (``with_published``); exported as Markdown, CSV, JSON or one self-contained HTML page."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import json
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from phononbench.reading import analysis, plots
from phononbench import rates
from phononbench.errors import IncompleteRun, SetupError
from phononbench.records import Col, Status, bz_verdict_column, counts, is_not_3d, verdict_column
from phononbench.reading.report import markdown_cell, percent
from phononbench.running.run_folder import (headline_verdict, protocol_as_recorded, ranks_by_zone, read_manifest,
                                            read_structures, read_verdict_run_info)
from phononbench.settings import preset as get_preset

FORMATS = ("md", "csv", "json", "html")
VERDICT, STRICT_THRESHOLD = "verdict", "strict_threshold_thz"  # what the rate columns measure, in every row of a CSV
COLUMNS = [Col.RANK, Col.GENERATOR, Col.STABILITY_RATE, Col.CI_LOW, Col.CI_HIGH, Col.N_STABLE, Col.N_RELAXED,
           Col.STABILITY_RATE_BZ, Col.N_STABLE_BZ, Col.N_STABLE_NOT_3D, Col.STRICT_STABILITY_RATE, Col.N_INPUT,
           Col.N_UNIQUE, Col.N_DECIDED, Col.COMPLETE, Col.THRESHOLD_THZ, VERDICT, STRICT_THRESHOLD, Col.MODEL,
           Col.PROTOCOL, Col.RUN]
PUBLISHED_RUN = "published"  # the Col.RUN of the paper's rows
PUBLISHED_RATE = "published_rate"  # a published row's rate at its own threshold (Col.THRESHOLD_THZ)
PUBLISHED_STABLE, PUBLISHED_RELAXED = "published_n_stable", "published_n_relaxed"  # its counts, where given
COUNTS = [Col.RANK, Col.N_STABLE, Col.N_RELAXED, Col.N_STABLE_BZ, Col.N_STABLE_NOT_3D, Col.N_INPUT, Col.N_UNIQUE,
          Col.N_DECIDED, PUBLISHED_STABLE, PUBLISHED_RELAXED]
_AS_NAMED = "generator_as_named"  # the generator's own name, before an entry's label qualifies it
_CODE = "method_code"  # run.json's method_sha256, short: rows of one entry from two codes are not pooled
_NOT_3D = "stable_not_3d"  # stable at the headline and not 3D-bonded: what the board's "stable, not 3D" counts
_PATH = "run_path"  # the run folder's resolved path: the order in which the runs of an entry count
_RUNS = "entry_runs"  # every run of the entry, those whose rows all counted elsewhere too


def load_runs(run_dirs: list[str | Path], problems: list[str] | None = None,
              notes: list[str] | None = None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """All structures of the runs, one leaderboard entry per (generator, potential, protocol).

    Runs that share an entry pool their structures, whatever order they are given in: a structure in several
    (a folder given twice, a copy, a run resumed elsewhere) counts once, its row the one that computed phonons
    where another failed, else the run's first by path. An entry is finished when all its runs are. Each row
    carries its entry's label (the generator, qualified by potential and protocol where a generator has
    several entries), the run it came from and whether the entry finished; ``infos`` maps run names to their
    run.json, with the ids each run's manifest lists per generator under ``inputs_per_generator``. An
    incomplete run (a part file lost) raises IncompleteRun, or, given ``problems``, is left out and said there.
    A structure two runs of an entry computed with other verdicts or dimensionality, or an input id they read
    with other contents, is said in ``notes``."""
    read = []
    for directory in dict.fromkeys(Path(d).resolve() for d in run_dirs):  # the same folder given twice: once
        info = read_verdict_run_info(directory)
        manifest = read_manifest(directory)
        info["inputs_per_generator"] = ({} if manifest is None else
                                        manifest.groupby(Col.GENERATOR)[Col.STRUCTURE_ID].agg(set).to_dict())
        try:
            rows = read_structures(directory, skip=(Col.RELAXED_CIF,))  # counts need no cells
        except IncompleteRun as exc:
            if problems is None:
                raise
            problems.append(str(exc))  # left off the board, said beside it
            continue
        read.append((directory, info, rows))
    frames, infos = [], {}
    basenames = [directory.name for directory, _, _ in read]
    for directory, info, rows in read:
        # a run is named by its folder, or by its path where folders share a name (two copies of "out"): each
        # keeps its own record. Which row counts goes by path, which no other folder given can change
        name = directory.name if basenames.count(directory.name) == 1 else str(directory)
        potential = info["potential"]
        # the potential is its name and its weights: two checkpoints under one name are two potentials
        model = potential["model"] + (f"@{potential['checkpoint_sha256'][:8]}" if potential.get("checkpoint_sha256")
                                      else "")
        frames.append(rows.assign(**{
            Col.RUN: name, _PATH: str(directory), Col.MODEL: model,
            # a run that computed every structure (a validation) counts duplicates: an entry of its own
            Col.PROTOCOL: _protocol_label(info["protocol"]) + (", no dedup" if info.get("deduplicate") is False
                                                               else ""),
            Col.COMPLETE: info.get("status") == "complete", _CODE: (info.get("method_sha256") or "unrecorded")[:8]}))
        infos[name] = info
    if not frames:
        raise SetupError("no run can be read" + (f": {problems[0]}" if problems else ""))
    board_thresholds(infos)  # one headline, and a strict threshold that every run has
    if len({headline_verdict(i) for i in infos.values()}) > 1:
        by = {v: [n for n, i in infos.items() if headline_verdict(i) == v] for v in ("path", "brillouin_zone")}
        raise SetupError(f"the runs rank by different verdicts: {', '.join(by['path'])} by the published path, "
                         f"{', '.join(by['brillouin_zone'])} by the Brillouin zone (presets published and accurate; an "
                         "accurate run from before its zone headline ranks by the path); a leaderboard needs one")
    if len({_recorded(i)["acoustic_dips"] for i in infos.values()}) > 1:
        raise SetupError("the runs' Brillouin-zone verdicts differ (acoustic dips next to Gamma counted in some, set "
                         "aside in others: the accurate preset before and after it set them aside); a leaderboard "
                         "needs one")
    structures = pd.concat(frames, ignore_index=True)
    entry = [Col.GENERATOR, Col.MODEL, Col.PROTOCOL]
    # runs of one entry made by other code of the method are two entries: the label says which code
    codes = structures.groupby(entry, dropna=False)[_CODE].transform("nunique")
    structures.loc[codes > 1, Col.PROTOCOL] += ", code " + structures.loc[codes > 1, _CODE]
    structures[Col.COMPLETE] = structures.groupby(entry, dropna=False)[Col.COMPLETE].transform("all")
    runs_of = structures.groupby(entry, dropna=False)[Col.RUN].agg(lambda runs: tuple(sorted(set(runs)))).to_dict()
    structures[_RUNS] = [runs_of[key] for key in zip(*(structures[c] for c in entry))]
    # one row per structure of an entry, the same whatever the runs' order: phonons computed before a failure
    preference = structures.assign(_failed=structures[Col.STATUS] != Status.OK).sort_values(["_failed", _PATH], kind="stable")
    one_structure = entry + [Col.STRUCTURE_ID, Col.STRUCTURE_HASH]
    if notes is not None:
        notes.extend(_verdicts_that_differ(preference, one_structure, infos) + _contents_that_differ(structures, entry))
    structures = structures.loc[preference.drop_duplicates(subset=one_structure).index.sort_values()]
    entries_per_generator = structures.drop_duplicates(entry).groupby(Col.GENERATOR).size()
    several = set(entries_per_generator[entries_per_generator > 1].index)
    structures[_AS_NAMED] = structures[Col.GENERATOR]
    structures[Col.GENERATOR] = [f"{g} ({m}, {p})" if g in several else g for g, m, p in
                                 zip(structures[Col.GENERATOR], structures[Col.MODEL], structures[Col.PROTOCOL])]
    labels = structures.drop_duplicates([_AS_NAMED, *entry]).groupby(Col.GENERATOR).size()
    if (labels > 1).any():  # a generator named as another's entry is labelled ("G (emt, tiered)"): they would pool
        raise SetupError(f"generator {labels[labels > 1].index[0]!r} reads as another entry's label; rename it")
    return structures.reset_index(drop=True), infos


def _verdicts_that_differ(preference: pd.DataFrame, one_structure: list[str], infos: dict[str, dict]) -> list[str]:
    """One line on the structures that two runs of an entry both computed with other verdicts on the board's
    columns (its headline, zone and strict rates and its "stable, not 3D" count: a borderline mode, runs of
    unrecorded code or weights, an edited row): the row that counts is the run's first by path, and the board
    says so rather than choose in silence."""
    computed = preference[preference[Col.STATUS] == Status.OK]
    computed = computed[computed.duplicated(one_structure, keep=False)]
    if computed.empty:
        return []
    headline, strict = board_thresholds(infos)
    by = bz_verdict_column if board_verdict(infos)[0] else verdict_column  # the verdict of headline and strict
    columns: dict[str, str] = {}  # each column once, by the first name it has on the board
    for column, name in ((by(headline), f"{headline:g} THz"), (bz_verdict_column(headline), f"{headline:g} THz, Brillouin zone"),
                         (by(strict), f"{strict:g} THz (strict)")):
        columns.setdefault(column, name)
    # the board's "stable, not 3D" count reads the dimensionality too: a row that counts there otherwise is said
    stable = computed[by(headline)].astype("boolean").fillna(False).astype(bool)
    computed = computed.assign(**{_NOT_3D: stable & is_not_3d(computed)})
    columns[_NOT_3D] = "stable, not 3D"
    # each verdict as 0, 1 or 2 (none), all of them one number per row: a structure differs where its rows do
    code = sum(3 ** k * np.where(computed[c].isna(), 2, computed[c].fillna(False).astype(bool)).astype(np.int64)
               for k, c in enumerate(columns))
    group = computed.groupby(one_structure, dropna=False, sort=False).ngroup().to_numpy()
    low, high = np.full(group.max() + 1, np.iinfo(np.int64).max), np.full(group.max() + 1, -1)
    np.minimum.at(low, group, code)
    np.maximum.at(high, group, code)
    differ = low[group] != high[group]
    if not differ.any():
        return []
    keys = computed.loc[differ, one_structure].drop_duplicates().sort_values([Col.GENERATOR, Col.STRUCTURE_ID])
    example = computed[(computed[one_structure] == keys.iloc[0]).all(axis=1)]  # in preference order
    first = example.iloc[0]
    said = example[list(columns)].map(lambda v: "no verdict" if pd.isna(v) else "stable" if v else "unstable")
    said[_NOT_3D] = example[_NOT_3D].map({True: "yes", False: "no"})
    return [f"{len(keys)} structure(s) computed in more than one run of an entry have other verdicts or "
            f"dimensionality; each counts once, from the run first by path (e.g. {first[Col.STRUCTURE_ID]!r} of "
            f"{first[Col.GENERATOR]!r} ({first[Col.MODEL]}, {first[Col.PROTOCOL]}): " + "; ".join(
                f"{columns[c]}: " + ", ".join(f"{v} in {r}" for v, r in zip(said[c], example[Col.RUN]))
                for c in columns if said[c].nunique() > 1) + ")"]


def _contents_that_differ(structures: pd.DataFrame, entry: list[str]) -> list[str]:
    """One line on the input ids that runs of an entry read with other contents (a file edited between two
    runs): each content counts as a structure of its own, which the board says."""
    contents = structures.groupby(entry + [Col.STRUCTURE_ID], dropna=False)[Col.STRUCTURE_HASH].transform("nunique")
    if not (contents > 1).any():
        return []
    differ = structures[contents > 1].sort_values([Col.GENERATOR, Col.STRUCTURE_ID, _PATH])
    first = differ.iloc[0]
    runs = sorted(set(differ.loc[differ[Col.STRUCTURE_ID] == first[Col.STRUCTURE_ID], Col.RUN]))
    return [f"{differ[entry + [Col.STRUCTURE_ID]].drop_duplicates().shape[0]} input id(s) were read with other contents "
            f"by runs of an entry, each content counted as a structure of its own (e.g. {first[Col.STRUCTURE_ID]!r} of "
            f"{first[Col.GENERATOR]!r} ({first[Col.MODEL]}, {first[Col.PROTOCOL]}) in {', '.join(runs)})"]


def board_thresholds(infos: dict[str, dict]) -> tuple[float, float]:
    """The board's headline and strict thresholds, whatever the runs' order: the headline, every run's first;
    the strict one, every run's last where they agree, else the highest other threshold that all runs have."""
    thresholds = [tuple(float(t) for t in i["protocol"]["thresholds_thz"]) for i in infos.values()]
    if len({t[0] for t in thresholds}) > 1:
        raise SetupError("the runs use different headline thresholds; a leaderboard needs one")
    if len({t[-1] for t in thresholds}) == 1:
        return thresholds[0][0], thresholds[0][-1]
    shared = set.intersection(*(set(t[1:]) for t in thresholds))
    if not shared:
        raise SetupError("the runs share no threshold besides the headline (" + "; ".join(
            ", ".join(f"{x:g}" for x in t) for t in sorted(set(thresholds))) + " THz); the board's strict column needs one")
    return thresholds[0][0], max(shared)


def _protocol_label(protocol: dict) -> str:
    """The preset's name, with a short fingerprint when its settings differ from the preset's own."""
    try:
        preset = dataclasses.asdict(get_preset(protocol["name"]))
    except SetupError:
        preset = None
    # a setting added since the run was written is read at its default, as a resume reads it: an accurate run
    # from before a change of the preset is labelled apart from one after it
    relevant = {k: v for k, v in protocol_as_recorded(protocol).items() if k not in ("thresholds_thz", "model")}
    if preset is not None and json.loads(json.dumps({k: preset.get(k) for k in relevant})) == relevant:
        return protocol["name"]
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{protocol['name']}#{digest}"


def _recorded(info: dict) -> dict:
    return protocol_as_recorded(info["protocol"])


def build(structures: pd.DataFrame, thresholds_thz, infos: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per entry; finished entries ranked by headline rate (on the headline verdict of the runs'
    preset: the published path, or the Brillouin zone for ``accurate``), unfinished ones listed unranked
    with how far they got (rows decided of the inputs their runs' manifests list)."""
    headline, strict = thresholds_thz[0], thresholds_thz[-1]
    bz = bool(infos) and board_verdict(infos)[0]
    rows = []
    for generator, frame in structures.groupby(Col.GENERATOR, sort=True):
        pool = analysis.relaxed(frame)
        tally = counts(frame, (headline,), bz)
        n_relaxed = tally[Col.N_RELAXED]
        complete = bool(frame[Col.COMPLETE].all()) if Col.COMPLETE in frame else True
        n_input = tally[Col.N_INPUT]
        runs = frame[_RUNS].iloc[0] if _RUNS in frame else tuple(sorted(frame[Col.RUN].unique()))
        if infos and not complete:  # the inputs its runs' manifests list, each once
            named = frame[_AS_NAMED].iloc[0]
            n_input = max(n_input, len(set().union(*(infos[r].get("inputs_per_generator", {}).get(named, set())
                                                     for r in runs))))
        rows.append({Col.GENERATOR: generator, **analysis.rate_with_interval(pool, headline, bz),
                     Col.STABILITY_RATE_BZ: rates.rate(tally["n_stable_bz_at"][headline], n_relaxed),
                     Col.N_STABLE_BZ: tally["n_stable_bz_at"][headline],
                     Col.N_STABLE_NOT_3D: tally["n_stable_not_3d_at"][headline],
                     Col.STRICT_STABILITY_RATE: analysis.rate_with_interval(pool, strict, bz)[Col.STABILITY_RATE],
                     Col.N_INPUT: n_input, Col.N_DECIDED: len(frame), Col.N_UNIQUE: tally[Col.N_UNIQUE],
                     Col.THRESHOLD_THZ: headline, Col.COMPLETE: complete,
                     VERDICT: "brillouin_zone" if bz else "path", STRICT_THRESHOLD: strict,
                     Col.MODEL: frame[Col.MODEL].iloc[0], Col.PROTOCOL: frame[Col.PROTOCOL].iloc[0],
                     Col.RUN: ", ".join(runs)})
    board = pd.DataFrame(rows)
    board["_ranked"] = board[Col.COMPLETE] & (board[Col.N_RELAXED] > 0)  # nothing relaxed: no rate to rank by
    board = board.sort_values(["_ranked", Col.COMPLETE, Col.STABILITY_RATE, Col.N_RELAXED], ascending=[False] * 4,
                              na_position="last").reset_index(drop=True)
    n_ranked = int(board["_ranked"].sum())
    board.insert(0, Col.RANK, list(range(1, n_ranked + 1)) + [None] * (len(board) - n_ranked))
    return board[COLUMNS]


def published_rows(thresholds_thz=(-0.1, -0.001), brillouin_zone: bool = False) -> pd.DataFrame:
    """The published figures as leaderboard rows, each labelled with its threshold: the PhononBench README's
    table (``data/published_phononbench.csv``, -0.001 THz, counts) and the paper's v3 figures
    (``data/published_phononbench_v3.csv``, -0.1 THz, rates only); see data/SOURCES.md. A figure goes in the
    headline column only when its threshold is the board's headline, in the strict column only when it is the
    strict one: never a -0.001 THz rate beside a -0.1 THz one as if they were the same measure. On a board
    ranked by the Brillouin-zone verdict (``brillouin_zone``) no published figure (published path) is in
    those columns at all."""
    headline, strict = thresholds_thz[0], thresholds_thz[-1]
    board_strict = strict
    if brillouin_zone:
        headline = strict = float("nan")  # never equal to a published threshold
    rows = []
    for r in _published_table("data/published_phononbench.csv").itertuples(index=False):
        n, k = int(r.relaxed), int(r.dynamically_stable)
        rows.append(_published_row(f"{r.model} (README)", float(r.threshold_thz), rates.rate(k, n), (k, n), r.total_generated,
                                   r.unique_cifs, r.potential, "PhononBench README", headline, strict))
    for r in _published_table("data/published_phononbench_v3.csv").itertuples(index=False):
        rows.append(_published_row(f"{r.model} (paper v3)", float(r.threshold_thz), float(r.stability_rate), None,
                                   r.structures, None, r.potential, "PhononBench paper v3", headline, strict))
    # the strict column's threshold is the board's, whether or not a published figure is in it
    return pd.DataFrame(rows, columns=COLUMNS + [PUBLISHED_RATE, PUBLISHED_STABLE, PUBLISHED_RELAXED]).assign(
        **{STRICT_THRESHOLD: board_strict})


def _published_table(name: str) -> pd.DataFrame:
    with resources.files("phononbench").joinpath(name).open() as handle:
        return pd.read_csv(handle)


def _published_row(label, threshold, rate, counts_kn, n_input, n_unique, potential, source, headline, strict) -> dict:
    low, high = rates.wilson_interval(*counts_kn) if counts_kn else (float("nan"), float("nan"))
    nan = float("nan")
    at_headline, at_strict = threshold == headline, threshold == strict
    stable, relaxed = counts_kn if counts_kn else (None, None)
    return {Col.RANK: None, Col.GENERATOR: f"{label}, {threshold:g} THz",
            Col.STABILITY_RATE: rate if at_headline else nan, Col.CI_LOW: low if at_headline else nan,
            Col.CI_HIGH: high if at_headline else nan,
            Col.N_STABLE: stable if at_headline else None, Col.N_RELAXED: relaxed if at_headline else None,
            PUBLISHED_STABLE: stable, PUBLISHED_RELAXED: relaxed,
            Col.STABILITY_RATE_BZ: nan, Col.N_STABLE_BZ: None, Col.N_STABLE_NOT_3D: None,
            Col.STRICT_STABILITY_RATE: rate if at_strict else nan,
            Col.N_INPUT: None if pd.isna(n_input) else int(n_input),
            Col.N_UNIQUE: None if n_unique is None or pd.isna(n_unique) else int(n_unique),
            Col.THRESHOLD_THZ: threshold, Col.N_DECIDED: None, Col.COMPLETE: True, VERDICT: "path",
            Col.MODEL: potential, Col.PROTOCOL: source, Col.RUN: PUBLISHED_RUN, PUBLISHED_RATE: rate}


def entry_name(row) -> str:
    """An entry as tables and plots show it: an unfinished one says so, and how far its runs got."""
    if row[Col.COMPLETE]:
        return str(row[Col.GENERATOR])
    return f"{row[Col.GENERATOR]} (unfinished: {_count(row[Col.N_DECIDED])} of {_count(row[Col.N_INPUT])} decided)"


def _cell(value) -> str:
    return "-" if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)) else str(value)


def _count(value) -> str:
    return "-" if value is None or pd.isna(value) else str(int(value))


DIPS_SET_ASIDE = "acoustic dips next to Gamma set aside"  # where the runs' zone verdict leaves them out


def to_markdown(board: pd.DataFrame, headline: float, brillouin_zone: bool = False, dips_set_aside: bool = False,
                strict: float | None = None, notes=()) -> str:
    """The board as a Markdown table, the published rows in their own, and ``load_runs``'s notes below it."""
    verdict = (", Brillouin zone" + (f" ({DIPS_SET_ASIDE})" if dips_set_aside else "")) if brillouin_zone else ""
    lines = [f"| rank | generator | stable at {headline:g} THz{verdict} (95% CI) | stable / relaxed | Brillouin zone | "
             f"stable, not 3D | {strict_name(strict, headline)} | input | unique | model |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    ours = board[board[Col.RUN] != PUBLISHED_RUN]
    for _, r in ours.iterrows():
        lines.append(f"| {_count(r[Col.RANK])} | {markdown_cell(entry_name(r))} | {percent(r[Col.STABILITY_RATE])} "
                     f"({percent(r[Col.CI_LOW])}-{percent(r[Col.CI_HIGH])}) | {r[Col.N_STABLE]}/{r[Col.N_RELAXED]} | "
                     f"{percent(r[Col.STABILITY_RATE_BZ])} | {_count(r[Col.N_STABLE_NOT_3D])} | "
                     f"{percent(r[Col.STRICT_STABILITY_RATE])} | {r[Col.N_INPUT]} | {r[Col.N_UNIQUE]} | {markdown_cell(r[Col.MODEL])} |")
    published = board[board[Col.RUN] == PUBLISHED_RUN]
    if len(published):
        lines += ["", "Published (MatterSim v1.0.0 5M, published path; each at its own threshold: compare a row with "
                  f"yours only where the thresholds match, {headline:g} THz for the headline):",
                  "", "| published | threshold | stable rate (95% CI) | stable / relaxed | unique | generated | source |",
                  "|---|---|---|---|---|---|---|"]
        for _, r in published.iterrows():
            low, high = _published_interval(r)
            lines.append(f"| {r[Col.GENERATOR]} | {r[Col.THRESHOLD_THZ]:g} THz | {_published_percent(r)}"
                         f"{f' ({low}-{high})' if low else ''} | {_ratio(r)} | {_count(r[Col.N_UNIQUE])} | "
                         f"{_count(r[Col.N_INPUT])} | {r[Col.PROTOCOL]} |")
    lines += [line for note in notes for line in ("", f"Note: {markdown_cell(note)}")]
    return "\n".join(lines) + "\n"


def strict_name(strict: float | None, headline: float | None = None) -> str:
    """The strict column's name: its threshold, and "strict" only where it is stricter than the headline (a run
    may be given its thresholds the other way round)."""
    if strict is None:
        return "strict"
    if headline is not None and strict <= headline:
        return f"at {strict:g} THz"
    return f"strict, {strict:g} THz"


def _published_percent(row) -> str:
    """A published rate as precise as its source: counts give one decimal, the paper's rates two."""
    rate = row[PUBLISHED_RATE]
    return percent(rate) if pd.notna(row[PUBLISHED_RELAXED]) else f"{100 * rate:.2f}%"


def _published_interval(row) -> tuple[str, str]:
    if pd.isna(row[PUBLISHED_RELAXED]):
        return "", ""
    low, high = rates.wilson_interval(int(row[PUBLISHED_STABLE]), int(row[PUBLISHED_RELAXED]))
    return percent(low), percent(high)


def _ratio(row) -> str:
    if pd.isna(row[PUBLISHED_RELAXED]):
        return "-"
    return f"{int(row[PUBLISHED_STABLE]):,}/{int(row[PUBLISHED_RELAXED]):,}"


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


SORT_SCRIPT = """
document.querySelectorAll('th').forEach((th, column) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const rows = Array.from(body.rows);
  const ascending = th.dataset.order !== 'asc';
  th.dataset.order = ascending ? 'asc' : 'desc';
  const value = row => row.cells[column].dataset.value ?? row.cells[column].textContent;
  rows.sort((a, b) => {
    const x = value(a), y = value(b), nx = parseFloat(x), ny = parseFloat(y);
    const order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
    return ascending ? order : -order;
  });
  rows.forEach(row => body.appendChild(row));
}));
"""


def _html_rows(board: pd.DataFrame, columns) -> str:
    """Table rows; each cell keeps its raw value in data-value, for sorting."""
    body = []
    for _, r in board.iterrows():
        cells = [(text(r), r[key] if key is not None else None) for _, text, key in columns]
        body.append("<tr>" + "".join(f"<td data-value='{html.escape(_cell(v))}'>{html.escape(t)}</td>"
                                      for t, v in cells) + "</tr>")
    return "".join(body)


def to_html(board: pd.DataFrame, structures: pd.DataFrame, thresholds_thz, brillouin_zone: bool = False,
            dips_set_aside: bool = False, notes=()) -> str:
    """One self-contained page: a sortable table (and the published rows, if any) and the plots inlined."""
    headline = thresholds_thz[0]
    zone_note = f", {DIPS_SET_ASIDE.replace('Gamma', '&Gamma;')} (docs/VALIDATION.md)" if dips_set_aside else ""
    ours, published = board[board[Col.RUN] != PUBLISHED_RUN], board[board[Col.RUN] == PUBLISHED_RUN]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        figures = {
            "Stability rate per generator (95% Wilson interval)": plots.rates_figure(ours, tmp / "rates.png"),
            "Rate against sample size (bootstrap mean and 95% band)":
                plots.rate_vs_sample_size_figure(structures, headline, tmp / "convergence.png", brillouin_zone),
            "Lowest phonon frequency per structure": plots.min_frequency_histogram(structures, tmp / "fmin.png",
                                                                                   thresholds_thz, brillouin_zone),
        }
        images = "".join(f"<figure><img alt='{html.escape(t)}' src='{_png(p)}'><figcaption>{html.escape(t)}"
                         f"</figcaption></figure>" for t, p in figures.items())
    columns = [
        ("rank", lambda r: _count(r[Col.RANK]), Col.RANK),
        ("generator", entry_name, Col.GENERATOR),
        (f"stable at {headline:g} THz" + (", Brillouin zone" if brillouin_zone else ""),
         lambda r: percent(r[Col.STABILITY_RATE]), Col.STABILITY_RATE),
        ("95% CI", lambda r: f"{percent(r[Col.CI_LOW])} - {percent(r[Col.CI_HIGH])}", Col.CI_LOW),
        ("stable", lambda r: _count(r[Col.N_STABLE]), Col.N_STABLE),
        ("relaxed", lambda r: _count(r[Col.N_RELAXED]), Col.N_RELAXED),
        ("Brillouin zone", lambda r: percent(r[Col.STABILITY_RATE_BZ]), Col.STABILITY_RATE_BZ),
        ("stable, not 3D", lambda r: _count(r[Col.N_STABLE_NOT_3D]), Col.N_STABLE_NOT_3D),
        (strict_name(thresholds_thz[-1], headline), lambda r: percent(r[Col.STRICT_STABILITY_RATE]), Col.STRICT_STABILITY_RATE),
        ("input", lambda r: _count(r[Col.N_INPUT]), Col.N_INPUT),
        ("unique", lambda r: _count(r[Col.N_UNIQUE]), Col.N_UNIQUE),
        ("model", lambda r: str(r[Col.MODEL]), Col.MODEL),
    ]
    header = "".join(f"<th>{html.escape(name)}</th>" for name, _, _ in columns)
    said = "".join(f"<p><b>Note:</b> {html.escape(note)}</p>\n" for note in notes)
    reference = ""
    if len(published):
        published_columns = [
            ("published", lambda r: str(r[Col.GENERATOR]), Col.GENERATOR),
            ("threshold (THz)", lambda r: f"{r[Col.THRESHOLD_THZ]:g}", Col.THRESHOLD_THZ),
            ("stable rate", _published_percent, PUBLISHED_RATE),
            ("95% CI", lambda r: " - ".join(_published_interval(r)) if _published_interval(r)[0] else "-", PUBLISHED_RATE),
            ("stable / relaxed", _ratio, PUBLISHED_RELAXED),
            ("generated", lambda r: _count(r[Col.N_INPUT]), Col.N_INPUT),
            ("source", lambda r: str(r[Col.PROTOCOL]), Col.PROTOCOL),
        ]
        published_header = "".join(f"<th>{html.escape(name)}</th>" for name, _, _ in published_columns)
        reference = (f"<h2>Published PhononBench figures</h2><p>MatterSim v1.0.0 5M on the published path, each at "
                     f"its own threshold (the README's table at -0.001 THz, the paper's v3 at -0.1 THz); rate = "
                     f"stable / relaxed. Compare with the rows above only where the thresholds match.</p>"
                     f"<table id='published'><thead><tr>{published_header}</tr></thead>"
                     f"<tbody>{_html_rows(published, published_columns)}</tbody></table>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>PhononBench leaderboard</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}}th{{cursor:pointer;background:#f4f4f4}}
td:nth-child(2),th:nth-child(2){{text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>PhononBench leaderboard</h1>
<p>Dynamically stable (lowest phonon frequency &ge; {headline:g} THz {"over the Brillouin zone: the high-symmetry path, the commensurate q-points and a mesh" if brillouin_zone else "on the published q-points"}) over relaxed structures, per generator; "Brillouin zone" is the same over the true high-symmetry path, the commensurate
q-points and a mesh{zone_note}; click a column to sort.</p>
{said}<table id="leaderboard"><thead><tr>{header}</tr></thead>
<tbody>{_html_rows(ours, columns)}</tbody></table>
{reference}
{images}
<script>{SORT_SCRIPT}</script></body></html>
"""


def write_figures(run_dirs: list[str | Path], directory: str | Path) -> list[Path]:
    """The leaderboard's plots as PNG files."""
    structures, infos = load_runs(run_dirs)
    thresholds = board_thresholds(infos)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    board = build(structures, thresholds, infos)
    zone = board_verdict(infos)[0]
    return [plots.rates_figure(board, directory / "stability_rates.png"),
            plots.rate_vs_sample_size_figure(structures, thresholds[0], directory / "rate_vs_sample_size.png", zone),
            plots.min_frequency_histogram(structures, directory / "min_frequency_histogram.png", thresholds, zone)]


def board_of(run_dirs: list[str | Path], with_published: bool = False, notes: list[str] | None = None):
    """The leaderboard of the runs (and, with ``with_published``, the published figures beside them):
    (board, structures, thresholds, ranked by the Brillouin-zone verdict, its acoustic dips set aside);
    ``notes`` as ``load_runs``'s."""
    structures, infos = load_runs(run_dirs, notes=notes)
    thresholds = board_thresholds(infos)
    board = build(structures, thresholds, infos)
    bz, dips_set_aside = board_verdict(infos)
    if with_published:
        board = pd.concat([board, published_rows(thresholds, bz)], ignore_index=True)
        board[[c for c in COUNTS if c in board]] = board[[c for c in COUNTS if c in board]].astype("Int64")
    return board, structures, thresholds, bz, dips_set_aside


def board_verdict(infos: dict[str, dict]) -> tuple[bool, bool]:
    """What the board's rates measure (``load_runs`` made the runs agree on it): ranked by the Brillouin-zone
    verdict (accurate) rather than the published path, and acoustic dips next to Gamma set aside."""
    first = next(iter(infos.values()))
    return ranks_by_zone(first), _recorded(first)["acoustic_dips"] == "set_aside"


def export(run_dirs: list[str | Path], fmt: str, with_published: bool = False, notes: list[str] | None = None) -> str:
    """The board as text in ``fmt``; ``load_runs``'s notes go in ``notes`` and, but for CSV (a data file), in
    the text too."""
    if fmt not in FORMATS:
        raise SetupError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    notes = [] if notes is None else notes
    board, structures, thresholds, bz, dips_set_aside = board_of(run_dirs, with_published, notes)
    if fmt == "md":
        return to_markdown(board, thresholds[0], bz, dips_set_aside, strict=thresholds[-1], notes=notes)
    if fmt == "csv":
        return board.to_csv(index=False)
    if fmt == "json":
        plain = board.astype(object).where(board.notna(), None)  # JSON has null, not NaN
        records = [{str(k): v for k, v in row.items()} for row in plain.to_dict(orient="records")]
        return json.dumps({"headline_threshold_thz": thresholds[0], STRICT_THRESHOLD: thresholds[-1],
                           "headline_verdict": "brillouin_zone" if bz else "path",
                           "acoustic_dips": "set_aside" if dips_set_aside else "counted", "notes": notes,
                           "rows": records}, indent=2, default=float)
    return to_html(board, structures, thresholds, bz, dips_set_aside, notes)
