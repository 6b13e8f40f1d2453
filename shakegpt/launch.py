"""The plumbing between Hydra, Lightning's DDP launcher and a training job, kept out of the pipeline in
shakegpt.train. Each piece is here because one of those tools, left alone, does the wrong thing for us:

- every resolver conf/ uses is registered by importing shakegpt.resolvers, which every entry point does first
  through this module;
- `entry_point`: Python turns a Ctrl-C into a traceback, and SIGTERM ends it without a word; Hydra's grammar
  reads the '=' and ',' of sweep job folder names in `resume=` and `ckpt_path=`; `resume=true` on a run or
  sweep folder takes the overrides it started with (`with_saved_overrides`); Hydra's `--help` takes seconds;
- `OutputDirCheck`: Hydra shows a traceback when it cannot create the run folder;
- `compat.launchable_job` (used here): Lightning's DDP launcher re-runs the whole command line, which in a
  multirun is the sweep;
- `run_job`: the run folder's lock, and what a failure or an interruption does to a run and to a sweep;
- `restarted_by_slurm`: a requeued job runs its saved command line again, which does not say resume=true;
- `save_run_config`: Hydra would write .hydra/ before we know the run may use the folder;
- `wait_for_ranks`: ranks that outlive their job would hold its folder and the machine's cores;
- `KNOWN_NOISE`: messages Lightning prints on every run that say nothing about it, dropped in one place; and
  `lightning_notices_plain`: the others printed as Lightning prints them, though it is imported late.

The entry points import this module before `--help` and shell completion answer, so it leaves Lightning and torch
to the functions that run a job (seconds of imports on a small machine).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shlex
import string
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from shakegpt import resolvers  # noqa: F401  (registers the resolvers conf/ uses)
from shakegpt.compat import launchable_job, launched_ranks, parse_overrides
from shakegpt.config_dir import config_dir
from shakegpt.errors import Interrupted, ShakeGPTError, stop_on_signals
from shakegpt.rundir import (
    RUN_RECORD,
    SETTINGS,
    FolderInUse,
    RunLock,
    read_record,
    record_failure,
    remove_unstarted,
)

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger(__name__)

# The Hydra behaviour every entry point and composition asks for (hydra.main, initialize_config_dir).
HYDRA_VERSION_BASE = "1.3"

# Said on every run, about nothing in it; each with why it does not apply here.
KNOWN_NOISE = (
    # RandomWindows' length is the epoch in steps, on purpose (exact resumes); its loaders have no workers.
    "Your `IterableDataset` has `__len__` defined",
    # Lightning 2.6's own call into torch 2.14's pytree; nothing for us or the user to change.
    "`isinstance(treespec, LeafSpec)` is deprecated",
    # On a SLURM login node, about runs we do not launch with srun: hydra/launcher=slurm goes through submitit.
    "The `srun` command is available on your system but is not used",
    # An advertisement.
    "try installing [litlogger]",
    # On every resume: our loaders resume by themselves, from the trainer's step (exact; tests/test_faults.py).
    "You're resuming from a checkpoint that ended before the epoch ended",
)


class _DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in KNOWN_NOISE)


def quiet_known_noise() -> None:
    """Keep KNOWN_NOISE off the console: as warnings, and as Lightning's info messages."""
    for text in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=".*" + re.escape(text))
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropKnownNoise())


quiet_known_noise()


def lightning_notices_plain() -> None:
    """Lightning's notices (`Seed set to 1337`, `Trainer.fit` stopped ...) as Lightning prints them when it is
    imported before logging is set up: plain lines on the console. The entry points import it after Hydra has
    set up logging (so that --help answers without it), and then Lightning leaves them to the root logger,
    which would print each twice, dated, and into train.log."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.setLevel(logging.INFO)
            logger.addHandler(logging.StreamHandler())
            logger.propagate = False


lightning_notices_plain()


class OutputDirCheck(Callback):
    """A Hydra callback: fail with a one-line message, before anything runs, when the run or sweep folder
    cannot be created (Hydra itself would show a traceback)."""

    @staticmethod
    def _check(folder: str) -> None:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SystemExit(
                f"error: cannot create the output folder {folder} ({err.strerror}); choose another with "
                "hydra.run.dir=... (or hydra.sweep.dir=... for a sweep)"
            ) from None

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        self._check(config.hydra.sweep.dir)


def wait_for_ranks(trainer: L.Trainer) -> None:
    """Wait for the DDP ranks this process launched (Lightning keeps them in its launcher), so that none
    outlives its job."""
    for rank_process in launched_ranks(trainer):
        rank_process.wait()


def hydra_value(value: object) -> str:
    """value as a Hydra override accepts it: quoted when it holds characters Hydra's grammar reads (a sweep
    job's folder name holds '=' and ',')."""
    text = str(value)
    return text if re.fullmatch(r"[\w./~+-]*", text) else "'" + text.replace("'", "\\'") + "'"


# The settings that take a checkpoint or run folder: train's resume, generate's and evaluate's ckpt_path.
PATH_SETTINGS = ("resume", "ckpt_path")


def quote_path_overrides(argv: list[str]) -> list[str]:
    """argv with each PATH_SETTINGS value quoted for Hydra where it holds characters Hydra's grammar reads."""
    quoted = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in PATH_SETTINGS and value and value[0] not in "'\"":
            arg = f"{key}={hydra_value(value)}"
        quoted.append(arg)
    return quoted


def entry_point(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[..., Any]]:
    """Makes task(cfg) a command on conf/<config_name>/<config_name>.yaml through Hydra (hydra.main), with
    what Hydra lacks:

    - Ctrl-C and SIGTERM end the command in one line from its first moment (errors.stop_on_signals);
    - `resume=` and `ckpt_path=` take any folder the project printed, as it is: a sweep job's folder is named by
      its overrides (model.n_layer=2,seed=1), whose '=' and ',' Hydra would read as syntax;
    - `--help` answers in a fraction of a second (help_text): Hydra's own lists every config group, which
      takes it seconds however the help template reads.

    Like Hydra's own wrapper, the command passes a config through (launchers that pickle the task call the
    module's main with one)."""

    def wrap(task: Callable[[DictConfig], Any]) -> Callable[..., Any]:
        hydra_main = hydra.main(
            version_base=HYDRA_VERSION_BASE, config_path=config_dir(config_name), config_name=config_name
        )(task)

        @functools.wraps(task)
        def main(cfg_passthrough: DictConfig | None = None) -> Any:
            if cfg_passthrough is None:
                stop_on_signals()
                sys.argv = with_saved_overrides(quote_path_overrides(sys.argv))
                flags = {arg for arg in sys.argv[1:] if arg.startswith("-")}
                if flags and flags <= {"--help", "-h"}:
                    with contextlib.suppress(HydraException):  # a bad override: Hydra says so in its own words
                        text = help_text(config_name, [arg for arg in sys.argv[1:] if not arg.startswith("-")])
                        try:
                            print(text, flush=True)
                        except BrokenPipeError:  # `--help | head`: the reader has what it wanted
                            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                        return None
            return hydra_main(cfg_passthrough)

        return main

    return wrap


def help_text(config_name: str, overrides: list[str]) -> str:
    """`--help` of the command on conf/<config_name>/<config_name>.yaml, with these overrides, as Hydra writes
    it for our help templates (which list the groups by hand, and show the composed config as $CONFIG)."""
    with initialize_config_dir(config_dir=config_dir(config_name), version_base=HYDRA_VERSION_BASE):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    template = cfg.hydra.help.template
    with open_dict(cfg):
        del cfg["hydra"]
    return string.Template(template).substitute(CONFIG=OmegaConf.to_yaml(cfg))


def with_saved_overrides(argv: list[str]) -> list[str]:
    """argv, for `resume=true` (or `resume=<checkpoint>`) on a run folder (hydra.run.dir=...) or a sweep folder
    (-m hydra.sweep.dir=...), completed with the overrides that run or sweep started with (the folder's
    .hydra/overrides.yaml, or the sweep's multirun.yaml), so that the folder alone continues a run started with
    a preset or overrides. An override given again replaces the saved one of the same key;
    resume.check_same_settings then refuses any that would change the run's numbers."""
    flags = [arg for arg in argv[1:] if arg.startswith("-")]
    given = [arg for arg in argv[1:] if not arg.startswith("-")]
    try:
        parsed = parse_overrides(given)
    except Exception:  # Hydra reports a malformed override itself, in its own words
        return argv
    values = {override.key_or_group: override.value() for override in parsed}
    if str(values.get("resume", False)).lower() == "false":
        return argv
    multirun = bool({"-m", "--multirun"} & set(flags))
    folder = values.get("hydra.sweep.dir" if multirun else "hydra.run.dir")
    if not isinstance(folder, str):
        return argv
    saved_file = Path(folder).expanduser() / ("multirun.yaml" if multirun else ".hydra/overrides.yaml")
    if not saved_file.is_file():
        return argv
    saved = OmegaConf.load(saved_file)
    saved = list(saved.hydra.overrides.task if multirun else saved)
    kept = [o.input_line for o in parse_overrides(saved) if o.key_or_group not in values]
    return [argv[0], *flags, *kept, *given]


def resume_command(output_dir: Path) -> str:
    """The command that continues this run (or, in a sweep, the whole sweep) where it stopped."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    own = ("resume=", "hydra.run.dir=", "hydra.sweep.dir=", "-m", "--multirun")
    args = [arg for arg in hydra_cfg.overrides.task if not arg.startswith(own)]
    if multirun:
        folder = f"hydra.sweep.dir={hydra_value(hydra_cfg.sweep.dir)}"
        args = ["-m", *(arg for arg in sys.argv[1:] if not arg.startswith(own))]
    else:
        folder = f"hydra.run.dir={hydra_value(output_dir)}"
    return shlex.join(["python", "-m", "shakegpt.train", *args, folder, "resume=true"])


def save_run_config(cfg: DictConfig, output_dir: Path) -> None:
    """What Hydra would write into .hydra/ (it is told not to, see conf/train/hydra/default.yaml), and the settings
    that took effect on this machine (hardware=cpu's precision, the paths) in the run folder's SETTINGS."""
    hydra_cfg = HydraConfig.get()
    folder = output_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / SETTINGS, resolve=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), folder / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), folder / "overrides.yaml")


def restarted_by_slurm() -> bool:
    """Whether SLURM requeued this job (a preemption, a time limit) and is running it again: it then continues
    its run folder's last checkpoint (the command line submitit saved does not say resume=true)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def run_job(cfg: DictConfig, job: Callable[[DictConfig], float]) -> float | None:
    """Runs job(cfg) holding the run folder's lock; a failure is recorded in the run folder's run.json.

    Alone, a bad input ends the program with a one-line message (and the run folder is removed if the run made
    it and wrote nothing in it but its setup), and an interruption with one line saying how
    to continue and the signal's exit status (130 for Ctrl-C, 143 for SIGTERM). In a sweep, a failed job is
    logged and returns None, so the other jobs and the sweep report go on; the Optuna sweeper records None as a
    failed trial (a NaN would make it crash instead). An interruption stops the whole sweep.
    """
    from lightning.pytorch.utilities import rank_zero_only

    output_dir = Path(cfg.paths.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    # DDP ranks other than the first write nothing; the first holds the lock for them.
    lock = RunLock(output_dir) if rank_zero_only.rank == 0 else None
    # A run refused before it starts (a resume with other settings) leaves the folder's record as it was.
    record_before = read_record(output_dir / RUN_RECORD)

    def record(err: BaseException) -> None:
        if not record_before or read_record(output_dir / RUN_RECORD) != record_before:
            record_failure(output_dir / RUN_RECORD, err)

    refused = False
    try:
        if lock is not None:
            lock.acquire()
        stop_on_signals(raise_interrupted=True)  # from here a signal is recorded in run.json
        with launchable_job():
            return job(cfg)
    except FolderInUse as err:
        if multirun and cfg.resume:
            log.warning("job %s skipped: %s", output_dir.name, err)
            return None
        raise SystemExit(f"error: {err}") from None
    except Interrupted as err:
        record(err)
        print(f"{err}; continue with: {resume_command(output_dir)}", file=sys.stderr, flush=True)
        raise SystemExit(err.exit_code) from None
    except Exception as err:
        record(err)
        if multirun:
            log.error(
                "job %s failed: %s",
                output_dir.name,
                err,
                exc_info=not isinstance(err, (ShakeGPTError, OSError)),
            )
            return None
        if isinstance(err, ShakeGPTError):
            refused = not record_before
            raise SystemExit(f"error: {err}") from None
        if isinstance(err, OSError):  # a full disk, a read-only folder: the earlier checkpoints are intact
            raise SystemExit(
                f"error: {err.strerror or err} ({err.filename or output_dir}); the earlier checkpoints are intact"
            ) from None
        raise
    finally:
        if lock is not None:
            lock.release()
            if refused:
                remove_unstarted(output_dir)
