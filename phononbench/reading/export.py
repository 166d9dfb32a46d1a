"""The stable set: the relaxed cells of the structures stable at a threshold, on the published path or
over the Brillouin zone (``records.is_stable`` / ``is_stable_bz``: the rows the rates count as stable),
with their ids, generators and lowest frequencies; as a zip of CIF files (with an index), one extxyz file
or a Parquet table."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from phononbench.errors import SetupError
from phononbench.records import Col, is_stable, is_stable_bz
from phononbench.running.run_folder import ranks_by_zone, read_structures, read_verdict_run_info, safe_file_name

FORMATS = {"cif-zip": ".zip", "extxyz": ".extxyz", "parquet": ".parquet"}  # format -> file suffix
INDEX_FILE = "index.csv"  # inside the zip: which file is which structure
# what travels with each cell
COLUMNS = [Col.STRUCTURE_ID, Col.GENERATOR, Col.FORMULA, Col.N_ATOMS, Col.SPACEGROUP_NUMBER, Col.CRYSTAL_SYSTEM,
           Col.ENERGY_PER_ATOM_EV, Col.MIN_FREQUENCY_THZ, Col.MIN_FREQUENCY_BZ_THZ, Col.STRUCTURE_HASH]
COUNTS = [Col.N_ATOMS, Col.SPACEGROUP_NUMBER]  # whole numbers, written as such (a float column holds them)


def choose_threshold(info: dict, threshold_thz: float | None) -> float:
    """The run's headline threshold, or one of its thresholds (verdicts exist for those alone)."""
    thresholds = [float(t) for t in info["protocol"]["thresholds_thz"]]
    if threshold_thz is None:
        return thresholds[0]
    matching = [t for t in thresholds if abs(threshold_thz - t) < 1e-12]
    if not matching:
        raise SetupError(f"the run has verdicts at {', '.join(f'{t:g}' for t in thresholds)} THz only, "
                         f"not at {threshold_thz:g}", setting="thresholds_thz")
    return matching[0]


def over_the_zone(info: dict, bz: bool | None) -> bool:
    """``bz`` where given; else whether the run ranks by the Brillouin zone (accurate): the set its headline counts."""
    return ranks_by_zone(info) if bz is None else bz


def stable_rows(rows: pd.DataFrame, threshold_thz: float, bz: bool = False) -> pd.DataFrame:
    """The rows stable at the threshold (published path, or the Brillouin zone with ``bz``), in run order."""
    return rows[(is_stable_bz if bz else is_stable)(rows, threshold_thz)]


def file_name(structure_id: str, taken: set[str]) -> str:
    """A file name for an id inside the zip: safe characters only, unique (``~2`` on a clash)."""
    stem = safe_file_name(re.sub(r"\.cif$", "", structure_id), limit=None)
    name, k = f"{stem}.cif", 1
    while name.lower() in taken:
        k += 1
        name = f"{stem}~{k}.cif"
    taken.add(name.lower())
    return name


def write(stable: pd.DataFrame, fmt: str, handle: BinaryIO) -> None:
    """The chosen rows' relaxed cells, with COLUMNS, to a binary file in one of FORMATS."""
    stable = stable.astype({c: "Int64" for c in COUNTS})
    if fmt == "cif-zip":
        taken: set[str] = set()
        index = stable[COLUMNS].copy()
        index.insert(0, "file", [file_name(s, taken) for s in stable[Col.STRUCTURE_ID]])
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, cif in zip(index["file"], stable[Col.RELAXED_CIF]):
                archive.writestr(name, cif)
            archive.writestr(INDEX_FILE, index.to_csv(index=False))
    elif fmt == "extxyz":
        from ase.io import read
        from ase.io import write as write_atoms

        broken = stable[Col.STRUCTURE_ID].str.contains("[\r\n]") | stable[Col.GENERATOR].str.contains("[\r\n]")
        if broken.any():  # one line per frame's header: a line break would make the whole file unreadable
            raise SetupError(f"{stable.loc[broken, Col.STRUCTURE_ID].iloc[0]!r} (or its generator) has a line break, "
                             "which extxyz cannot hold; export as parquet or cif-zip", setting="format")
        frames = []
        for _, row in stable.iterrows():
            atoms = read(io.StringIO(row[Col.RELAXED_CIF]), format="cif")
            # ASE reads a value that looks like a number back as one ("1e3" -> 1000.0): the other formats keep text
            atoms.info = {str(c): int(row[c]) if c in COUNTS else row[c] for c in COLUMNS
                          if row[c] is not None and not pd.isna(row[c])}
            frames.append(atoms)
        text = io.StringIO()
        write_atoms(text, frames, format="extxyz")
        handle.write(text.getvalue().encode())
    elif fmt == "parquet":
        table = pa.Table.from_pandas(stable[[*COLUMNS, Col.RELAXED_CIF]], preserve_index=False)
        pq.write_table(table, handle)
    else:
        raise SetupError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", setting="format")


def export_stable(out: Path, fmt: str, threshold_thz: float | None = None, bz: bool | None = None,
                  target: Path | None = None) -> tuple[Path, int, bool]:
    """Write a run's stable set to ``target`` (default OUT/stable_at_T_thz[_bz].EXT); returns it, its size and
    whether it is stable over the Brillouin zone.
    Stable by the verdict the run's preset ranks by (the Brillouin zone under accurate) unless ``bz`` says."""
    if fmt not in FORMATS:
        raise SetupError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", setting="format")
    info = read_verdict_run_info(out)
    threshold = choose_threshold(info, threshold_thz)
    bz = over_the_zone(info, bz)
    stable = stable_rows(read_structures(out), threshold, bz)
    target = Path(target or Path(out) / f"stable_at_{threshold:g}_thz{'_bz' if bz else ''}{FORMATS[fmt]}")
    partial = target.with_name(f".{target.name}.partial")
    try:
        with open(partial, "wb") as handle:
            write(stable, fmt, handle)
    except BaseException:
        partial.unlink(missing_ok=True)  # nothing half-written left beside the run
        raise
    partial.replace(target)
    return target, len(stable), bz
