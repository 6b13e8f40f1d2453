"""A run's config composed outside a Hydra app (benchmarks, profiles, the GPU check, tests), resolved as a job
of `python -m shakegpt.train` would see it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from shakegpt.compat import hydra_config_of
from shakegpt.config_dir import config_dir
from shakegpt.launch import HYDRA_VERSION_BASE  # (which registers the resolvers conf/ uses: job_name, pid, ...)


@contextmanager
def as_a_job(overrides: Sequence[str], config_name: str = "train") -> Iterator[DictConfig]:
    """The config a single run with these overrides gets, every interpolation resolved, without the `hydra`
    node; Hydra's own config is set while the block runs, as in a job (the `${hydra:...}` interpolations and
    the run folder's .hydra/ read it). A run's folder must be given (`paths.output_dir=...`) where the config
    writes one: outside an app Hydra creates none."""
    with initialize_config_dir(config_dir=config_dir(config_name), version_base=HYDRA_VERSION_BASE):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with hydra_config_of(cfg):
        with open_dict(cfg):
            del cfg["hydra"]  # kept in HydraConfig
        OmegaConf.resolve(cfg)
        yield cfg


def job_config(overrides: Sequence[str], config_name: str = "train") -> DictConfig:
    """The config of as_a_job, for code that needs no more of Hydra once it is composed."""
    with as_a_job(overrides, config_name) as cfg:
        return cfg
