"""What an op handler works with: the ONNX side (shapes, constants, consumers) and the
TFLite graph being built, with each ONNX tensor's TFLite tensor and layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from s2rt.errors import UnsupportedGraphError
from tflite.BuiltinOperator import BuiltinOperator

from s2conv.graph import OnnxNode
from s2conv.tflite.ir import Graph, Operator, Options, Tensor
from s2conv.tflite.layout import BATCH, Layout, identity, is_pure_reshape, permute, transpose_between

FLOAT = np.dtype(np.float32)


@dataclass(frozen=True)
class Value:
    """Where an ONNX data tensor lives in the TFLite graph."""

    tensor: int
    layout: Layout


class EmitContext:
    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        constants: Mapping[str, np.ndarray],
        consumers: Mapping[str, int],
        outputs: Sequence[str],
        opset: int,
    ) -> None:
        self.graph = Graph()
        self.shapes = shapes  # full ONNX shapes of data tensors, batch as BATCH
        self.constants = constants
        self.consumers = consumers  # how many emitted nodes read each tensor
        self.outputs = frozenset(outputs)
        self.opset = opset  # of the default ONNX domain: some attribute defaults depend on it
        self.values: dict[str, Value] = {}
        self._converted: dict[tuple[int, Layout], int] = {}
        self._aliases: dict[int, set[str]] = {}
        self.node: OnnxNode | None = None  # the node being emitted, for error messages

    # --- the ONNX side ------------------------------------------------------------------

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def const(self, name: str, role: str) -> np.ndarray:
        """The value of constant input `name`; UnsupportedGraphError if it is computed."""
        if name not in self.constants:
            raise UnsupportedGraphError(
                f"{self.label}: its {role} {name!r} must be a constant (an initialiser or computed from "
                "initialisers only) for the TFLite emitter, but it is computed from the model input"
            )
        return self.constants[name]

    def optional_const(self, node: OnnxNode, index: int, role: str) -> np.ndarray | None:
        name = node.inputs[index] if index < len(node.inputs) else ""
        return self.const(name, role) if name else None

    def is_used(self, name: str) -> bool:
        """Does an emitted node, or a graph output, read `name`?"""
        return bool(name) and (self.consumers.get(name, 0) > 0 or name in self.outputs)

    def shape(self, name: str) -> tuple[int, ...]:
        """The ONNX shape of a data tensor, its batch dimension as BATCH (-1)."""
        return self.shapes[name]

    def rank(self, name: str) -> int:
        return len(self.shapes[name])

    @property
    def label(self) -> str:
        return self.node.label if self.node is not None else "the graph"

    def fail(self, problem: str) -> UnsupportedGraphError:
        """An error about the node being emitted, to raise."""
        return UnsupportedGraphError(f"{self.label}: {problem}")

    # --- tensors --------------------------------------------------------------------------

    def add_input(self, name: str) -> int:
        index = self._new_tensor(name, self.shape(name))
        self.values[name] = Value(index, identity(self.rank(name)))
        self._aliases[index] = {name}
        self.graph.inputs.append(index)
        return index

    def output(self, name: str, layout: Layout | None = None) -> int:
        """A new TFLite tensor for the ONNX tensor `name` produced by the current node."""
        layout = layout if layout is not None else identity(self.rank(name))
        index = self._new_tensor(name, permute(self.shape(name), layout))
        self.values[name] = Value(index, layout)
        self._aliases[index] = {name}
        return index

    def temp(self, hint: str, shape: Sequence[int]) -> int:
        """A new intermediate TFLite tensor (no ONNX counterpart); `shape` in TFLite order."""
        return self._new_tensor(hint, shape)

    def alias(self, name: str, source: str) -> None:
        """Make ONNX tensor `name` the same TFLite tensor as `source` (Identity, Dropout)."""
        value = self.values[source]
        self.values[name] = value
        self._aliases.setdefault(value.tensor, set()).add(name)

    def bind(self, name: str, index: int, layout: Layout) -> None:
        """Make the intermediate tensor `index` the TFLite tensor of ONNX tensor `name`."""
        self.values[name] = Value(index, layout)
        self._aliases[index] = {name}
        self.tensor(index).name = self.graph.unique_name(name)

    def constant(self, hint: str, value: ArrayLike, dtype: type = np.float32) -> int:
        return self.graph.constant(hint, value, dtype)

    def tensor(self, index: int) -> Tensor:
        return self.graph.tensors[index]

    def _new_tensor(self, name: str, shape: Sequence[int]) -> int:
        dims = tuple(int(d) for d in shape)
        signature = dims if BATCH in dims else None
        stored = tuple(1 if d == BATCH else d for d in dims)
        return self.graph.add_tensor(Tensor(self.graph.unique_name(name), stored, FLOAT, signature=signature))

    # --- data tensors in a layout -------------------------------------------------------

    def layout(self, name: str) -> Layout:
        return self.values[name].layout

    def data(self, name: str, layout: Layout | None = None) -> int:
        """The TFLite tensor of ONNX data tensor `name`, in `layout` (None: as it is).

        A change of layout is one RESHAPE when only size-1 axes move, else one TRANSPOSE;
        either is emitted once per tensor and layout.
        """
        value = self.values[name]
        if layout is None or layout == value.layout:
            return value.tensor
        key = (value.tensor, layout)
        if key not in self._converted:
            self._converted[key] = self._relayout(name, value, layout)
        return self._converted[key]

    def _relayout(self, name: str, value: Value, layout: Layout) -> int:
        shape = self.shape(name)
        pure = is_pure_reshape(shape, value.layout, layout)
        out = self._new_tensor(f"{name}/{'reshape' if pure else 'transpose'}", permute(shape, layout))
        if pure:
            self.reshape(value.tensor, out)
        else:
            perm = self.constant(f"{name}/perm", transpose_between(value.layout, layout), np.int32)
            self.op(BuiltinOperator.TRANSPOSE, [value.tensor, perm], [out], Options("TransposeOptions"))
        return out

    def reshape(self, source: int, target: int) -> Operator:
        """RESHAPE `source` to the (batch-free) shape signature of `target`."""
        t = self.tensor(target)
        new_shape = self.constant(f"{t.name}/shape", t.signature or t.shape, np.int32)
        return self.op(BuiltinOperator.RESHAPE, [source, new_shape], [target])

    # --- operators and fusion -----------------------------------------------------------

    def op(self, opcode: int, inputs: list[int], outputs: list[int], options: Options | None = None) -> Operator:
        return self.graph.add_operator(opcode, inputs, outputs, options)

    def fusable_producer(self, name: str) -> Operator | None:
        """The op that computed `name`, if this node is the only reader of its result.

        Only then may the current node fold itself into that op (an activation into its
        fused_activation_function, a BatchNormalization into its weights): nothing else,
        no graph output and no other alias of the tensor, sees the value before it.
        """
        value = self.values.get(name)
        if value is None or value.tensor in self.graph.inputs:
            return None
        names = self._aliases.get(value.tensor, set())
        if any(n in self.outputs for n in names) or sum(self.consumers.get(n, 0) for n in names) != 1:
            return None
        if any(key[0] == value.tensor for key in self._converted):
            return None
        return self.graph.producer(value.tensor)

    def fold_into(self, name: str, source: str) -> None:
        """The current node was folded into the producer of `source`: `name` is that tensor now."""
        value = self.values[source]
        self.values[name] = value
        aliases = self._aliases.setdefault(value.tensor, set())
        aliases.discard(source)  # its one reader, the current node, is used up
        aliases.add(name)
        self.tensor(value.tensor).name = self.graph.unique_name(name)
