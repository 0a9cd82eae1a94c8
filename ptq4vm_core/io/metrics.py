"""Alpha-matte quality metrics, identical to Robust Video Matting's evaluation.

The five metrics reproduce ``evaluation/evaluation_metrics.py`` of
PeterL1n/RobustVideoMatting operation for operation (same dtypes, same OpenCV
calls, same order of arithmetic), so numbers produced here can be compared
directly with the figures published for RVM:

* ``MAD``   mean absolute difference, ``mean(|pred - true|) * 1e3``.
* ``MSE``   mean squared error, ``mean((pred - true)**2) * 1e3``.
* ``Grad``  squared difference of Gaussian-derivative gradient magnitudes
  (sigma 1.4) of min-max normalised mattes, summed and divided by 1000.
* ``Conn``  connectivity error (Rhemann et al. 2009) with threshold step 0.1,
  summed and divided by 1000.
* ``dtSSD`` temporal coherence: RMS of the difference between the predicted
  and the true frame-to-frame change, times 100.

Every per-frame function takes ``pred`` and ``true`` of shape ``[H, W]``, either
float (float32/float64, values in ``[0, 1]``) or uint8 (values in
``[0, 255]``, divided by 255 into float32 exactly as RVM does after reading an
8-bit PNG). Float values are not clipped or range-checked, as in RVM.

A clip's value for a metric is the mean of its per-frame values;
:class:`SequenceMetrics` accumulates those means frame by frame so a clip of
any length needs only one previous frame in memory (for dtSSD).

Past 400 lines on purpose: the five metrics mirror one RVM file operation for operation, and
kept side by side as there they can be checked against it line by line.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Final

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "METRIC_NAMES",
    "SequenceMetrics",
    "conn",
    "dtssd",
    "gauss_filter",
    "grad",
    "mad",
    "mse",
]

METRIC_NAMES: tuple[str, ...] = ("MAD", "MSE", "Grad", "Conn", "dtSSD")

FloatArray = NDArray[np.floating[Any]]
"""A float alpha matte, values nominally in ``[0, 1]``."""

AlphaArray = NDArray[np.floating[Any]] | NDArray[np.uint8]
"""An alpha matte as accepted by the public functions: float in ``[0, 1]`` or uint8."""

# RVM's gauss_filter default: the kernel is truncated where the Gaussian drops
# below this fraction of its peak-normalised value.
_GAUSS_EPSILON: Final = 1e-2


def _as_alpha(x: AlphaArray, name: str) -> FloatArray:
    """Return ``x`` as a 2-D float matte in ``[0, 1]`` usable by OpenCV.

    Args:
        x: ``[H, W]`` matte, uint8 in ``[0, 255]`` or float in ``[0, 1]``.
        name: argument name used in error messages.

    Returns:
        ``[H, W]`` C-contiguous float array. uint8 becomes float32 ``/ 255``
        (RVM's PNG loading); float32/float64 are passed through untouched so
        results match RVM bit for bit; float16 (unsupported by OpenCV filters)
        becomes float32 and other float widths become float64.

    Raises:
        TypeError: ``x`` is neither uint8 nor floating point.
        ValueError: ``x`` is not 2-D or is empty.
    """
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty [H, W] array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr.astype(np.float32) / 255)
    if arr.dtype in (np.float32, np.float64):
        # OpenCV rejects or silently copies strided views; make layout explicit.
        return np.ascontiguousarray(arr)
    if arr.dtype == np.float16:
        return np.ascontiguousarray(arr, dtype=np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        return np.ascontiguousarray(arr, dtype=np.float64)
    raise TypeError(f"{name} must be uint8 or floating point, got dtype {arr.dtype}")


def _as_pair(pred: AlphaArray, true: AlphaArray) -> tuple[FloatArray, FloatArray]:
    """Convert a prediction / ground-truth pair and check that their shapes match.

    Args:
        pred: ``[H, W]`` predicted matte (uint8 or float in ``[0, 1]``).
        true: ``[H, W]`` ground-truth matte (uint8 or float in ``[0, 1]``).

    Returns:
        Both mattes as ``[H, W]`` float arrays (see :func:`_as_alpha`).

    Raises:
        ValueError: the shapes differ, or either is not a non-empty 2-D array.
        TypeError: either has an unsupported dtype.
    """
    p = _as_alpha(pred, "pred")
    t = _as_alpha(true, "true")
    if p.shape != t.shape:
        raise ValueError(f"pred and true shapes differ: pred {p.shape} vs true {t.shape}")
    return p, t


def mad(pred: AlphaArray, true: AlphaArray) -> float:
    """Mean absolute difference, scaled by 1e3 (RVM ``MetricMAD``).

    Args:
        pred: ``[H, W]`` predicted matte, float in ``[0, 1]`` or uint8.
        true: ``[H, W]`` ground-truth matte, float in ``[0, 1]`` or uint8.

    Returns:
        ``mean(|pred - true|) * 1e3``, in ``[0, 1000]`` for mattes in ``[0, 1]``.
    """
    p, t = _as_pair(pred, true)
    return float(np.abs(p - t).mean() * 1e3)


def mse(pred: AlphaArray, true: AlphaArray) -> float:
    """Mean squared error, scaled by 1e3 (RVM ``MetricMSE``).

    Args:
        pred: ``[H, W]`` predicted matte, float in ``[0, 1]`` or uint8.
        true: ``[H, W]`` ground-truth matte, float in ``[0, 1]`` or uint8.

    Returns:
        ``mean((pred - true)**2) * 1e3``, in ``[0, 1000]`` for mattes in ``[0, 1]``.
    """
    p, t = _as_pair(pred, true)
    return float(((p - t) ** 2).mean() * 1e3)


def _gaussian(x: float, sigma: float) -> float:
    """1-D Gaussian density with standard deviation ``sigma`` evaluated at ``x``."""
    return float(np.exp(-(x**2) / (2 * sigma**2)) / (sigma * np.sqrt(2 * np.pi)))


def _dgaussian(x: float, sigma: float) -> float:
    """Derivative of :func:`_gaussian` with respect to ``x``."""
    return -x * _gaussian(x, sigma) / sigma**2


@functools.lru_cache(maxsize=8)
def gauss_filter(
    sigma: float, epsilon: float = _GAUSS_EPSILON
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Gaussian-derivative kernels used by :func:`grad` (RVM ``MetricGRAD.gauss_filter``).

    ``filter_x[i, j] = g(i - h) * g'(j - h)`` with ``g`` the Gaussian of
    standard deviation ``sigma`` and ``h = ceil(sigma * sqrt(-2 * log(sqrt(2 pi)
    * sigma * epsilon)))``, scaled to unit L2 norm; ``filter_y`` is its
    transpose. The result is cached per ``(sigma, epsilon)`` because building
    the kernel is a Python double loop, and returned read-only so the cached
    arrays cannot be corrupted by a caller.

    Args:
        sigma: Gaussian standard deviation in pixels, ``> 0``.
        epsilon: truncation level, ``> 0`` and small enough that
            ``sqrt(2 pi) * sigma * epsilon < 1``.

    Returns:
        ``(filter_x, filter_y)``, each float64 of shape ``[2h + 1, 2h + 1]``
        (``[9, 9]`` for the default sigma 1.4), unit Frobenius norm.

    Raises:
        ValueError: ``sigma`` or ``epsilon`` give no valid kernel size.
    """
    if not (math.isfinite(sigma) and sigma > 0 and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"sigma and epsilon must be finite and > 0, got {sigma}, {epsilon}")
    if math.sqrt(2 * math.pi) * sigma * epsilon >= 1:
        raise ValueError(
            f"sqrt(2*pi) * sigma * epsilon must be < 1 for a valid kernel, "
            f"got sigma={sigma}, epsilon={epsilon}"
        )
    # Same expression and dtype as RVM so the kernel size matches exactly.
    half_size = np.ceil(sigma * np.sqrt(-2 * np.log(np.sqrt(2 * np.pi) * sigma * epsilon)))
    size = int(2 * half_size + 1)

    # An element-wise loop rather than np.outer keeps each entry the same
    # scalar product RVM computes (vectorised exp may differ in the last ulp).
    filter_x = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            filter_x[i, j] = _gaussian(float(i - half_size), sigma) * _dgaussian(
                float(j - half_size), sigma
            )

    norm = np.sqrt((filter_x**2).sum())
    filter_x = filter_x / norm
    filter_y = np.ascontiguousarray(np.transpose(filter_x))
    filter_x.setflags(write=False)
    filter_y.setflags(write=False)
    return filter_x, filter_y


def _gauss_gradient(
    img: FloatArray, filter_x: NDArray[np.float64], filter_y: NDArray[np.float64]
) -> FloatArray:
    """Gradient magnitude of ``img`` under the Gaussian-derivative kernels.

    Args:
        img: ``[H, W]`` float image.
        filter_x: horizontal-derivative kernel from :func:`gauss_filter`.
        filter_y: vertical-derivative kernel from :func:`gauss_filter`.

    Returns:
        ``[H, W]`` non-negative magnitude, same dtype as ``img``.
    """
    # BORDER_REPLICATE as in RVM: a constant border would invent an edge at the
    # frame boundary wherever the matte is non-zero there.
    gx = cv2.filter2D(img, -1, filter_x, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.filter2D(img, -1, filter_y, borderType=cv2.BORDER_REPLICATE)
    magnitude: FloatArray = np.sqrt(np.asarray(gx) ** 2 + np.asarray(gy) ** 2)
    return magnitude


def grad(pred: AlphaArray, true: AlphaArray, sigma: float = 1.4) -> float:
    """Gradient error (RVM ``MetricGRAD``).

    Both mattes are min-max normalised to ``[0, 1]`` with ``cv2.normalize``
    (a constant matte becomes all zeros), their Gaussian-derivative gradient
    magnitudes are taken (kernels from :func:`gauss_filter`, replicated
    border) and cast to float32, and the squared differences are summed.

    Args:
        pred: ``[H, W]`` predicted matte, float in ``[0, 1]`` or uint8.
        true: ``[H, W]`` ground-truth matte, float in ``[0, 1]`` or uint8.
        sigma: Gaussian standard deviation of the derivative filter, pixels.

    Returns:
        ``sum((grad(true) - grad(pred))**2) / 1000``, ``>= 0``.
    """
    p, t = _as_pair(pred, true)
    filter_x, filter_y = gauss_filter(sigma)
    pred_normed = np.zeros_like(p)
    true_normed = np.zeros_like(t)
    cv2.normalize(p, pred_normed, 1.0, 0.0, cv2.NORM_MINMAX)
    cv2.normalize(t, true_normed, 1.0, 0.0, cv2.NORM_MINMAX)

    true_grad = _gauss_gradient(true_normed, filter_x, filter_y).astype(np.float32)
    pred_grad = _gauss_gradient(pred_normed, filter_x, filter_y).astype(np.float32)
    return float(((true_grad - pred_grad) ** 2).sum() / 1000)


def conn(pred: AlphaArray, true: AlphaArray, step: float = 0.1) -> float:
    """Connectivity error (RVM ``MetricCONN``).

    For each threshold ``t_i`` in ``arange(0, 1 + step, step)[1:]``, the
    largest 4-connected component of ``(true >= t_i) & (pred >= t_i)`` is
    found; a pixel's round-down level is the previous threshold ``t_{i-1}`` at
    the first ``t_i`` where it leaves that component (1 if it never leaves).
    With ``d = alpha - level``, ``phi = 1 - d * (d >= 0.15)`` per matte, and
    the error is ``sum(|phi_true - phi_pred|)``.

    Args:
        pred: ``[H, W]`` predicted matte, float in ``[0, 1]`` or uint8.
        true: ``[H, W]`` ground-truth matte, float in ``[0, 1]`` or uint8.
        step: threshold step, in ``(0, 1]``.

    Returns:
        The connectivity error divided by 1000, ``>= 0``.

    Raises:
        ValueError: ``step`` outside ``(0, 1]``.
    """
    if not (math.isfinite(step) and 0 < step <= 1):
        raise ValueError(f"step must be in (0, 1], got {step}")
    p, t = _as_pair(pred, true)
    thresh_steps = np.arange(0, 1 + step, step)
    round_down_map = -np.ones_like(t)
    for i in range(1, len(thresh_steps)):
        intersection = ((t >= thresh_steps[i]) & (p >= thresh_steps[i])).astype(np.uint8)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(intersection, connectivity=4)
        # Row 0 is the background label; the last column is CC_STAT_AREA.
        size = np.asarray(stats)[1:, -1]

        omega = np.zeros_like(t)
        if len(size) != 0:
            # argmax takes the first (lowest label) on ties, as RVM does.
            max_id = int(np.argmax(size))
            omega[np.asarray(labels) == max_id + 1] = 1

        mask = (round_down_map == -1) & (omega == 0)
        round_down_map[mask] = thresh_steps[i - 1]
    round_down_map[round_down_map == -1] = 1

    true_diff = t - round_down_map
    pred_diff = p - round_down_map
    # Differences below 0.15 are treated as fully connected (phi = 1).
    true_phi = 1 - true_diff * (true_diff >= 0.15)
    pred_phi = 1 - pred_diff * (pred_diff >= 0.15)
    return float(np.sum(np.abs(true_phi - pred_phi)) / 1000)


def dtssd(
    pred_t: AlphaArray, pred_tm1: AlphaArray, true_t: AlphaArray, true_tm1: AlphaArray
) -> float:
    """Temporal-coherence error between two consecutive frames (RVM ``MetricDTSSD``).

    Args:
        pred_t: ``[H, W]`` predicted matte at frame ``t``.
        pred_tm1: ``[H, W]`` predicted matte at frame ``t - 1``.
        true_t: ``[H, W]`` ground-truth matte at frame ``t``.
        true_tm1: ``[H, W]`` ground-truth matte at frame ``t - 1``.
            All float in ``[0, 1]`` or uint8.

    Returns:
        ``sqrt(sum(((pred_t - pred_tm1) - (true_t - true_tm1))**2) / (H*W)) * 1e2``,
        in ``[0, 200]`` for mattes in ``[0, 1]``.

    Raises:
        ValueError: the four shapes are not all equal.
    """
    p_t, t_t = _as_pair(pred_t, true_t)
    p_tm1, t_tm1 = _as_pair(pred_tm1, true_tm1)
    if p_tm1.shape != p_t.shape:
        raise ValueError(f"frame t and frame t-1 shapes differ: t {p_t.shape} vs t-1 {p_tm1.shape}")
    return _dtssd(p_t, p_tm1, t_t, t_tm1)


def _dtssd(p_t: FloatArray, p_tm1: FloatArray, t_t: FloatArray, t_tm1: FloatArray) -> float:
    """:func:`dtssd` on already converted, shape-checked float mattes."""
    sq = ((p_t - p_tm1) - (t_t - t_tm1)) ** 2
    return float(np.sqrt(np.sum(sq) / t_t.size) * 1e2)


class SequenceMetrics:
    """Per-clip metric accumulator: feed frames in order, read per-clip means.

    Each metric's clip value is the mean of its per-frame values, as in RVM's
    evaluator. For dtSSD the first frame contributes 0 (it has no predecessor)
    and still counts in the mean, again as RVM does. Only running sums and,
    when dtSSD is requested, the previous frame pair are kept, so memory does
    not grow with clip length.

    Args:
        metrics: metric names to compute, a subset of :data:`METRIC_NAMES`
            (duplicates are ignored; result keys follow first occurrence).

    Raises:
        ValueError: an unknown metric name, or no metric at all.
    """

    def __init__(self, metrics: Sequence[str] = METRIC_NAMES) -> None:
        if isinstance(metrics, str):
            # A bare string is a Sequence[str] too; iterating it would yield letters.
            metrics = (metrics,)
        unknown = [m for m in metrics if m not in METRIC_NAMES]
        if unknown:
            raise ValueError(
                f"unknown metric name(s) {unknown}; valid names are {list(METRIC_NAMES)}"
            )
        names = tuple(dict.fromkeys(metrics))
        if not names:
            raise ValueError(
                f"at least one metric is required; valid names are {list(METRIC_NAMES)}"
            )
        self._names: tuple[str, ...] = names
        self._sums: dict[str, float] = dict.fromkeys(names, 0.0)
        self._frames = 0
        self._prev: tuple[FloatArray, FloatArray] | None = None

    @property
    def metrics(self) -> tuple[str, ...]:
        """Names of the metrics computed, in result order."""
        return self._names

    @property
    def frames(self) -> int:
        """Number of frames accumulated so far."""
        return self._frames

    def update(self, pred: AlphaArray, true: AlphaArray) -> None:
        """Add one frame.

        Args:
            pred: ``[H, W]`` predicted matte, float in ``[0, 1]`` or uint8
                (divided by 255).
            true: ``[H, W]`` ground-truth matte, same shape, float in
                ``[0, 1]`` or uint8.

        Raises:
            ValueError: ``pred`` and ``true`` shapes differ, an input is not
                a non-empty 2-D array, or (with dtSSD) the frame size differs
                from the previous frame's.
            TypeError: an input is neither uint8 nor floating point.
        """
        p, t = _as_pair(pred, true)
        want_dtssd = "dtSSD" in self._sums
        if want_dtssd and self._prev is not None and self._prev[0].shape != p.shape:
            raise ValueError(
                f"frame shape changed within the clip: previous {self._prev[0].shape} "
                f"vs current {p.shape}"
            )
        # Compute everything before touching state so a failure leaves it intact.
        values: dict[str, float] = {}
        for name in self._names:
            if name == "MAD":
                values[name] = mad(p, t)
            elif name == "MSE":
                values[name] = mse(p, t)
            elif name == "Grad":
                values[name] = grad(p, t)
            elif name == "Conn":
                values[name] = conn(p, t)
            elif self._prev is None:
                # dtSSD: RVM records 0 for the first frame and keeps it in the mean.
                values[name] = 0.0
            else:
                values[name] = _dtssd(p, self._prev[0], t, self._prev[1])

        for name, value in values.items():
            self._sums[name] += value
        self._frames += 1
        if want_dtssd:
            # Copy: the caller may reuse its frame buffers for the next frame.
            self._prev = (p.copy(), t.copy())

    def result(self) -> dict[str, float]:
        """Per-clip means of every requested metric.

        Returns:
            ``{name: mean over frames}`` in the order the names were given.

        Raises:
            ValueError: no frame has been added.
        """
        if self._frames == 0:
            raise ValueError("no frames accumulated; call update() before result()")
        return {name: total / self._frames for name, total in self._sums.items()}
