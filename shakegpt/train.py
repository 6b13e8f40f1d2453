"""Training entry point: `python -m shakegpt.train [overrides]`, or `-m` for a sweep (`shakegpt-train`)."""

from __future__ import annotations

from omegaconf import DictConfig

from shakegpt.launch import entry_point, run_job


@entry_point("train")
def main(cfg: DictConfig) -> float | None:
    """One training run (a sweep's job), with the launch plumbing around it (shakegpt.launch.run_job)."""
    # Lightning and torch load here, once Hydra has a config to run: `--help` and shell completion answer
    # without them (seconds of imports on a small machine).
    from shakegpt.training import train

    return run_job(cfg, train)


if __name__ == "__main__":
    # Launchers that pickle the task function (submitit) would pickle this __main__ module's contents by
    # value, which fails; the imported module's main is pickled by reference.
    from shakegpt import train as importable

    importable.main()
