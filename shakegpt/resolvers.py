"""Every resolver conf/ uses, registered on import (each entry point imports this module first, through
shakegpt.launch): `pid`, `conf_dir`, `job_name`, `launcher_nodes`, `gpus_to_request`, `cpu_precision` (run and
sweep job folder names, the shared groups, trainer.num_nodes, a SLURM job's GPUs, hardware=cpu's precision),
and `SweptKeys`, the Hydra callback that records what a sweep varies for `job_name`. Light to import: no
Lightning, no torch."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from shakegpt.compat import parse_overrides
from shakegpt.config_dir import config_dir
from shakegpt.rundir import write_atomically

# Run folders are named by start time and process id, so two runs started in the same second never share one.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)
# Where a command's config finds the groups it shares with others (hydra.searchpath: a file path Hydra takes
# relative to the working directory, unless absolute).
OmegaConf.register_new_resolver("conf_dir", config_dir, replace=True)

# In a sweep's folder: the settings its jobs vary, one per line (see job_name).
SWEPT_KEYS = "swept_keys.txt"


def read_swept_keys(sweep_dir: Path) -> set[str]:
    try:
        return set((sweep_dir / SWEPT_KEYS).read_text().split())
    except FileNotFoundError:
        return set()


class SweptKeys(Callback):
    """A Hydra callback: before a sweep's first job, records in the sweep folder which settings the sweep
    varies (its comma-separated, range() and choice() overrides, and the sweeper's params: Optuna's search
    space). Keys recorded by an earlier start of the same sweep are kept, so continuing one job of it
    (resume=true with a single value) finds that job's folder."""

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = parse_overrides(list(config.hydra.overrides.task))
        keys = {override.key_or_group for override in overrides if override.is_sweep_override()}
        keys |= set(config.hydra.sweeper.get("params") or {})
        keys |= read_swept_keys(sweep_dir)
        write_atomically(sweep_dir / SWEPT_KEYS, "".join(f"{key}\n" for key in sorted(keys)).encode())


def job_name() -> str:
    """A job's name, which is also its label in run.json, reports and TensorBoard: in a sweep, the values it
    varies (model.n_layer=2,seed=1), which names the job's folder, so that a sweep's runs are told apart at a
    glance; in a single run, all of its overrides. A sweep that varies nothing, or whose folder has a job folder
    named by all the overrides (started by an earlier version), names its jobs by all the overrides."""
    hydra_cfg = HydraConfig.get()
    all_overrides = hydra_cfg.job.override_dirname
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return all_overrides
    sweep_dir = Path(hydra_cfg.sweep.dir)
    swept = read_swept_keys(sweep_dir)
    overrides = parse_overrides(list(hydra_cfg.overrides.task))
    name = ",".join(sorted(o.input_line for o in overrides if o.key_or_group in swept))
    return name if name and not (sweep_dir / all_overrides).is_dir() else all_overrides


OmegaConf.register_new_resolver("job_name", job_name, replace=True)


def launcher_nodes() -> int:
    """The nodes the launcher gives each job (hydra.launcher.nodes on SLURM), for trainer.num_nodes: Lightning
    refuses a job whose SLURM tasks are not num_nodes x devices."""
    launcher = HydraConfig.get().launcher if HydraConfig.initialized() else {}
    return int(launcher.get("nodes") or 1)


OmegaConf.register_new_resolver("launcher_nodes", launcher_nodes, replace=True)


def gpus_to_request(accelerator: str, devices: int) -> int | None:
    """The GPUs a job asks a cluster for (conf/train/hydra/launcher/slurm.yaml): hardware.devices on CUDA, none
    otherwise (a request for GPUs on a CPU partition is refused by SLURM)."""
    return devices if accelerator == "cuda" else None


OmegaConf.register_new_resolver("gpus_to_request", gpus_to_request, replace=True)


def cpu_precision() -> str:
    """conf/shared/hardware/cpu.yaml's precision (shakegpt.hardware.cpu_precision), which needs torch: loaded
    only when a config that asks for it is resolved."""
    from shakegpt import hardware

    return hardware.cpu_precision()


OmegaConf.register_new_resolver("cpu_precision", cpu_precision, replace=True)
