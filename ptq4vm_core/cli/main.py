"""The `ptq4vm` command.

The core's subcommands are registered here; a package above the core adds its own through the
entry point group `ptq4vm.commands` (name = subcommand, value = the typer command function):
the server's `serve` (pyproject.toml) and the Python client's `stream`
(clients/python/pyproject.toml). The core never imports those packages.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Annotated

import typer

from ptq4vm_core.cli.batch import batch_command
from ptq4vm_core.cli.bench import bench_command
from ptq4vm_core.cli.calibrate import calibrate_command
from ptq4vm_core.cli.common import setup_logging
from ptq4vm_core.cli.evaluate import eval_command
from ptq4vm_core.cli.fetch import fetch_command
from ptq4vm_core.cli.matte import matte_command

COMMANDS_GROUP = "ptq4vm.commands"

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
app.command("batch")(batch_command)
app.command("eval")(eval_command)
app.command("bench")(bench_command)
app.command("calibrate", context_settings={"allow_extra_args": True})(calibrate_command)

for _entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
    app.command(_entry.name)(_entry.load())


def main() -> None:
    app()
