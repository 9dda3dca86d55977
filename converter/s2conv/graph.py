"""The converter's read-only view of an ONNX graph: small frozen dataclasses.

After tinygrad's `OnnxNode`/`OnnxValue`: a `GraphView` is built once from the
shape-inferred model and answers the questions the tap finder and the splitter ask
(who produces this tensor, who consumes it, is it a constant, what is its shape).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import TensorProto, helper

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})
# Ops whose output depends only on the *shape* of their input, not on its values:
# to the tap finder they are constants (torch's Shape → Gather → Reshape idiom).
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class OnnxValue:
    """A tensor of the graph: name, element type (0 = unknown), full shape incl. batch."""

    name: str
    elem_type: int
    shape: tuple[Dim, ...] | None  # None: rank unknown
    constant: bool

    @property
    def is_float(self) -> bool:
        return self.elem_type in FLOAT_TYPES

    @property
    def type_name(self) -> str:
        if self.elem_type == 0:
            return "unknown type"
        return helper.tensor_dtype_to_string(self.elem_type).removeprefix("TensorProto.")

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """The per-sample shape (batch dimension dropped) if every dim is a fixed size;
        None for an unknown shape, or a rank below 2 (no dimension besides the batch)."""
        if self.shape is None or len(self.shape) < 2:
            return None
        dims = self.shape[1:]
        if not all(isinstance(d, int) and d > 0 for d in dims):
            return None
        return tuple(d for d in dims if isinstance(d, int))

    def describe_shape(self) -> str:
        if self.shape is None:
            return "unknown shape"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class OnnxNode:
    """A node: its position in the (topologically sorted) graph, op and tensor names."""

    index: int
    name: str
    op: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]

    @property
    def label(self) -> str:
        """How error messages name the node: `node 'fc1' (Gemm)` or `node #3 (Gemm)`."""
        return f"node {self.name!r} ({self.op})" if self.name else f"node #{self.index} ({self.op})"

    @property
    def display_name(self) -> str:
        return self.name or f"{self.op}#{self.index}"

    @property
    def is_standard(self) -> bool:
        return self.domain in DEFAULT_DOMAINS

    @property
    def has_subgraph(self) -> bool:
        return any(isinstance(v, onnx.GraphProto) or _is_graph_list(v) for v in self.attrs.values())


@dataclass(frozen=True, eq=False)
class GraphView:
    input_name: str
    output_name: str
    opset: int  # of the default ONNX domain
    nodes: tuple[OnnxNode, ...]
    values: Mapping[str, OnnxValue]
    producers: Mapping[str, OnnxNode]
    consumers: Mapping[str, tuple[OnnxNode, ...]]

    def value(self, name: str) -> OnnxValue:
        return self.values.get(name) or OnnxValue(name, 0, None, constant=False)

    def producer(self, name: str) -> OnnxNode | None:
        return self.producers.get(name)

    def consumers_of(self, name: str) -> tuple[OnnxNode, ...]:
        return self.consumers.get(name, ())

    def is_constant(self, name: str) -> bool:
        return self.value(name).constant

    def data_inputs(self, node: OnnxNode) -> tuple[str, ...]:
        """The node's inputs that depend on the model input's values."""
        return tuple(name for name in node.inputs if name and not self.is_constant(name))

    def tensors_from_input(self) -> tuple[str, ...]:
        """Every tensor that depends on the input's values, the input first, in topological order."""
        produced = (name for node in self.nodes for name in node.outputs if name)
        return (self.input_name, *(name for name in produced if not self.is_constant(name)))


def view_graph(model: onnx.ModelProto, input_name: str, output_name: str) -> GraphView:
    """Build the view of a shape-inferred model with one input and one output."""
    graph = model.graph
    nodes = tuple(node_view(i, n) for i, n in enumerate(graph.node))
    constants = _constant_names(graph, nodes)
    return GraphView(
        input_name=input_name,
        output_name=output_name,
        opset=_default_opset(model),
        nodes=nodes,
        values=_values(graph, constants),
        producers={out: node for node in nodes for out in node.outputs if out},
        consumers=_consumers(nodes),
    )


def node_view(index: int, node: onnx.NodeProto) -> OnnxNode:
    return OnnxNode(
        index=index,
        name=node.name,
        op=node.op_type,
        domain=node.domain,
        inputs=tuple(node.input),
        outputs=tuple(node.output),
        attrs={a.name: helper.get_attribute_value(a) for a in node.attribute},
    )


def _constant_names(graph: onnx.GraphProto, nodes: tuple[OnnxNode, ...]) -> frozenset[str]:
    """Initialisers, and every output of a node whose inputs are all constant (or
    that only reads shapes)."""
    constants = {init.name for init in graph.initializer}
    constants |= {init.values.name for init in graph.sparse_initializer}
    for node in nodes:
        if node.has_subgraph:
            continue  # a subgraph may read the input from the outer scope
        if node.op in SHAPE_ONLY_OPS or all(name in constants for name in node.inputs if name):
            constants.update(name for name in node.outputs if name)
    return frozenset(constants)


def _values(graph: onnx.GraphProto, constants: frozenset[str]) -> dict[str, OnnxValue]:
    values = {init.name: _initialiser_value(init) for init in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.name not in values:
            values[info.name] = _value_from_info(info, info.name in constants)
    for name in constants - values.keys():
        values[name] = OnnxValue(name, 0, None, constant=True)
    return values


def _initialiser_value(init: onnx.TensorProto) -> OnnxValue:
    return OnnxValue(init.name, init.data_type, tuple(int(d) for d in init.dims), constant=True)


def _value_from_info(info: onnx.ValueInfoProto, constant: bool) -> OnnxValue:
    if not info.type.HasField("tensor_type"):
        return OnnxValue(info.name, 0, None, constant)
    tensor = info.type.tensor_type
    shape = tuple(_dim(d) for d in tensor.shape.dim) if tensor.HasField("shape") else None
    return OnnxValue(info.name, tensor.elem_type, shape, constant)


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    if dim.HasField("dim_param"):
        return dim.dim_param
    return None


def _is_graph_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], onnx.GraphProto)


def _consumers(nodes: tuple[OnnxNode, ...]) -> dict[str, tuple[OnnxNode, ...]]:
    consumers: dict[str, list[OnnxNode]] = {}
    for node in nodes:
        for name in dict.fromkeys(node.inputs):
            if name:
                consumers.setdefault(name, []).append(node)
    return {name: tuple(users) for name, users in consumers.items()}


def _default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in DEFAULT_DOMAINS:
            return int(opset.version)
    return onnx.defs.onnx_opset_version()
