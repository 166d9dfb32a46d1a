"""Stage 2: StructureMatcher within a generator."""

from __future__ import annotations

from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor

from phononbench.science.dedup import find_duplicates
from phononbench.science.ingest import InputStructure, read_inputs


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


# ---------------------------------------------------------------------------------------------
# At scale: one reduction per structure, buckets split by reduced-cell size, large buckets in blocks


def _variants(data_dir, n_per_base: int = 30, seed: int = 7) -> list[InputStructure]:
    """Perturbed copies of real generated structures (MatterGen's GdO conventional cell, an RSS TiZnN6):
    some within the matcher's tolerances of their base, some not, some whose perturbation breaks the
    symmetry that made the conventional cell reduce to a smaller primitive one. One bucket per formula."""
    import numpy as np
    from pymatgen.core import Lattice, Structure

    items = {i.structure_id: i for i in read_inputs([str(data_dir / "mattergen_sample.zip")], 40, 0.5)}
    bases = [items["mattergen/dft_mag_density/GdO_symmetrized.cif"].structure,
             items["random_structure_search/chemical_system/TiZnN6.cif"].structure]
    rng = np.random.default_rng(seed)
    out = []
    for b, base in enumerate(bases):
        for k in range(n_per_base):
            amplitude, strain = rng.choice([0.0, 0.02, 0.3, 0.7]), rng.choice([0.0, 0.02, 0.12])
            lattice = base.lattice.matrix @ (np.eye(3) + strain * rng.uniform(-1, 1, (3, 3)))
            cartesian = base.cart_coords + amplitude * rng.normal(size=base.cart_coords.shape)
            fractional = cartesian @ np.linalg.inv(base.lattice.matrix)  # the displaced sites in the strained cell
            varied = Structure(Lattice(lattice), base.species, fractional)
            out.append(InputStructure(f"g/{b}-{k}", "g", f"{b}-{k}", varied, formula=varied.composition.reduced_formula))
    return out


def _owners_from_pymatgen(structures) -> list[int]:
    """pymatgen's own grouping, as the index of each structure's group representative."""
    from pymatgen.core.structure_matcher import StructureMatcher

    position = {id(s): k for k, s in enumerate(structures)}
    owner = list(range(len(structures)))
    for group in StructureMatcher().group_structures(structures):
        for member in group:
            owner[position[id(member)]] = position[id(group[0])]
    return owner


def test_blocked_grouping_in_tasks_is_pymatgen_group_structures(data_dir):
    from phononbench.science import dedup
    from phononbench.tasks import LocalTasks

    for formula_items in (_variants(data_dir)[:30], _variants(data_dir)[30:]):
        structures = [i.structure for i in formula_items]
        expected = _owners_from_pymatgen(structures)
        assert 3 < len(set(expected)) < len(structures)  # some duplicates, some not: the test can fail
        assert dedup.group_in_order(dedup.reduce(formula_items)) == expected
        # the large-bucket path: several task slices, blocks of 4 structures
        reduced = dedup.reduce(formula_items)
        assert dedup._group_blocks(reduced, LocalTasks(), parts=3, block=4) == expected


def test_cells_whose_reduced_sizes_differ_never_fit(data_dir):
    """The bucket key's safety: plain StructureMatcher.fit (reducing both itself) on every pair of a real
    bucket whose reduced cells differ in size."""
    from pymatgen.core.structure_matcher import StructureMatcher

    from phononbench.science import dedup

    items = _variants(data_dir, n_per_base=24)[:24]  # GdO: 2-atom and 8-atom reduced cells
    sizes = [len(r) for r in dedup.reduce(items)]
    assert len(set(sizes)) > 1
    pairs = [(a, b) for a in range(len(items)) for b in range(len(items)) if sizes[a] != sizes[b]]
    assert len(pairs) > 50
    matcher = StructureMatcher()
    assert not any(matcher.fit(items[a].structure, items[b].structure) for a, b in pairs)


def test_large_buckets_on_ray_match_one_process(data_dir, monkeypatch):
    import ray

    from phononbench.science import dedup
    from phononbench.running.executors import RayExecutor

    items = _variants(data_dir)
    monkeypatch.setattr(dedup, "LARGE_BUCKET", 10)  # both buckets take the block path
    expected = find_duplicates(items)
    try:
        assert find_duplicates([i.packed() for i in items], RayExecutor(workers=2)) == expected
    finally:
        ray.shutdown()
    assert len(expected) > 10


def test_dedup_command_writes_what_run_writes_and_run_takes_it_up(copper_folder, tmp_path):
    import json

    from typer.testing import CliRunner

    from phononbench.cli import app
    from phononbench.records import Col
    from phononbench.running.run_folder import read_structures

    runner = CliRunner()
    out, direct = tmp_path / "out", tmp_path / "direct"
    result = runner.invoke(app, ["dedup", str(copper_folder), "--out", str(out), "--in-process"])
    assert result.exit_code == 0, result.output
    cells = [line.replace("│", " ").split() for line in result.output.splitlines() if "metals" in line][0]
    assert cells == ["metals", "4", "3", "2"]  # input, valid, unique
    rows = read_structures(out).set_index(Col.STRUCTURE_ID)[Col.STATUS].to_dict()
    assert rows == {"metals/broken.cif": "invalid_input", "metals/Cu_fcc_conventional.cif": "duplicate"}

    board = runner.invoke(app, ["leaderboard", str(out)])
    assert board.exit_code == 2 and "holds only a dedup, no verdicts yet" in board.output

    for folder in (out, direct):
        result = runner.invoke(app, ["run", str(copper_folder), "--out", str(folder), "--model", "emt", "--in-process"])
        assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["n_computed_this_time"] == 2
    assert "dedup: 0 structures to match, 3 decided before" in (out / "run.log").read_text()
    columns = [Col.STRUCTURE_ID, Col.STATUS, Col.DUPLICATE_OF, Col.MIN_FREQUENCY_THZ]
    taken_up, straight = (read_structures(f)[columns].sort_values(Col.STRUCTURE_ID).reset_index(drop=True)
                          for f in (out, direct))
    assert taken_up.equals(straight)
