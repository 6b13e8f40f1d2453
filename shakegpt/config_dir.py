"""Where Hydra finds the config: conf/ beside the package in a checkout, shakegpt/conf inside an installed wheel
(pyproject.toml maps the one onto the other, so conf/ stays at the top of the checkout). One folder per command
(train, evaluate, generate, mnist), each offering only its own groups to --help and shell completion, and
shared/ for the groups training and evaluation share (data, paths, hardware)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def config_dir(*folder: str) -> str:
    """The config folder (or a folder in it: a command's, `train`, or `shared`), as an absolute path, so the
    entry points also work when launchers import them as modules from elsewhere."""
    installed = PACKAGE / "conf"
    root = installed if installed.is_dir() else PACKAGE.parent / "conf"
    return str(root.joinpath(*folder))
