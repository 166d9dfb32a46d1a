from __future__ import annotations

from pathlib import Path

import pytest
from ase.build import bulk

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def copper_folder(tmp_path: Path) -> Path:
    """A generator folder 'metals' with fcc Cu (primitive and conventional), bcc Cu and one broken CIF."""
    folder = tmp_path / "inputs" / "metals"
    folder.mkdir(parents=True)
    bulk("Cu", "fcc", a=3.6).write(folder / "Cu_fcc.cif")
    bulk("Cu", "fcc", a=3.6, cubic=True).write(folder / "Cu_fcc_conventional.cif")
    bulk("Cu", "bcc", a=2.87).write(folder / "Cu_bcc.cif")
    (folder / "broken.cif").write_text("data_broken\n_cell_length_a nonsense\n")
    return tmp_path / "inputs"
