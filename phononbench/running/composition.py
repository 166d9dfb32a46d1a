"""The composition root: settings in, a potential, an engine spec and an executor out. The command line,
the web app's checks and the public API (``phononbench.run``) all build a run here, one way."""

from __future__ import annotations

from dataclasses import dataclass

from phononbench.settings import ProtocolSettings
from phononbench.running.run_folder import METHOD_SHA256
from phononbench.running.worker import WorkerSpec


@dataclass
class Composition:
    """What a run needs: the potential as run.json records it, the workers' spec, where workers run."""

    described: dict
    spec: WorkerSpec
    executor: object


def protocol_for(preset: str = "published", *, model: str | None = None, thresholds=None, max_atoms: int | None = None,
                 supercell: str | None = None, max_supercell_atoms: int | None = None,
                 allow_positive_thresholds: bool | None = None) -> ProtocolSettings:
    """A preset with the settings given (None keeps the preset's), checked."""
    from phononbench.settings import preset as get_preset

    return get_preset(preset).with_overrides(
        model=model, thresholds_thz=tuple(thresholds) if thresholds else None, max_atoms=max_atoms,
        max_supercell_atoms=max_supercell_atoms, allow_positive_thresholds=allow_positive_thresholds,
    ).with_supercell(supercell).ensure_runnable()


def compose(protocol: ProtocolSettings, device: str = "cpu", checkpoint: str | None = None, batch_atoms: int | None = None,
            engine: str = "batched", in_process: bool = True, ray_address: str | None = None,
            workers: int | None = None, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
            timeout_per_structure: float | None = None, max_retries: int = 2, potential=None) -> Composition:
    """The potential is loaded here first (or ``potential``, already loaded, is used), so a missing checkpoint
    stops the run before any work. With Ray the driver loads it on the CPU only: the model goes onto a GPU
    in the workers, never in the driver (which may have none: Ray checks that the cluster has the GPUs the
    workers ask for)."""
    from phononbench.compute.engines import ensure_engine
    from phononbench.running.executors import SHARE_GPUS, InProcessExecutor, RayExecutor
    from phononbench.compute.potentials import default_batch_atoms, load_potential

    ensure_engine(engine, protocol.model)
    if potential is None:
        potential = load_potential(protocol.model, device=device if in_process else "cpu", checkpoint=checkpoint,
                                   max_atoms_per_batch=batch_atoms)
    described = {**potential.describe(), "device": device,
                 "max_atoms_per_batch": batch_atoms or default_batch_atoms(device)}  # a shared GPU's: the executor's
    spec = WorkerSpec(protocol.model, device, checkpoint, batch_atoms, protocol, engine, method_sha256=METHOD_SHA256)
    if in_process:
        return Composition(described, spec, InProcessExecutor(potential))
    if device.startswith("cuda") and not gpus_per_worker:
        gpus_per_worker = SHARE_GPUS  # GPU workers when a GPU is asked for, several on each (executors.workers_per_gpu)
    return Composition(described, spec, RayExecutor(ray_address, workers, cpus_per_worker, gpus_per_worker,
                                                    timeout_per_structure, max_retries))


def default_chunk_size(engine: str, device: str) -> int:
    """A GPU state is only as full as the chunk: give the torchsim engine on a GPU hundreds of structures."""
    return 512 if engine == "torchsim" and device.startswith("cuda") else 32
