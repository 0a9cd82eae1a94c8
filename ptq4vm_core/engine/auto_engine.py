"""`--engine auto`: per stream shape, the fastest of the runtimes that run a model, measured
on this machine the first time the shape is seen and remembered on disk.

Which runtime is faster depends on the shape, not only on the model: for the same W8A8
artifact OpenVINO's int8 graph beat ONNX Runtime's by ~25 % at 512x288 ds 1 and lost to it
by a few percent at 1280x720 ds 0.375 (docs/benchmarks/engine-forms.md). So the first frame
of a new (model, shape, threads) on a machine runs each candidate a few times, interleaved,
and the fastest median wins; the choice is kept in `$PTQ4VM_HOME/engines/choices.json`
(keyed by the model's content, the shape, the threads and the CPU), so later streams, other
processes and restarts skip the measurement. The candidates compute the same function on the
same state layout (full-size r1..r4 arrays), so a stream keeps its state whichever runs it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ptq4vm_core.engine.base import (
    Engine,
    EngineOutput,
    EngineState,
    Float32Array,
    prepare_engine,
)
from ptq4vm_core.engine.openvino_engine import ShapeKey, openvino_version
from ptq4vm_core.engine.ort_engine import BUDGET, default_threads, hardware_tag
from ptq4vm_core.files import replace_file
from ptq4vm_core.model.matting import check_downsample_ratio

logger = logging.getLogger(__name__)

CHOICES_FILE = "choices.json"
WARMUP = 2
ROUNDS = 5


class AutoEngine:
    """The faster of `candidates` (name -> engine factory, made on first need) per shape.

    `identity` names the model's content (what a remembered choice is valid for); `choices`
    is the JSON file the choices are kept in."""

    def __init__(
        self,
        candidates: dict[str, Callable[[], Engine]],
        *,
        name: str,
        identity: str,
        choices: Path,
        threads: int | None = None,
    ) -> None:
        if not candidates:
            raise ValueError("auto needs at least one candidate engine")
        self._factories = candidates
        self._engines: dict[str, Engine] = {}
        self._name = name
        self._identity = identity
        self._choices_path = choices
        self.threads = threads or default_threads()
        self._chosen: dict[ShapeKey, str] = {}
        self._lock = threading.Lock()
        self._choose_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    def engine(self, candidate: str) -> Engine:
        with self._lock:
            if candidate not in self._engines:
                self._engines[candidate] = self._factories[candidate]()
            return self._engines[candidate]

    def chosen(self, batch: int, height: int, width: int, downsample_ratio: float) -> str:
        """The candidate that runs this shape (measured now if it never was here)."""
        ratio = check_downsample_ratio(downsample_ratio)
        key = ShapeKey(batch, height, width, ratio, BUDGET.threads(self.threads))
        return self._choice(key)

    def prepare(
        self,
        batch: int,
        height: int,
        width: int,
        downsample_ratio: float,
        *,
        alpha_only: bool = False,
    ) -> float:
        started = time.monotonic()
        name = self.chosen(batch, height, width, downsample_ratio)
        prepare_engine(self.engine(name), batch, height, width, downsample_ratio,
                       alpha_only=alpha_only)  # fmt: skip
        return time.monotonic() - started

    def infer(
        self,
        src: Float32Array,
        state: EngineState | None,
        downsample_ratio: float,
        *,
        alpha_only: bool = False,
    ) -> EngineOutput[EngineState]:
        ratio = check_downsample_ratio(downsample_ratio)
        batch, _, height, width = np.shape(src)
        key = ShapeKey(batch, height, width, ratio, BUDGET.threads(self.threads))
        with self._lock:
            name = self._chosen.get(key)
            if name is None:  # e.g. fewer threads while a calibration runs: the shape's choice
                name = next((v for k, v in self._chosen.items() if k[:4] == key[:4]), None)
        engine = self.engine(name or self._choice(key))
        return engine.infer(src, state, ratio, alpha_only=alpha_only)

    # Choosing --------------------------------------------------------------------------------

    def _record_key(self, key: ShapeKey) -> str:
        # Not the thread count: every process of a machine (streams, jobs, batch actors with
        # fewer threads, `ptq4vm matte`) runs a shape on the same runtime, so their outputs
        # agree bit for bit; the measurement is made with the engine's full thread count.
        shape = f"{key.batch}x{key.height}x{key.width}@{key.ratio:g}"
        runtimes = f"{hardware_tag([])}-openvino{openvino_version()}"
        return f"{self._identity}|{shape}|{runtimes}"

    def _choice(self, key: ShapeKey) -> str:
        with self._lock:
            found = self._chosen.get(key)
        if found is not None:
            return found
        if len(self._factories) == 1:
            return self._remember(key, next(iter(self._factories)))
        # One measurement at a time, across the machine's processes too (they would disturb
        # each other, and two processes must not choose differently for one shape).
        with self._choose_lock, choices_lock(self._choices_path):
            with self._lock:
                found = self._chosen.get(key)
            if found is not None:
                return found
            stored = read_choices(self._choices_path).get(self._record_key(key))
            if isinstance(stored, dict) and stored.get("engine") in self._factories:
                return self._remember(key, str(stored["engine"]))
            timings = self._measure(key)
            best = min(timings, key=lambda k: timings[k])
            write_choice(
                self._choices_path,
                self._record_key(key),
                {"engine": best, "ms_p50": {k: round(v, 2) for k, v in timings.items()}},
            )
            logger.info(
                "auto for %s %dx%d ratio %g: %s (%s)",
                self._name, key.width, key.height, key.ratio, best,
                ", ".join(f"{k} {v:.1f} ms" for k, v in timings.items()),
            )  # fmt: skip
            return self._remember(key, best)

    def _remember(self, key: ShapeKey, name: str) -> str:
        with self._lock:
            self._chosen[key] = name
        return name

    def _measure(self, key: ShapeKey) -> dict[str, float]:
        """Median wall ms per frame of each candidate on this shape, interleaved rounds."""
        src = np.random.default_rng(0).random((key.batch, 3, key.height, key.width), np.float32)
        engines = {name: self.engine(name) for name in self._factories}
        states: dict[str, EngineState | None] = dict.fromkeys(engines)
        for name, engine in engines.items():
            prepare = getattr(engine, "prepare", None)
            if callable(prepare):
                prepare(key.batch, key.height, key.width, key.ratio)
            for _ in range(WARMUP):
                states[name] = engine.infer(src, states[name], key.ratio).state
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(ROUNDS):
            for name, engine in engines.items():
                started = time.perf_counter()
                states[name] = engine.infer(src, states[name], key.ratio).state
                times[name].append((time.perf_counter() - started) * 1e3)
        return {name: statistics.median(t) for name, t in times.items()}


def read_choices(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextmanager
def choices_lock(path: Path) -> Iterator[None]:
    """The machine-wide lock on the choices file (held while measuring and writing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f".{path.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_choice(path: Path, key: str, value: dict[str, Any]) -> None:
    """Adds one choice to the file, atomically (call it under `choices_lock`)."""
    data = read_choices(path)
    data[key] = value
    replace_file(path, json.dumps(data, indent=1, sort_keys=True).encode())
