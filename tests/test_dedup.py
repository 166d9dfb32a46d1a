"""Stage 2: StructureMatcher within a generator."""

from __future__ import annotations

from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor

from phononbench.dedup import find_duplicates
from phononbench.ingest import InputStructure, read_inputs


def test_mattergen_symmetrized_twins_collapse(data_dir):
    items = read_inputs([str(data_dir / "mattergen_sample.zip")], max_atoms=40, min_distance_a=0.5)
    duplicates = find_duplicates(items)
    # each _symmetrized twin (often a conventional cell with more atoms) points at its raw CIF
    assert duplicates == {
        "mattergen/chemical_system/HfZnN2_symmetrized.cif": "mattergen/chemical_system/HfZnN2.cif",
        "mattergen/dft_mag_density/GdO_symmetrized.cif": "mattergen/dft_mag_density/GdO.cif",
        "mattergen/mattergen_base/SbAu_symmetrized.cif": "mattergen/mattergen_base/SbAu.cif",
        "random_structure_search/chemical_system/TiZnN6_symmetrized.cif":
            "random_structure_search/chemical_system/TiZnN6.cif",
    }
    by_id = {i.structure_id: i for i in items}
    assert len(by_id["mattergen/dft_mag_density/GdO_symmetrized.cif"].structure) > len(
        by_id["mattergen/dft_mag_density/GdO.cif"].structure)


def _item(sid, generator, atoms):
    return InputStructure(sid, generator, sid, AseAtomsAdaptor.get_structure(atoms))


def test_same_crystal_from_two_generators_is_kept_twice_and_polymorphs_differ():
    fcc, fcc_conventional, bcc = bulk("Cu", "fcc", a=3.6), bulk("Cu", "fcc", a=3.6, cubic=True), bulk("Cu", "bcc", a=2.87)
    items = [_item("a/fcc", "a", fcc), _item("b/fcc", "b", fcc), _item("a/fcc-conv", "a", fcc_conventional),
             _item("a/bcc", "a", bcc)]
    assert find_duplicates(items) == {"a/fcc-conv": "a/fcc"}
