"""The outputs of one matted clip (alpha, foreground, RGBA, composite), written together.

One writer for `ptq4vm matte`, `ptq4vm batch` and the server's video jobs, so that one
model, ratio and background give the same files whichever of them wrote them.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ptq4vm_core.io.compose import composite
from ptq4vm_core.io.writer import FrameWriter, Kind, open_writer

Output = Literal["alpha", "fgr", "rgba", "composite"]

# What each output is written as, and whether it carries the input's audio.
_KINDS: dict[Output, tuple[Kind, bool]] = {
    "alpha": ("alpha", False),
    "fgr": ("rgb", True),
    "rgba": ("rgba", False),
    "composite": ("rgb", True),
}


class MatteWriter:
    """Writes every output in `targets` (output -> video file or PNG directory, see
    `open_writer`) frame by frame; a context manager that publishes all of them on a normal
    exit and discards all of them on an exception.

    `background` [H,W,3] uint8 is required for a composite; `audio_from` is the input whose
    audio the foreground and the composite keep (None: silent).
    """

    def __init__(
        self,
        targets: Mapping[Output, Path],
        *,
        width: int,
        height: int,
        fps: Fraction,
        background: npt.NDArray[np.uint8] | None = None,
        audio_from: Path | None = None,
    ) -> None:
        if not targets:
            raise ValueError("nothing to write: give at least one output")
        if "composite" in targets and background is None:
            raise ValueError("a composite output needs a background")
        self.background = background
        self._stack = ExitStack()
        self._writers: dict[Output, FrameWriter] = {}
        with self._stack:  # an output that cannot be opened discards those opened before it
            for output, path in targets.items():
                kind, audio = _KINDS[output]
                writer = open_writer(
                    path,
                    kind,
                    width=width,
                    height=height,
                    fps=fps,
                    audio_from=audio_from if audio else None,
                )
                self._writers[output] = self._stack.enter_context(writer)
            self._stack = self._stack.pop_all()

    @property
    def needs_fgr(self) -> bool:
        """Whether `write` needs the foreground (only alpha asked: it does not)."""
        return any(output != "alpha" for output in self._writers)

    def write(self, pha: npt.NDArray[np.uint8], fgr: npt.NDArray[np.uint8] | None) -> None:
        """One frame: pha [H,W] uint8, fgr [H,W,3] uint8 RGB (None when not `needs_fgr`)."""
        for output, writer in self._writers.items():
            if output == "alpha":
                writer.write(pha)
                continue
            if fgr is None:
                raise ValueError(f"the {output} output needs the foreground")
            if output == "fgr":
                writer.write(fgr)
            elif output == "rgba":
                writer.write(np.dstack([fgr, pha]))
            else:
                assert self.background is not None  # checked in __init__
                writer.write(composite(fgr, pha, self.background))

    def __enter__(self) -> MatteWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stack.__exit__(*exc_info)
