"""What a batch is: its settings, its inputs and the output each input gets."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ptq4vm_core.io.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, Kind, parse_background
from ptq4vm_core.model.matting import check_downsample_ratio

OutputKind = Literal["alpha", "rgba", "composite"]
#: `png` is a directory of NNNN.png frames; the others are video containers.
Container = Literal["png", "mp4", "webm", "mov"]
#: Extensions of a text file that lists inputs, one path a line.
LIST_EXTENSIONS: frozenset[str] = frozenset({".txt", ".list", ".lst"})
MANIFEST_NAME = "batch.json"

# The writer kind of each output, and the containers it can be written as (first = default).
OUTPUTS: dict[str, tuple[Kind, tuple[Container, ...]]] = {
    "alpha": ("alpha", ("png", "mp4", "webm", "mov")),
    "rgba": ("rgba", ("webm", "mov", "png")),
    "composite": ("rgb", ("mp4", "webm", "mov", "png")),
}


@dataclass(frozen=True)
class BatchSpec:
    """How every video of a batch is matted. `container` None = the output's default
    (alpha: a PNG frame directory, rgba: WebM VP9 with alpha, composite: MP4 H.264);
    `downsample` None = RVM's guidance for each video's size; `threads` = intra-op threads of
    each actor's engine (None: the cores Ray gives the actor)."""

    model: str
    output: OutputKind = "alpha"
    container: Container | None = None
    background: str = "green"
    downsample: float | None = None
    threads: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        choices = OUTPUTS[self.output][1]
        if self.container is not None and self.container not in choices:
            raise ValueError(
                f"output {self.output} can be written as {', '.join(choices)}, "
                f"not {self.container!r}"
            )
        if self.output == "composite":
            parse_background(self.background, 2, 2)  # fails fast, naming the bad spec
        if self.downsample is not None:
            check_downsample_ratio(self.downsample)
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")

    @property
    def chosen_container(self) -> Container:
        return self.container or OUTPUTS[self.output][1][0]

    @property
    def writer_kind(self) -> Kind:
        return OUTPUTS[self.output][0]

    def identity(self) -> dict[str, Any]:
        """What decides an output's pixels: a video done under another identity is redone."""
        return {
            "model": self.model,
            "output": self.output,
            "container": self.chosen_container,
            "background": self.background if self.output == "composite" else None,
            "downsample": self.downsample,
        }

    def output_name(self, input: Path) -> str:
        """`clip.mp4` -> `clip` (a frame directory) or `clip.<container>`."""
        stem = input.name if input.is_dir() else input.stem
        container = self.chosen_container
        return stem if container == "png" else f"{stem}.{container}"


@dataclass(frozen=True)
class VideoTask:
    """One ordered unit of work: every frame of `input`, in order, into `output`."""

    index: int
    input: Path
    output: Path


def _read_list(path: Path) -> list[Path]:
    """Paths listed in a text file, one a line; relative ones are relative to the file;
    blank lines and lines starting with '#' are skipped."""
    entries = []
    for line in path.read_text().splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            entry = Path(text).expanduser()
            entries.append(entry if entry.is_absolute() else path.parent / entry)
    return entries


def expand_inputs(args: Iterable[Path]) -> list[Path]:
    """INPUT arguments -> absolute video/frame-directory paths, in order, without repeats.

    A `.txt`/`.list`/`.lst` file lists inputs. Missing paths are kept: each becomes a failed
    video in the manifest, the others still run.

    Raises:
        ValueError: no input at all.
    """
    found: dict[Path, None] = {}
    for arg in args:
        is_list = arg.is_file() and arg.suffix.lower() in LIST_EXTENSIONS
        for path in _read_list(arg) if is_list else [arg]:
            found.setdefault(Path(os.path.abspath(path.expanduser())), None)
    if not found:
        raise ValueError("no input: give video files, frame directories or a list file")
    return list(found)


def plan(inputs: Iterable[Path], out_dir: Path, spec: BatchSpec) -> list[VideoTask]:
    """One task per input, its output in `out_dir` named after it.

    Raises:
        ValueError: two inputs would write the same output, or an input has an image
            extension (a single image is no video).
    """
    tasks: list[VideoTask] = []
    owners: dict[str, Path] = {}
    for index, path in enumerate(inputs):
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir():
            videos = ", ".join(sorted(VIDEO_EXTENSIONS))
            raise ValueError(
                f"input {path} is a single image; pass a video ({videos}) or a frame directory"
            )
        name = spec.output_name(path)
        if name == MANIFEST_NAME or name.startswith("."):
            raise ValueError(f"input {path} would be written as {name!r}; rename it")
        if name in owners:
            raise ValueError(
                f"inputs {owners[name]} and {path} would both be written to {out_dir / name}; "
                "rename one or run them as separate batches"
            )
        owners[name] = path
        tasks.append(VideoTask(index, path, out_dir / name))
    return tasks
