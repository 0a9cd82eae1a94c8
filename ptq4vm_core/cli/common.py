"""Shared CLI plumbing: console, progress bars, turning library errors into one-line messages."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ptq4vm_core.artifact import ArtifactError
from ptq4vm_core.assets import AssetError
from ptq4vm_core.engine import ModelNotFoundError
from ptq4vm_core.engine.openvino_engine import OpenVinoUnavailableError
from ptq4vm_core.io.video import VideoError
from ptq4vm_core.model.weights import WeightsError

console = Console(stderr=True, soft_wrap=True)

# Errors a user can fix: shown as one line, exit code 2, no traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    ArtifactError,
    AssetError,
    ModelNotFoundError,
    OpenVinoUnavailableError,
    VideoError,
    WeightsError,
    ValueError,
    FileNotFoundError,
)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


def parse_size(text: str) -> tuple[int, int]:
    """'512x288' -> (512, 288)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like 512x288, got {text!r}") from None
    if not (16 <= width <= 8192 and 16 <= height <= 8192):
        raise ValueError(f"size {text} out of range: each side between 16 and 8192 px")
    return width, height
