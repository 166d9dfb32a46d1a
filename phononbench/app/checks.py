"""Checking one structure (the web app's "check a structure"): an uploaded CIF or POSCAR is refused at
once, with the reason, when it is not a structure, too large, or has too many atoms; otherwise it gets a
run folder of its own under the checks folder (``<id>/upload/<file>``, ``<id>/check.json`` and the run
itself) and is computed in the background, one check at a time, with the published protocol and a
potential from the registry. A check left unfinished when the server stopped is queued again when it
starts: its run resumes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import queue
import re
import threading
import time
from pathlib import Path

from phononbench.errors import reason
from phononbench.compute.potentials import POTENTIALS
from phononbench.running.run_folder import safe_file_name
from phononbench.app.uploads import Limits, QueueFull, UploadReader, UploadRefused

log = logging.getLogger(__name__)

CHECK_FILE = "check.json"
CHECK_STATES = ("queued", "running", "done", "failed")
UPLOAD_DIR = "upload"
CHECK_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")  # the only names a check folder has
# registry names that need nothing but their name (``mattersim`` alone needs a checkpoint path); a
# ``python:`` plugin is never offered to the web
WEB_POTENTIALS = tuple(name for name in POTENTIALS if name != "mattersim")


class Checks:
    """The checks folder and its one background worker. ``state(id)`` says where a check stands:
    queued (and how many are ahead), running (which stage, for how long), done or failed (why)."""

    def __init__(self, root: Path, limits: Limits = Limits(), device: str = "cpu", start: bool = True):
        """``start``: pick up the checks left unfinished and start the worker (False: only the folder)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits, self.device = limits, device
        self.queue: queue.Queue[str] = queue.Queue()
        self.lock = threading.Lock()
        self.progress: dict[str, dict] = {}  # the running check: id -> its stage and start
        self.waiting: list[str] = []
        self.potentials: dict[str, object] = {}  # loaded once per model, in the worker thread
        self.reader = UploadReader(limits)
        if not start:
            return
        threading.Thread(target=self.reader.warm, name="phononbench-upload-readers", daemon=True).start()
        for check_id in self.ids():
            if self.meta(check_id).get("state") in ("queued", "running"):
                self._enqueue(check_id)  # left unfinished when the server stopped: its run resumes
        threading.Thread(target=self._work, name="phononbench-checks", daemon=True).start()

    # -- the folder

    def ids(self) -> list[str]:
        """Every check, newest first (by submission time: two in one second keep their order)."""
        ids = [p.name for p in self.root.iterdir() if CHECK_ID.match(p.name) and (p / CHECK_FILE).exists()]
        return sorted(ids, key=lambda i: (self.meta(i).get("submitted_ns", 0), i), reverse=True)

    def folder(self, check_id: str) -> Path:
        """The run folder of a check; KeyError for anything that is not one (a URL never becomes a path)."""
        if not CHECK_ID.match(check_id) or not (self.root / check_id / CHECK_FILE).exists():
            raise KeyError(check_id)
        return self.root / check_id

    def meta(self, check_id: str) -> dict:
        """check.json; one that cannot be read makes the check failed, saying so (the app still starts)."""
        path = self.folder(check_id) / CHECK_FILE
        shown = {"filename": "?", "model": "?", "formula": "?", "n_atoms": 0, "submitted": "?"}  # what a page names
        try:
            meta = json.loads(path.read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
            if meta.get("state") not in CHECK_STATES:
                raise ValueError(f"no state of a check ({meta.get('state')!r})")
            return {**shown, **meta}
        except (OSError, ValueError) as exc:
            return {**shown, "state": "failed", "error": f"{path} cannot be read ({reason(exc, 120)})"}

    def _write_meta(self, check_id: str, **changes) -> None:
        path = self.root / check_id / CHECK_FILE
        meta = {**(json.loads(path.read_text()) if path.exists() else {}), **changes}
        partial = path.with_name(f".{CHECK_FILE}.partial")
        partial.write_text(json.dumps(meta, indent=2))
        partial.replace(path)

    # -- submitting

    def submit(self, filename: str, data: bytes, model: str, deadline: float | None = None) -> str:
        """Queue a check of an uploaded file; UploadRefused (nothing written, nothing run) if it cannot be,
        or if reading it ends after ``deadline`` (time.monotonic: the one who uploaded it was told so)."""
        if model not in WEB_POTENTIALS:
            raise UploadRefused(f"unknown potential {model!r}; choose one of {', '.join(WEB_POTENTIALS)}")
        self._refuse_if_full()
        structure, suffix = self.reader.read(filename, data)  # in a process of its own, within its budget
        self._refuse_if_full()  # others may have been queued while this one was read
        if deadline is not None and time.monotonic() > deadline:
            raise UploadRefused("reading the file took too long")
        now, now_ns = dt.datetime.now(dt.timezone.utc), time.time_ns()
        check_id = f"{now:%Y%m%d-%H%M%S}-{hashlib.sha256(data + model.encode() + str(now_ns).encode()).hexdigest()[:8]}"
        stem = safe_file_name(Path(filename or "structure").stem, limit=60)
        upload = self.root / check_id / UPLOAD_DIR / f"{stem}{suffix}"
        upload.parent.mkdir(parents=True)
        upload.write_bytes(data)
        self._write_meta(check_id, model=model, filename=filename, input=str(upload.relative_to(self.root / check_id)),
                         formula=structure.composition.reduced_formula, n_atoms=len(structure), state="queued",
                         submitted=now.isoformat(timespec="seconds"), submitted_ns=now_ns)
        self._enqueue(check_id)
        return check_id

    def _refuse_if_full(self) -> None:
        with self.lock:
            waiting = len(self.waiting)
        if waiting >= self.limits.max_queued:
            raise QueueFull(f"{waiting} checks are waiting already (the limit is {self.limits.max_queued}); "
                            "try again when some have finished")

    def _enqueue(self, check_id: str) -> None:
        with self.lock:
            self.waiting.append(check_id)
        self.queue.put(check_id)

    # -- where a check stands

    def state(self, check_id: str) -> dict:
        meta = self.meta(check_id)
        with self.lock:
            live = dict(self.progress.get(check_id, {}))
            # the checks before it in the queue, and the one running now
            ahead = self.waiting.index(check_id) + bool(self.progress) if check_id in self.waiting else None
        state = {"id": check_id, **meta, **live}
        if ahead is not None and state["state"] == "queued":
            state["stage"] = f"waiting ({ahead} check{'s' if ahead != 1 else ''} ahead)" if ahead else "starting"
        if "started" in live and state["state"] == "running":
            state["elapsed_s"] = round(time.monotonic() - live["started"], 1)
            del state["started"]
        return state

    # -- the worker

    def _work(self) -> None:
        while True:
            check_id = self.queue.get()
            try:
                self._run(check_id)
            except Exception as exc:  # a check's failure is its own; the worker goes on
                log.exception("check %s failed", check_id)
                self._write_meta(check_id, state="failed", error=reason(exc))
            finally:
                with self.lock:
                    if check_id in self.waiting:
                        self.waiting.remove(check_id)
                    self.progress.pop(check_id, None)

    def _stage(self, check_id: str, stage: str) -> None:
        with self.lock:
            self.progress[check_id] = {"state": "running", "stage": stage,
                                       "started": self.progress.get(check_id, {}).get("started", time.monotonic())}

    def _potential(self, model: str):
        from phononbench.compute.potentials import load_potential

        if model not in self.potentials:
            self.potentials[model] = load_potential(model, self.device)
        return self.potentials[model]

    def _run(self, check_id: str) -> None:
        from phononbench.running.composition import compose, protocol_for
        from phononbench.running.pipeline import run_benchmark

        folder, meta = self.folder(check_id), self.meta(check_id)
        with self.lock:
            self.waiting.remove(check_id)
        self._write_meta(check_id, state="running")
        self._stage(check_id, f"loading the potential ({meta['model']})")
        potential = self._potential(meta["model"])
        run = compose(protocol_for("published", model=meta["model"]), self.device, potential=potential)
        run_benchmark([f"check={folder / meta['input']}"], folder, run.spec, run.described, run.executor,
                      reporter=_Progress(lambda stage: self._stage(check_id, stage)),
                      command=f"phononbench serve: check {meta['filename']} with {meta['model']}")
        self._write_meta(check_id, state="done")


class _Progress:
    """The pipeline's reporter, as one line of where the check is."""

    def __init__(self, say):
        self.say = say

    def start(self, total: int, done: int = 0) -> None:
        self.say("relaxing, then phonons on the 2x2x2 supercell" if total > done else "already computed")

    def advance(self, result) -> None:
        self.say(f"computed: {result.status}")

    def stop(self) -> None:
        pass

    def stage(self, name: str, total: int | None = None):
        import contextlib

        self.say(name)
        return contextlib.nullcontext(lambda n: None)

