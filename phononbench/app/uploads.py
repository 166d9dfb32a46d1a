"""Reading one uploaded structure file (the web app's "check a structure"), in reader processes of their own:
refused at once, with the reason, when it is not a CIF or POSCAR, too large, or has too many atoms (a CIF's
atoms counted from its sites and symmetry operations before pymatgen expands it). Light on purpose: a reader
process imports this module and pymatgen only, never the potentials."""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass

from phononbench.errors import reason

log = logging.getLogger(__name__)


class UploadRefused(ValueError):
    """An upload that is not checked, and why (one line, shown to the user)."""


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 512 * 1024
    max_atoms: int = 40  # in the uploaded cell, to keep one check quick (a 2x2x2 supercell of 320)
    max_queued: int = 20  # checks waiting for the worker; beyond it an upload is told to come back (429)
    read_budget_s: float = 10.0  # reading and checking one upload, off the request loop


class QueueFull(UploadRefused):
    """Too many checks are waiting, or uploads being read: the upload is not taken (HTTP 429)."""


READ_MEMORY_BYTES = 1536 * 2**20  # what reading one upload may take beyond its reader's own start-up


def _reader_start() -> None:
    """A reader process's start: what it reads with imported first, then its memory capped (reading a file
    past the cap fails that read alone)."""
    import resource

    import phononbench.science.ingest  # noqa: F401  (pymatgen's CIF and POSCAR readers, once)

    with open("/proc/self/status") as status:
        data_kib = next(int(line.split()[1]) for line in status if line.startswith("VmData:"))
    limit = data_kib * 1024 + READ_MEMORY_BYTES
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


class UploadReader:
    """Reads uploads in processes of their own, never in the app's: ``slots`` at a time (another upload
    meanwhile: QueueFull), each within ``limits.read_budget_s`` and READ_MEMORY_BYTES; a read past either is
    killed with its process (a fresh one takes its place) and refused in words."""

    def __init__(self, limits: Limits, slots: int = 2):
        import concurrent.futures
        import multiprocessing

        self.limits, self.context = limits, multiprocessing.get_context("spawn")
        self.free: queue.Queue[int] = queue.Queue()
        self.pools: list = [None] * slots
        for k in range(slots):
            self.free.put(k)
        self._futures = concurrent.futures

    def _pool(self, k: int):
        if self.pools[k] is None:
            self.pools[k] = self._futures.ProcessPoolExecutor(1, mp_context=self.context, initializer=_reader_start)
        return self.pools[k]

    def _discard(self, k: int) -> None:
        pool, self.pools[k] = self.pools[k], None
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def warm(self) -> None:
        """Start the reader processes (their imports) before the first upload."""
        for k in range(len(self.pools)):  # one after the other: the app's first pages come first
            try:
                self._pool(k).submit(int).result(timeout=120)
            except RuntimeError:  # the app is stopping ("cannot schedule new futures after shutdown")
                return
            except Exception:  # a reader that cannot start is started again by the first upload
                log.warning("an upload reader could not start", exc_info=True)

    def read(self, filename: str, data: bytes):
        try:
            k = self.free.get_nowait()
        except queue.Empty:
            raise QueueFull(f"{len(self.pools)} uploads are being read already; try again in a moment") from None
        name = filename or "the file"
        try:
            try:
                future = self._pool(k).submit(read_upload, filename, data, self.limits)
            except self._futures.process.BrokenProcessPool:  # its last read killed it: a fresh one
                self._discard(k)
                future = self._pool(k).submit(read_upload, filename, data, self.limits)
            try:
                return future.result(timeout=self.limits.read_budget_s)
            except self._futures.TimeoutError:
                self._discard(k)
                raise UploadRefused(f"reading {name} took over {self.limits.read_budget_s:g} s; upload a smaller "
                                    "structure") from None
            except self._futures.process.BrokenProcessPool:
                self._discard(k)
                raise UploadRefused(f"reading {name} needed over {READ_MEMORY_BYTES // 2**20} MiB of memory; "
                                    "upload a smaller structure") from None
        finally:
            self.free.put(k)


def read_upload(filename: str, data: bytes, limits: Limits, min_distance_a: float = 0.5):
    """The uploaded structure and the suffix its file is kept under (.cif or .vasp); UploadRefused if it
    is too large, not a CIF or POSCAR, not a valid crystal or has too many atoms."""
    from phononbench.science.ingest import looks_like_cif, input_problem, parse_structure_text, precheck_cif

    if len(data) > limits.max_upload_bytes:
        raise UploadRefused(f"the file is {len(data) / 1024:.0f} KiB; the limit is {limits.max_upload_bytes // 1024} KiB")
    if not data.strip():
        raise UploadRefused("the file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UploadRefused(f"{filename or 'the file'} is not a text file: upload a CIF or POSCAR") from None
    problem = precheck_cif(text, limits.max_atoms) if looks_like_cif(text) else None
    if problem:  # before pymatgen expands it: a small file can hold thousands of atoms
        raise UploadRefused(f"{filename or 'the structure'}: {problem}")
    try:
        structure = parse_structure_text(text)
    except Exception as exc:
        read_as = "CIF" if looks_like_cif(text) else "POSCAR (it has no CIF data block)"
        raise UploadRefused(f"{filename or 'the file'} is not a CIF or POSCAR structure: read as a {read_as}, "
                            f"{reason(exc, 200)}") from None
    problem = input_problem(structure, limits.max_atoms, min_distance_a)
    if problem:
        raise UploadRefused(f"{filename or 'the structure'}: {problem}")
    return structure, ".cif" if looks_like_cif(text) else ".vasp"


