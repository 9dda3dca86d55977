"""Static int8 quantization of an emitted TFLite graph (before it is serialised).

**Calibration**, as the TFLite converter does it: the float graph runs in LiteRT on the
calibration inputs with every tensor kept, and each activation's min/max (widened to
include 0) gives an asymmetric int8 scale and zero point.

**Quantized ops**: FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D with constant weights.
Their weights become int8, symmetric, one scale per output channel; their bias int32 with
scale input scale x weight scale; their input and output int8. Each reads its input
through a QUANTIZE and hands its output on through a DEQUANTIZE; between two quantized
ops the pair cancels and the int8 tensor passes straight on. Every other op stays float,
and so does every graph output: a tap is the DEQUANTIZEd (or never quantized) tensor.
The op that computes the frozen logits keeps float input and output and only its weights
become int8 ("hybrid": LiteRT quantizes the input on the fly), so the frozen logits,
which the adapters add to, are not rounded to 256 levels.

**Every CPU** (scheme `a8w8`, `s2conv.quantize.TFLITE_SCHEME`): the weights stay in -127..127,
as TFLite's int8 spec asks, and need not lose a bit as the ONNX segment's do. LiteRT's
XNNPACK kernels never add u8 x s8 products in a saturating int16: on x86 they widen int8
to int16 and multiply-add into int32 (SSE/AVX2/AVX-512), or with VNNI add 128 to the
activations and take it back out through the bias; on ARM64 the NEON "mlal" kernels add two
int8 x int8 products in int16, which -127..127 weights keep at most 2 x 128 x 127 =
32,512, and the SDOT/I8MM ones accumulate in int32. Measured: the CNN test segments give
the same outputs here (AVX-512 VNNI) and under `qemu-x86_64 -cpu Haswell` (AVX2).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterable
from dataclasses import replace

import numpy as np
import onnx
from s2rt.errors import ConversionError
from tflite.BuiltinOperator import BuiltinOperator

from s2conv.split import LOGITS_OUTPUT
from s2conv.tflite.compact import compact, drop_unused_tensors
from s2conv.tflite.emit import onnx_to_graph
from s2conv.tflite.ir import Graph, Operator, Quantization, Tensor
from s2conv.tflite.serialize import serialize

INT8_MIN, INT8_MAX = -128, 127
WEIGHT_MAX = 127  # symmetric weights use -127..127
CALIBRATION_BATCH = 256
# op -> the axis of its weight tensor that holds the output channels
WEIGHT_CHANNEL_AXIS = {
    BuiltinOperator.FULLY_CONNECTED: 0,  # [out, in]
    BuiltinOperator.CONV_2D: 0,  # [out, kh, kw, in]
    BuiltinOperator.DEPTHWISE_CONV_2D: 3,  # [1, kh, kw, out]
}

Range = tuple[float, float]


def quantized_tflite(segment: onnx.ModelProto, calibration: np.ndarray) -> bytes:
    """The int8 .tflite file of the float ONNX frozen segment; the frozen logits stay float."""
    return serialize(compact(quantize_graph(onnx_to_graph(segment), calibration, {LOGITS_OUTPUT})))


def quantize_graph(graph: Graph, calibration: np.ndarray, float_outputs: Collection[str] = ()) -> Graph:
    """`graph` with its weight-carrying ops in int8, calibrated on `calibration` (N, *input shape).

    An op whose output is one of the graph outputs named in `float_outputs` gets int8
    weights only (hybrid). Raises `ConversionError` if LiteRT cannot run the float graph.
    """
    ops = [op for op in graph.operators if _quantizable(graph, op)]
    if not ops:
        return graph
    keep_float = {index for index in graph.outputs if graph.tensors[index].name in float_outputs}
    hybrid = {id(op) for op in ops if op.outputs[0] in keep_float}
    static = [op for op in ops if id(op) not in hybrid]
    ranges = calibrate(graph, calibration, {t for op in static for t in (op.inputs[0], op.outputs[0])})
    int8_of: dict[int, int] = {}  # float tensor -> the int8 tensor holding the same values
    static_ids = {id(op) for op in static}
    operators: list[Operator] = []
    for op in graph.operators:
        if id(op) in static_ids:
            operators.extend(_static(graph, op, ranges, int8_of))
            continue
        if id(op) in hybrid:
            _quantize_weights(graph, op)  # hybrid: input, bias and output stay float
        operators.append(op)
    graph.operators = _without_unread_dequantize(graph, operators)
    return drop_unused_tensors(graph)  # the float weights that int8 ones replaced


def _quantizable(graph: Graph, op: Operator) -> bool:
    if op.opcode not in WEIGHT_CHANNEL_AXIS or len(op.inputs) < 3:
        return False
    x, w, b = (graph.tensors[i] if i >= 0 else None for i in op.inputs[:3])
    return (
        x is not None
        and not x.is_constant
        and x.dtype == np.float32
        and w is not None
        and w.is_constant
        and w.dtype == np.float32
        and (b is None or (b.is_constant and b.dtype == np.float32))
    )


# -- calibration ---------------------------------------------------------------------------


def calibrate(graph: Graph, x: np.ndarray, tensors: Iterable[int]) -> dict[int, Range]:
    """(min, max) of each tensor over the calibration inputs, from the float graph in LiteRT."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as e:
        raise ConversionError(
            f"an int8 TFLite segment is calibrated in LiteRT, which is not installed ({e}): pip install ai-edge-litert"
        ) from e
    wanted = sorted(set(tensors))
    low, high = np.full(len(wanted), np.inf), np.full(len(wanted), -np.inf)
    try:
        with warnings.catch_warnings():  # "preserve_all_tensors is meant for debugging": it is what calibration needs
            warnings.simplefilter("ignore", UserWarning)
            interpreter = Interpreter(
                model_content=serialize(graph),
                num_threads=1,
                experimental_preserve_all_tensors=True,
                # no delegate: XNNPACK would compute fused ops without keeping the intermediate tensors
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            )
        input_index = graph.inputs[0]
        shape = None
        for start in range(0, len(x), CALIBRATION_BATCH):
            chunk = np.ascontiguousarray(x[start : start + CALIBRATION_BATCH], dtype=np.float32)
            if chunk.shape != shape:
                interpreter.resize_tensor_input(input_index, list(chunk.shape), strict=True)
                interpreter.allocate_tensors()
                shape = chunk.shape
            interpreter.set_tensor(input_index, chunk)
            interpreter.invoke()
            for i, t in enumerate(wanted):
                value = interpreter.get_tensor(t)
                low[i], high[i] = min(low[i], float(value.min())), max(high[i], float(value.max()))
    except (ValueError, RuntimeError) as e:
        raise ConversionError(f"LiteRT cannot run the float TFLite segment on the calibration inputs: {e}") from e
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ConversionError("calibration data: the float TFLite segment computes NaN or Inf on some calibration input")
    return {t: (float(lo), float(hi)) for t, lo, hi in zip(wanted, low, high)}


def activation_quantization(value_range: Range) -> Quantization:
    """Asymmetric int8: the range widened to include 0 maps onto -128..127, 0 exactly."""
    lo, hi = min(value_range[0], 0.0), max(value_range[1], 0.0)
    if hi == lo:
        return Quantization((1.0,), (0,))
    scale = (hi - lo) / (INT8_MAX - INT8_MIN)
    zero_point = int(np.clip(round(INT8_MIN - lo / scale), INT8_MIN, INT8_MAX))
    return Quantization((scale,), (zero_point,))


def weight_quantization(w: np.ndarray, axis: int) -> tuple[np.ndarray, Quantization]:
    """Symmetric per-channel int8 weights along `axis`; an all-zero channel gets scale 1."""
    peak = np.max(np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)), axis=1).astype(np.float64)
    scale = np.where(peak > 0, peak / WEIGHT_MAX, 1.0)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
    return q, Quantization(tuple(float(s) for s in scale), (0,) * len(scale), axis)


# -- rewriting -----------------------------------------------------------------------------


def _static(graph: Graph, op: Operator, ranges: dict[int, Range], int8_of: dict[int, int]) -> list[Operator]:
    """[QUANTIZE of the input unless it exists], the op in int8, DEQUANTIZE of its output."""
    emitted = []
    x, y = op.inputs[0], op.outputs[0]
    if x not in int8_of:
        int8_of[x] = _int8_twin(graph, x, activation_quantization(ranges[x]), "quantized")
        emitted.append(Operator(BuiltinOperator.QUANTIZE, [x], [int8_of[x]]))
    x_scale = _scale(graph.tensors[int8_of[x]])
    weight_scales = _quantize_weights(graph, op)
    if op.inputs[2] >= 0:
        _quantize_bias(graph, op.inputs[2], x_scale * np.asarray(weight_scales))
    y_int8 = _int8_twin(graph, y, activation_quantization(ranges[y]), "int8")
    emitted.append(replace(op, inputs=[int8_of[x], *op.inputs[1:]], outputs=[y_int8, *op.outputs[1:]]))
    emitted.append(Operator(BuiltinOperator.DEQUANTIZE, [y_int8], [y]))
    int8_of[y] = y_int8
    return emitted


def _quantize_weights(graph: Graph, op: Operator) -> tuple[float, ...]:
    tensor = graph.tensors[op.inputs[1]]
    assert tensor.data is not None
    q, quantization = weight_quantization(tensor.data, WEIGHT_CHANNEL_AXIS[op.opcode])
    op.inputs[1] = graph.add_tensor(Tensor(tensor.name, tensor.shape, q.dtype, data=q, quantization=quantization))
    return quantization.scale


def _quantize_bias(graph: Graph, index: int, scale: np.ndarray) -> None:
    tensor = graph.tensors[index]
    assert tensor.data is not None
    q = np.clip(np.rint(tensor.data / scale), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    tensor.data, tensor.dtype = q, q.dtype
    tensor.quantization = Quantization(tuple(float(s) for s in scale), (0,) * len(scale), 0)


def _int8_twin(graph: Graph, index: int, quantization: Quantization, suffix: str) -> int:
    source = graph.tensors[index]
    twin = Tensor(graph.unique_name(f"{source.name}/{suffix}"), source.shape, np.dtype(np.int8), signature=source.signature)
    twin.quantization = quantization
    return graph.add_tensor(twin)


def _scale(tensor: Tensor) -> float:
    assert tensor.quantization is not None
    return tensor.quantization.scale[0]


def _without_unread_dequantize(graph: Graph, operators: list[Operator]) -> list[Operator]:
    """Drop DEQUANTIZE ops whose float result nothing reads and no graph output is."""
    read = {i for op in operators for i in op.inputs} | set(graph.outputs)
    return [op for op in operators if not (op.opcode == BuiltinOperator.DEQUANTIZE and op.outputs[0] not in read)]
