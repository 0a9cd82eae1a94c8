#!/usr/bin/env python3
"""Register a calibrated artifact in the shared model registry (`$PTQ4VM_HOME/models`), and
optionally make it the active version. The calibration Job (deploy/k8s/calibration-job.yaml,
the compose `calibrate` service) runs it after `ptq4vm calibrate`; in the image it is
`ptq4vm-register`.

    ptq4vm-register ARTIFACT_DIR [--activate]

The artifact is verified and copied in atomically under its manifest's version name; with
`--activate` it is loaded (so a corrupt one is refused) and `models/active.json` is replaced
atomically. Running replicas read the pointer at start: restart them to switch
(docs/operations.md). Prints the version name.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ptq4vm_core.paths import cache_root
from server.models.registry import ModelRegistry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("artifact", type=Path, help="artifact directory from `ptq4vm calibrate`")
    parser.add_argument("--activate", action="store_true", help="make it the active version")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    registry = ModelRegistry(cache_root())
    print(registry.register(args.artifact, activate=args.activate))


if __name__ == "__main__":
    main()
