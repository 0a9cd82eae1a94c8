"""`ptq4vm serve`: the matting service (WebSocket streaming, REST, registry) under uvicorn.

Registered with the `ptq4vm` command by this package (entry point group `ptq4vm.commands` in
pyproject.toml): the core's CLI finds it there and never imports the server.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from pydantic import ValidationError

from ptq4vm_core.cli.common import console, user_errors
from ptq4vm_core.engine import FP32, EngineKind
from ptq4vm_core.engine.loader import int8_precision_setting, resolve_artifact
from server.main import run
from server.settings import Settings


def serve_command(
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on [env PTQ4VM_HOST; 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="TCP port [env PTQ4VM_PORT; 8000].")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model for sessions that name none: fp32, a registry version or an artifact "
            "dir [default: the registry's active version; fp32 while it is empty, the "
            "default W8A8 model being built in the background]."
        ),
    ] = None,
    engine: Annotated[
        EngineKind | None,
        typer.Option(help="Runtime for every model [env PTQ4VM_ENGINE; auto = the deployed one]."),
    ] = None,
) -> None:
    """Run the matting service on HOST:PORT. Every PTQ4VM_* setting is in docs/server.md."""
    with user_errors():
        overrides: dict[str, Any] = {"host": host, "port": port, "model": model, "engine": engine}
        try:
            settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"invalid settings: {problems}") from None
        if settings.model is not None and settings.model != FP32:
            resolve_artifact(settings.model, settings.home)
        int8_precision_setting()  # PTQ4VM_INT8_FLOAT_PRECISION checked before serving
        console.print(
            f"serving on http://{settings.host}:{settings.port} (docs at /docs, "
            f"stream at ws://{settings.host}:{settings.port}/v1/stream)",
            highlight=False,
        )
        run(settings)
