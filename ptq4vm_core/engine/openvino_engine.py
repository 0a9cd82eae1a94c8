"""OpenVINO engine: RVM's graphs (the published FP32 one, an artifact's int8 QDQ export)
compiled with static shapes per stream shape.

Static shapes are what make OpenVINO fast on this network: with the frame size and the
downsample ratio fixed, every resize size, crop and pad in the graph folds to a constant and
the CPU plugin picks its kernels and memory layout once. A stream's shape is fixed at its
start, so one compiled model per (batch, height, width, ratio, threads) serves every stream of
that shape: compiled on first need (off the event loop: the server calls engines from its
inference threads), kept for the life of the engine and, through OpenVINO's model cache
(`CACHE_DIR`), on disk under `$PTQ4VM_HOME/engines/openvino/`, so a restart loads the compiled
blob instead of compiling again.

A stream fed video frames (`infer_frames`: uint8 [B,H,W,3] RGB, what the server decodes) gets
a model of its own whose input is those bytes: OpenVINO's preprocessing converts them to the
graph's [B,3,H,W] float32 (x * float32(1/255)) on the engine's threads, instead of that float
copy being made per frame in the caller's thread before the call. `infer_mattes` also returns the
alpha as the bytes a stream is served: `to_uint8` of it computed at the end of the graph
(`alpha_bytes_output`), a quarter of the float alpha's size to copy out, and nothing left to
convert in the caller.

The recurrent state is carried through the graph's inputs and outputs as an `EngineState` (the
same value `OrtEngine` passes, so the server's batching treats both alike). `None` starts a
stream: zeros of the compiled state shapes, which is what the published graph's 1x1x1x1 zero
states broadcast to.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from ptq4vm_core.engine import frames as feed
from ptq4vm_core.engine.base import (
    EngineState,
    Float32Array,
    Mattes,
    MaybeState,
    Output,
    StepEngine,
    Uint8Array,
)
from ptq4vm_core.engine.cpu import bf16_capped
from ptq4vm_core.engine.runtime import BUDGET, STATE_INPUTS, default_threads
from ptq4vm_core.model.matting import check_downsample_ratio
from ptq4vm_core.paths import cache_root

logger = logging.getLogger(__name__)

Precision = Literal["f32", "bf16"]
DEVICE = "CPU"
CACHE_DIR = "openvino"
STATE_OUTPUTS = ("r1o", "r2o", "r3o", "r4o")
_UNIT_STATE = [1, 1, 1, 1]
# Compiled models an engine keeps in memory (least recently used out first): every frame size
# is a model of its own, and `/v1/matte` takes images of any size.
MAX_COMPILED = 8
# Compiled blobs kept on disk (oldest out first) in the model cache.
MAX_CACHED_BLOBS = 64

try:  # an optional runtime: ONNX Runtime is the fallback where it is missing
    import openvino as ov
    from openvino import opset13 as ov_ops
    from openvino.preprocess import PrePostProcessor
except ImportError:  # pragma: no cover - exercised where openvino is not installed
    ov = None
    ov_ops = None
    PrePostProcessor = None


class OpenVinoUnavailableError(RuntimeError):
    """OpenVINO is not installed or does not run on this CPU."""


_core_lock = threading.Lock()
_core: Any = None


def openvino_core() -> Any:
    """The process's one `openvino.Core` (it owns the plugin and its thread pools)."""
    global _core
    if ov is None:
        raise OpenVinoUnavailableError(
            "openvino is not installed (pip install openvino); use --engine ort"
        )
    with _core_lock:
        if _core is None:
            core = ov.Core()
            if DEVICE not in core.available_devices:
                raise OpenVinoUnavailableError(
                    f"OpenVINO finds no {DEVICE} device here ({core.available_devices}); "
                    "use --engine ort"
                )
            _core = core
        return _core


def openvino_available() -> bool:
    """Whether OpenVINO is installed and runs on this CPU."""
    try:
        openvino_core()
    except OpenVinoUnavailableError:
        return False
    return True


def cpu_has_bf16() -> bool:
    """Whether the CPU plugin can run bf16 here (AVX-512 BF16 or AMX, oneDNN not capped below
    them by ONEDNN_MAX_CPU_ISA)."""
    if not openvino_available() or bf16_capped():
        return False
    capabilities = openvino_core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")
    return "BF16" in capabilities


class ShapeKey(NamedTuple):
    """What one compiled model is specialised for."""

    batch: int
    height: int
    width: int
    ratio: float
    threads: int
    alpha_only: bool = False  # compiled without the foreground (`fgr` result removed)
    frames: bool = False  # its input is uint8 [B,H,W,3] frames (`infer_frames`)
    mattes: bool = False  # frames in, the alpha out as uint8 (`infer_mattes`)


@dataclass
class Compiled:
    """A compiled model, its state shapes and a pool of infer requests (one per caller at a
    time: an `InferRequest` is not thread-safe)."""

    model: Any
    state_shapes: tuple[tuple[int, ...], ...]
    seconds: float
    from_cache: bool  # loaded from the on-disk model cache rather than compiled
    _requests: queue.SimpleQueue[Any]

    @contextmanager
    def request(self) -> Iterator[Any]:
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self.model.create_infer_request()
        try:
            yield request
        finally:
            self._requests.put(request)


def static_model(path: Path, key: ShapeKey) -> tuple[Any, tuple[tuple[int, ...], ...]]:
    """The graph at `path` with `downsample_ratio` made a constant and every input shape fixed
    for `key`; also the four state shapes it takes and returns."""
    if ov_ops is None:
        raise OpenVinoUnavailableError("openvino is not installed (pip install openvino)")
    model = openvino_core().read_model(str(path))
    ratio = [p for p in model.get_parameters() if p.get_friendly_name() == "downsample_ratio"]
    if len(ratio) != 1:
        raise ValueError(f"{path.name} has no downsample_ratio input: not an RVM graph")
    constant = ov_ops.constant(np.array([key.ratio], np.float32))
    for target in list(ratio[0].output(0).get_target_inputs()):
        target.replace_source_output(constant.output(0))
    model.remove_parameter(ratio[0])
    src = [key.batch, 3, key.height, key.width]
    model.reshape({"src": src, **{name: _UNIT_STATE for name in STATE_INPUTS}})
    shapes = tuple(
        tuple(int(d) for d in model.output(name).get_partial_shape().to_shape())
        for name in STATE_OUTPUTS
    )
    model.reshape({"src": src, **{n: list(s) for n, s in zip(STATE_INPUTS, shapes, strict=True)}})
    if key.alpha_only:
        # What only the foreground needs (its coefficients' slices, the products with the
        # image, its clip) is dropped with the result: a fifth of a 720p frame.
        model.remove_result(model.output("fgr").get_node())
    if key.frames or key.mattes:
        model = frames_input(model)
    if key.mattes:
        model = alpha_bytes_output(model)
    return model, shapes


def frames_input(model: Any) -> Any:
    """`model` with its `src` taken as uint8 [B,H,W,3] RGB frames: transposed to [B,3,H,W]
    while still bytes (a quarter of the float's memory traffic: 0.4 ms less per 720p frame
    than transposing the floats), converted to float32 and multiplied by float32(1/255) in
    the graph (OpenVINO's preprocessing). The plugin folds the scale into the first
    operations, so the result agrees with the float input of `frames_to_batch` to float32
    rounding (tests/engine/test_openvino.py), not bit for bit."""
    ppp = PrePostProcessor(model)
    src = ppp.input("src")
    src.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    src.model().set_layout(ov.Layout("NCHW"))
    scale = ov_ops.constant(np.array(feed.PIXEL_SCALE, np.float32))
    src.preprocess().convert_layout(ov.Layout("NCHW")).convert_element_type(ov.Type.f32).custom(
        lambda node: ov_ops.multiply(node, scale).output(0)
    )
    return ppp.build()


def alpha_bytes_output(model: Any) -> Any:
    """`model` with its `pha` returned as uint8: x * 255 in float32, clamped to [0, 255],
    rounded to nearest, ties to even, as `io.compose.to_uint8` computes it (the same bytes:
    tests/engine/test_openvino.py)."""
    ppp = PrePostProcessor(model)
    pha = ppp.output("pha")

    def to_bytes(node: Any) -> Any:
        scaled = ov_ops.multiply(node, ov_ops.constant(np.array(255, np.float32)))
        return ov_ops.round(ov_ops.clamp(scaled, 0.0, 255.0), "half_to_even").output(0)

    pha.postprocess().custom(to_bytes)
    pha.tensor().set_element_type(ov.Type.u8)
    return ppp.build()


def prune_cache(directory: Path, keep: int) -> None:
    """Removes all but the `keep` most recently written blobs of the model cache."""
    try:
        blobs = sorted(
            (p for p in directory.iterdir() if p.is_file()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
    except OSError:
        return
    for old in blobs[keep:]:
        old.unlink(missing_ok=True)


class OpenVinoEngine(StepEngine):
    """Runs an ONNX graph with RVM's signature on OpenVINO's CPU plugin. Keeps no per-stream
    data.

    `graphs` maps "is the ratio exactly 1" to the graph to compile (an artifact's export has a
    ratio-1 graph without the identity resizes; the published graph serves both). `precision`
    is the inference precision of what is not integer in the graph: `f32` keeps FP32's
    arithmetic, `bf16` runs it on the CPU's bf16 units (faster, not the FP32 model any more).
    `fallback` makes the engine that runs the shapes OpenVINO refuses to compile (e.g. frames
    a few pixels wide, smaller than a pooling window): ONNX Runtime on the same model, made on
    first need; a shape stays on the engine it started on.
    """

    def __init__(
        self,
        graphs: dict[bool, Path],
        *,
        name: str,
        precision: Precision = "f32",
        threads: int | None = None,
        cache_dir: Path | None = None,
        root: Path | None = None,
        fallback: Callable[[], StepEngine] | None = None,
    ) -> None:
        self._core = openvino_core()
        self._fallback_factory = fallback
        self._fallback: StepEngine | None = None
        self._refused: set[ShapeKey] = set()
        self._graphs = {k: Path(v) for k, v in graphs.items()}
        self._name = name
        self.precision = precision
        self.threads = threads or default_threads()
        self.cache_dir = cache_dir or (root or cache_root()) / "engines" / CACHE_DIR
        self._compiled: OrderedDict[ShapeKey, Compiled] = OrderedDict()
        self._compile_locks: dict[ShapeKey, threading.Lock] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    def config(self, threads: int) -> dict[str, Any]:
        return {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": self.precision,
            "CACHE_DIR": str(self.cache_dir),
        }

    def compiled(self, key: ShapeKey) -> Compiled:
        """The model compiled for `key`, compiled now if this engine has none (other shapes'
        streams go on meanwhile: one lock per key)."""
        with self._lock:
            found = self._compiled.get(key)
            if found is not None:
                self._compiled.move_to_end(key)
                return found
            lock = self._compile_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                found = self._compiled.get(key)
            if found is not None:
                return found
            started = time.monotonic()
            model, shapes = static_model(self._graphs[key.ratio == 1.0], key)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            compiled = self._core.compile_model(model, DEVICE, self.config(key.threads))
            seconds = time.monotonic() - started
            from_cache = bool(compiled.get_property("LOADED_FROM_CACHE"))
            found = Compiled(compiled, shapes, seconds, from_cache, queue.SimpleQueue())
            logger.info(
                "OpenVINO %s %s for %dx%dx%d ratio %g (%d threads, %s) in %.2f s",
                self._name, "loaded from the cache" if from_cache else "compiled", key.batch,
                key.width, key.height, key.ratio, key.threads, self.precision, seconds,
            )  # fmt: skip
            with self._lock:
                self._compiled[key] = found
                while len(self._compiled) > MAX_COMPILED:
                    evicted, _ = self._compiled.popitem(last=False)
                    self._compile_locks.pop(evicted, None)
            if not from_cache:
                prune_cache(self.cache_dir, MAX_CACHED_BLOBS)
            return found

    def _runner(self, key: ShapeKey) -> Compiled | StepEngine:
        """The compiled model for `key`, or the fallback engine where OpenVINO refuses it."""
        if key not in self._refused:
            try:
                return self.compiled(key)
            except RuntimeError as exc:  # OpenVINO reports compile failures as RuntimeError
                if self._fallback_factory is None:
                    raise
                logger.warning(
                    "OpenVINO cannot compile %s for %dx%d ratio %g (%s); running that shape on "
                    "the fallback engine",
                    self._name, key.width, key.height, key.ratio, str(exc).splitlines()[0][:200],
                )  # fmt: skip
                with self._lock:
                    self._refused.add(key)
        with self._lock:
            if self._fallback is None:
                assert self._fallback_factory is not None
                self._fallback = self._fallback_factory()
            return self._fallback

    def compile_shape(
        self,
        batch: int,
        height: int,
        width: int,
        downsample_ratio: float,
        *,
        alpha_only: bool = False,
        frames: bool = False,
        mattes: bool = False,
    ) -> float:
        """Compiles (or loads from the disk cache) the model for a stream shape ahead of its
        first frame; returns the seconds it took (0 when already compiled)."""
        ratio = check_downsample_ratio(downsample_ratio)
        threads = BUDGET.threads(self.threads)
        key = ShapeKey(
            batch, height, width, ratio, threads, alpha_only, frames and not mattes, mattes
        )
        with self._lock:
            if key in self._compiled or key in self._refused:
                return 0.0
        started = time.monotonic()
        self._runner(key)
        return time.monotonic() - started

    def step(self, src: Float32Array, state: MaybeState, ratio: float, alpha_only: bool) -> Output:
        if src.ndim != 4 or src.shape[1] != 3:
            raise ValueError(f"src must be [B,3,H,W], got {list(src.shape)}")
        batch, _, height, width = src.shape
        threads = BUDGET.threads(self.threads)
        compiled = self._runner(ShapeKey(batch, height, width, ratio, threads, alpha_only))
        if not isinstance(compiled, Compiled):
            return compiled.infer(src, state, ratio, alpha_only=alpha_only)
        fgr, pha, new_state = self._run(compiled, src, state, alpha_only)
        return Output(fgr, pha, new_state)

    def infer_frames(
        self,
        frames: Uint8Array,
        state: MaybeState,
        downsample_ratio: float,
        *,
        alpha_only: bool = False,
    ) -> Output:
        """As `infer` on `frames_to_batch` of `frames` (uint8 [B,H,W,3] RGB), converted in the
        graph (`frames_input`)."""
        runner = self._frames_runner(frames, downsample_ratio, alpha_only, mattes=False)
        if not isinstance(runner, Compiled):
            return feed.infer_frames(runner, frames, state, downsample_ratio, alpha_only=alpha_only)
        fgr, pha, new_state = self._run(runner, np.ascontiguousarray(frames), state, alpha_only)
        return Output(fgr, pha, new_state)

    def infer_mattes(
        self,
        frames: Uint8Array,
        state: MaybeState,
        downsample_ratio: float,
        *,
        alpha_only: bool = False,
    ) -> Mattes[EngineState]:
        """As `infer_frames`, the alpha as uint8 [B,H,W] from the graph (`alpha_bytes_output`)."""
        runner = self._frames_runner(frames, downsample_ratio, alpha_only, mattes=True)
        if not isinstance(runner, Compiled):
            return feed.infer_mattes(runner, frames, state, downsample_ratio, alpha_only=alpha_only)
        fgr, pha, new_state = self._run(runner, np.ascontiguousarray(frames), state, alpha_only)
        return Mattes(fgr, pha.reshape(pha.shape[0], *pha.shape[2:]), new_state)

    def _frames_runner(
        self, frames: Uint8Array, downsample_ratio: float, alpha_only: bool, *, mattes: bool
    ) -> Compiled | StepEngine:
        """The compiled model for these frames' shape (checked), or the fallback engine."""
        feed.check_frames(frames)
        ratio = check_downsample_ratio(downsample_ratio)
        batch, height, width, _ = frames.shape
        threads = BUDGET.threads(self.threads)
        key = ShapeKey(batch, height, width, ratio, threads, alpha_only, not mattes, mattes)
        return self._runner(key)

    def _run(
        self,
        compiled: Compiled,
        src: Float32Array | Uint8Array,
        state: MaybeState,
        alpha_only: bool,
    ) -> tuple[Float32Array | None, Any, EngineState]:
        """One call of a compiled model: (fgr or None, pha as the model returns it, state)."""
        if state is None:
            states = [np.zeros(s, np.float32) for s in compiled.state_shapes]
        else:
            states = [np.ascontiguousarray(s, dtype=np.float32) for s in state]
            for got, want in zip(states, compiled.state_shapes, strict=True):
                if got.shape != want:
                    raise ValueError(
                        f"recurrent state of shape {list(got.shape)} does not fit this stream "
                        f"(expected {list(want)}): a state belongs to one frame size and ratio; "
                        "start a new stream (state None) when either changes"
                    )
        feeds = {"src": src, **dict(zip(STATE_INPUTS, states, strict=True))}
        with compiled.request() as request:
            request.infer(feeds, share_inputs=True, share_outputs=True)
            fgr = None if alpha_only else request.get_tensor("fgr").data.copy()
            pha, r1, r2, r3, r4 = (
                request.get_tensor(name).data.copy() for name in ("pha", *STATE_OUTPUTS)
            )
        return fgr, pha, EngineState(r1, r2, r3, r4)


def openvino_version() -> str:
    """The installed OpenVINO's version, or 'not installed'."""
    return ov.get_version() if ov is not None else "not installed"
