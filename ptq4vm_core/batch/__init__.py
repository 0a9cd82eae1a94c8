"""Batch matting of many videos on a Ray cluster (`ptq4vm batch`).

Ray-free parts (what a video's unit of work is, the manifest, the plan) live in `spec`,
`unit` and `manifest`; only `actor` and `runner` import Ray, an optional extra
(`pip install 'ptq4vm[ray]'`). Check for it with :func:`ray_available`.
"""

from __future__ import annotations

import importlib.util

RAY_EXTRA_HINT = (
    "ptq4vm batch runs on Ray, which is not installed here; install the extra with "
    "`pip install 'ptq4vm[ray]'` (or `make setup` in a checkout)"
)


class RayMissingError(Exception):
    """Ray (the optional extra `ray`) is not installed."""


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def require_ray() -> None:
    """Raise RayMissingError, saying how to install it, when Ray is not importable."""
    if not ray_available():
        raise RayMissingError(RAY_EXTRA_HINT)
