"""Saving is atomic: a failure or a kill never leaves a half-written artifact behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch

from ptq4vm_core.artifact import (
    MANIFEST_FILE,
    TENSORS_FILE,
    ArtifactError,
    read_manifest,
    save_artifact,
    verify_artifact,
)
from ptq4vm_core.calib.calibrate import CalibrationResult
from ptq4vm_core.calib.data import CalibrationSet


def _boom(*args: object, **kwargs: object) -> bytes:
    raise RuntimeError("disk on fire")


def test_failure_mid_save_leaves_nothing(
    w8a8: CalibrationResult,
    calib_data: CalibrationSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(safetensors.torch, "save", _boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_artifact(w8a8, calib_data, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_overwrite_keeps_the_old_artifact(
    w8a8: CalibrationResult,
    calib_data: CalibrationSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = save_artifact(w8a8, calib_data, tmp_path / "out", name="old")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(safetensors.torch, "save", _boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_artifact(w8a8, calib_data, out, name="new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_overwriting_an_older_artifact(
    w8a8: CalibrationResult, w4a4: CalibrationResult, calib_data: CalibrationSet, tmp_path: Path
) -> None:
    out = save_artifact(w8a8, calib_data, tmp_path / "out", name="first")
    save_artifact(w4a4, calib_data, out, name="second")
    manifest = verify_artifact(out)
    assert (manifest.version_name, manifest.bits) == ("second", "w4a4")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no .partial / .old leftovers
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE, TENSORS_FILE]


def test_empty_directory_is_filled(
    w8a8: CalibrationResult, calib_data: CalibrationSet, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    out = save_artifact(w8a8, calib_data, tmp_path / "out")
    assert read_manifest(out).bits == "w8a8"


def test_non_artifact_directory_is_refused_and_untouched(
    w8a8: CalibrationResult, calib_data: CalibrationSet, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("precious")
    (out / "sub" / MANIFEST_FILE).write_text("{}")
    with pytest.raises(ArtifactError, match=r"out: exists, is not empty and is not a ptq4vm"):
        save_artifact(w8a8, calib_data, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "sub"]
    assert (out / "notes.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    (out / MANIFEST_FILE).write_text('{"format": "something-else"}')
    with pytest.raises(ArtifactError, match="is not a ptq4vm"):
        save_artifact(w8a8, calib_data, out)


def test_file_at_target_is_refused(
    w8a8: CalibrationResult, calib_data: CalibrationSet, tmp_path: Path
) -> None:
    (tmp_path / "out").write_text("x")
    with pytest.raises(ArtifactError, match="not a directory"):
        save_artifact(w8a8, calib_data, tmp_path / "out")
    assert (tmp_path / "out").read_text() == "x"


_KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from ptq4vm_core.artifact import load_artifact, read_manifest, save_artifact
    import ptq4vm_core.artifact.save as save_module
    from ptq4vm_core.calib.calibrate import CalibrationResult

    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    artifact = load_artifact(source)
    m = artifact.manifest
    result = CalibrationResult(artifact.model, m.policy, m.method, m.bits, m.profile, [])

    class Data:  # stands in for the CalibrationSet: only its provenance is saved
        def provenance(self):
            return m.calibration.model_dump(mode="json")

    write = save_module.write_synced

    def write_then_die(path, data):
        write(path, data)
        os.kill(os.getpid(), signal.SIGKILL)  # mid-save: tensors written, manifest not

    save_module.write_synced = write_then_die
    save_artifact(result, Data(), out, name="never")
    """
)


def test_kill_mid_overwrite_keeps_the_old_artifact(w8a8_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in (MANIFEST_FILE, TENSORS_FILE):
        (out / name).write_bytes((w8a8_dir / name).read_bytes())
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_SAVE, str(w8a8_dir), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    assert verify_artifact(out).version_name == read_manifest(w8a8_dir).version_name
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert len(leftovers) == 1, leftovers  # the temporary directory a kill cannot clean up
    assert leftovers[0].startswith(".out.partial-")
