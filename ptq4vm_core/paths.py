"""Where the service keeps its files: ``$PTQ4VM_HOME`` (default ``~/.cache/ptq4vm``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache root: weights, the sample clip and the model registry live under it."""
    env = os.environ.get("PTQ4VM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ptq4vm"
