"""``phononbench serve``: a small local web app (FastAPI) over run folders.

- ``/``: the leaderboard of the given runs (``ranking.build``: the numbers of ``phononbench leaderboard``)
  and the checks made so far;
- ``/runs/{key}``: every row of a run, filtered, sorted and paged on the server (``explore.select``), so a
  110k-row run stays quick; ``/runs/{key}/export``: its stable set;
- ``/runs/{key}/structure?id=``: one structure, its bands on the published q-points and on the
  Brillouin-zone path (computed once, cached in the run folder), its relaxed CIF;
- ``/check``: upload a CIF or POSCAR and a potential from the registry; the check runs in the background
  (``checks.Checks``) in a run folder of its own, and ``/checks/{id}`` shows its progress, then its verdict.

A run's key is its position on the command line, or a check's id: a URL names a run or a structure only
through these lookups, never as a path. Nothing is written outside the run folders and the checks folder.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import anyio
import pandas as pd
import pyarrow as pa
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from phononbench.reading import explore, export, ranking
from phononbench.app.checks import WEB_POTENTIALS, Checks
from phononbench.app.uploads import Limits, QueueFull, UploadRefused
from phononbench.errors import SetupError, reason
from phononbench.records import (Col, Status, bz_verdict_column, is_relaxed, is_stable, is_stable_bz,
                                 structures_schema, verdict_column)
from phononbench.reading.report import percent
from phononbench.running.run_folder import (PARTS_FILE, STRUCTURES_DIR, ranks_by_zone, read_structures, read_verdict_run_info,
                                            safe_file_name)

log = logging.getLogger(__name__)
RUN_KEY = re.compile(r"0|[1-9][0-9]{0,5}", re.ASCII)  # ASCII digits, no leading zero: a run has one key
FIGURE_WAIT_S = 300.0  # an image request waits this long for its figure (on the event loop, no thread held)
FAILURE_REMEMBERED_S = 60.0  # a band figure that failed is answered with its failure that long, then tried again
MAX_QUEUED_FIGURES = 16  # band figures waiting to be drawn; beyond it a request is told to come back
FORM_OVERHEAD_BYTES = 16 * 1024  # a multipart body's headers and the potential's field, beside the file
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))


@dataclass
class RunView:
    """A run folder as the app reads it: run.json, its rows and each row's elements, and what they were
    read from (re-read when a file changes: a run still going, a check that finished)."""

    out: Path
    info: dict
    rows: pd.DataFrame
    elements: pd.Series
    signature: tuple
    options: dict[str, list]  # the values the table's selects offer: generators, statuses, crystal systems

    @property
    def thresholds(self) -> list[float]:
        return [float(t) for t in self.info["protocol"]["thresholds_thz"]]


@dataclass
class Board:
    """The leaderboard of the app's runs as ``phononbench leaderboard`` makes it, what its columns measure, and
    what is said above it: runs left off (``problem``) and ``load_runs``'s notes."""

    rows: pd.DataFrame | None = None
    headline: float | None = None
    strict: float | None = None
    brillouin_zone: bool = False  # ranked by the Brillouin-zone verdict (accurate), not the published path
    dips_set_aside: bool = False
    problem: str | None = None
    notes: tuple[str, ...] = ()


def _signature(out: Path) -> tuple:
    files = [out / "run.json", out / "manifest.parquet", out / PARTS_FILE,
             *sorted((out / STRUCTURES_DIR).glob("part-*.parquet"))]
    return tuple((f.name, f.stat().st_mtime_ns) for f in files if f.exists())


class Runs:
    """The runs the app was started on (keys "0", "1", ...) and the checks (keys: check ids)."""

    def __init__(self, run_dirs: list[Path], checks: Checks, device: str = "cpu", allow_plugins: bool = False):
        self.run_dirs = [Path(d) for d in run_dirs]
        self.checks, self.device, self.allow_plugins = checks, device, allow_plugins
        self.views: dict[str, RunView] = {}
        self.lock = threading.Lock()
        self.potentials: dict[tuple, object] = {}
        self.figures = FigureQueue(self)
        self.board_cache: tuple | None = None

    def folder(self, key: str) -> Path:
        if RUN_KEY.fullmatch(key) and int(key) < len(self.run_dirs):  # one spelling per run: "0", "1", ...
            return self.run_dirs[int(key)]
        try:
            return self.checks.folder(key)
        except KeyError:
            raise HTTPException(404, f"no run {key!r}") from None

    def view(self, key: str) -> RunView:
        """The run's rows as read into memory, read again when a file of the run changes."""
        out = self.folder(key)
        signature = _signature(out)
        with self.lock:
            cached = self.views.get(key)
            if cached is None or cached.signature != signature:
                try:
                    rows = read_structures(out)
                    info = read_verdict_run_info(out)
                except SetupError as exc:
                    raise HTTPException(404, str(exc)) from None
                options = {name: sorted(rows[column].dropna().unique().tolist()) for name, column in
                           (("generator", Col.GENERATOR), ("status", Col.STATUS), ("crystal_system", Col.CRYSTAL_SYSTEM))}
                cached = RunView(out, info, rows, explore.elements_of(rows[Col.FORMULA]), signature, options)
                self.views[key] = cached
            return cached

    def board(self) -> Board:
        """The leaderboard of the runs (``ranking.build``), or why there is none."""
        if not self.run_dirs:
            return Board()
        signature = tuple(_signature(d) for d in self.run_dirs)
        if self.board_cache and self.board_cache[0] == signature:
            return self.board_cache[1]
        problems: list[str] = []
        notes: list[str] = []
        try:  # an incomplete run is left off the board and said above it; the others are ranked
            structures, infos = ranking.load_runs(self.run_dirs, problems, notes)
            headline, strict = ranking.board_thresholds(infos)
            result = Board(ranking.build(structures, (headline, strict), infos), headline, strict,
                           *ranking.board_verdict(infos), " ".join(problems) or None, tuple(notes))
        except SetupError as exc:
            result = Board(problem=" ".join(dict.fromkeys([*problems, str(exc)])))
        self.board_cache = (signature, result)
        return result

    def potential_for(self, described: dict):
        """The run's potential, loaded once (on the app's device) for band structures."""
        key = (described["model"], described.get("checkpoint"), described.get("checkpoint_sha256"))
        if str(described["model"]).startswith("python:") and not self.allow_plugins:
            # a run folder someone sent names the code that draws its bands: run only when asked to
            raise SetupError(f"this run's potential is a plugin ({described['model']}), whose code is not run "
                             "unless the app is started with --allow-plugins")
        if key not in self.potentials:
            # the registry's own weights unless plugins are allowed: a checkpoint path in a folder someone
            # sent is a file that loading unpickles
            self.potentials[key] = explore.run_potential(described, self.device, recorded_path=self.allow_plugins)
        return self.potentials[key]

    def band_figure(self, key: str, structure_id: str, kind: str) -> Path | str:
        """The figure's file if it is drawn; else it is queued and this says where it stands (a page
        request never waits on a drawing)."""
        view = self.view(key)
        row = _row(view, structure_id)
        path = explore.bands_folder(view.out, row, view.info) / explore.FIGURES[kind]
        return path if path.exists() else self.figures.request(view, row)


class FigureQueue:
    """Band figures are drawn one at a time by one thread of their own (CPU-bound: force constants, then
    two figures); requests join a bounded queue and are answered at once: "drawing", "queued", a failure
    in words, or "full" (a client asks again later). A page's worker thread never waits on a drawing."""

    def __init__(self, runs: "Runs", size: int = MAX_QUEUED_FIGURES):
        self.runs = runs
        self.jobs: queue.Queue = queue.Queue(maxsize=size)
        self.lock = threading.Lock()
        self.pending: set[tuple] = set()
        self.failed: dict[tuple, tuple[float, str]] = {}  # a failure is said for a minute, then tried again
        threading.Thread(target=self._draw, name="phononbench-bands", daemon=True).start()

    def request(self, view: RunView, row: pd.Series) -> str:
        key = (str(view.out), row[Col.STRUCTURE_ID], row[Col.STRUCTURE_HASH])
        with self.lock:
            when, why = self.failed.get(key, (0.0, ""))
            if time.monotonic() - when < FAILURE_REMEMBERED_S:
                raise BandsFailed(why)
            if key in self.pending:
                return "being drawn"
            try:
                self.jobs.put_nowait((key, view, row))
            except queue.Full:
                return "full"
            self.pending.add(key)
        return "being drawn"

    def _draw(self) -> None:
        while True:
            key, view, row = self.jobs.get()
            try:
                explore.band_figures(view.out, row, view.info, self.runs.potential_for)
            except Exception as exc:
                log.exception("bands of %s", key[1])
                with self.lock:
                    self.failed[key] = (time.monotonic(), reason(exc))
            finally:
                with self.lock:
                    self.pending.discard(key)


class BandsFailed(RuntimeError):
    """A band structure that cannot be drawn (the reason in words)."""


def _row(view: RunView, structure_id: str | None) -> pd.Series:
    try:
        return explore.row_of(view.rows, structure_id or "")
    except KeyError:
        raise HTTPException(404, f"no structure {structure_id!r} in this run") from None


def _value(value):
    """A cell as a page shows it: None for a missing value, an array as a list."""
    if hasattr(value, "ndim") and value.ndim:
        return value.tolist()
    try:
        return None if pd.isna(value) else value
    except (TypeError, ValueError):  # a value pandas cannot call missing or not (a list)
        return value


_INTEGER_COLUMNS = {f.name for f in structures_schema(()) if pa.types.is_integer(f.type)}


def _plain_row(row: pd.Series) -> dict:
    """A row as pages show it: missing values None, arrays as lists, integer columns as integers (a
    column with a gap in it reads back as float)."""
    plain = {str(c): _value(v) for c, v in row.items()}
    for c in _INTEGER_COLUMNS:
        if plain.get(c) is not None:
            plain[c] = int(plain[c])
    return plain


def _filters(request: Request, view: RunView) -> explore.Filters:
    query = request.query_params
    verdict_columns = [c for t in view.thresholds for c in (verdict_column(t), bz_verdict_column(t))]
    try:
        page = int(query.get("page") or 1)
    except ValueError:
        page = 1
    return explore.Filters(
        generator=query.get("generator") or None, status=query.get("status") or None,
        crystal_system=query.get("crystal_system") or None, element=query.get("element") or None,
        verdicts={c: query[c] for c in verdict_columns if query.get(c) in ("stable", "unstable")},
        sort=query.get("sort") or Col.STRUCTURE_ID, descending=query.get("order") == "desc", page=page)


@functools.cache
def _spacegroup_symbols() -> dict[int, str]:
    """International short symbols by space-group number, from spglib's table (pymatgen builds the whole
    group for a symbol: a second for Fm-3m, on every page)."""
    import spglib

    symbols: dict[int, str] = {}
    for hall_number in range(1, 531):
        kind = spglib.get_spacegroup_type(hall_number)
        symbols.setdefault(kind.number, kind.international_short)
    return symbols


def _spacegroup(number) -> str:
    if _value(number) is None:
        return "-"
    symbol = _spacegroup_symbols().get(int(number))
    return f"{symbol} ({int(number)})" if symbol else str(int(number))


def _qpoint(q) -> str:
    """A fractional q-point as a page shows it: (0, 0, 0.5), never -0."""
    q = _value(q)
    return "-" if q is None else "(" + ", ".join(f"{round(float(x), 4) + 0.0:g}" for x in q) + ")"


def _verdict(rows: pd.DataFrame, rule, threshold_thz: float) -> list[str | None]:
    """Each row's verdict as the rate counts it: "stable", "unstable" (relaxed, not stable: a phonon failure
    included) or None (not in the rate: invalid, duplicate, not relaxed)."""
    return [("stable" if stable else "unstable") if relaxed else None
            for stable, relaxed in zip(rule(rows, threshold_thz), is_relaxed(rows))]


def _structure_context(key: str, view: RunView, row: pd.Series) -> dict:
    """What the structure page shows of one row."""
    one = row.to_frame().T
    verdicts = [(t, _verdict(one, is_stable, t)[0], _verdict(one, is_stable_bz, t)[0]) for t in view.thresholds]
    return {"key": key, "row": _plain_row(row), "verdicts": verdicts,
            "spacegroup": _spacegroup(row[Col.SPACEGROUP_NUMBER]), "qpoint": _qpoint(row[Col.MIN_FREQUENCY_QPOINT]),
            "qpoint_bz": _qpoint(row[Col.MIN_FREQUENCY_BZ_QPOINT]),
            "input_spacegroup": _spacegroup(row[Col.INPUT_SPACEGROUP_NUMBER]),
            "has_bands": row[Col.STATUS] == Status.OK and isinstance(row[Col.RELAXED_CIF], str),
            "has_cif": isinstance(row[Col.RELAXED_CIF], str),
            "protocol": view.info["protocol"], "potential": view.info["potential"]}


def _attachment(name: str) -> str:
    return f'attachment; filename="{safe_file_name(name)}"'


def create_app(run_dirs: list[Path], checks_dir: Path, limits: Limits = Limits(), device: str = "cpu",
               allow_plugins: bool = False) -> FastAPI:
    """The app over these run folders, with checks kept under ``checks_dir``; ``allow_plugins``: a run
    whose potential is a ``python:`` plugin may run it to draw band structures."""
    for directory in run_dirs:
        read_verdict_run_info(directory)  # a folder that is not a run is refused before anything starts
    checks = Checks(checks_dir, limits, device)
    runs = Runs(run_dirs, checks, device, allow_plugins)
    app = FastAPI(title="PhononBench", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runs, app.state.checks = runs, checks

    def page(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, template, {"percent": percent, **context}, status_code=status_code)

    def check_form_page(request: Request, error: str | None = None, chosen: str = "emt", status_code: int = 200):
        return page(request, "check.html", status_code, potentials=WEB_POTENTIALS, limits=limits, error=error,
                    chosen=chosen)

    @app.middleware("http")
    async def refuse_large_uploads(request: Request, call_next):
        """An upload far over the limit is refused before its body is read (nothing spooled to disk); one
        near it is read into memory and refused by ``checks.read_upload`` with its size."""
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit() or int(length) > limits.max_upload_bytes + FORM_OVERHEAD_BYTES:
                error = (f"the upload is {int(length) / 1024:.0f} KiB; the limit is {limits.max_upload_bytes // 1024} KiB"
                         if length and length.isdigit() else "an upload must say its length (Content-Length)")
                return check_form_page(request, error, status_code=413)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        board = runs.board()
        listed = []
        for k, directory in enumerate(runs.run_dirs):
            try:
                info = read_verdict_run_info(directory)
                listed.append({"key": str(k), "name": directory.resolve().name, "status": info.get("status"),
                               "model": info["potential"]["model"], "protocol": info["protocol"]["name"]})
            except (SetupError, ValueError, KeyError, TypeError) as exc:  # a damaged run.json: said, the others shown
                listed.append({"key": str(k), "name": directory.resolve().name, "status": f"unreadable: {reason(exc, 120)}",
                               "model": "-", "protocol": "-"})
        board_rows = [] if board.rows is None else [
            {**{str(c): _value(v) for c, v in r.items()}, "entry": ranking.entry_name(r)} for _, r in board.rows.iterrows()]
        return page(request, "index.html", runs=listed, board=board_rows, measured=board,
                    strict_name=ranking.strict_name(board.strict, board.headline),
                    checks=[checks.state(c) for c in checks.ids()[:20]])

    @app.get("/runs/{key}", response_class=HTMLResponse)
    def run_page(request: Request, key: str):
        view = runs.view(key)
        filters = _filters(request, view)
        started = time.perf_counter()
        try:
            chosen = explore.select(view.rows, view.elements, filters, view.thresholds)
        except SetupError as exc:
            raise HTTPException(400, str(exc)) from None
        shown, page_number, pages = explore.page_of(chosen, filters.page)
        took_ms = 1000 * (time.perf_counter() - started)
        zone = ranks_by_zone(view.info)  # the verdict the run ranks by, in the last column
        verdicts = _verdict(shown, is_stable_bz if zone else is_stable, view.thresholds[0])
        table = [_plain_row(r) | {"verdict": v} for (_, r), v in zip(shown.iterrows(), verdicts)]
        params = request.query_params
        # the links keep the filters: the sort links start on page 1, the pager keeps the sort
        sort_query = urlencode([(k, v) for k, v in params.multi_items() if k not in ("page", "sort", "order")])
        page_query = urlencode([(k, v) for k, v in params.multi_items() if k != "page"])
        return page(request, "run.html", key=key, name=view.out.resolve().name, info=view.info, table=table,
                    n_rows=len(view.rows), n_chosen=len(chosen), page=page_number, pages=pages, filters=filters,
                    options=view.options, thresholds=view.thresholds, sort_query=sort_query, page_query=page_query,
                    took_ms=took_ms, formats=list(export.FORMATS), zone_headline=zone,
                    verdict_column=verdict_column, bz_verdict_column=bz_verdict_column)

    @app.get("/runs/{key}/structure", response_class=HTMLResponse)
    def structure_page(request: Request, key: str, id: str = ""):
        view = runs.view(key)
        return page(request, "structure.html", **_structure_context(key, view, _row(view, id)),
                    name=view.out.resolve().name)

    @app.get("/runs/{key}/bands/{kind}.png")
    async def bands_png(key: str, kind: str, id: str = ""):
        """The figure once it is drawn. The request waits on the event loop, holding no worker thread (each
        look is a short call on a thread), so any number of them never starve a page."""
        if kind not in explore.FIGURES:
            raise HTTPException(404, f"no band structure {kind!r}")
        deadline = time.monotonic() + FIGURE_WAIT_S
        while True:
            try:
                path = await anyio.to_thread.run_sync(runs.band_figure, key, id, kind)
            except BandsFailed as exc:
                raise HTTPException(500, f"cannot compute the bands: {exc}") from None
            if isinstance(path, Path):
                return FileResponse(path, media_type="image/png")
            if time.monotonic() > deadline:
                return JSONResponse({"detail": "the band structure is still being drawn; reload the page"},
                                    status_code=503, headers={"Retry-After": "10"})
            await asyncio.sleep(0.5)  # "being drawn" or a full queue: look again

    @app.get("/runs/{key}/relaxed.cif")
    def relaxed_cif(key: str, id: str = ""):
        row = _row(runs.view(key), id)
        if not isinstance(row[Col.RELAXED_CIF], str):
            raise HTTPException(404, f"{id} has no relaxed structure (status {row[Col.STATUS]})")
        return Response(row[Col.RELAXED_CIF], media_type="chemical/x-cif",
                        headers={"Content-Disposition": _attachment(f"{id}_relaxed.cif")})

    @app.get("/runs/{key}/export")
    def export_stable(key: str, format: str = "cif-zip", threshold: str | None = None, bz: str | None = None):
        view = runs.view(key)
        try:  # odd values answered in one line, as the CLI answers them, not with a validation dump
            threshold_thz = None if threshold in (None, "") else float(threshold)
        except ValueError:
            raise HTTPException(400, f"threshold must be a number of THz, not {threshold!r}") from None
        said = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
        if bz not in (None, "") and bz.strip().lower() not in said:
            raise HTTPException(400, f"bz must be true (over the Brillouin zone) or false (the published path), not {bz!r}")
        # by default the set the run's headline counts, as the CLI's
        bz = export.over_the_zone(view.info, None if bz in (None, "") else said[bz.strip().lower()])
        try:
            chosen = export.choose_threshold(view.info, threshold_thz)
            handle = io.BytesIO()
            export.write(export.stable_rows(view.rows, chosen, bz), format, handle)
        except SetupError as exc:
            raise HTTPException(400, str(exc)) from None
        name = f"{view.out.resolve().name}_stable_at_{chosen:g}_thz{'_bz' if bz else ''}{export.FORMATS[format]}"
        return Response(handle.getvalue(), media_type="application/octet-stream",
                        headers={"Content-Disposition": _attachment(name)})

    @app.get("/check", response_class=HTMLResponse)
    def check_form(request: Request):
        return check_form_page(request)

    @app.post("/check")
    async def check_submit(request: Request, structure: UploadFile = File(...), potential: str = Form(...)):
        data = await structure.read(limits.max_upload_bytes + 1)  # never more than the limit into memory
        try:  # parsed and checked on a thread, within a time budget: the request loop serves others meanwhile
            check_id = await asyncio.wait_for(anyio.to_thread.run_sync(
                checks.submit, structure.filename or "", data, potential, time.monotonic() + limits.read_budget_s + 5,
                abandon_on_cancel=True), limits.read_budget_s + 5)
        except QueueFull as exc:
            return check_form_page(request, str(exc), potential, status_code=429)
        except UploadRefused as exc:
            return check_form_page(request, str(exc), potential, status_code=400)
        except TimeoutError:
            return check_form_page(request, f"reading {structure.filename or 'the file'} took over "
                                   f"{limits.read_budget_s:g} s; upload a smaller structure", potential, status_code=400)
        return RedirectResponse(f"/checks/{check_id}", status_code=303)

    def check_state(check_id: str) -> dict:
        try:
            return checks.state(check_id)
        except KeyError:
            raise HTTPException(404, f"no check {check_id!r}") from None

    @app.get("/checks/{check_id}", response_class=HTMLResponse)
    def check_page(request: Request, check_id: str):
        state = check_state(check_id)
        context = {}
        if state["state"] == "done":
            view = runs.view(check_id)
            context = _structure_context(check_id, view, view.rows.iloc[0])
        return page(request, "check_status.html", check=state, **context)

    @app.get("/checks/{check_id}/state")
    def check_state_json(check_id: str):
        return JSONResponse(check_state(check_id))

    return app


def serve_app(app: FastAPI, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")

