"""Functional closures: how a model declares its partition for block-wise calibration.

A closure is the smallest unit of a network whose recurrent state updates are self-contained:
it reads named tensors from a per-frame environment, writes named tensors back, and any
recurrent tensor it reads (its own output from the previous frame) it also writes. Calibration
code sees only this description, never the model's classes, so it works for any model that
provides `closures()` and runs its frames through `run_closures`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

Env = dict[str, Tensor | None]


@dataclass(frozen=True)
class Closure:
    """name: unique id; inputs/outputs: environment keys; recurrent: keys that are both an input
    (state from the previous frame, None on the first) and an output (the new state); parts: the
    modules whose parameters the closure owns; fn: maps the inputs, in order, to the outputs."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    parts: tuple[nn.Module, ...]
    fn: Callable[..., tuple[Tensor, ...]] = field(repr=False)
    recurrent: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        missing = [r for r in self.recurrent if r not in self.inputs or r not in self.outputs]
        if missing:
            raise ValueError(
                f"closure {self.name}: recurrent keys {missing} must be inputs and outputs"
            )

    def run(self, env: Mapping[str, Tensor | None]) -> dict[str, Tensor]:
        try:
            args = [env[name] for name in self.inputs]
        except KeyError as exc:
            raise KeyError(f"closure {self.name} needs {exc.args[0]!r}, not yet computed") from None
        outs = self.fn(*args)
        if len(outs) != len(self.outputs):
            raise ValueError(
                f"closure {self.name} returned {len(outs)} tensors, declares {len(self.outputs)}"
            )
        return dict(zip(self.outputs, outs, strict=True))

    def modules(self) -> Iterable[nn.Module]:
        for part in self.parts:
            yield from part.modules()


def run_closures(closures: Iterable[Closure], env: Env) -> Env:
    """Run closures in order over `env` (updated in place and returned)."""
    for closure in closures:
        env.update(closure.run(env))
    return env
