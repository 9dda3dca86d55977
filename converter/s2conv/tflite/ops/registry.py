"""The table from ONNX op type to its TFLite handler (tinygrad's `get_onnx_ops` style).

A handler is a function named after the ONNX op, called as `Op(ctx, node, **attributes)`
with the node's ONNX attributes as keyword arguments, each defaulting to the ONNX
default; an attribute the handler does not declare is one it does not support.
`data_inputs` lists the input positions that may carry model data (None: any of them);
every other input must be a constant, and the emitter does not follow it when it works
out which nodes the outputs need (a Reshape's shape input, say).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from s2rt.errors import UnsupportedGraphError

from s2conv.graph import OnnxNode
from s2conv.tflite.context import EmitContext

Handler = Callable[..., None]


@dataclass(frozen=True)
class OpSpec:
    handler: Handler
    data_inputs: tuple[int, ...] | None
    attributes: frozenset[str]

    def carries_data(self, position: int) -> bool:
        return self.data_inputs is None or position in self.data_inputs

    def emit(self, ctx: EmitContext, node: OnnxNode) -> None:
        unknown = sorted(set(node.attrs) - self.attributes)
        if unknown:
            raise UnsupportedGraphError(
                f"{node.label}: attribute {', '.join(unknown)} is not supported by the TFLite emitter "
                f"(it handles {', '.join(sorted(self.attributes)) or 'no attributes'})"
            )
        self.handler(ctx, node, **{k: _plain(v) for k, v in node.attrs.items()})


HANDLERS: dict[str, OpSpec] = {}


def onnx_op(data_inputs: tuple[int, ...] | None = (0,)) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of the ONNX op it is named after."""

    def register(handler: Handler) -> Handler:
        parameters = list(inspect.signature(handler).parameters.values())[2:]
        HANDLERS[handler.__name__] = OpSpec(handler, data_inputs, frozenset(p.name for p in parameters))
        return handler

    return register


def supported_ops() -> tuple[str, ...]:
    return tuple(sorted(HANDLERS))


def _plain(value: Any) -> Any:
    """ONNX attribute values as handlers want them: str for bytes, tuple for lists."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return tuple(v.decode("utf-8") if isinstance(v, bytes) else v for v in value)
    return value
