"""The Ray-free parts of a batch: inputs, output names, settings, the manifest's resume rule,
and the message when Ray is not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ptq4vm_core.batch.manifest import Manifest, VideoStatus
from ptq4vm_core.batch.spec import BatchSpec, expand_inputs, plan
from tests.batch.conftest import write_clip


def test_inputs_from_arguments_and_list_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "sub" / "videos.txt"
    listing.write_text("# comment\n\n../a.mp4\n/abs/b.mkv\n../a.mp4\n")
    found = expand_inputs([tmp_path / "c.mp4", listing, tmp_path / "c.mp4"])
    assert found == [tmp_path / "c.mp4", tmp_path / "a.mp4", Path("/abs/b.mkv")]
    with pytest.raises(ValueError, match="no input"):
        expand_inputs([])


def test_outputs_are_named_after_inputs(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    alpha = plan([tmp_path / "x.mp4", frames], tmp_path / "out", BatchSpec(model="fp32"))
    assert [t.output.name for t in alpha] == ["x", "frames"]
    composite = BatchSpec(model="fp32", output="composite")
    assert plan([tmp_path / "x.mp4"], tmp_path, composite)[0].output.name == "x.mp4"
    rgba = BatchSpec(model="fp32", output="rgba", container="mov")
    assert plan([frames], tmp_path, rgba)[0].output.name == "frames.mov"


def test_bad_plans_and_settings_name_the_problem(tmp_path: Path) -> None:
    spec = BatchSpec(model="fp32")
    with pytest.raises(ValueError, match=r"both be written to .*clip"):
        plan([tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mov"], tmp_path, spec)
    with pytest.raises(ValueError, match="single image"):
        plan([tmp_path / "still.png"], tmp_path, spec)
    with pytest.raises(ValueError, match="rgba can be written as webm, mov, png, not 'mp4'"):
        BatchSpec(model="fp32", output="rgba", container="mp4")
    with pytest.raises(ValueError, match="unrecognised background"):
        BatchSpec(model="fp32", output="composite", background="plaid")
    with pytest.raises(ValueError, match="downsample_ratio"):
        BatchSpec(model="fp32", downsample=1.5)


def test_manifest_resumes_only_what_is_complete(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "v.mp4", 3, 0)
    out = tmp_path / "out"
    spec = BatchSpec(model="fp32")
    tasks = plan([clip], out, spec)
    first = Manifest.for_batch(out, spec, tasks)
    record = first.videos[str(clip)]
    record.status = VideoStatus.DONE
    first.save()
    # Done in the manifest but the output is gone: redone.
    assert Manifest.for_batch(out, spec, tasks).videos[str(clip)].status is VideoStatus.PENDING
    tasks[0].output.mkdir(parents=True)
    assert Manifest.for_batch(out, spec, tasks).videos[str(clip)].status is VideoStatus.DONE
    # Other settings, or a changed input: redone.
    other = BatchSpec(model="fp32", downsample=0.5)
    assert Manifest.for_batch(out, other, tasks).videos[str(clip)].status is VideoStatus.PENDING
    write_clip(clip, 4, 0)
    assert Manifest.for_batch(out, spec, tasks).videos[str(clip)].status is VideoStatus.PENDING
    # A torn or foreign batch.json resumes nothing and is replaced.
    (out / "batch.json").write_text("{not json")
    assert Manifest.for_batch(out, spec, tasks).videos[str(clip)].status is VideoStatus.PENDING


def test_without_ray_batch_says_how_to_get_it(tmp_path: Path) -> None:
    # sys.modules["ray"] = None makes `import ray` fail as if it were not installed.
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from ptq4vm_core.cli.main import main\n"
        f"sys.argv = ['ptq4vm', 'batch', {str(tmp_path)!r}, '--out', {str(tmp_path)!r}, "
        "'--model', 'fp32']\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'ptq4vm[ray]'" in " ".join(proc.stderr.split())
