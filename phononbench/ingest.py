"""Stage 1, ingest: every input structure becomes an ``InputStructure`` with a stable id and a generator.

Inputs: folders (recursively; generator = first sub-folder name), ``.zip`` archives of the same layout,
CIF and POSCAR files, extxyz, and CSV/JSON/JSONL/Parquet tables with a CIF or POSCAR string column and
an optional ``generator`` column. ``NAME=PATH`` forces the generator of everything under PATH.

Bad input never raises here: it comes back with ``error`` set and becomes an ``invalid_input`` row.
"""

from __future__ import annotations

import io
import math
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from pymatgen.core import Element, Structure

from phononbench.errors import SetupError

CIF_SUFFIXES = {".cif"}
EXTXYZ_SUFFIXES = {".extxyz", ".xyz"}
TABLE_SUFFIXES = {".csv", ".json", ".jsonl", ".parquet"}
POSCAR_SUFFIXES = {".vasp", ".poscar"}
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

    @property
    def valid(self) -> bool:
        return self.error is None


# ---------------------------------------------------------------------------------------------
# Parsing one text into a Structure


def _unescape_newlines(text: str) -> str:
    # SLICES/MatterGPT tables store POSCARs with literal two-character "\n" sequences.
    if "\\n" in text and text.count("\n") < text.count("\\n"):
        text = text.replace("\\n", "\n")
    return text


def _looks_like_cif(text: str) -> bool:
    head = text.lstrip()[:2000].lower()
    return head.startswith("data_") or "_cell_length_a" in head or "_atom_site_" in head


def parse_cif(text: str) -> list[Structure]:
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser = CifParser(io.StringIO(text), occupancy_tolerance=1.0)
        structures = parser.parse_structures(primitive=False)
    if not structures:
        raise ValueError("CIF holds no structure")
    return structures


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
    if _looks_like_cif(text):
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


def check_structure(structure: Structure, max_atoms: int, min_distance_a: float) -> str | None:
    """Why this structure cannot enter the benchmark, or None if it can."""
    n = len(structure)
    if n == 0:
        return "no atoms"
    lattice = structure.lattice.matrix
    if not np.all(np.isfinite(lattice)):
        return "NaN or infinite lattice vectors"
    if not np.all(np.isfinite(structure.frac_coords)):
        return "NaN or infinite atomic coordinates"
    volume = abs(float(np.linalg.det(lattice)))
    if volume < 1e-3:
        return f"zero-volume cell ({volume:.3g} A^3)"
    if not structure.is_ordered:
        return "partial occupancy (disordered structure); PhononBench needs an ordered crystal"
    for species in structure.composition.elements:
        if not isinstance(species, Element) or species.Z < 1 or species.Z > 103:
            return f"not a chemical element: {species}"
    if n > max_atoms:
        return f"{n} atoms in the cell, above the limit of {max_atoms} (the max_atoms setting)"
    centres, _, _, distances = structure.get_neighbor_list(min_distance_a)
    if len(distances):
        k = int(np.argmin(distances))
        return (
            f"overlapping atoms: site {int(centres[k])} ({structure[int(centres[k])].specie}) has a "
            f"neighbour at {float(distances[k]):.3f} A (< {min_distance_a} A)"
        )
    return None


def _finish(item: InputStructure, max_atoms: int, min_distance_a: float) -> InputStructure:
    if item.structure is not None and item.error is None:
        try:
            item.structure = item.structure.copy()
            if any(getattr(sp, "oxi_state", None) for sp in item.structure.composition):
                item.structure.remove_oxidation_states()
            item.error = check_structure(item.structure, max_atoms, min_distance_a)
        except Exception as exc:  # a structure so broken that checking it fails
            item.error = f"invalid structure: {type(exc).__name__}: {exc}"[:400]
    return item


# ---------------------------------------------------------------------------------------------
# Readers: each yields InputStructure for one file's bytes


def _read_cif_file(data: bytes, sid: str, generator: str, source: str) -> Iterator[InputStructure]:
    try:
        structures = parse_cif(data.decode("utf-8", errors="replace"))
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


def _read_table_file(data: bytes, sid: str, generator: str, source: str) -> Iterator[InputStructure]:
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
    generator_column = by_lower.get(GENERATOR_COLUMN)
    for row, text in enumerate(table[column].tolist()):
        gen = generator
        if generator_column is not None:
            value = table[generator_column].iloc[row]
            if isinstance(value, str) and value.strip():
                gen = value.strip()
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
# Walking inputs


def _generator_for(relative: PurePosixPath, root_name: str, forced: str | None) -> str:
    if forced:
        return forced
    return relative.parts[0] if len(relative.parts) > 1 else root_name


def _from_files(
    files: list[tuple[PurePosixPath, Callable[[], bytes]]], root_name: str, forced: str | None, label: str
) -> Iterator[InputStructure]:
    """files: (path relative to the root, function returning the bytes)."""
    for relative, read_bytes in sorted(files, key=lambda f: str(f[0])):
        reader = _reader_for(relative.name)
        if reader is None:
            continue
        generator = _generator_for(relative, root_name, forced)
        # the first folder already names the generator; otherwise prefix it
        sid = str(relative) if (not forced and len(relative.parts) > 1) else f"{generator}/{relative}"
        source = f"{label}/{relative}" if label else str(relative)
        try:
            data = read_bytes()
        except Exception as exc:
            yield InputStructure(sid, generator, source, error=f"unreadable file: {exc}")
            continue
        yield from reader(data, sid, generator, source)


def _iter_zip(path: Path, forced: str | None) -> Iterator[InputStructure]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SetupError(f"cannot open {path} as a zip archive: {exc}") from exc
    with archive:
        names = [n for n in archive.namelist() if not n.endswith("/") and "__MACOSX" not in n]
        parts = [PurePosixPath(n).parts for n in names]
        # A zip of one top folder (cifs/...) behaves like that folder.
        tops = {p[0] for p in parts if len(p) > 1}
        strip = len(tops) == 1 and all(len(p) > 1 for p in parts)
        root_name = next(iter(tops)) if strip else path.stem
        files = []
        for name, p in zip(names, parts):
            relative = PurePosixPath(*p[1:]) if strip else PurePosixPath(*p)
            files.append((relative, lambda name=name: archive.read(name)))
        yield from _from_files(files, root_name, forced, str(path))


def _iter_folder(path: Path, forced: str | None) -> Iterator[InputStructure]:
    found = sorted(
        f for f in path.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)
    )
    files = [(PurePosixPath(f.relative_to(path).as_posix()), f.read_bytes) for f in found]
    yield from _from_files(files, path.resolve().name, forced, str(path))
    # A zip inside the folder keeps its own layout of generators (MatterGen ships its baselines in it).
    for f in found:
        if f.suffix.lower() == ".zip":
            yield from _iter_zip(f, forced)


def split_input(spec: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` -> (NAME, PATH); ``PATH`` -> (None, PATH). Raises SetupError if PATH is missing."""
    forced = None
    if "=" in spec and not Path(spec).exists():
        forced, spec = spec.split("=", 1)
    path = Path(spec)
    if not path.exists():
        raise SetupError(f"input not found: {spec}")
    return forced, path


def iter_input(spec: str) -> Iterator[InputStructure]:
    """Structures of one input, unchecked. ``spec`` is PATH or NAME=PATH."""
    forced, path = split_input(spec)
    if path.is_dir():
        yield from _iter_folder(path, forced)
    elif path.suffix.lower() == ".zip":
        yield from _iter_zip(path, forced)
    else:
        reader = _reader_for(path.name)
        if reader is None:
            raise SetupError(
                f"unsupported input {path}: expected a folder, .zip, .cif, POSCAR, .extxyz, "
                f".csv, .json, .jsonl or .parquet"
            )
        generator = forced or path.stem
        yield from reader(path.read_bytes(), f"{generator}/{path.name}", generator, str(path))


def read_inputs(
    specs: list[str], max_atoms: int, min_distance_a: float, limit_per_generator: int | None = None
) -> list[InputStructure]:
    """All input structures, checked, in a stable order. Ids must be unique across inputs."""
    items: list[InputStructure] = []
    seen: dict[str, str] = {}
    per_generator: dict[str, int] = {}
    for spec in specs:
        for item in iter_input(spec):
            if item.structure_id in seen:
                raise SetupError(
                    f"structure id {item.structure_id!r} comes from both {seen[item.structure_id]} and "
                    f"{item.source}: inputs overlap; name them apart with NAME=PATH"
                )
            if limit_per_generator is not None:
                if per_generator.get(item.generator, 0) >= limit_per_generator:
                    continue
                per_generator[item.generator] = per_generator.get(item.generator, 0) + 1
            seen[item.structure_id] = item.source
            items.append(_finish(item, max_atoms, min_distance_a))
    return items
