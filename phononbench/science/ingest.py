"""Stage 1, ingest: every input structure becomes an ``InputStructure`` with a stable id and a generator.

Inputs: folders (recursively; generator = first sub-folder name), ``.zip`` archives of the same layout,
CIF and POSCAR files, extxyz, and CSV/JSON/JSONL/Parquet tables with a CIF or POSCAR string column and
an optional ``generator`` column. ``NAME=PATH`` forces the generator of everything under PATH.

Bad input never raises here: it comes back with ``error`` set and becomes an ``invalid_input`` row.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import math
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from pymatgen.core import Element, Structure

from phononbench.tasks import LocalTasks
from phononbench.errors import SetupError

CIF_SUFFIXES = {".cif"}
EXTXYZ_SUFFIXES = {".extxyz", ".xyz"}
TABLE_SUFFIXES = {".csv", ".json", ".jsonl", ".parquet"}
POSCAR_SUFFIXES = {".vasp", ".poscar"}
READER_VERSION = 2  # bumped when reading or checking changes what a file gives: older ingest caches are not used
TABLE_ROWS_PER_JOB = 256  # table rows parsed by one job
JOBS_PER_TASK = 128  # files (or table slices) per ingest task
# Columns that may hold the structure text, in order of preference (matched case-insensitively).
STRUCTURE_COLUMNS = ("cif", "poscar", "structure", "cif_string", "poscar_string", "contcar")
GENERATOR_COLUMN = "generator"


@dataclass
class InputStructure:
    structure_id: str
    generator: str
    source: str  # file (and row/frame) it came from, as the user named it
    structure: Structure | None = None
    error: str | None = None  # set -> invalid_input
    structure_hash: str | None = None  # what the structure is (structure_hash), whatever its path
    formula: str | None = None  # reduced formula, once checked
    n_atoms: int | None = None
    # the structure as three arrays (lattice, species, fractional coordinates) while it waits in the driver:
    # a pymatgen Structure costs ~10 KB, 110k of them more memory than a driver should hold
    cell: tuple | None = None
    read_key: str | None = None  # the file it was read from, as the ingest cache knows it (Walk.key)

    @property
    def valid(self) -> bool:
        return self.error is None

    def packed(self) -> "InputStructure":
        """This input with its structure packed into ``cell`` (``structure`` None)."""
        if self.structure is None:
            return self
        s = self.structure
        cell = (np.array(s.lattice.matrix), tuple(site.species_string for site in s), np.array(s.frac_coords))
        return dataclasses.replace(self, structure=None, cell=cell)

    def unpacked(self) -> "InputStructure":
        """This input with its ``structure`` rebuilt from ``cell``."""
        if self.cell is None:
            return self
        lattice, species, fractional = self.cell
        return dataclasses.replace(self, structure=Structure(lattice, list(species), fractional), cell=None)


def structure_hash(structure: Structure) -> str:
    """A content identity: species, lattice (A) and fractional coordinates (wrapped into [0, 1)), rounded
    to 1e-4 and sorted by site, hashed. The same crystal file read from anywhere gives the same hash; an
    edited one a new hash."""
    lattice = np.round(structure.lattice.matrix, 4) + 0.0  # + 0.0: no negative zeros
    fractional = np.round(np.mod(structure.frac_coords, 1.0), 4) % 1.0 + 0.0
    sites = sorted((str(site.species), tuple(f)) for site, f in zip(structure, fractional.tolist()))
    payload = json.dumps({"lattice": lattice.tolist(), "sites": sites}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------
# Parsing one text into a Structure


def _unescape_newlines(text: str) -> str:
    # SLICES/MatterGPT tables store POSCARs with literal two-character "\n" sequences.
    if "\\n" in text and text.count("\n") < text.count("\\n"):
        text = text.replace("\\n", "\n")
    return text


def looks_like_cif(text: str) -> bool:
    head = text.lstrip()[:2000].lower()
    return head.startswith("data_") or "_cell_length_a" in head or "_atom_site_" in head


def parse_cif(text: str) -> list[Structure]:
    """The CIF's structures; ValueError with pymatgen's own reason when none can be read (it says only
    "no structures" and puts the reason in a warning)."""
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser = CifParser(io.StringIO(text), occupancy_tolerance=1.0)
        try:
            structures = parser.parse_structures(primitive=False)
        except ValueError as exc:
            reasons = [" ".join(str(w.message).split("\n")[1:]).strip() for w in caught
                       if str(w.message).startswith("No structure parsed")]
            raise ValueError(next((r for r in reasons if r), str(exc))) from None
    if not structures:
        raise ValueError("CIF holds no structure")
    return structures


# what a cell may be before anything is computed on it
MAX_CELL_LENGTH_A = 500.0  # longer is no crystal a generator meant (and overflows the physics)
MAX_SYMMETRY_OPERATIONS = 192  # the most a space group has (Fm-3m, Im-3m in a conventional cell: 192 and 96)
CIF_SYMOP_KEYS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz",
                  "_space_group_symop.operation_xyz", "_symmetry_equiv_pos_as_xyz_", "_space_group_symop_operation_xyz_")
# the keys pymatgen reads a space group from (lower case), by symbol and by number (a Hall symbol alone it
# reads as P1, and so does the count here)
CIF_SPACE_GROUP_KEYS = tuple(f"{key}{tail}" for key in (
    "_symmetry_space_group_name_h-m", "_symmetry_space_group_name_h_m", "_space_group_name_h-m_alt",
    "_space_group_name_h-m", "_space_group_it_number", "_symmetry_int_tables_number") for tail in ("", "_"))


def precheck_cif(text: str, max_atoms: int | None) -> str | None:
    """Why a CIF cannot be a structure, found before pymatgen expands it (which takes time quadratic in its
    atoms: a 3 KB file can expand to 15,360): a cell length or angle out of range, or more atoms than
    ``max_atoms``, counted from each site's distinct images under the symmetry operations. None when it
    may be read (pymatgen then decides)."""
    from pymatgen.core.operations import SymmOp
    from pymatgen.io.cif import CifFile

    try:
        blocks = list(CifFile.from_str(text).data.values())
    except Exception:
        return None  # pymatgen's own reading gives the reason
    total = 0
    for block in blocks:
        data = {key.lower(): value for key, value in block.data.items()}
        for axis in "abc" if len(blocks) == 1 else "":  # several blocks: each structure is checked on its own
            length = _cif_number(data.get(f"_cell_length_{axis}"))
            if length is not None and not 0 < length <= MAX_CELL_LENGTH_A:
                return f"cell length {axis} = {length:g} A (a cell length must be above 0 and at most {MAX_CELL_LENGTH_A:g} A)"
        for angle_name in ("alpha", "beta", "gamma") if len(blocks) == 1 else ():
            angle = _cif_number(data.get(f"_cell_angle_{angle_name}"))
            if angle is not None and not 0 < angle < 180:
                return f"cell angle {angle_name} = {angle:g} degrees (an angle must be between 0 and 180)"
        if max_atoms is None:
            continue
        try:
            operations = _cif_operations(data, SymmOp)
        except Exception:
            continue  # no count: pymatgen decides
        if len(operations) > MAX_SYMMETRY_OPERATIONS:
            return f"{len(operations)} symmetry operations (a space group has at most {MAX_SYMMETRY_OPERATIONS})"
        try:
            sites = np.array([[_cif_number(v) for v in data[f"_atom_site_fract_{axis}"]] for axis in "xyz"],
                             dtype=float).T
        except Exception:
            continue
        if not np.all(np.isfinite(sites)):
            continue
        for site in sites:
            images = np.array([op.operate(site) for op in operations]) % 1.0
            difference = images[:, None, :] - images[None, :, :]
            # pymatgen's own site tolerance (fractional) when it merges a site's images
            same = np.all(np.abs(difference - np.round(difference)) < 1e-4, axis=2)
            total += int(np.sum(np.argmax(same, axis=1) == np.arange(len(images))))  # first of each group
            if total > max_atoms:
                return f"over {max_atoms} atoms in the cell once its symmetry is applied (the limit, max_atoms)"
    return None


def _cif_number(value) -> float | None:
    """A CIF number (uncertainty in brackets dropped); None for none."""
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    try:
        return float(re.sub(r"\(\d*\)$", "", str(value).strip()))
    except ValueError:
        return float("nan") if str(value).strip() not in ("?", ".") else None


def _cif_operations(data: dict, symm_op) -> list:
    """The CIF's symmetry operations as pymatgen takes them (P1 where it names none it reads)."""
    for key in CIF_SYMOP_KEYS:
        if key in data:
            values = data[key] if isinstance(data[key], list) else [data[key]]
            if len(values) > MAX_SYMMETRY_OPERATIONS:
                return values  # counted, never parsed: refused by their number
            return [symm_op.from_xyz_str(v.replace("'", "").replace('"', "")) for v in values]
    from pymatgen.symmetry.groups import SpaceGroup

    for key in CIF_SPACE_GROUP_KEYS:
        if key in data:
            value = data[key][0] if isinstance(data[key], list) else data[key]
            group = SpaceGroup.from_int_number(int(value)) if value.strip().isdigit() else SpaceGroup(value.strip().replace(" ", ""))
            return list(group.symmetry_ops)
    return [symm_op.from_xyz_str("x, y, z")]


def parse_poscar(text: str) -> Structure:
    from pymatgen.io.vasp import Poscar

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Poscar.from_str(text).structure


def parse_structure_text(text: object) -> Structure:
    """A CIF or POSCAR string (format detected) -> Structure; raises ValueError on anything else."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        raise ValueError("empty structure string")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise ValueError(f"structure cell is a {type(text).__name__}, not text")
    text = _unescape_newlines(text)
    if not text.strip():
        raise ValueError("empty structure string")
    if looks_like_cif(text):
        structures = parse_cif(text)
        if len(structures) > 1:
            raise ValueError(f"CIF string holds {len(structures)} structures, expected one")
        return structures[0]
    return parse_poscar(text)


def _describe(exc: Exception) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"unparseable: {type(exc).__name__}{': ' + message[:300] if message else ''}"


# ---------------------------------------------------------------------------------------------
# Validation


def input_problem(structure: Structure, max_atoms: int | None, min_distance_a: float) -> str | None:
    """Why this structure cannot enter the benchmark, or None if it can."""
    n = len(structure)
    if n == 0:
        return "no atoms"
    lattice = structure.lattice.matrix
    if not np.all(np.isfinite(lattice)):
        return "NaN or infinite lattice vectors"
    if not np.all(np.isfinite(structure.frac_coords)):
        return "NaN or infinite atomic coordinates"
    lengths = np.linalg.norm(lattice, axis=1)
    if not np.all(np.isfinite(lengths)) or lengths.max() > MAX_CELL_LENGTH_A:
        return f"cell length {lengths.max():.4g} A, over {MAX_CELL_LENGTH_A:g} A: not a crystal's cell"
    volume = abs(float(np.linalg.det(lattice)))
    if volume < 1e-3:
        return f"zero-volume cell ({volume:.3g} A^3)"
    if not structure.is_ordered:
        return "partial occupancy (disordered structure); PhononBench needs an ordered crystal"
    for species in structure.composition.elements:
        if not isinstance(species, Element) or species.Z < 1 or species.Z > 103:
            return f"not a chemical element: {species}"
    if max_atoms is not None and n > max_atoms:
        return f"{n} atoms in the cell, above the limit of {max_atoms} (the max_atoms setting)"
    centres, _, _, distances = structure.get_neighbor_list(min_distance_a)
    if len(distances):
        k = int(np.argmin(distances))
        return (
            f"overlapping atoms: site {int(centres[k])} ({structure[int(centres[k])].specie}) has a "
            f"neighbour at {float(distances[k]):.3f} A (< {min_distance_a} A)"
        )
    return None


def _finish(item: InputStructure, max_atoms: int | None, min_distance_a: float) -> InputStructure:
    if item.structure is not None and item.error is None:
        try:
            item.structure = item.structure.copy()
            if any(getattr(sp, "oxi_state", None) for sp in item.structure.composition):
                item.structure.remove_oxidation_states()
            item.error = input_problem(item.structure, max_atoms, min_distance_a)
            item.structure_hash = structure_hash(item.structure)
            item.formula, item.n_atoms = item.structure.composition.reduced_formula, len(item.structure)
        except Exception as exc:  # a structure so broken that checking it fails
            item.error = f"invalid structure: {type(exc).__name__}: {exc}"[:400]
    if item.structure_hash is None:  # nothing to hash but the reason: a changed reason is a changed input
        item.structure_hash = "x" + hashlib.sha256(str(item.error).encode()).hexdigest()[:19]
    return item


# ---------------------------------------------------------------------------------------------
# Readers: each yields InputStructure for one file's bytes


@dataclass
class ReadJob:
    """A file's bytes (or a slice of a table's rows) to turn into input structures: ``reader(data, sid,
    generator, source)``. Walking the inputs makes jobs (cheap: file reads); any worker runs them."""

    reader: Callable
    data: object
    sid: str
    generator: str
    source: str
    key: str | None = None  # Walk.key of the file: its inputs are cached under it

    def __call__(self) -> list[InputStructure]:
        try:
            items = list(self.reader(self.data, self.sid, self.generator, self.source))
        except Exception as exc:  # a reader bug must not lose the file: it becomes its invalid row
            items = [InputStructure(self.sid, self.generator, self.source, error=f"unreadable: {_describe(exc)}")]
        for item in items:
            item.read_key = self.key
        return items


def _jobs(reader, data: bytes, sid: str, generator: str, source: str,
          key: str | None) -> Iterator[InputStructure | ReadJob]:
    if reader is _read_table_file:  # loaded here, its rows sliced into jobs
        for job in _read_table_file(data, sid, generator, source):
            if isinstance(job, ReadJob):
                job.key = key
            yield job
    else:
        yield ReadJob(reader, data, sid, generator, source, key)


def read_jobs(jobs: list[tuple[int, InputStructure | ReadJob]], max_atoms: int, min_distance_a: float,
              pack: bool = False) -> list[tuple[int, list[InputStructure]]]:
    """An ingest task: run the jobs (numbered in walking order), check and hash every structure (packed
    when ``pack``)."""
    out = []
    for number, job in jobs:
        items = [job] if isinstance(job, InputStructure) else job()
        items = [_finish(item, max_atoms, min_distance_a) for item in items]
        out.append((number, [item.packed() for item in items] if pack else items))
    return out


def _read_cif_file(data: bytes, sid: str, generator: str, source: str) -> Iterator[InputStructure]:
    text = data.decode("utf-8", errors="replace")
    problem = precheck_cif(text, None)
    if problem:
        yield InputStructure(sid, generator, source, error=problem)
        return
    try:
        structures = parse_cif(text)
    except Exception as exc:
        yield InputStructure(sid, generator, source, error=_describe(exc))
        return
    if len(structures) == 1:
        yield InputStructure(sid, generator, source, structures[0])
        return
    for k, s in enumerate(structures):
        yield InputStructure(f"{sid}#{k}", generator, f"{source}#{k}", s)


def _read_poscar_file(data: bytes, sid: str, generator: str, source: str) -> Iterator[InputStructure]:
    try:
        yield InputStructure(sid, generator, source, parse_poscar(data.decode("utf-8", errors="replace")))
    except Exception as exc:
        yield InputStructure(sid, generator, source, error=_describe(exc))


def _read_extxyz_file(data: bytes, sid: str, generator: str, source: str) -> Iterator[InputStructure]:
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        frames = read(io.StringIO(data.decode("utf-8", errors="replace")), index=":", format="extxyz")
    except Exception as exc:
        yield InputStructure(sid, generator, source, error=_describe(exc))
        return
    for k, atoms in enumerate(frames):
        gen = str(atoms.info.get(GENERATOR_COLUMN, generator))
        item = InputStructure(f"{sid}#{k}", gen, f"{source}#{k}")
        try:
            if not atoms.pbc.all():
                raise ValueError("frame is not periodic in all three directions")
            item.structure = AseAtomsAdaptor.get_structure(atoms)
        except Exception as exc:
            item.error = _describe(exc)
        yield item


def _load_table(data: bytes, suffix: str):
    import pandas as pd

    buffer = io.BytesIO(data)
    if suffix == ".csv":
        return pd.read_csv(buffer, dtype=object, keep_default_na=False, na_values=[""])
    if suffix == ".jsonl":
        return pd.read_json(buffer, lines=True, dtype=False)
    if suffix == ".json":
        return pd.read_json(buffer, dtype=False)
    return pd.read_parquet(buffer)


def _read_table_file(data: bytes, sid: str, generator: str, source: str) -> Iterator[InputStructure | "ReadJob"]:
    """A table is loaded where it is found; its rows are parsed in slices (``ReadJob``s), anywhere."""
    try:
        table = _load_table(data, PurePosixPath(source).suffix.lower())
    except Exception as exc:
        yield InputStructure(sid, generator, source, error=f"unreadable table: {_describe(exc)}")
        return
    by_lower = {str(c).lower(): c for c in table.columns}
    column = next((by_lower[c] for c in STRUCTURE_COLUMNS if c in by_lower), None)
    if column is None:
        yield InputStructure(
            sid, generator, source,
            error=f"no CIF/POSCAR column (looked for {', '.join(STRUCTURE_COLUMNS)}); "
            f"columns are {', '.join(map(str, table.columns))}",
        )
        return
    texts = table[column].tolist()
    generator_column = by_lower.get(GENERATOR_COLUMN)
    generators = [generator] * len(texts)
    if generator_column is not None:
        generators = [_generator_name(v, generator) for v in table[generator_column].tolist()]
    for start in range(0, len(texts), TABLE_ROWS_PER_JOB):
        rows = slice(start, start + TABLE_ROWS_PER_JOB)
        yield ReadJob(_parse_table_rows, (texts[rows], generators[rows], start), sid, generator, source)


def _generator_name(value, default: str) -> str:
    """A table's generator cell as a name: text stripped, a number or a flag as written ("1000", "True": a
    column of generator ids is not every row the file's name); empty or missing, the file's generator."""
    import pandas as pd

    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # an id column of whole numbers with a gap is read as floats: 1000, not "1000.0"
    return str(value).strip() or default


def _parse_table_rows(data: tuple, sid: str, generator: str, source: str) -> Iterator[InputStructure]:
    texts, generators, start = data
    for row, (text, gen) in enumerate(zip(texts, generators), start):
        item = InputStructure(f"{sid}#{row}", gen, f"{source}#{row}")
        try:
            item.structure = parse_structure_text(text)
        except Exception as exc:
            item.error = _describe(exc)
        yield item


def _reader_for(name: str):
    path = PurePosixPath(name)
    suffix = path.suffix.lower()
    upper = path.name.upper()
    if suffix in CIF_SUFFIXES:
        return _read_cif_file
    if suffix in EXTXYZ_SUFFIXES:
        return _read_extxyz_file
    if suffix in TABLE_SUFFIXES:
        return _read_table_file
    if suffix in POSCAR_SUFFIXES or upper.startswith(("POSCAR", "CONTCAR")) or "POSCAR" in upper:
        return _read_poscar_file
    return None


# ---------------------------------------------------------------------------------------------
# Walking inputs: every file becomes structures, an invalid_input row, or a line in SkippedFiles


@dataclass
class SkippedFiles:
    """Files passed over on purpose, by reason (a run records them and reports them in one line)."""

    by_reason: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, path: object) -> None:
        self.by_reason.setdefault(reason, []).append(str(path))

    def count(self) -> int:
        return sum(len(paths) for paths in self.by_reason.values())

    def to_dict(self, examples: int = 5) -> dict:
        return {reason: {"count": len(paths), "examples": paths[:examples]} for reason, paths in self.by_reason.items()}

    def summary(self) -> str:
        return describe_skipped(self.to_dict())


def describe_skipped(skipped: dict) -> str:
    """``SkippedFiles.to_dict()`` (as run.json keeps it) in one line, e.g.
    "3 files skipped: 2 with no structure reader (extension) (a.txt, b.md); 1 hidden (.DS_Store)"."""
    total = sum(v["count"] for v in skipped.values())
    parts = [f"{v['count']} {reason} ({', '.join(PurePosixPath(p).name for p in v['examples'][:3])}"
             f"{', ...' if v['count'] > 3 else ''})" for reason, v in skipped.items()]
    return f"{total} file{'s' if total != 1 else ''} skipped: " + "; ".join(parts)


def _generator_for(relative: PurePosixPath, root_name: str, forced: str | None) -> str:
    if forced:
        return forced
    return relative.parts[0] if len(relative.parts) > 1 else root_name


def _hidden(relative: PurePosixPath) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in relative.parts)


@dataclass
class Walk:
    """What walking the inputs collects and consults: files skipped on purpose, folders never read, and
    the inputs read before (``cache``: read key -> its finished inputs), which are not read again."""

    skipped: SkippedFiles = field(default_factory=SkippedFiles)
    exclude: tuple[Path, ...] = ()
    cache: dict[str, list[InputStructure]] = field(default_factory=dict)
    spec: str = ""

    def key(self, source: str, identity: str | None) -> str | None:
        """What a file's structures depend on: the input as named, the file, and its identity (size and
        modification time, or a zip entry's CRC)."""
        return None if identity is None else f"{self.spec}::{source}::{identity}"


def _stamp(path: Path) -> str | None:
    """A file's identity for the ingest cache: a hash of its bytes (an edit that keeps size and modification
    time, as ``cp -p`` makes, is an edit; reading bytes is cheap, parsing them is not)."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


MAX_DECOMPRESSED_BYTES = 512 * 1024 * 1024  # one file out of a .gz or a zip (a 110k-structure table fits)


class TooLarge(ValueError):
    """A compressed file that expands past MAX_DECOMPRESSED_BYTES."""


def _gunzip(data: bytes, limit: int | None = None) -> bytes:
    """A .gz file's contents, never more than ``limit`` bytes into memory (TooLarge past it)."""
    limit = MAX_DECOMPRESSED_BYTES if limit is None else limit
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
        out = handle.read(limit + 1)
    if len(out) > limit:
        raise TooLarge(f"decompresses to over {limit // 2**20} MiB (the limit per file)")
    return out


def _unzip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int | None = None) -> bytes:
    """A zip entry's bytes, never more than ``limit`` into memory whatever its header says."""
    limit = MAX_DECOMPRESSED_BYTES if limit is None else limit
    if info.file_size > limit:
        raise TooLarge(f"decompresses to {info.file_size / 2**20:.0f} MiB, over the limit of {limit // 2**20} MiB per file")
    with archive.open(info) as handle:
        out = handle.read(limit + 1)
    if len(out) > limit:
        raise TooLarge(f"decompresses to over {limit // 2**20} MiB (the limit per file)")
    return out


def _from_files(
    files: list[tuple[PurePosixPath, Callable[[], bytes], str | None]], root_name: str, forced: str | None,
    label: str, walk: Walk, prefix: str | None = None,
) -> Iterator[InputStructure | ReadJob | list[InputStructure]]:
    """files: (path relative to the root, function returning the bytes, the file's identity). A zip among
    them keeps its own layout of generators (MatterGen ships its baselines in one); ``X.gz`` is read as X.
    A file whose key is in the walk's cache is not read: its inputs come as they were (a list)."""
    for relative, read_bytes, identity in sorted(files, key=lambda f: str(f[0])):
        identity = identity() if callable(identity) else identity  # a file's hash, taken as it is reached
        source = f"{label}/{relative}" if label else str(relative)
        if _hidden(relative):
            walk.skipped.add("hidden", source)
            continue
        name, compressed = relative.name, relative.suffix.lower() == ".gz"
        if compressed:
            name = name[:-3]
        if PurePosixPath(name).suffix.lower() == ".zip":
            # a zip inside a generator's folder is that generator's, its entries named under the zip's path;
            # one at the top of the input keeps its own layout of generators (MatterGen ships its baselines so)
            inner = (forced, prefix and f"{prefix}/{relative.with_name(name)}") if (forced or len(relative.parts) == 1) \
                else (_generator_for(relative, root_name, None), f"{prefix + '/' if prefix else ''}{relative.with_name(name)}")
            try:
                data = read_bytes()
                data = _gunzip(data) if compressed else data
            except Exception as exc:
                yield InputStructure(f"{prefix + '/' if prefix else ''}{relative}", inner[0] or root_name, source,
                                     error=f"unreadable file: {type(exc).__name__}: {exc}"[:400])
                continue
            yield from _iter_zip(io.BytesIO(data), PurePosixPath(name).stem, inner[0], source, walk, identity, inner[1])
            continue
        reader = _reader_for(name)
        if reader is None:
            walk.skipped.add("with no structure reader (extension)", source)
            continue
        key = walk.key(source, identity)
        if key in walk.cache:
            yield walk.cache[key]
            continue
        relative_name = relative.with_name(name)
        generator = _generator_for(relative_name, root_name, forced)
        # the first folder already names the generator; otherwise prefix it (inside a zip: the zip's path)
        sid = (f"{prefix}/{relative_name}" if prefix else
               str(relative_name) if (not forced and len(relative.parts) > 1) else f"{generator}/{relative_name}")
        try:
            data = read_bytes()
            data = _gunzip(data) if compressed else data
        except Exception as exc:
            yield InputStructure(sid, generator, source, error=f"unreadable file: {type(exc).__name__}: {exc}"[:400])
            continue
        yield from _jobs(reader, data, sid, generator, source, key)


def _iter_zip(handle, stem: str, forced: str | None, label: str, walk: Walk, identity: str | None,
              prefix: str | None = None) -> Iterator[InputStructure | ReadJob | list[InputStructure]]:
    """A zip (path or file object). One that cannot be opened is one invalid_input row. ``prefix``: the ids
    of its entries start with it (a zip inside a generator's folder: its path there)."""
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        yield InputStructure(prefix or f"{forced or stem}/{PurePosixPath(label).name}", forced or stem, label,
                             error=f"unreadable zip archive: {type(exc).__name__}: {exc}"[:400])
        return
    with archive:
        entries = [i for i in archive.infolist() if not i.is_dir()]
        # an absolute entry name ("/abs/x.cif") is read as relative: its generator is "abs", not "/"
        parts = [PurePosixPath(i.filename.lstrip("/")).parts for i in entries]
        # A zip of one top folder (cifs/...) behaves like that folder.
        tops = {p[0] for p in parts if len(p) > 1}
        strip = len(tops) == 1 and all(len(p) > 1 for p in parts)
        root_name = next(iter(tops)) if strip else stem
        files, seen = [], {}
        for info, p in zip(entries, parts):
            relative = PurePosixPath(*p[1:]) if strip else PurePosixPath(*p)
            seen[relative] = seen.get(relative, 0) + 1
            if seen[relative] > 1:  # a second entry of the same name: read it too, under its own name
                relative = relative.with_name(f"{relative.stem}~{seen[relative]}{relative.suffix}")
            # an entry's ids depend on the whole archive's layout: its identity is the archive's and its own
            entry = None if identity is None else f"{identity}/{info.filename}:{info.CRC}:{info.file_size}"
            files.append((relative, lambda info=info: _unzip_entry(archive, info), entry))
        yield from _from_files(files, root_name, forced, label, walk, prefix)


def is_run_folder(path: Path) -> bool:
    """A PhononBench output folder (never read as input)."""
    return (path / "run.json").is_file() or (path / "structures").is_dir() and (path / "manifest.parquet").exists()


def _iter_folder(path: Path, forced: str | None, walk: Walk) -> Iterator[InputStructure | ReadJob | list]:
    files = []
    root = path.resolve()
    for folder, subfolders, names in os.walk(path, followlinks=False):
        folder = Path(folder)
        for sub in list(subfolders):
            full = folder / sub
            relative = PurePosixPath(full.relative_to(path).as_posix())
            if full.is_symlink():  # a linked folder can loop or leave the input: not followed
                walk.skipped.add("linked folder", full)
                subfolders.remove(sub)
            elif full.resolve() in walk.exclude or is_run_folder(full):
                walk.skipped.add("PhononBench output folder", full)
                subfolders.remove(sub)
            elif _hidden(relative):
                walk.skipped.add("hidden", full)
                subfolders.remove(sub)
        for name in names:
            full = folder / name  # a linked file is read through its link; a dangling one is unreadable
            files.append((PurePosixPath(full.relative_to(path).as_posix()), full.read_bytes,
                          lambda full=full: _stamp(full)))
    yield from _from_files(files, root.name, forced, str(root), walk)


def split_input(spec: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` -> (NAME, PATH); ``PATH`` -> (None, PATH). Raises SetupError if PATH is missing."""
    forced = None
    if "=" in spec and not Path(spec).exists():
        forced, spec = spec.split("=", 1)
    path = Path(spec)
    if not path.exists():
        raise SetupError(f"input not found: {spec}")
    return forced, path


def iter_input(spec: str, walk: Walk | None = None) -> Iterator[InputStructure | ReadJob | list[InputStructure]]:
    """What reading one input takes, in order: jobs that read files, inputs that need no reading (an
    unreadable file), and lists of inputs the walk's cache already holds. ``spec`` is PATH or NAME=PATH."""
    walk = walk if walk is not None else Walk()
    walk.spec = spec
    forced, path = split_input(spec)
    if path.is_dir():
        yield from _iter_folder(path, forced, walk)
    elif path.suffix.lower() == ".zip":
        yield from _iter_zip(path, path.stem, forced, str(path.resolve()), walk, _stamp(path))
    else:
        name = path.name[:-3] if path.suffix.lower() == ".gz" else path.name
        reader = _reader_for(name)
        if reader is None:
            raise SetupError(
                f"unsupported input {path}: expected a folder, .zip, .cif, POSCAR, .extxyz, "
                f".csv, .json, .jsonl or .parquet (optionally .gz)"
            )
        key = walk.key(str(path.resolve()), _stamp(path))
        if key in walk.cache:
            yield walk.cache[key]
            return
        generator = forced or PurePosixPath(name).stem
        try:
            data = path.read_bytes()
            data = _gunzip(data) if name != path.name else data
        except Exception as exc:
            yield InputStructure(f"{generator}/{name}", generator, str(path.resolve()),
                                 error=f"unreadable file: {type(exc).__name__}: {exc}"[:400])
            return
        yield from _jobs(reader, data, f"{generator}/{name}", generator, str(path.resolve()), key)


def _batches(jobs: Iterator, size: int) -> Iterator[list]:
    batch = []
    for job in jobs:
        batch.append(job)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_inputs(
    specs: list[str], max_atoms: int, min_distance_a: float, limit_per_generator: int | None = None,
    skipped: SkippedFiles | None = None, exclude: tuple[Path, ...] = (), executor=None, pack: bool = False,
    progress: Callable[[int], None] | None = None, cache: dict[str, list[InputStructure]] | None = None,
) -> list[InputStructure]:
    """All input structures, checked and hashed, in a stable order. Ids must be unique across inputs.

    Files are read here, lazily; parsing and checking run as tasks on ``executor`` (``map_tasks``; this
    process by default), ``JOBS_PER_TASK`` files or table slices each. ``pack``: structures come back
    packed (``InputStructure.packed``), as a run keeps them. ``cache`` (read key -> inputs, from a run
    folder): files whose key is there are neither read nor parsed again. ``skipped`` collects the files
    passed over on purpose; folders in ``exclude`` (the run's own output folder) and PhononBench output
    folders are never read. ``progress(n)``: n more inputs read."""
    executor = executor or LocalTasks()
    walk = Walk(skipped if skipped is not None else SkippedFiles(), tuple(p.resolve() for p in exclude), cache or {})
    entries = ((number, entry) for number, entry in enumerate(e for spec in specs for e in iter_input(spec, walk)))
    done: list[tuple[int, list[InputStructure]]] = []

    def tasks():  # cached inputs go straight to ``done``; the rest to tasks, a batch at a time
        for batch in _batches(entries, JOBS_PER_TASK):
            jobs = [(number, entry) for number, entry in batch if not isinstance(entry, list)]
            done.extend((number, entry) for number, entry in batch if isinstance(entry, list))
            if progress and len(jobs) < len(batch):
                progress(sum(len(entry) for _, entry in batch if isinstance(entry, list)))
            if jobs:
                yield jobs, max_atoms, min_distance_a, pack

    for finished in executor.map_tasks(read_jobs, tasks()):
        done.extend(finished)
        if progress:
            progress(sum(len(items) for _, items in finished))
    done.sort(key=lambda entry: entry[0])

    items: list[InputStructure] = []
    seen: dict[str, str] = {}
    per_generator: dict[str, int] = {}
    for _, entry in done:
        for item in entry:
            if item.structure_id in seen:
                raise SetupError(
                    f"structure id {item.structure_id!r} comes from both {seen[item.structure_id]} and "
                    f"{item.source}: inputs overlap; name them apart with NAME=PATH"
                )
            seen[item.structure_id] = item.source
            if limit_per_generator is not None:
                if per_generator.get(item.generator, 0) >= limit_per_generator:
                    continue
                per_generator[item.generator] = per_generator.get(item.generator, 0) + 1
            items.append(item)
    return items
