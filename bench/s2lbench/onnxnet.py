"""An ONNX model as a torch module with the same weights, for the PyTorch/PEFT baselines.

Layers (`Gemm`, `MatMul` with a constant weight, `Conv`) become real `nn.Linear` /
`nn.Conv2d` modules named after their weight (`fc1.weight` -> `fc1`), so PEFT can wrap
them by name; every other constant is a frozen buffer. The graph runs node by node
through a registry of one small function per op, with ONNX's attribute names and defaults.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as tf
from onnx import helper, numpy_helper
from torch import nn

Tensor = torch.Tensor
OpFn = Callable[[list[Tensor], dict[str, Any]], Tensor]
LAYER_OPS = ("Gemm", "MatMul", "Conv")


class UnsupportedModelError(ValueError):
    """The ONNX graph uses an op or a form the torch mirror does not handle."""


@dataclass(frozen=True)
class Step:
    op: str
    inputs: tuple[str, ...]
    output: str
    attrs: dict[str, Any]
    layer: str | None  # the module that runs this step (a layer), else None


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    return lambda xs, _: fn(xs[0], xs[1])


def _pads(attrs: dict[str, Any], rank: int) -> list[int]:
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedModelError(f"auto_pad={attrs['auto_pad']!r} is not supported; export with explicit pads")
    return pads


def _pool(kind: str) -> OpFn:
    def run(xs: list[Tensor], attrs: dict[str, Any]) -> Tensor:
        kernel = list(attrs["kernel_shape"])
        pads = _pads(attrs, len(kernel))
        x = tf.pad(
            xs[0],
            [p for i in reversed(range(len(kernel))) for p in (pads[i], pads[i + len(kernel)])],
            value=-np.inf if kind == "max" else 0.0,
        )
        stride = list(attrs.get("strides", [1] * len(kernel)))
        return tf.max_pool2d(x, kernel, stride) if kind == "max" else tf.avg_pool2d(x, kernel, stride)

    return run


def _reshape(xs: list[Tensor], attrs: dict[str, Any]) -> Tensor:
    shape = [int(s) for s in xs[1].tolist()]
    shape = [xs[0].shape[i] if s == 0 and not attrs.get("allowzero", 0) else s for i, s in enumerate(shape)]
    return xs[0].reshape(shape)


def _clip(xs: list[Tensor], attrs: dict[str, Any]) -> Tensor:
    low = xs[1] if len(xs) > 1 and xs[1] is not None else attrs.get("min")
    high = xs[2] if len(xs) > 2 and xs[2] is not None else attrs.get("max")
    return torch.clamp(xs[0], None if low is None else float(low), None if high is None else float(high))


def _batch_norm(xs: list[Tensor], attrs: dict[str, Any]) -> Tensor:
    x, scale, bias, mean, var = xs
    return tf.batch_norm(x, mean, var, scale, bias, training=False, eps=attrs.get("epsilon", 1e-5))


OPS: dict[str, OpFn] = {
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div),
    "Relu": lambda xs, _: torch.relu(xs[0]),
    "Sigmoid": lambda xs, _: torch.sigmoid(xs[0]),
    "HardSigmoid": lambda xs, a: torch.clamp(a.get("alpha", 0.2) * xs[0] + a.get("beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda xs, _: tf.hardswish(xs[0]),
    "Tanh": lambda xs, _: torch.tanh(xs[0]),
    "Clip": _clip,
    "Identity": lambda xs, _: xs[0],
    "Dropout": lambda xs, _: xs[0],
    "Flatten": lambda xs, a: xs[0].flatten(a.get("axis", 1)) if a.get("axis", 1) > 0 else xs[0].reshape(1, -1),
    "Reshape": _reshape,
    "GlobalAveragePool": lambda xs, _: xs[0].mean(dim=tuple(range(2, xs[0].dim())), keepdim=True),
    "ReduceMean": lambda xs, a: xs[0].mean(
        dim=tuple(int(d) for d in (xs[1].tolist() if len(xs) > 1 else a["axes"])), keepdim=bool(a.get("keepdims", 1))
    ),
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "BatchNormalization": _batch_norm,
    "Softmax": lambda xs, a: torch.softmax(xs[0], dim=a.get("axis", -1)),
    "Transpose": lambda xs, a: xs[0].permute(*a["perm"]),
    "Concat": lambda xs, a: torch.cat(xs, dim=a["axis"]),
}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _module_name(weight_name: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", weight_name.removesuffix(".weight").removesuffix("_weight")) or "layer"
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


class OnnxNet(nn.Module):
    """The ONNX model's forward pass in torch; `layers` holds the trainable layers in graph order."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        graph = model.graph
        consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
        inputs = [i.name for i in graph.input if i.name not in consts]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise UnsupportedModelError(f"expected one input and one output, found inputs {inputs} and {len(graph.output)} outputs")
        self.input_name, self.output_name = inputs[0], graph.output[0].name
        self.layers = nn.ModuleDict()
        self._const_attr: dict[str, str] = {}
        self.steps: list[Step] = []
        for node in graph.node:
            if node.op_type == "Constant":
                continue
            if node.op_type in LAYER_OPS and len(node.input) > 1 and node.input[1] in consts:
                self.steps.append(self._add_layer(node, consts))
            elif node.op_type in OPS:
                for name in node.input:
                    if name in consts:
                        self._register_const(name, consts[name])
                self.steps.append(Step(node.op_type, tuple(node.input), node.output[0], _attrs(node), None))
            else:
                raise UnsupportedModelError(f"node {node.name!r}: op {node.op_type} is not supported; known: {', '.join(sorted(OPS))}")

    def _register_const(self, name: str, value: np.ndarray) -> None:
        if name not in self._const_attr:
            attr = f"const_{len(self._const_attr)}"
            self.register_buffer(attr, torch.from_numpy(np.array(value)))
            self._const_attr[name] = attr

    def _add_layer(self, node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> Step:
        attrs = _attrs(node)
        weight = consts[node.input[1]].astype(np.float32)
        bias = consts[node.input[2]].astype(np.float32) if len(node.input) > 2 and node.input[2] else None
        name = _module_name(node.input[1], set(self.layers))
        if node.op_type == "Conv":
            layer: nn.Module = _conv(node, attrs, weight, bias)
        else:
            if node.op_type == "Gemm" and (attrs.get("transA", 0) or bias is not None and bias.ndim > 1):
                raise UnsupportedModelError(f"node {node.name!r}: Gemm with transA=1 or a 2-D bias is not supported")
            w = weight if node.op_type == "Gemm" and attrs.get("transB", 0) else weight.T
            w = w * attrs.get("alpha", 1.0)
            b = None if bias is None else bias * attrs.get("beta", 1.0)
            layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
                if b is not None:
                    layer.bias.copy_(torch.from_numpy(b))
        self.layers[name] = layer
        return Step(node.op_type, (node.input[0],), node.output[0], attrs, name)

    def forward(self, x: Tensor) -> Tensor:
        env: dict[str, Tensor] = {self.input_name: x}
        for step in self.steps:
            if step.layer is not None:
                env[step.output] = self.layers[step.layer](env[step.inputs[0]])
                continue
            args = [self._value(name, env) for name in step.inputs]
            env[step.output] = OPS[step.op](args, step.attrs)
        return env[self.output_name]

    def _value(self, name: str, env: dict[str, Tensor]) -> Any:
        if not name:
            return None
        attr = self._const_attr.get(name)
        return getattr(self, attr) if attr is not None else env[name]

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)


def _conv(node: onnx.NodeProto, attrs: dict[str, Any], weight: np.ndarray, bias: np.ndarray | None) -> nn.Conv2d:
    if weight.ndim != 4:
        raise UnsupportedModelError(f"node {node.name!r}: only 2-D convolutions are supported, weight shape {weight.shape}")
    pads = _pads(attrs, 2)
    if pads[:2] != pads[2:]:
        raise UnsupportedModelError(f"node {node.name!r}: asymmetric pads {pads} are not supported")
    groups = int(attrs.get("group", 1))
    conv = nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=tuple(attrs.get("strides", (1, 1))),
        padding=(pads[0], pads[1]),
        dilation=tuple(attrs.get("dilations", (1, 1))),
        groups=groups,
        bias=bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight))
        if bias is not None and conv.bias is not None:
            conv.bias.copy_(torch.from_numpy(bias))
    return conv


def load_onnx_net(path: str) -> OnnxNet:
    return OnnxNet(onnx.load(path))
