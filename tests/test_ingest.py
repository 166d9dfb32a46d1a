"""Stage 1: every input structure gets an id and a generator; bad input is flagged, never dropped."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from ase.build import bulk
from ase.io import write
from pymatgen.core import Lattice, Structure

from phononbench.errors import SetupError
from phononbench.science.ingest import input_problem, parse_structure_text, read_inputs

CU_FCC_POSCAR = bulk("Cu", "fcc", a=3.6)


def _poscar(atoms) -> str:
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.vasp import Poscar

    return str(Poscar(AseAtomsAdaptor.get_structure(atoms)))


def _read(*specs, max_atoms=40):
    return read_inputs([str(s) for s in specs], max_atoms=max_atoms, min_distance_a=0.5)


def test_mattergen_zip_layout_gives_generators_and_flags_disorder(data_dir):
    items = {i.structure_id: i for i in _read(data_dir / "mattergen_sample.zip")}
    # the zip's single top folder (cifs/) is the root; the first folder below it is the generator
    assert {i.generator for i in items.values()} == {"mattergen", "random_structure_search"}
    assert "mattergen/dft_mag_density/GdO.cif" in items
    assert not any(sid.endswith("README.md") for sid in items)
    disordered = items["mattergen/experimental/Ta0.66666667Cr1.33333333O4.cif"]
    assert not disordered.valid and "partial occupancy" in disordered.error
    assert sum(i.valid for i in items.values()) == 8


def test_slices_table_with_literal_newlines_and_velocity_block(data_dir):
    items = _read(data_dir / "slices_crnn_sample.csv")
    assert len(items) == 3 and all(i.valid for i in items)
    assert [i.structure_id for i in items] == [f"slices_crnn_sample/slices_crnn_sample.csv#{k}" for k in range(3)]
    # row 0 of the upstream file is La4Hf2Al2O12 (20 atoms) in a "temp"-titled CONTCAR with velocities
    assert items[2].structure.composition.reduced_formula == "La2HfAlO6"
    assert len(items[2].structure) == 20


def test_mattergpt_overlapping_atoms_are_invalid(data_dir):
    items = _read(f"mattergpt={data_dir / 'mattergpt_sample.csv'}")
    assert [i.generator for i in items] == ["mattergpt"] * 3
    assert [i.valid for i in items] == [True, True, False]
    assert "overlapping atoms" in items[2].error and "Y" in items[2].error


@pytest.mark.parametrize(
    "text, reason",
    [
        ("this is not a crystal", ""),
        ("data_x\n_cell_length_a 3\n", ""),
        ("", "empty structure string"),
        (None, "empty structure string"),
    ],
)
def test_unparseable_text(text, reason):
    with pytest.raises(Exception, match=reason):
        parse_structure_text(text)


def _structure_reason(structure, max_atoms=40):
    return input_problem(structure, max_atoms=max_atoms, min_distance_a=0.5)


def test_each_invalid_kind_has_its_reason():
    good = Structure(Lattice.cubic(3.6), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    assert _structure_reason(good) is None
    overlapping = Structure(Lattice.cubic(3.6), ["Cu", "Cu"], [[0, 0, 0], [0.05, 0, 0]])
    assert "overlapping atoms" in _structure_reason(overlapping)
    self_image = Structure(Lattice.cubic(0.4), ["Cu"], [[0, 0, 0]])  # an atom too close to its own image
    assert "overlapping atoms" in _structure_reason(self_image)
    disordered = Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    assert "partial occupancy" in _structure_reason(disordered)
    assert "above the limit of 3" in _structure_reason(good, max_atoms=3)
    flat = Structure(Lattice([[3, 0, 0], [0, 3, 0], [3, 3, 0]]), ["Cu"], [[0, 0, 0]])
    assert "zero-volume" in _structure_reason(flat)


def test_nan_and_zero_volume_cells_from_files(tmp_path):
    poscar = _poscar(CU_FCC_POSCAR).splitlines()
    nan_cell = "\n".join(poscar[:2] + ["nan 0 0", "0 nan 0", "0 0 nan"] + poscar[5:])
    flat_cell = "\n".join(poscar[:2] + ["3 0 0", "0 3 0", "3 3 0"] + poscar[5:])
    table = pd.DataFrame({"poscar": [_poscar(CU_FCC_POSCAR), nan_cell, flat_cell, "garbage"],
                          "generator": ["g1", "g1", "g2", ""]})
    table.to_csv(tmp_path / "table.csv", index=False)
    items = _read(tmp_path / "table.csv")
    assert [i.generator for i in items] == ["g1", "g1", "g2", "table"]
    assert items[0].valid
    # pymatgen may refuse a NaN lattice at parse time or we catch it in the checks: either way, a reason
    assert not items[1].valid and ("NaN" in items[1].error or "nan" in items[1].error.lower())
    assert not items[2].valid and ("zero-volume" in items[2].error or "unparseable" in items[2].error)
    assert items[3].error.startswith("unparseable")


def test_every_table_format_reads_the_same(tmp_path):
    cif = str(__import__("pymatgen.io.cif", fromlist=["CifWriter"]).CifWriter(
        Structure(Lattice.cubic(3.6), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])))
    frame = pd.DataFrame({"CIF": [cif, "nonsense"], "generator": ["modelA", "modelB"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    (tmp_path / "t.json").write_text(json.dumps(frame.to_dict(orient="records")))
    for name in ("t.csv", "t.parquet", "t.jsonl", "t.json"):
        items = _read(tmp_path / name)
        assert [i.generator for i in items] == ["modelA", "modelB"], name
        assert items[0].valid and len(items[0].structure) == 4, name
        assert not items[1].valid, name


def test_a_generator_column_of_numbers_or_flags_keeps_them_as_names(tmp_path):
    """Generator ids written as numbers in JSON or Parquet (1000, 7, true) are names as written, each its own
    generator, never all folded into the file's name; a missing one is the file's generator."""
    cif = str(__import__("pymatgen.io.cif", fromlist=["CifWriter"]).CifWriter(Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])))
    (tmp_path / "t.json").write_text(json.dumps([{"cif": cif, "generator": g} for g in (1000, 7, True, None, " 7 ")]))
    assert [i.generator for i in _read(tmp_path / "t.json")] == ["1000", "7", "True", "t", "7"]
    pd.DataFrame({"cif": [cif] * 3, "generator": [3, 4, None]}).astype({"generator": "Int64"}).to_parquet(tmp_path / "p.parquet")
    assert [i.generator for i in _read(tmp_path / "p.parquet")] == ["3", "4", "p"]
    pd.DataFrame({"cif": [cif] * 3, "generator": [3.0, 4.5, None]}).to_parquet(tmp_path / "f.parquet")  # a gap: floats
    assert [i.generator for i in _read(tmp_path / "f.parquet")] == ["3", "4.5", "f"]
    (tmp_path / "gap.json").write_text(json.dumps([{"cif": cif, "generator": g} for g in (1000, None)]))
    assert [i.generator for i in _read(tmp_path / "gap.json")] == ["1000", "gap"]


def test_a_zip_with_absolute_entry_names_keeps_their_folders_as_generators(tmp_path):
    cif = str(__import__("pymatgen.io.cif", fromlist=["CifWriter"]).CifWriter(Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])))
    with zipfile.ZipFile(tmp_path / "abs.zip", "w") as archive:
        for name in ("/modelA/x.cif", "/modelA/y.cif", "/modelB/z.cif"):
            archive.writestr(name, cif)
    assert [(i.structure_id, i.generator) for i in _read(tmp_path / "abs.zip")] == [
        ("modelA/x.cif", "modelA"), ("modelA/y.cif", "modelA"), ("modelB/z.cif", "modelB")]


def test_table_without_structure_column_is_one_invalid_row(tmp_path):
    pd.DataFrame({"smiles": ["CCO"]}).to_csv(tmp_path / "molecules.csv", index=False)
    (item,) = _read(tmp_path / "molecules.csv")
    assert not item.valid and "no CIF/POSCAR column" in item.error


def test_extxyz_frames_and_folder_generators(tmp_path):
    folder = tmp_path / "runs"
    (folder / "modelX").mkdir(parents=True)
    frames = [bulk("Cu", "fcc", a=3.6), bulk("Al", "fcc", a=4.05)]
    frames[1].info["generator"] = "modelY"
    write(folder / "modelX" / "frames.extxyz", frames, format="extxyz")
    write(folder / "loose.cif", bulk("Ni", "fcc", a=3.52))
    items = {i.structure_id: i for i in _read(folder)}
    assert items["modelX/frames.extxyz#0"].generator == "modelX"
    assert items["modelX/frames.extxyz#1"].generator == "modelY"
    assert items["runs/loose.cif"].generator == "runs"
    assert all(i.valid for i in items.values())


def test_ids_are_stable_and_overlapping_inputs_refused(data_dir):
    first = [i.structure_id for i in _read(data_dir / "mattergen_sample.zip")]
    assert first == [i.structure_id for i in _read(data_dir / "mattergen_sample.zip")]
    with pytest.raises(SetupError, match="inputs overlap"):
        _read(data_dir / "mattergen_sample.zip", data_dir / "mattergen_sample.zip")
    with pytest.raises(SetupError, match="not found"):
        _read(data_dir / "missing.zip")


def test_too_many_atoms_uses_the_configured_limit(data_dir):
    items = read_inputs([str(data_dir / "slices_crnn_sample.csv")], max_atoms=10, min_distance_a=0.5)
    assert [i.valid for i in items] == [True, True, False]
    assert "20 atoms" in items[2].error and "limit of 10" in items[2].error
    assert np.isfinite(items[0].structure.volume)
