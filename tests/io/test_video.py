"""Tests of ptq4vm_core.io.video with real PyAV encoding/decoding of tiny clips.

Past 400 lines on purpose: the reader's and the writer's cases share the tiny clips encoded
here with PyAV, and each case is a few lines.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from ptq4vm_core.io import writer as writer_module
from ptq4vm_core.io.video import (
    Kind,
    VideoError,
    VideoReadError,
    VideoWriteError,
    composite,
    iter_frames,
    iter_rgba_frames,
    open_writer,
    parse_background,
    probe,
    read_alpha_frames,
    to_uint8,
)

W, H = 64, 48
NTSC = Fraction(30000, 1001)


def rgb_frame(i: int, width: int = W, height: int = H) -> np.ndarray:
    """Smooth moving RGB test pattern, [H, W, 3] uint8 (smooth so codecs keep it)."""
    y, x = np.mgrid[0:height, 0:width]
    r = 40 + x * 150 // max(width - 1, 1) + i % 50
    g = 60 + y * 150 // max(height - 1, 1)
    b = 80 + x + y
    frame: np.ndarray = np.stack([r, g, b], axis=-1).astype(np.uint8)
    return frame


def alpha_frame(i: int, width: int = W, height: int = H) -> np.ndarray:
    """Soft disc matte, [H, W] uint8."""
    y, x = np.mgrid[0:height, 0:width]
    dist = np.hypot(x - width / 2 - i % 5, y - height / 2)
    matte: np.ndarray = np.clip((height / 2.5 - dist) * 32 + 128, 0, 255).astype(np.uint8)
    return matte


def write_frames(
    path: Path,
    kind: Kind,
    n: int,
    fps: Fraction = Fraction(25),
    *,
    width: int = W,
    height: int = H,
    audio_from: Path | None = None,
) -> None:
    with open_writer(path, kind, width=width, height=height, fps=fps, audio_from=audio_from) as out:
        for i in range(n):
            if kind == "rgb":
                out.write(rgb_frame(i, width, height))
            elif kind == "alpha":
                out.write(alpha_frame(i, width, height))
            else:
                rgba = np.dstack([rgb_frame(i, width, height), alpha_frame(i, width, height)])
                out.write(rgba)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def clip_with_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 s of 64x48 H.264 video at 25 fps with a 440 Hz AAC sine track."""
    path = tmp_path_factory.mktemp("src") / "with_audio.mp4"
    rate = 44100
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(rgb_frame(i), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        t = np.arange(rate, dtype=np.float32) / rate
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        sound = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        sound.sample_rate, sound.pts = rate, 0
        container.mux(audio.encode(sound))
        container.mux(audio.encode(None))
        container.mux(video.encode(None))
    return path


# --- containers: frame count, fps, size --------------------------------------------


@pytest.mark.parametrize("fps", [NTSC, Fraction(25)], ids=["ntsc", "25"])
def test_mp4_round_trip_keeps_frame_count_and_fps(tmp_path: Path, fps: Fraction) -> None:
    path = tmp_path / "out.mp4"
    write_frames(path, "rgb", 120, fps)
    info = probe(path)
    assert (info.width, info.height, info.fps, info.frame_count) == (W, H, fps, 120)
    assert not info.has_audio
    frames = list(iter_frames(path))
    assert len(frames) == 120
    assert frames[0].shape == (H, W, 3)
    assert frames[0].dtype == np.uint8
    assert mean_abs_diff(frames[7], rgb_frame(7)) < 3
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"


@pytest.mark.parametrize("ext", [".mkv", ".webm", ".mov", ".avi"])
def test_other_containers_keep_frame_count_and_fps(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"out{ext}"
    write_frames(path, "rgb", 20, NTSC)
    info = probe(path)
    assert (info.width, info.height, info.fps) == (W, H, NTSC)
    frames = list(iter_frames(path))
    assert len(frames) == 20
    assert info.frame_count in (None, 20)
    assert mean_abs_diff(frames[3], rgb_frame(3)) < 3


def test_odd_size_h264_is_padded_by_edge_replication(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    write_frames(path, "rgb", 5, width=65, height=49)
    info = probe(path)
    assert (info.width, info.height) == (66, 50)
    frame = next(iter(iter_frames(path)))
    assert mean_abs_diff(frame[:49, :65], rgb_frame(0, 65, 49)) < 3
    # The added column/row repeat the edge, so they match their neighbours.
    assert mean_abs_diff(frame[:, 65], frame[:, 64]) < 3
    assert mean_abs_diff(frame[49], frame[48]) < 3


@pytest.mark.parametrize("ext", [".webm", ".mov", ""])
def test_odd_size_kept_exactly_where_codec_allows(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"odd{ext}"
    write_frames(path, "rgb", 3, width=65, height=49)
    info = probe(path)
    assert (info.width, info.height) == (65, 49)
    assert all(f.shape == (49, 65, 3) for f in iter_frames(path))


def test_alpha_mp4_stores_alpha_as_luma(tmp_path: Path) -> None:
    path = tmp_path / "pha.mp4"
    write_frames(path, "alpha", 10)
    mattes = list(read_alpha_frames(path))
    assert len(mattes) == 10
    assert mattes[0].shape == (H, W)
    assert mattes[0].dtype == np.uint8
    assert mean_abs_diff(mattes[4], alpha_frame(4)) < 3
    # Plain RGB decoding shows the same grey image.
    assert mean_abs_diff(next(iter(iter_frames(path)))[..., 1], alpha_frame(0)) < 3


@pytest.mark.parametrize("ext", [".webm", ".mov", ".mkv"])
def test_rgba_video_keeps_alpha(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"rgba{ext}"
    write_frames(path, "rgba", 8)
    frames = list(iter_rgba_frames(path))
    assert len(frames) == 8
    assert frames[0].shape == (H, W, 4)
    assert mean_abs_diff(frames[5][..., 3], alpha_frame(5)) < 3
    assert mean_abs_diff(frames[5][..., :3], rgb_frame(5)) < 3
    with av.open(str(path)) as container:
        codec = container.streams.video[0].codec_context.name
    assert codec == ("prores" if ext == ".mov" else "vp9")


def test_rgba_to_mp4_is_refused_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(VideoWriteError, match=r"\.webm.*\.mov"):
        open_writer(tmp_path / "x.mp4", "rgba", width=W, height=H, fps=Fraction(25))
    assert list(tmp_path.iterdir()) == []


# --- frame directories --------------------------------------------------------------


def test_png_directory_names_and_count(tmp_path: Path) -> None:
    out = tmp_path / "frames"
    write_frames(out, "rgb", 12)
    assert sorted(p.name for p in out.iterdir()) == [f"{i:04d}.png" for i in range(12)]
    info = probe(out)
    assert (info.width, info.height, info.frame_count, info.fps) == (W, H, 12, Fraction(25))
    assert not info.has_audio
    frames = list(iter_frames(out))
    assert len(frames) == 12
    np.testing.assert_array_equal(frames[11], rgb_frame(11))  # PNG is lossless


def test_png_directory_kinds_have_matching_channels(tmp_path: Path) -> None:
    write_frames(tmp_path / "pha", "alpha", 2)
    write_frames(tmp_path / "rgba", "rgba", 2)
    grey = np.asarray(cv2.imread(str(tmp_path / "pha" / "0001.png"), cv2.IMREAD_UNCHANGED))
    assert grey.shape == (H, W)
    np.testing.assert_array_equal(grey, alpha_frame(1))
    rgba = next(iter(iter_rgba_frames(tmp_path / "rgba")))
    np.testing.assert_array_equal(rgba[..., 3], alpha_frame(0))
    np.testing.assert_array_equal(rgba[..., :3], rgb_frame(0))


def test_png_names_widen_past_the_minimum_digits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Same code path as >9999 frames with 4 digits, without writing 10000 files.
    monkeypatch.setattr(writer_module, "PNG_INDEX_DIGITS", 1)
    out = tmp_path / "frames"
    write_frames(out, "alpha", 12, width=4, height=4)
    assert sorted(p.name for p in out.iterdir()) == [f"{i:02d}.png" for i in range(12)]


def test_png_directory_replaces_previous_frames(tmp_path: Path) -> None:
    out = tmp_path / "frames"
    write_frames(out, "rgb", 6)
    write_frames(out, "alpha", 3)
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "0002.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


def test_png_directory_with_foreign_files_is_not_clobbered(tmp_path: Path) -> None:
    out = tmp_path / "frames"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(VideoWriteError, match=r"notes\.txt"):
        open_writer(out, "rgb", width=W, height=H, fps=Fraction(25))
    assert (out / "notes.txt").read_text() == "keep me"


def test_reading_a_frame_directory(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"f{i}.png"), rgb_frame(i)[..., ::-1])  # cv2 wants BGR
    cv2.imwrite(str(src / "f3.JPG"), rgb_frame(3)[..., ::-1])
    (src / "readme.txt").write_text("not a frame")
    (src / "._f0.png").write_bytes(b"macOS resource fork, not a PNG")
    info = probe(src, frame_dir_fps=Fraction(24000, 1001))
    assert (info.width, info.height, info.frame_count) == (W, H, 4)
    assert info.fps == Fraction(24000, 1001)
    frames = list(iter_frames(src))
    assert len(frames) == 4
    np.testing.assert_array_equal(frames[2], rgb_frame(2))  # RGB order, not BGR
    assert mean_abs_diff(frames[3], rgb_frame(3)) < 3  # JPEG is lossy


def test_frame_directory_with_mixed_sizes_names_the_file(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "0000.png"), rgb_frame(0))
    cv2.imwrite(str(src / "0001.png"), rgb_frame(0, 32, 32))
    with pytest.raises(VideoReadError, match=r"0001\.png"):
        list(iter_frames(src))


def test_directory_without_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(VideoReadError, match=str(tmp_path)):
        probe(tmp_path)
    with pytest.raises(VideoReadError, match=str(tmp_path)):
        iter_frames(tmp_path)


def test_read_alpha_frames_from_grey_rgb_and_16bit_pngs(tmp_path: Path) -> None:
    src = tmp_path / "pha"
    src.mkdir()
    matte = alpha_frame(0)
    cv2.imwrite(str(src / "0000.png"), matte)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 2] = matte  # red in OpenCV's BGR order: the RGB "first channel"
    cv2.imwrite(str(src / "0001.png"), rgb)
    cv2.imwrite(str(src / "0002.png"), matte.astype(np.uint16) * 257)
    mattes = list(read_alpha_frames(src))
    assert len(mattes) == 3
    for got in mattes:
        assert got.shape == (H, W)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, matte)


# --- audio --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ext", "codec"), [(".mp4", "aac"), (".webm", "opus"), (".mov", "aac"), (".mkv", "aac")]
)
def test_audio_is_carried_into_container_outputs(
    tmp_path: Path, clip_with_audio: Path, ext: str, codec: str
) -> None:
    assert probe(clip_with_audio).has_audio
    path = tmp_path / f"comp{ext}"
    write_frames(path, "rgb", 25, audio_from=clip_with_audio)
    assert probe(path).has_audio
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == codec
        seconds = sum(f.samples for f in container.decode(stream)) / stream.rate
    assert 0.95 < seconds < 1.1
    assert len(list(iter_frames(path))) == 25


def test_silent_audio_source_and_frame_dirs_get_no_audio(
    tmp_path: Path, clip_with_audio: Path
) -> None:
    silent = tmp_path / "silent.mp4"
    write_frames(silent, "rgb", 3)
    write_frames(tmp_path / "out.mp4", "rgb", 3, audio_from=silent)
    assert not probe(tmp_path / "out.mp4").has_audio
    write_frames(tmp_path / "dir", "rgb", 3, audio_from=clip_with_audio)
    assert probe(tmp_path / "dir").frame_count == 3


# --- compositing --------------------------------------------------------------------


def test_composite_hand_computed_pixel() -> None:
    fgr = np.array([[[200, 100, 0]]], np.uint8)
    pha = np.array([[64]], np.uint8)
    bg = np.array([[[0, 255, 40]]], np.uint8)
    # a = 64/255: R = 200*64/255 = 50.2 -> 50; G = (100*64 + 255*191)/255 = 216.1 -> 216;
    # B = 40*191/255 = 29.96 -> 30.
    expected = [[[50, 216, 30]]]
    np.testing.assert_array_equal(composite(fgr, pha, bg), expected)
    np.testing.assert_array_equal(composite(fgr / 255.0, pha[..., None] / 255.0, bg), expected)
    np.testing.assert_array_equal(composite(fgr, pha.astype(np.float32) / 255, bg), expected)


def test_composite_extremes_and_shapes() -> None:
    fgr, bg = rgb_frame(0), rgb_frame(9)
    np.testing.assert_array_equal(composite(fgr, np.full((H, W), 255, np.uint8), bg), fgr)
    np.testing.assert_array_equal(composite(fgr, np.zeros((H, W), np.float32), bg), bg)
    with pytest.raises(ValueError, match="pha"):
        composite(fgr, np.zeros((H, W + 1), np.uint8), bg)
    with pytest.raises(ValueError, match="background"):
        composite(fgr, np.zeros((H, W), np.uint8), bg[:, :-1])


def test_to_uint8_rounds_and_clips() -> None:
    x = np.array([-0.5, 0.0, 0.5 / 255, 1.6 / 255, 0.5, 1.0, 2.0, np.nan], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 0, 2, 128, 255, 255, 0])
    with pytest.raises(ValueError, match="uint8"):
        to_uint8(np.zeros(3, np.uint8))


@pytest.mark.parametrize(
    ("spec", "rgb"),
    [
        ("green", (0, 255, 0)),
        ("Blue", (0, 0, 255)),
        ("grey", (128, 128, 128)),
        ("gray", (128, 128, 128)),
        ("#FF8000", (255, 128, 0)),
        ("10, 20,30", (10, 20, 30)),
    ],
)
def test_parse_background_colours(spec: str, rgb: tuple[int, int, int]) -> None:
    bg = parse_background(spec, 5, 3)
    assert bg.shape == (3, 5, 3)
    assert bg.dtype == np.uint8
    assert (bg == rgb).all()


def test_parse_background_image_is_resized(tmp_path: Path) -> None:
    path = tmp_path / "bg.png"
    image = np.zeros((20, 40, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    cv2.imwrite(str(path), image)
    for width, height in [(10, 5), (80, 60)]:
        bg = parse_background(str(path), width, height)
        assert bg.shape == (height, width, 3)
        assert (bg == (0, 0, 255)).all()


@pytest.mark.parametrize("spec", ["purple", "#12345", "1,2", "300,0,0", "no/such/file.png"])
def test_parse_background_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match=spec.split(",")[0].lstrip("#")):
        parse_background(spec, 4, 4)


def test_parse_background_rejects_undecodable_image(tmp_path: Path) -> None:
    path = tmp_path / "bg.png"
    path.write_text("not an image")
    with pytest.raises(ValueError, match=r"bg\.png"):
        parse_background(str(path), 4, 4)


# --- errors and atomicity -----------------------------------------------------------


def test_missing_input(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    for func in (probe, iter_frames, read_alpha_frames):
        with pytest.raises(VideoReadError, match=f"input not found: {missing}"):
            func(missing)


def test_non_video_file(tmp_path: Path) -> None:
    path = tmp_path / "x.mp4"
    path.write_bytes(b"this is plainly not a video file\n" * 10)
    for func in (probe, iter_frames):
        with pytest.raises(VideoReadError, match=f"cannot decode video {path}"):
            func(path)
    assert issubclass(VideoReadError, VideoError)


@pytest.mark.parametrize("name", ["out.mp4", "out.webm", "out.mov", "frames"])
def test_exception_inside_with_leaves_nothing(tmp_path: Path, name: str) -> None:
    def write_then_fail() -> None:
        with open_writer(tmp_path / name, "rgb", width=W, height=H, fps=Fraction(25)) as out:
            out.write(rgb_frame(0))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_output(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    write_frames(path, "rgb", 4)
    before = path.read_bytes()

    def write_bad_frame() -> None:
        with open_writer(path, "rgb", width=W, height=H, fps=Fraction(25)) as out:
            out.write(rgb_frame(0))
            out.write(np.zeros((H, W), np.uint8))  # wrong shape aborts the with block

    with pytest.raises(VideoWriteError, match="shape"):
        write_bad_frame()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


@pytest.mark.parametrize(
    ("kind", "frame", "message"),
    [
        ("rgb", np.zeros((H, W), np.uint8), r"\(48, 64, 3\).*\(48, 64\)"),
        ("rgb", np.zeros((H, W, 3), np.float32), r"float32.*to_uint8"),
        ("alpha", np.zeros((H, W, 3), np.uint8), r"\(48, 64\).*\(48, 64, 3\)"),
        ("rgba", np.zeros((H + 1, W, 4), np.uint8), r"\(48, 64, 4\).*\(49, 64, 4\)"),
    ],
)
def test_write_rejects_wrong_shape_or_dtype(
    tmp_path: Path, kind: Kind, frame: np.ndarray, message: str
) -> None:
    out = open_writer(tmp_path / "o", kind, width=W, height=H, fps=Fraction(25))
    with pytest.raises(VideoWriteError, match=message):
        out.write(frame)
    out.abort()
    assert list(tmp_path.iterdir()) == []


def test_alpha_accepts_trailing_channel_axis(tmp_path: Path) -> None:
    with open_writer(tmp_path / "p", "alpha", width=W, height=H, fps=Fraction(25)) as out:
        out.write(alpha_frame(0)[..., None])
    np.testing.assert_array_equal(next(iter(read_alpha_frames(tmp_path / "p"))), alpha_frame(0))


def test_zero_frames_and_closed_writer_are_errors(tmp_path: Path) -> None:
    out = open_writer(tmp_path / "o.mp4", "rgb", width=W, height=H, fps=Fraction(25))
    with pytest.raises(VideoWriteError, match="no frames"):
        out.close()
    with pytest.raises(VideoWriteError, match="closed"):
        out.write(rgb_frame(0))
    assert list(tmp_path.iterdir()) == []


def test_image_extension_output_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VideoWriteError, match="directory"):
        open_writer(tmp_path / "o.png", "rgb", width=W, height=H, fps=Fraction(25))


@pytest.mark.parametrize(
    ("kind", "width", "fps", "message"),
    [
        ("rgbx", W, Fraction(25), "kind"),
        ("rgb", 0, Fraction(25), "size"),
        ("rgb", W, Fraction(0), "fps"),
    ],
)
def test_open_writer_rejects_bad_parameters(
    tmp_path: Path, kind: str, width: int, fps: Fraction, message: str
) -> None:
    with pytest.raises(VideoWriteError, match=message):
        open_writer(tmp_path / "o.mp4", kind, width=width, height=H, fps=fps)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
