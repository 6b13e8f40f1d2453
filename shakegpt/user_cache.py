"""Where shakegpt keeps what it works out once per machine: corpora's token caches, the CPU's precision."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/shakegpt, by default ~/.cache/shakegpt."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shakegpt"
