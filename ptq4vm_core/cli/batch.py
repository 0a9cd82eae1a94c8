"""`ptq4vm batch`: many videos matted on Ray, one output each in DIR and DIR/batch.json."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import Progress, TaskID

from ptq4vm_core.batch import RayMissingError, require_ray
from ptq4vm_core.batch.events import BatchEvent, EventKind
from ptq4vm_core.batch.spec import BatchSpec, Container, OutputKind, expand_inputs, plan
from ptq4vm_core.cli.common import console, progress_bar, user_errors

# How often --json prints a progress line while frames are matted.
JSON_PROGRESS_EVERY_S = 0.5


def batch_command(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Video files, frame directories, or .txt files listing them (one a line).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option(help="Directory of the outputs and batch.json.")],
    model: Annotated[str, typer.Option(help="fp32, a registry version or an artifact dir.")],
    output: Annotated[OutputKind, typer.Option(help="What each video gives.")] = "alpha",
    container: Annotated[
        Container | None,
        typer.Option(help="png (frame dir) or a video; default: png, webm (rgba), mp4."),
    ] = None,
    background: Annotated[str, typer.Option(help="Composite background colour.")] = "green",
    downsample: Annotated[
        float | None,
        typer.Option(help="Network resolution as a fraction of the input (default: ~512 px)."),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Join this Ray cluster (its HOST:PORT, or auto); default: local."),
    ] = None,
    actors: Annotated[
        int | None, typer.Option(help="Actors (default: the cluster's CPUs / cpus per actor).")
    ] = None,
    cpus_per_actor: Annotated[
        float, typer.Option(help="Ray CPUs each actor reserves (its engine's threads).")
    ] = 1.0,
    attempts: Annotated[
        int, typer.Option(help="Units started for a video before a dying worker fails it.")
    ] = 3,
    json_lines: Annotated[
        bool, typer.Option("--json", help="JSON lines on stdout instead of a progress bar.")
    ] = False,
) -> None:
    """Matte every INPUT on Ray (actors holding a loaded engine, one video each at a time);
    re-running with the same settings skips the videos already done. Exit code 1 when a
    video failed (batch.json says why)."""
    with user_errors():
        try:
            require_ray()
        except RayMissingError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from exc
        # Imported only now: Ray is an optional extra, and `ptq4vm` must start without it.
        from ptq4vm_core.batch.runner import BatchError, RayOptions, run_batch

        spec = BatchSpec(
            model=model,
            output=output,
            container=container,
            background=background,
            downsample=downsample,
        )
        options = RayOptions(
            address=ray_address,
            actors=actors,
            cpus_per_actor=cpus_per_actor,
            max_attempts=attempts,
        )
        tasks = plan(expand_inputs(inputs), out.expanduser().absolute(), spec)
        try:
            if json_lines:
                report = run_batch(tasks, spec, out.absolute(), options, JsonLines())
            else:
                with progress_bar() as progress:
                    report = run_batch(tasks, spec, out.absolute(), options, Bar(progress))
        except BatchError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from exc
        counts = report.manifest.counts()
        if not json_lines:
            console.print(
                f"{counts['done']} of {len(tasks)} videos done, {counts['failed']} failed, "
                f"in {report.wall_seconds:.1f} s; see {report.manifest.path}",
                highlight=False,
            )
        if not report.ok:
            raise typer.Exit(1)


class JsonLines:
    """--json: one object a line on stdout: start, each video's fate, progress now and then,
    finish."""

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self, event: BatchEvent) -> None:
        line: dict[str, Any] = {
            "event": event.kind.value,
            "frames_done": event.frames_done,
            "frames_total": event.frames_total,
        }
        if event.kind is EventKind.FRAMES:
            now = time.monotonic()
            if now - self._last < JSON_PROGRESS_EVERY_S:
                return
            self._last = now
            line["event"] = "progress"
        elif event.record is not None:
            record = event.record
            line.update(
                input=record.input,
                output=record.output,
                status=record.status.value,
                frames=record.frames,
                fps=record.fps,
                attempts=record.attempts,
                error=record.error or event.message or None,
            )
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


class Bar:
    """One progress bar over the frames of all videos; failures and retries as lines."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None
        self._videos = 0
        self._finished = 0

    def __call__(self, event: BatchEvent) -> None:
        kind = event.kind
        if kind is EventKind.START:
            self._task = self._progress.add_task("batch", total=event.frames_total or None)
            return
        if kind in (EventKind.DONE, EventKind.FAILED, EventKind.SKIPPED):
            self._finished += 1
        if kind is EventKind.FAILED and event.record is not None:
            self._progress.console.print(
                f"[bold red]failed:[/] {escape(event.record.input)}: "
                f"{escape(event.record.error or '')}",
                highlight=False,
            )
        elif kind is EventKind.RETRY and event.record is not None:
            self._progress.console.print(
                f"[yellow]retry:[/] {escape(event.record.input)} ({escape(event.message)})",
                highlight=False,
            )
        if self._task is not None:
            self._progress.update(
                self._task,
                completed=event.frames_done,
                total=event.frames_total or None,
                description=f"batch [{self._finished} videos]",
            )
