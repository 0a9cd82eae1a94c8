"""A small mutable view of an ONNX graph, for the exporter's rewrites.

Nodes live in a list (order does not matter while editing: `to_model` sorts them
topologically), initializers in a dict by name. New names are made unique with a counter and
skip every name the graph already has, so rewrites collide neither with the published graph's
numeric tensor names nor with an earlier editor's `base::N` names (an exported graph edited
again).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from numpy.typing import ArrayLike, NDArray
from onnx import helper, numpy_helper


class GraphError(Exception):
    """The graph does not have the structure a rewrite expects."""


class GraphEditor:
    """Edits `model.graph` in place; `to_model` returns the model, sorted and pruned."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self.graph = model.graph
        self.nodes: list[onnx.NodeProto] = list(self.graph.node)
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in self.graph.initializer}
        self._counter = 0
        self._taken = (
            {n.name for n in self.nodes}
            | {x for n in self.nodes for x in (*n.input, *n.output)}
            | set(self.initializers)
            | {v.name for v in (*self.graph.input, *self.graph.output)}
        )

    def unique(self, base: str) -> str:
        while True:
            self._counter += 1
            name = f"{base}::{self._counter}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def node(self, name: str) -> onnx.NodeProto:
        for node in self.nodes:
            if node.name == name:
                return node
        raise GraphError(f"no node named {name!r}")

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        for node in self.nodes:
            if tensor in node.output:
                return node
        return None

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [node for node in self.nodes if tensor in node.input]

    def is_graph_output(self, tensor: str) -> bool:
        return any(o.name == tensor for o in self.graph.output)

    def array(self, name: str) -> NDArray[Any]:
        """The value of initializer `name`."""
        if name not in self.initializers:
            raise GraphError(f"{name!r} is not an initializer")
        return numpy_helper.to_array(self.initializers[name])

    def add_initializer(self, base: str, value: ArrayLike) -> str:
        name = self.unique(base)
        self.initializers[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def add_node(
        self, op: str, inputs: list[str], outputs: list[str] | None = None, **attrs: Any
    ) -> onnx.NodeProto:
        outputs = outputs or [self.unique(op.lower())]
        node = helper.make_node(op, inputs, outputs, name=self.unique(op), **attrs)
        self.nodes.append(node)
        return node

    def remove(self, node: onnx.NodeProto) -> None:
        self.nodes.remove(node)

    def replace_uses(
        self, old: str, new: str, *, only: Iterable[onnx.NodeProto] | None = None
    ) -> None:
        """Every input `old` of the nodes in `only` (default: all nodes) becomes `new`."""
        targets = self.nodes if only is None else list(only)
        for node in targets:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new

    def bypass(self, node: onnx.NodeProto, replacement: str) -> None:
        """Removes a single-output node, wiring its consumers to `replacement` instead."""
        if self.is_graph_output(node.output[0]):
            raise GraphError(f"{node.name}: cannot bypass a node that produces a graph output")
        self.remove(node)
        self.replace_uses(node.output[0], replacement)

    def prune(self) -> None:
        """Removes nodes none of whose outputs is used (repeatedly, so chains go too)."""
        outputs = {o.name for o in self.graph.output}
        while True:
            used = {x for n in self.nodes for x in n.input} | outputs
            dead = [n for n in self.nodes if not any(o in used for o in n.output)]
            if not dead:
                return
            for node in dead:
                self.nodes.remove(node)

    def to_model(self) -> onnx.ModelProto:
        """The model with the edited nodes in topological order and unused initializers
        dropped. Raises GraphError when a node input is produced by nothing."""
        self.prune()
        available = {i.name for i in self.graph.input} | set(self.initializers) | {""}
        ordered: list[onnx.NodeProto] = []
        pending = list(self.nodes)
        while pending:
            ready = [n for n in pending if all(x in available for x in n.input)]
            if not ready:
                missing = sorted({x for n in pending for x in n.input} - available)[:5]
                raise GraphError(f"nodes wait on tensors nothing produces: {missing}")
            for node in ready:
                available.update(node.output)
            ordered += ready
            ready_ids = {id(n) for n in ready}
            pending = [n for n in pending if id(n) not in ready_ids]
        used = {x for n in ordered for x in n.input}
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        del self.graph.initializer[:]
        self.graph.initializer.extend(t for k, t in self.initializers.items() if k in used)
        self.nodes = ordered
        return self._model
