"""Child processes that must not outlive the server.

A SIGKILLed server (the OOM killer, a lost container) runs no shutdown code, so its
calibration or default-build child would go on for minutes, taking CPU from the restarted
server and writing an artifact into a staging directory nobody will register. Each child
watches its parent instead and exits, removing its staging output, once it is gone.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

EXIT_ORPHANED = 3


def exit_with_parent(
    parent: int, cleanup: Path | None = None, *, interval_s: float = 0.5
) -> threading.Thread:
    """Starts a daemon thread that ends this process (exit code 3) within `interval_s` of
    the process `parent` ending (this process is then re-parented), after removing `cleanup`."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        logger.error("the server (pid %d) is gone; stopping", parent)
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        os._exit(EXIT_ORPHANED)  # at once: no atexit handler may write anything more

    thread = threading.Thread(target=watch, name="ptq4vm-lifeline", daemon=True)
    thread.start()
    return thread
