"""A disk that fills up during an upload (issue 9): PTQ4VM_HOME on a real 20 MiB tmpfs and an
upload bigger than it. The upload is answered 507 (not 500), its partial file is removed, the
server streams on, and the same route works again once the upload fits."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from tests.server.conftest import Assets, RunningServer, ServerFactory, make_home
from tests.server.test_admin import AUTH, TOKEN, submit
from tests.server.test_stream_errors import Witness

SIZE_MIB = 20
TOO_BIG = b"\x00" * (SIZE_MIB + 4) * (1 << 20)  # never a video: the disk fills before the check


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 20 MiB tmpfs (root can mount one; elsewhere the test is skipped, saying why)."""
    mount = tmp_path_factory.mktemp("small-disk")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MIB}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def full_server(small_disk: Path, start_server: ServerFactory, assets: Assets) -> RunningServer:
    """PTQ4VM_HOME on the tmpfs (mounted first, so unmounted after the servers stop), and the
    calibration free-space check below the disk's size, so uploads get as far as the disk."""
    home = make_home(small_disk / "home", assets)
    return start_server(home, admin_token=TOKEN, min_free_bytes=1 << 20)


def used(path: Path) -> int:
    return shutil.disk_usage(path).used


def short_video(path: Path) -> Path:
    """Three 64x64 frames: a real video whose job finishes at once."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25, (64, 64))
    for value in (0, 80, 160):
        writer.write(np.full((64, 64, 3), value, np.uint8))
    writer.release()
    return path


def test_video_job_upload_on_a_full_disk(
    full_server: RunningServer,
    small_disk: Path,
    clip_rgb: list[NDArray[np.uint8]],
    tmp_path: Path,
) -> None:
    before = used(small_disk)
    with Witness(full_server, clip_rgb[:4]) as witness, full_server.client() as http:
        full = http.post(
            "/v1/jobs", files={"video": ("big.mp4", TOO_BIG)}, data={"output": "alpha"}
        )
        assert full.status_code == 507, full.text
        assert "no disk space" in full.json()["detail"]
        assert used(small_disk) <= before + (256 << 10), "the partial upload was left on disk"
        assert list((full_server.settings.jobs_dir).iterdir()) == []
        witness.check()
        # Space is back (the partial file went): an upload that fits is accepted.
        with short_video(tmp_path / "short.mp4").open("rb") as video:
            fits = http.post(
                "/v1/jobs", files={"video": ("a.mp4", video)}, data={"output": "alpha"}
            )
        assert fits.status_code == 202, fits.text
        witness.check()


def test_calibration_upload_on_a_full_disk(
    full_server: RunningServer, small_disk: Path, assets: Assets, tmp_path: Path
) -> None:
    big = tmp_path / "big.mp4"
    big.write_bytes(TOO_BIG)
    before = used(small_disk)
    with full_server.client() as http:
        full = submit(http, big)
        assert full.status_code == 507, full.text
        assert "no disk space" in full.json()["detail"]
        root = full_server.settings.calibrations_dir
        assert [p.name for p in root.iterdir() if p.is_dir()] == []
        assert used(small_disk) <= before + (256 << 10)
        assert http.get("/admin/calibrations", headers=AUTH).json() == []


def test_free_space_check_answers_507_before_reading(
    small_disk: Path, start_server: ServerFactory, assets: Assets
) -> None:
    """The documented guard: less free space than PTQ4VM_MIN_FREE_BYTES (default 1 GiB, more
    than this disk) is refused before anything is stored."""
    server = start_server(make_home(small_disk / "home2", assets), admin_token=TOKEN)
    with server.client() as http:
        refused = submit(http, assets.clip)
        assert refused.status_code == 507
        assert "PTQ4VM_MIN_FREE_BYTES" in refused.json()["detail"]
