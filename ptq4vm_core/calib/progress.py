"""One progress protocol for long jobs: the CLI renders it as a bar, the server as job progress."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProgressEvent:
    """stage: e.g. "data", "fp-targets", "biq", "gac"; unit: the closure being calibrated (or
    ""); step/total: iterations done in this unit; done/overall: work units over the whole job
    (drives percent and ETA); loss: latest reconstruction loss when optimising."""

    stage: str
    unit: str
    step: int
    total: int
    done: float
    overall: float
    loss: float | None = None
    elapsed_s: float = 0.0

    @property
    def fraction(self) -> float:
        return 0.0 if self.overall <= 0 else min(1.0, self.done / self.overall)

    @property
    def eta_s(self) -> float | None:
        if self.fraction <= 0.0:
            return None
        return self.elapsed_s * (1.0 - self.fraction) / self.fraction


class ProgressCallback(Protocol):
    def __call__(self, event: ProgressEvent) -> None: ...


def log_progress(event: ProgressEvent) -> None:
    """Default callback: a log line per unit finished."""
    if event.step == event.total:
        loss = f", loss {event.loss:.3g}" if event.loss is not None else ""
        logger.info("%s %s done (%.0f%%%s)", event.stage, event.unit, 100 * event.fraction, loss)


@dataclass
class ProgressTracker:
    """Counts work units over a job and emits ProgressEvents to one callback."""

    callback: ProgressCallback
    overall: float
    done: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def update(
        self, stage: str, unit: str, step: int, total: int, advance: float = 0.0,
        loss: float | None = None,
    ) -> None:  # fmt: skip
        self.done += advance
        self.callback(
            ProgressEvent(
                stage,
                unit,
                step,
                total,
                self.done,
                self.overall,
                loss,
                time.monotonic() - self.started,
            )
        )
