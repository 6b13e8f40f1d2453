"""Where Hydra finds the config groups: conf/ beside the package in a checkout, shakegpt/conf inside an
installed wheel (pyproject.toml maps the one onto the other, so conf/ stays at the top of the checkout)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def config_dir(*group: str) -> str:
    """The config folder (or one group's folder in it), as an absolute path, so the entry points also work
    when launchers import them as modules from elsewhere."""
    installed = PACKAGE / "conf"
    root = installed if installed.is_dir() else PACKAGE.parent / "conf"
    return str(root.joinpath(*group))
