from __future__ import annotations

import numpy as np
import pytest

from ptq4vm_core.assets import weights_path
from ptq4vm_core.engine import EngineKind, ModelNotFoundError, load_engine
from ptq4vm_core.engine.frames import frames_to_batch
from ptq4vm_core.engine.ort_engine import OrtEngine
from ptq4vm_core.engine.runtime import BUDGET


@pytest.mark.parametrize("kind", [EngineKind.ORT, EngineKind.TORCH])
def test_engines_keep_no_stream_state(kind: EngineKind, clip_frames) -> None:
    engine = load_engine("fp32", kind)
    first = engine.infer(frames_to_batch(clip_frames[:1]), None, 1.0)
    second = engine.infer(frames_to_batch(clip_frames[1:2]), first.state, 1.0)
    # The same (frame, state) pair gives the same matte, whatever ran in between.
    engine.infer(frames_to_batch(clip_frames[50:51]), None, 1.0)
    again = engine.infer(frames_to_batch(clip_frames[1:2]), first.state, 1.0)
    np.testing.assert_array_equal(second.pha, again.pha)
    assert second.pha.shape == (1, 1, 144, 176)
    assert second.pha.dtype == np.float32


@pytest.mark.parametrize("kind", [EngineKind.ORT, EngineKind.TORCH])
def test_batch_of_streams_equals_streams_one_by_one(kind: EngineKind, clip_frames) -> None:
    engine = load_engine("fp32", kind)
    batch = engine.infer(frames_to_batch([clip_frames[0], clip_frames[60]]), None, 0.5)
    for i, index in enumerate((0, 60)):
        single = engine.infer(frames_to_batch([clip_frames[index]]), None, 0.5)
        np.testing.assert_allclose(batch.pha[i], single.pha[0], atol=1e-5)


def test_unknown_models_and_engines_are_refused(tmp_path) -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'w3a3'"):
        load_engine("w3a3")
    with pytest.raises(ValueError, match="does not apply to the fp32 model"):
        load_engine("fp32", EngineKind.SIM)
    with pytest.raises(ValueError, match="'tpu' is not a valid EngineKind"):
        load_engine("fp32", "tpu")


def test_reserved_cores_run_fewer_threads_on_the_same_function(clip_frames) -> None:
    engine = OrtEngine(weights_path(), threads=2)
    src = frames_to_batch(clip_frames[:1])
    full = engine.infer(src, None, 1.0)
    with BUDGET.reserve(1):
        assert BUDGET.threads(engine.threads) == 1
        reduced = engine.infer(src, None, 1.0)
        assert set(engine._sessions) == {2, 1}  # a one-thread session, next to the first
        # The state moves between the sessions: a stream goes on across the switch.
        after = engine.infer(frames_to_batch(clip_frames[1:2]), reduced.state, 1.0)
    assert BUDGET.reserved == 0
    np.testing.assert_allclose(reduced.pha, full.pha, atol=1e-5)
    again = engine.infer(frames_to_batch(clip_frames[1:2]), full.state, 1.0)
    np.testing.assert_allclose(after.pha, again.pha, atol=1e-5)
