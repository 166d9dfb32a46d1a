"""The leaderboard: generators ranked by headline stability rate, with intervals and counts, from one or
more run folders; exported as Markdown, CSV, JSON or one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path

import pandas as pd

from phononbench import analysis, plots
from phononbench.errors import SetupError
from phononbench.records import Col, counts
from phononbench.report import percent
from phononbench.results import read_run_info, read_structures

FORMATS = ("md", "csv", "json", "html")
COLUMNS = [Col.RANK, Col.GENERATOR, Col.STABILITY_RATE, Col.CI_LOW, Col.CI_HIGH, Col.N_STABLE, Col.N_RELAXED,
           Col.STRICT_STABILITY_RATE, Col.N_INPUT, Col.N_UNIQUE, Col.MODEL, Col.PROTOCOL, Col.RUN]


def load_runs(run_dirs: list[str | Path]) -> tuple[pd.DataFrame, dict[str, dict]]:
    """All structures of the runs, generator names made unique across runs ("name (run)")."""
    frames, infos = [], {}
    names = [Path(d).name for d in run_dirs]
    for directory, name in zip(run_dirs, names):
        info = read_run_info(directory)
        frame = read_structures(directory).assign(**{Col.RUN: name, Col.MODEL: info["potential"]["model"],
                                                     Col.PROTOCOL: info["protocol"]["name"]})
        frames.append(frame)
        infos[name] = info
    structures = pd.concat(frames, ignore_index=True)
    runs_per_generator = structures.groupby(Col.GENERATOR)[Col.RUN].nunique()
    clashing = set(runs_per_generator[runs_per_generator > 1].index)
    if clashing:
        structures[Col.GENERATOR] = [f"{g} ({r})" if g in clashing else g
                                     for g, r in zip(structures[Col.GENERATOR], structures[Col.RUN])]
    thresholds = {tuple(i["protocol"]["thresholds_thz"]) for i in infos.values()}
    if len({t[0] for t in thresholds}) > 1:
        raise SetupError("the runs use different headline thresholds; a leaderboard needs one")
    return structures, infos


def build(structures: pd.DataFrame, thresholds_thz) -> pd.DataFrame:
    headline, strict = thresholds_thz[0], thresholds_thz[-1]
    rows = []
    for generator, frame in structures.groupby(Col.GENERATOR, sort=True):
        pool = analysis.relaxed(frame)
        tally = counts(frame, ())
        rows.append({Col.GENERATOR: generator, **analysis.rate_with_interval(pool, headline),
                     Col.STRICT_STABILITY_RATE: analysis.rate_with_interval(pool, strict)[Col.STABILITY_RATE],
                     Col.N_INPUT: tally[Col.N_INPUT], Col.N_UNIQUE: tally[Col.N_UNIQUE],
                     **{c: frame[c].iloc[0] for c in (Col.MODEL, Col.PROTOCOL, Col.RUN)}})
    board = pd.DataFrame(rows).sort_values([Col.STABILITY_RATE, Col.N_RELAXED], ascending=[False, False],
                                           na_position="last").reset_index(drop=True)
    board.insert(0, Col.RANK, range(1, len(board) + 1))
    return board[COLUMNS]


def to_markdown(board: pd.DataFrame, headline: float) -> str:
    lines = [f"| rank | generator | stable at {headline:g} THz (95% CI) | stable / relaxed | strict | input | unique | model |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in board.iterrows():
        lines.append(f"| {r[Col.RANK]} | {r[Col.GENERATOR]} | {percent(r[Col.STABILITY_RATE])} "
                     f"({percent(r[Col.CI_LOW])}-{percent(r[Col.CI_HIGH])}) | {r[Col.N_STABLE]}/{r[Col.N_RELAXED]} | "
                     f"{percent(r[Col.STRICT_STABILITY_RATE])} | {r[Col.N_INPUT]} | {r[Col.N_UNIQUE]} | {r[Col.MODEL]} |")
    return "\n".join(lines) + "\n"


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


def to_html(board: pd.DataFrame, structures: pd.DataFrame, thresholds_thz) -> str:
    """One self-contained page: a sortable table and the plots inlined as PNG."""
    headline = thresholds_thz[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        figures = {
            "Stability rate per generator (95% Wilson interval)": plots.rates_figure(board, tmp / "rates.png"),
            "Rate against sample size (bootstrap mean and 95% band)":
                plots.rate_vs_sample_size_figure(structures, headline, tmp / "convergence.png"),
            "Lowest phonon frequency per structure": plots.min_frequency_histogram(structures, tmp / "fmin.png",
                                                                                   thresholds_thz),
        }
        images = "".join(f"<figure><img alt='{html.escape(t)}' src='{_png(p)}'><figcaption>{html.escape(t)}"
                         f"</figcaption></figure>" for t, p in figures.items())
    header = ["rank", "generator", f"stable at {headline:g} THz", "95% CI", "stable", "relaxed", "strict",
              "input", "unique", "model"]
    body = []
    for _, r in board.iterrows():
        cells = [(r[Col.RANK], r[Col.RANK]), (html.escape(str(r[Col.GENERATOR])), r[Col.GENERATOR]),
                 (percent(r[Col.STABILITY_RATE]), r[Col.STABILITY_RATE]),
                 (f"{percent(r[Col.CI_LOW])} - {percent(r[Col.CI_HIGH])}", r[Col.CI_LOW]),
                 (r[Col.N_STABLE], r[Col.N_STABLE]), (r[Col.N_RELAXED], r[Col.N_RELAXED]),
                 (percent(r[Col.STRICT_STABILITY_RATE]), r[Col.STRICT_STABILITY_RATE]),
                 (r[Col.N_INPUT], r[Col.N_INPUT]), (r[Col.N_UNIQUE], r[Col.N_UNIQUE]),
                 (html.escape(str(r[Col.MODEL])), r[Col.MODEL])]
        body.append("<tr>" + "".join(f"<td data-value='{html.escape(str(v))}'>{text}</td>" for text, v in cells) + "</tr>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>PhononBench leaderboard</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}}th{{cursor:pointer;background:#f4f4f4}}
td:nth-child(2),th:nth-child(2){{text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>PhononBench leaderboard</h1>
<p>Dynamically stable (lowest phonon frequency &ge; {headline:g} THz) over successfully relaxed structures,
per generator; click a column to sort.</p>
<table id="leaderboard"><thead><tr>{''.join(f'<th>{h}</th>' for h in header)}</tr></thead>
<tbody>{''.join(body)}</tbody></table>
{images}
<script>{SORT_SCRIPT}</script></body></html>
"""


def write_figures(run_dirs: list[str | Path], directory: str | Path) -> list[Path]:
    """The leaderboard's plots as PNG files."""
    structures, infos = load_runs(run_dirs)
    thresholds = tuple(next(iter(infos.values()))["protocol"]["thresholds_thz"])
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    board = build(structures, thresholds)
    return [plots.rates_figure(board, directory / "stability_rates.png"),
            plots.rate_vs_sample_size_figure(structures, thresholds[0], directory / "rate_vs_sample_size.png"),
            plots.min_frequency_histogram(structures, directory / "min_frequency_histogram.png", thresholds)]


def export(run_dirs: list[str | Path], fmt: str) -> str:
    if fmt not in FORMATS:
        raise SetupError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    structures, infos = load_runs(run_dirs)
    thresholds = tuple(next(iter(infos.values()))["protocol"]["thresholds_thz"])
    board = build(structures, thresholds)
    if fmt == "md":
        return to_markdown(board, thresholds[0])
    if fmt == "csv":
        return board.to_csv(index=False)
    if fmt == "json":
        records = [{str(k): v for k, v in row.items()} for row in board.to_dict(orient="records")]
        return json.dumps({"headline_threshold_thz": thresholds[0], "rows": records},
                          indent=2, default=float)
    return to_html(board, structures, thresholds)
