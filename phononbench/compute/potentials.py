"""Universal interatomic potentials by name: one small interface over ASE calculators.

``load_potential(name)`` returns a ``Potential``: its ASE calculator (the published scripts' path, one
structure per call) and ``predict(list_of_atoms)``, the model's own batched inference. Which of the two
a run uses is the engine's choice (``engines.py``). Loading happens once per worker, before any
structure is touched, so a missing checkpoint stops the run at once with a message saying what to do.
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
class Prediction:
    """What a potential says about one structure (ASE units: eV, eV/A, eV/A^3 Voigt stress)."""

    energy_ev: float
    forces: np.ndarray
    stress: np.ndarray | None = None


@dataclass
class Potential:
    """An ASE calculator (the published path) plus batched prediction (the throughput path).

    ``predict`` splits a list of structures into batches of at most ``max_atoms_per_batch`` atoms
    and, on a GPU out-of-memory error, retries with halves. Subclasses override ``_predict_batch``
    with the model's own batched inference; the default asks the calculator one structure at a time.
    """

    name: str
    calculator: Calculator
    device: str
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    max_atoms_per_batch: int = 2048
    make_torchsim: Callable[["Potential"], object] | None = None
    modal: str | None = None  # the head of a multi-fidelity model (SevenNet-MF-0: PBE)
    _torchsim: object = None

    def predict(self, structures: list[Atoms], stress: bool = True) -> list[Prediction]:
        """Energy, forces (and stress) of each structure, through the model's batched inference."""
        out: list[Prediction] = []
        for batch in batches_by_atoms(structures, self.max_atoms_per_batch):
            out.extend(self._predict_splitting_on_oom(batch, stress))
        return out

    def predict_with_calculator(self, structures: list[Atoms], stress: bool = True) -> list[Prediction]:
        """The same through the ASE calculator, one structure per call: the published scripts' path."""
        return Potential._predict_batch(self, structures, stress)

    def forces(self, structures: list[Atoms]) -> list[np.ndarray]:
        """Forces (eV/A) on each structure, batched."""
        return [p.forces for p in self.predict(structures, stress=False)]

    def _predict_splitting_on_oom(self, batch: list[Atoms], stress: bool) -> list[Prediction]:
        return split_on_oom(lambda b: self._predict_batch(b, stress), batch)

    def _predict_batch(self, batch: list[Atoms], stress: bool) -> list[Prediction]:
        out = []
        for atoms in batch:
            atoms = unconstrained(atoms)
            atoms.calc = self.calculator
            try:
                out.append(Prediction(
                    float(atoms.get_potential_energy()),
                    np.asarray(atoms.get_forces(), dtype=float),
                    np.asarray(atoms.get_stress(), dtype=float) if stress else None,
                ))
            except Exception:
                # the shared calculator keeps the failed structure as its state (EMT half set up): the next
                # structure of the same elements would then fail with the wreck's AttributeError, not its own
                reset = getattr(self.calculator, "reset", None)
                if reset is not None:
                    reset()
                raise
        return out

    def torchsim_model(self):
        """The model as a TorchSim ``ModelInterface`` whose state and outputs are float64, built once; None
        where the potential has no TorchSim model (the ``torchsim`` engine refuses it before any work)."""
        if self._torchsim is None and self.make_torchsim is not None:
            self._torchsim = self.make_torchsim(self)
        return self._torchsim

    def describe(self) -> dict:
        return {
            "model": self.name,
            "device": self.device,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "modal": self.modal,
            "max_atoms_per_batch": self.max_atoms_per_batch,
        }


def out_of_memory(exc: BaseException) -> bool:
    """A device out of memory (torch.cuda.OutOfMemoryError is a RuntimeError that says so): not the
    fault of the structures in flight."""
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def split_on_oom(predict_batch: Callable[[list[Atoms]], list[Prediction]], batch: list[Atoms]) -> list[Prediction]:
    """``predict_batch(batch)``; on a GPU out-of-memory error, the two halves one after the other."""
    try:
        return predict_batch(batch)
    except RuntimeError as exc:
        if not out_of_memory(exc) or len(batch) == 1:
            raise
        empty_cuda_cache()
        half = len(batch) // 2
        return split_on_oom(predict_batch, batch[:half]) + split_on_oom(predict_batch, batch[half:])


def unconstrained(atoms: Atoms) -> Atoms:
    """A copy without constraints: the model's raw answer; a relaxation applies its own constraints."""
    atoms = atoms.copy()
    atoms.set_constraint()
    return atoms


def batches_by_atoms(structures: list[Atoms], max_atoms: int) -> list[list[Atoms]]:
    """Consecutive groups of at most ``max_atoms`` atoms (a larger structure goes alone)."""
    batches: list[list[Atoms]] = []
    current: list[Atoms] = []
    count = 0
    for atoms in structures:
        if current and count + len(atoms) > max_atoms:
            batches.append(current)
            current, count = [], 0
        current.append(atoms)
        count += len(atoms)
    if current:
        batches.append(current)
    return batches


def empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class MatterSimPotential(Potential):
    """Batched inference through MatterSim's own TorchSim wrapper (graphs built on the model's device).

    Not MatterSim's ``build_dataloader`` + ``predict_properties``: in MatterSim 1.2.5 that path gives each
    structure of a multi-structure batch forces that differ by about 1% from the same structure alone (two
    copies of one structure in one batch get different forces; 1.2.3 gave identical ones). The TorchSim
    wrapper agrees with MatterSim's calculator to float precision, batched or not
    (tests/test_mattersim.py)."""

    def _predict_batch(self, batch: list[Atoms], stress: bool) -> list[Prediction]:
        return predict_with_torchsim(self.torchsim_model(), batch, stress)


def to_state(structures: list[Atoms], model):
    """ASE structures as one TorchSim state on the model's device, in its dtype."""
    import torch_sim as ts

    return ts.io.atoms_to_state(structures, device=model.device, dtype=model.dtype)


def predict_with_torchsim(model, batch: list[Atoms], stress: bool) -> list[Prediction]:
    """One forward pass of a TorchSim model over a batch of structures, split back per structure
    (stress in ASE's Voigt order, eV/A^3)."""
    from ase.stress import full_3x3_to_voigt_6_stress

    state = to_state([unconstrained(a) for a in batch], model)
    output = model(state)
    energies = output["energy"].detach().cpu().numpy().reshape(-1)
    forces = np.split(output["forces"].detach().cpu().numpy().astype(float), np.cumsum([len(a) for a in batch])[:-1])
    stresses = output["stress"].detach().cpu().numpy() if stress else None
    return [Prediction(float(energies[k]), forces[k],
                       full_3x3_to_voigt_6_stress(stresses[k]).astype(float) if stress else None)
            for k in range(len(batch))]


class CHGNetPotential(Potential):
    """Batched inference through CHGNet's ``predict_structure``."""

    def _predict_batch(self, batch: list[Atoms], stress: bool) -> list[Prediction]:
        from ase.stress import full_3x3_to_voigt_6_stress
        from ase.units import GPa
        from pymatgen.io.ase import AseAtomsAdaptor

        model = self.calculator.model
        structures = [AseAtomsAdaptor.get_structure(unconstrained(a)) for a in batch]
        predictions = model.predict_structure(structures, task="efs" if stress else "ef", batch_size=len(batch))
        if isinstance(predictions, dict):
            predictions = [predictions]
        out = []
        for atoms, p in zip(batch, predictions):
            s = None
            if stress:
                s = np.asarray(p["s"], dtype=float)
                s = GPa * (full_3x3_to_voigt_6_stress(s) if s.shape == (3, 3) else s)
            out.append(Prediction(float(p["e"]) * len(atoms), np.asarray(p["f"], dtype=float), s))
        return out


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ensure_device(device: str) -> str:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise SetupError(f"unknown device {device!r}: use cpu or cuda", setting="device")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SetupError("device cuda asked for, but torch sees no CUDA GPU here; use cpu", setting="device")
    return device


# ---------------------------------------------------------------------------------------------
# MatterSim


def resolve_mattersim_checkpoint(name: str, checkpoint: str | None) -> Path:
    """Path of the checkpoint to load, downloading the published one on first use as MatterSim does."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise SetupError(f"MatterSim checkpoint not found: {path}", setting="checkpoint")
        return path
    if name not in MATTERSIM_FILES:
        raise SetupError("model mattersim needs a checkpoint file (or use mattersim-5m / mattersim-1m)",
                         setting="checkpoint")
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
            f"and put it at {path}, or give the checkpoint's path.", setting="checkpoint"
        ) from exc
    if not path.is_file():
        raise SetupError(f"MatterSim download finished but {path} is missing; download it by hand from "
                         f"{MATTERSIM_URL}{filename}")
    return path


def _load_mattersim(name: str, device: str, checkpoint: str | None) -> Potential:
    path = resolve_mattersim_checkpoint(name, checkpoint)
    try:
        from mattersim.forcefield import MatterSimCalculator
        from mattersim.forcefield.potential import Potential as MatterSimModel
    except Exception as exc:  # most often a torchvision built for another torch
        raise SetupError(
            f"cannot import MatterSim ({type(exc).__name__}: {exc}). If the message names torchvision, "
            "run `pip uninstall -y torchvision torchaudio` (MatterSim does not need them).", setting="model"
        ) from exc
    try:
        model = MatterSimModel.from_checkpoint(load_path=str(path), device=device, load_training_state=False)
    except Exception as exc:
        raise SetupError(f"cannot load MatterSim checkpoint {path} ({type(exc).__name__}: {exc}); "
                         "delete it and download it again", setting="checkpoint") from exc
    calculator = MatterSimCalculator(potential=model, device=device)
    return MatterSimPotential(name, calculator, device, str(path), sha256_of(path),
                              make_torchsim=_mattersim_torchsim)


def _mattersim_torchsim(potential: Potential):
    import torch
    from mattersim.torchsim import TorchSimWrapper

    # weights stay float32 (as published); the optimizer's state and the outputs are float64, as in ASE
    return TorchSimWrapper(potential.calculator.potential, device=potential.device, dtype=torch.float64)


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
    return CHGNetPotential(name, calculator, device, str(path), sha256_of(path))


# SevenNet checkpoints that ship in the sevenn wheel, by registry name: (sevenn's name, modal). SevenNet-MF-0
# is multi-fidelity; its "PBE" head is trained on MPtrj's PBE/PBE+U, the level MatterSim was trained at and
# the closest to the DFT phonons we validate against (its other head, R2SCAN, is a different functional).
SEVENNET_CHECKPOINTS = {"sevennet": ("7net-0", None), "sevennet-0": ("7net-0", None),
                        "sevennet-l3i5": ("7net-l3i5", None), "sevennet-mf-0": ("7net-mf-0", "PBE")}


def _load_sevennet(name: str, device: str, checkpoint: str | None) -> Potential:
    from sevenn.calculator import SevenNetCalculator
    from sevenn.util import pretrained_name_to_path

    shipped, modal = SEVENNET_CHECKPOINTS.get(name, ("7net-0", None))
    path = Path(checkpoint) if checkpoint else Path(pretrained_name_to_path(shipped))
    if not path.is_file():
        raise SetupError(f"SevenNet checkpoint not found: {path}", setting="checkpoint")
    calculator = SevenNetCalculator(str(path), device=device, modal=modal)
    potential = Potential(name, calculator, device, str(path), sha256_of(path), make_torchsim=_sevennet_torchsim)
    potential.modal = modal
    return potential


def _sevennet_torchsim(potential: Potential):
    from sevenn.torchsim import SevenNetModel

    return as_float64(SevenNetModel(potential.checkpoint, device=potential.device, modal=potential.modal))


def as_float64(model):
    """A float32 TorchSim model behind a float64 face: the optimizer's state stays float64 (as ASE's numpy
    arrays are), the model sees float32 positions and cells, its outputs come back as float64."""
    import torch
    from torch_sim.models.interface import ModelInterface

    class _Float64(ModelInterface):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self._device, self._dtype = inner.device, torch.float64
            self._compute_stress, self._compute_forces = inner.compute_stress, inner.compute_forces
            self._memory_scales_with = inner.memory_scales_with

        def forward(self, state, **kwargs):
            output = self.inner(state.to(dtype=self.inner.dtype), **kwargs)
            return {k: (v.detach().to(torch.float64) if torch.is_tensor(v) and v.is_floating_point() else v)
                    for k, v in output.items()}

    return _Float64(model)


def _load_emt(name: str, device: str, checkpoint: str | None) -> Potential:
    from ase.calculators.emt import EMT

    if checkpoint:
        raise SetupError("the emt potential takes no checkpoint", setting="checkpoint")
    return Potential(name, EMT(), "cpu")


POTENTIALS: dict[str, Callable[[str, str, str | None], Potential]] = {
    "mattersim-5m": _load_mattersim,  # the published protocol's potential
    "mattersim-1m": _load_mattersim,
    "mattersim": _load_mattersim,  # any M3GNet checkpoint given with --checkpoint
    "chgnet": _load_chgnet,  # CHGNet 0.3.0, weights in the wheel
    "sevennet-l3i5": _load_sevennet,  # SevenNet-l3i5, weights in the wheel (2.9% false imaginary modes)
    "sevennet-0": _load_sevennet,  # SevenNet-0, weights in the wheel
    "sevennet-mf-0": _load_sevennet,  # SevenNet-MF-0, its PBE head, weights in the wheel
    "sevennet": _load_sevennet,  # SevenNet-0 (the name earlier runs recorded), or any SevenNet --checkpoint
    "emt": _load_emt,  # ASE's EMT: Al Cu Ag Au Ni Pd Pt (and H C N O, roughly); tests and demos
}


def _plugin(name: str):
    """``python:package.module:function``: a potential of your own, built by function(name, device, checkpoint)."""
    import importlib

    try:
        _, module, function = name.split(":")
        return getattr(importlib.import_module(module), function)
    except (ValueError, ImportError, AttributeError) as exc:
        raise SetupError(f"cannot load potential {name!r}: {exc}", setting="model") from exc


# Atoms per batched forward pass: a GPU takes far more than a CPU core gains from.
DEFAULT_MAX_ATOMS_PER_BATCH = {"cpu": 256, "cuda": 16384}


def default_batch_atoms(device: str, gpu_share: float = 1.0) -> int:
    """Atoms one model call may hold when not asked: a CPU core's, or a GPU's split between the workers
    that share it (``gpu_share`` of it each: they share its memory), never fewer than a CPU core's."""
    kind = device.split(":")[0]
    if kind != "cuda":
        return DEFAULT_MAX_ATOMS_PER_BATCH[kind]
    return max(DEFAULT_MAX_ATOMS_PER_BATCH["cpu"], int(DEFAULT_MAX_ATOMS_PER_BATCH["cuda"] * min(1.0, gpu_share)))


def load_potential(
    name: str, device: str = "cpu", checkpoint: str | None = None, max_atoms_per_batch: int | None = None
) -> Potential:
    if name.startswith("python:"):
        factory = _plugin(name)
    elif name in POTENTIALS:
        factory = POTENTIALS[name]
    else:
        raise SetupError(f"unknown model {name!r}; choose one of {', '.join(POTENTIALS)} or python:MODULE:FUNCTION",
                         setting="model")
    if max_atoms_per_batch is not None and max_atoms_per_batch < 1:
        raise SetupError(f"atoms per batch must be at least 1 (got {max_atoms_per_batch})", setting="max_atoms_per_batch")
    potential = factory(name, _ensure_device(device), checkpoint)
    potential.max_atoms_per_batch = max_atoms_per_batch or default_batch_atoms(device)
    return potential
