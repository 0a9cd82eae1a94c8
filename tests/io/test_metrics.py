"""Tests for ptq4vm_core.io.metrics against hand-computed values.

Every expected number below is worked out in the comment next to it; the only
non-hand reference is an independent scipy re-implementation of Grad that
checks the OpenCV filtering path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from ptq4vm_core.io.metrics import (
    METRIC_NAMES,
    SequenceMetrics,
    conn,
    dtssd,
    gauss_filter,
    grad,
    mad,
    mse,
)

# pred and true differ by 0.5 at two of four pixels (exact binary fractions).
PRED_2X2 = np.array([[0.0, 0.5], [1.0, 0.25]])
TRUE_2X2 = np.array([[0.0, 1.0], [0.5, 0.25]])


def test_metric_names() -> None:
    assert METRIC_NAMES == ("MAD", "MSE", "Grad", "Conn", "dtSSD")


def test_mad_hand() -> None:
    # |pred - true| = [0, .5, .5, 0] -> mean .25 -> * 1e3 = 250
    assert mad(PRED_2X2, TRUE_2X2) == pytest.approx(250.0)


def test_mse_hand() -> None:
    # (pred - true)^2 = [0, .25, .25, 0] -> mean .125 -> * 1e3 = 125
    assert mse(PRED_2X2, TRUE_2X2) == pytest.approx(125.0)


def test_dtssd_hand() -> None:
    pred_tm1 = np.zeros((2, 2))
    true_tm1 = np.zeros((2, 2))
    pred_t = np.array([[0.6, 0.8], [0.5, 0.5]])
    true_t = np.array([[0.0, 0.0], [0.5, 0.5]])
    # (pred_t - pred_tm1) - (true_t - true_tm1) = [[.6, .8], [0, 0]]
    # squares sum = .36 + .64 = 1; / 4 pixels = .25; sqrt = .5; * 1e2 = 50
    assert dtssd(pred_t, pred_tm1, true_t, true_tm1) == pytest.approx(50.0)
    # Same change in pred and true -> no temporal error.
    assert dtssd(true_t, true_tm1, true_t, true_tm1) == 0.0


def test_sequence_dtssd_first_frame_counts_as_zero() -> None:
    seq = SequenceMetrics(["dtSSD"])
    seq.update(np.zeros((2, 2)), np.zeros((2, 2)))
    pred_t = np.array([[0.6, 0.8], [0.5, 0.5]])
    true_t = np.array([[0.0, 0.0], [0.5, 0.5]])
    seq.update(pred_t, true_t)
    # frame 0 -> 0 (RVM appends 0), frame 1 -> 50 (test_dtssd_hand); mean (0 + 50) / 2 = 25
    assert seq.frames == 2
    assert seq.result() == {"dtSSD": pytest.approx(25.0)}
    # frame 2 repeats frame 1 -> dtSSD 0; mean (0 + 50 + 0) / 3 = 16.67
    seq.update(pred_t, true_t)
    assert seq.result()["dtSSD"] == pytest.approx(50.0 / 3)


def test_sequence_keeps_copy_of_previous_frame() -> None:
    # A caller reusing its buffers must not change the stored previous frame.
    pred = np.zeros((2, 2))
    true = np.zeros((2, 2))
    seq = SequenceMetrics(["dtSSD"])
    seq.update(pred, true)
    pred[:] = 0.5  # in-place: pred changed by .5 everywhere, true did not
    seq.update(pred, true)
    # frame 1: diff .5 at all 4 px -> sqrt(4 * .25 / 4) * 100 = 50; mean (0 + 50) / 2 = 25
    assert seq.result()["dtSSD"] == pytest.approx(25.0)


def test_sequence_means_over_frames() -> None:
    seq = SequenceMetrics(["MSE", "MAD"])
    seq.update(PRED_2X2, TRUE_2X2)  # MAD 250, MSE 125 (hand values above)
    seq.update(TRUE_2X2, TRUE_2X2)  # MAD 0, MSE 0
    result = seq.result()
    # Keys follow the requested order; values are (250 + 0) / 2 and (125 + 0) / 2.
    assert list(result) == ["MSE", "MAD"]
    assert result["MAD"] == pytest.approx(125.0)
    assert result["MSE"] == pytest.approx(62.5)


def test_sequence_all_metrics_identical_is_zero() -> None:
    true = np.linspace(0.0, 1.0, 48).reshape(6, 8)
    seq = SequenceMetrics()
    for _ in range(3):
        seq.update(true, true)
    assert seq.frames == 3
    assert seq.result() == dict.fromkeys(METRIC_NAMES, 0.0)


def test_conn_identical_is_zero() -> None:
    true = np.array([[0.0, 0.35, 0.85], [0.55, 1.0, 0.25], [0.05, 0.65, 0.95]])
    assert conn(true, true) == 0.0


def test_conn_empty_intersection() -> None:
    # pred all 0 -> the intersection is empty at every threshold, so every pixel
    # gets round_down_map = thresh_steps[0] = 0 at i = 1.
    true = np.array([[0.5, 0.1], [1.0, 0.0]])
    pred = np.zeros_like(true)
    # true_phi = 1 - true * (true >= .15) = [[.5, 1], [0, 1]]; pred_phi = 1 everywhere
    # sum |diff| = .5 + 0 + 1 + 0 = 1.5 -> / 1000
    assert conn(pred, true) == pytest.approx(1.5e-3)


def test_conn_connected_pixel_vs_disconnected_blob() -> None:
    # A = the 2x2 block of 1.0 (top left). (0,2) touches A; (0,4) is an isolated
    # one-pixel blob (its 4-neighbours (0,3) and (1,4) are 0).
    true = np.array(
        [
            [1.0, 1.0, 0.85, 0.0, 0.85],
            [1.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    pred = true.copy()
    pred[0, 2] = 0.45
    pred[0, 4] = 0.45
    # round_down_map by hand:
    # * zeros: not in the intersection at t=.1 -> 0.
    # * A: in the largest component up to t=1.0 (1.0 >= 1.0) -> stays -1 -> 1.
    # * (0,2): A + (0,2) is the largest component (5 px) for t = .1 .. .4; at
    #   t = .5 pred .45 drops out -> thresh_steps[4] = .4.
    #   true_d = .85 - .4 = .45 -> phi .55; pred_d = .45 - .4 = .05 < .15 -> phi 1; |.| = .45
    # * (0,4): at t = .1 it is a 1-px component, not the largest (A + (0,2), 5 px)
    #   -> thresh_steps[0] = 0.
    #   true_d = .85 -> phi .15; pred_d = .45 -> phi .55; |.| = .4
    # A and zeros: d = 0 -> phi 1 for both.  Conn = (.45 + .4) / 1000
    assert conn(pred, true) == pytest.approx(0.85e-3)

    # Each effect on its own.
    only_connected = true.copy()
    only_connected[0, 2] = 0.45
    assert conn(only_connected, true) == pytest.approx(0.45e-3)
    only_blob = true.copy()
    only_blob[0, 4] = 0.45
    assert conn(only_blob, true) == pytest.approx(0.4e-3)


def test_conn_uses_4_connectivity() -> None:
    # (2,2) touches the 2x2 block A only diagonally, so with 4-connectivity it
    # is its own component: round-down 0 at t = .1, |(1 - .85) - (1 - .45)| = .4.
    # (With 8-connectivity it would join A and give .45 as in the test above.)
    true = np.zeros((4, 4))
    true[:2, :2] = 1.0
    true[2, 2] = 0.85
    pred = true.copy()
    pred[2, 2] = 0.45
    assert conn(pred, true) == pytest.approx(0.4e-3)


def test_conn_rejects_bad_step() -> None:
    with pytest.raises(ValueError, match="step"):
        conn(TRUE_2X2, TRUE_2X2, step=0.0)


def test_gauss_filter_size_norm_and_symmetry() -> None:
    filter_x, filter_y = gauss_filter(1.4)
    # half_size = ceil(1.4 * sqrt(-2 ln(sqrt(2 pi) * 1.4 * .01)))
    #           = ceil(1.4 * sqrt(-2 ln(.035093)))  = ceil(1.4 * sqrt(6.6994))
    #           = ceil(1.4 * 2.5883) = ceil(3.6237) = 4  -> size 2*4 + 1 = 9
    assert filter_x.shape == (9, 9)
    assert filter_y.shape == (9, 9)
    assert float(np.sum(filter_x**2)) == pytest.approx(1.0)
    # d/dx of a Gaussian is odd in x (columns) and even in y (rows).
    np.testing.assert_array_equal(filter_x[:, ::-1], -filter_x)
    np.testing.assert_array_equal(filter_x[::-1, :], filter_x)
    np.testing.assert_array_equal(filter_x[:, 4], np.zeros(9))
    np.testing.assert_array_equal(filter_y, filter_x.T)
    # Closed form: g(i - 4) * (-(j - 4) / s^2) * g(j - 4), then unit norm.
    s = 1.4
    g = np.array([math.exp(-(k**2) / (2 * s**2)) for k in range(-4, 5)])
    expected = np.outer(g, -np.arange(-4, 5) / s**2 * g)
    expected /= np.sqrt(np.sum(expected**2))
    np.testing.assert_allclose(filter_x, expected, rtol=1e-12, atol=1e-15)
    # Positive x side has a negative derivative of the Gaussian.
    assert filter_x[4, 5] < 0 < filter_x[4, 3]


def test_gauss_filter_cached_and_read_only() -> None:
    first = gauss_filter(1.4)
    assert gauss_filter(1.4) is first
    assert not first[0].flags.writeable
    with pytest.raises(ValueError, match="sigma"):
        gauss_filter(-1.0)


def test_grad_identical_and_scale_invariant() -> None:
    true = np.zeros((12, 12))
    true[3:9, 4:10] = 1.0
    assert grad(true, true) == 0.0
    # Both mattes are min-max normalised first: {0, .5} -> {0, 1} exactly.
    assert grad(0.5 * true, true) == 0.0


def _grad_reference(pred: np.ndarray, true: np.ndarray, sigma: float) -> float:
    """Straightforward Grad with scipy correlation (mode 'nearest' = BORDER_REPLICATE)."""
    half = 4  # hand value for sigma 1.4 (see test_gauss_filter_size_norm_and_symmetry)
    k = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(k**2) / (2 * sigma**2)) / (sigma * np.sqrt(2 * np.pi))
    fx = np.outer(g, -k * g / sigma**2)
    fx /= np.sqrt(np.sum(fx**2))

    def magnitude(img: np.ndarray) -> np.ndarray:
        img = (img - img.min()) / (img.max() - img.min())
        gx = ndimage.correlate(img, fx, mode="nearest")
        gy = ndimage.correlate(img, fx.T, mode="nearest")
        mag: np.ndarray = np.sqrt(gx**2 + gy**2).astype(np.float32)
        return mag

    return float(np.sum((magnitude(true) - magnitude(pred)) ** 2) / 1000)


def test_grad_shifted_step_edge_matches_scipy() -> None:
    true = np.zeros((16, 20))
    true[:, 10:] = 1.0
    pred = np.zeros((16, 20))
    pred[:, 11:] = 1.0  # edge shifted right by one column
    value = grad(pred, true)
    assert value > 0.0
    assert value == pytest.approx(_grad_reference(pred, true, 1.4), rel=1e-5)
    # An off-centre blob exercises the replicated border on all sides.
    rng = np.random.default_rng(0)
    blob_true = ndimage.gaussian_filter(rng.random((15, 17)), 2.0)
    blob_pred = np.clip(blob_true + 0.05 * rng.standard_normal(blob_true.shape), 0.0, 1.0)
    assert grad(blob_pred, blob_true) == pytest.approx(
        _grad_reference(blob_pred, blob_true, 1.4), rel=1e-5
    )


def test_uint8_equals_float_over_255() -> None:
    rng = np.random.default_rng(1)
    pred8 = rng.integers(0, 256, size=(10, 11), dtype=np.uint8)
    true8 = rng.integers(0, 256, size=(10, 11), dtype=np.uint8)
    pred = pred8.astype(np.float32) / 255
    true = true8.astype(np.float32) / 255
    for fn in (mad, mse, grad, conn):
        assert fn(pred8, true8) == fn(pred, true)
    assert dtssd(pred8, true8, true8, pred8) == dtssd(pred, true, true, pred)

    seq8 = SequenceMetrics()
    seqf = SequenceMetrics()
    for p8, t8 in ((pred8, true8), (true8, pred8)):
        seq8.update(p8, t8)
        seqf.update(p8.astype(np.float32) / 255, t8.astype(np.float32) / 255)
    assert seq8.result() == seqf.result()


def test_unknown_metric_name_raises() -> None:
    with pytest.raises(ValueError, match=r"Foo.*MAD.*dtSSD"):
        SequenceMetrics(["MAD", "Foo"])
    with pytest.raises(ValueError, match="at least one"):
        SequenceMetrics([])


def test_shape_mismatch_raises() -> None:
    seq = SequenceMetrics()
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        seq.update(np.zeros((2, 3)), np.zeros((3, 2)))
    assert seq.frames == 0
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        mad(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        mse(np.zeros((2, 2, 1)), np.zeros((2, 2, 1)))
    # Frame size changing mid-clip breaks dtSSD's frame-to-frame difference.
    seq.update(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(3, 3\)"):
        seq.update(np.zeros((3, 3)), np.zeros((3, 3)))
    assert seq.frames == 1


def test_bad_dtype_raises() -> None:
    with pytest.raises(TypeError, match="bool"):
        mad(np.zeros((2, 2), dtype=bool), np.zeros((2, 2)))


def test_result_without_frames_raises() -> None:
    with pytest.raises(ValueError, match="no frames"):
        SequenceMetrics().result()
