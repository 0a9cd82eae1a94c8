"""The `ptq4vm` command."""

from __future__ import annotations

from typing import Annotated

import typer

from ptq4vm_core.cli.bench import bench_command
from ptq4vm_core.cli.calibrate import calibrate_command
from ptq4vm_core.cli.common import console, setup_logging
from ptq4vm_core.cli.evaluate import eval_command
from ptq4vm_core.cli.fetch import fetch_command
from ptq4vm_core.cli.matte import matte_command

app = typer.Typer(
    name="ptq4vm",
    help="Real-time video matting with PTQ4VM-quantized Robust Video Matting.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    setup_logging(verbose)


app.command("fetch")(fetch_command)
app.command("matte")(matte_command)
app.command("eval")(eval_command)
app.command("bench")(bench_command)
app.command("calibrate", context_settings={"allow_extra_args": True})(calibrate_command)


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(envvar="PTQ4VM_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PTQ4VM_PORT")] = 8000,
    model: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Run the matting service on HOST:PORT (arrives with the streaming server)."""
    console.print(
        "the streaming server is not part of this release yet; "
        "use `ptq4vm matte`, `ptq4vm eval` and `ptq4vm bench` meanwhile"
    )
    raise typer.Exit(1)


def main() -> None:
    app()
