"""Universal interatomic potentials by name: one small interface over ASE calculators.

``load_potential(name)`` returns a ``Potential``: an ASE calculator for relaxation plus
``forces(list_of_atoms)``, the batch path phonon displacements go through. Loading happens once, before
any structure is touched, so a missing checkpoint stops the run at once with a message saying what to do.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from phononbench.errors import SetupError



def mattersim_checkpoint_dir() -> Path:
    """Where MatterSim itself keeps downloaded checkpoints."""
    return Path("~/.local/mattersim/pretrained_models").expanduser()

MATTERSIM_FILES = {"mattersim-5m": "mattersim-v1.0.0-5M.pth", "mattersim-1m": "mattersim-v1.0.0-1M.pth"}
MATTERSIM_URL = "https://raw.githubusercontent.com/microsoft/mattersim/main/pretrained_models/"


@dataclass
class Potential:
    name: str
    calculator: Calculator
    device: str
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None

    def forces(self, structures: list[Atoms]) -> list[np.ndarray]:
        """Forces (eV/A) on each structure. The reference path: one calculator call per structure."""
        out = []
        for atoms in structures:
            atoms = atoms.copy()
            atoms.calc = self.calculator
            out.append(np.asarray(atoms.get_forces(), dtype=float))
        return out

    def describe(self) -> dict:
        return {
            "model": self.name,
            "device": self.device,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
        }


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_device(device: str) -> str:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise SetupError(f"unknown device {device!r}: use cpu or cuda")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SetupError("--device cuda asked for, but torch sees no CUDA GPU here; use --device cpu")
    return device


# ---------------------------------------------------------------------------------------------
# MatterSim


def resolve_mattersim_checkpoint(name: str, checkpoint: str | None) -> Path:
    """Path of the checkpoint to load, downloading the published one on first use as MatterSim does."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise SetupError(f"MatterSim checkpoint not found: {path}")
        return path
    if name not in MATTERSIM_FILES:
        raise SetupError("--model mattersim needs --checkpoint PATH (or use mattersim-5m / mattersim-1m)")
    filename = MATTERSIM_FILES[name]
    folder = mattersim_checkpoint_dir()
    path = folder / filename
    if path.is_file():
        return path
    from mattersim.utils.download_utils import download_checkpoint

    try:
        folder.mkdir(parents=True, exist_ok=True)
        download_checkpoint(filename, save_folder=str(folder))
    except Exception as exc:
        path.unlink(missing_ok=True)  # never leave a partial file that would look like a checkpoint
        raise SetupError(
            f"MatterSim checkpoint {filename} is not on this machine and could not be downloaded "
            f"({type(exc).__name__}). On a machine with internet, download {MATTERSIM_URL}{filename} "
            f"and put it at {path}, or pass --checkpoint PATH."
        ) from exc
    if not path.is_file():
        raise SetupError(f"MatterSim download finished but {path} is missing; download it by hand from "
                         f"{MATTERSIM_URL}{filename}")
    return path


def _load_mattersim(name: str, device: str, checkpoint: str | None) -> Potential:
    path = resolve_mattersim_checkpoint(name, checkpoint)
    try:
        from mattersim.forcefield import MatterSimCalculator
        from mattersim.forcefield.potential import Potential as MatterSimPotential
    except Exception as exc:  # most often a torchvision built for another torch
        raise SetupError(
            f"cannot import MatterSim ({type(exc).__name__}: {exc}). If the message names torchvision, "
            "run `pip uninstall -y torchvision torchaudio` (MatterSim does not need them)."
        ) from exc
    try:
        model = MatterSimPotential.from_checkpoint(load_path=str(path), device=device, load_training_state=False)
    except Exception as exc:
        raise SetupError(f"cannot load MatterSim checkpoint {path} ({type(exc).__name__}: {exc}); "
                         "delete it and download it again") from exc
    calculator = MatterSimCalculator(potential=model, device=device)
    return Potential(name, calculator, device, str(path), sha256_of(path))


# ---------------------------------------------------------------------------------------------
# Potentials whose weights ship in their PyPI package (work offline)


def _load_chgnet(name: str, device: str, checkpoint: str | None) -> Potential:
    import chgnet
    from chgnet.model import CHGNet, CHGNetCalculator

    if checkpoint:
        model = CHGNet.from_file(checkpoint)
        path = Path(checkpoint)
    else:
        model = CHGNet.load(model_name="0.3.0", verbose=False)
        path = next((Path(chgnet.__file__).parent / "pretrained" / "0.3.0").glob("*.pth.tar"))
    calculator = CHGNetCalculator(model=model, use_device=device)
    return Potential(name, calculator, device, str(path), sha256_of(path))


def _load_sevennet(name: str, device: str, checkpoint: str | None) -> Potential:
    from sevenn.calculator import SevenNetCalculator
    from sevenn.util import pretrained_name_to_path

    model = checkpoint or "7net-0"
    path = Path(checkpoint) if checkpoint else Path(pretrained_name_to_path(model))
    calculator = SevenNetCalculator(model, device=device)
    return Potential(name, calculator, device, str(path), sha256_of(path) if path.is_file() else None)


def _load_emt(name: str, device: str, checkpoint: str | None) -> Potential:
    from ase.calculators.emt import EMT

    if checkpoint:
        raise SetupError("the emt potential takes no --checkpoint")
    return Potential(name, EMT(), "cpu")


POTENTIALS: dict[str, Callable[[str, str, str | None], Potential]] = {
    "mattersim-5m": _load_mattersim,  # the published protocol's potential
    "mattersim-1m": _load_mattersim,
    "mattersim": _load_mattersim,  # any M3GNet checkpoint given with --checkpoint
    "chgnet": _load_chgnet,  # CHGNet 0.3.0, weights in the wheel
    "sevennet": _load_sevennet,  # SevenNet-0, weights in the wheel
    "emt": _load_emt,  # ASE's EMT: Al Cu Ag Au Ni Pd Pt (and H C N O, roughly); tests and demos
}


def load_potential(name: str, device: str = "cpu", checkpoint: str | None = None) -> Potential:
    if name not in POTENTIALS:
        raise SetupError(f"unknown model {name!r}; choose one of {', '.join(POTENTIALS)}")
    return POTENTIALS[name](name, _check_device(device), checkpoint)
