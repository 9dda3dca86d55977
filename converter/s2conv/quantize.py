"""Static post-training int8 quantization of the frozen ONNX segment.

onnxruntime.quantization in QDQ form: int8 weights with one scale per output channel,
int8 activations whose scales come from the calibration inputs (min/max), float biases.

The weights use 7 bits of the int8 (`reduce_range`: symmetric, -64..64), scheme `ONNX_SCHEME`.
On x86, onnxruntime turns int8 activations into uint8 (+128) and multiplies them with the
int8 weights; without VNNI (AVX2, AVX-512 without VNNI) that kernel adds each
pair of u8 x s8 products in a saturating int16 (VPMADDUBSW). With 8-bit weights a pair
reaches 2 x 255 x 127 = 64,770 and saturates: the same bundle that is right on a VNNI CPU
is wrong on an AVX2-only one. With |w| <= 64 a pair is at most 2 x 255 x 64 = 32,640 <=
32,767, so every CPU computes the same exact int32 sums (`worst_u8s8_pair` checks it on a
segment; converter/README.md has the kernel-by-kernel reasoning, ARM64 included).

Only weight-carrying ops are quantized (`QUANTIZED_OPS`); everything else stays float.
Only the int8 weights are stored (QDQ dequantizes them at load time), which is what
shrinks the bundle, and the exporter's per-node debug metadata is dropped. The float
constants that stay (biases, per-channel weight scales, an input normalisation) are
stored as float16 behind a Cast to float32 (`_store_float16`): their rounding error,
at most 2^-11 relative, is far below the int8 steps around them, and onnxruntime folds
the Cast into a float32 constant when it loads the model. onnxruntime runs the result
as is, so the device needs nothing new.

The segment's outputs stay float: a tap (and its pooling, for a feature map) reads the
float tensor just before its QuantizeLinear (the value the next layer is fed, before
rounding to int8), and the frozen logits are not quantized at all (they are added to
the adapters' output); the layer computing them is weight-only int8.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from s2rt.errors import ConversionError

from s2conv.calibrate import batches
from s2conv.split import LOGITS_OUTPUT, TAP_OUTPUT_PREFIX

log = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("none", "int8")
# The int8 schemes: what each name means. A bundle records its segments' schemes in its
# provenance options ("int8_scheme": {"onnx": ..., "tflite": ...}); `s2conv inspect` shows them.
INT8_SCHEMES = {
    "a8w7": "int8 activations per tensor, int8 weights per channel in -64..64 (7 bits): "
    "no pair of u8 x s8 products overflows int16 on any CPU (x86 with or without VNNI, ARM64)",
    "a8w8": "int8 activations per tensor, int8 weights per channel in -127..127 (TFLite's int8 spec)",
}
ONNX_SCHEME = "a8w7"
TFLITE_SCHEME = "a8w8"  # XNNPACK and LiteRT widen int8 to int16 before they add products (converter/README.md)
SEGMENT_SCHEMES = {"onnx": ONNX_SCHEME, "tflite": TFLITE_SCHEME}
INT16_MAX = 32767
U8_MAX = 255
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
FLOAT16_MIN_SIZE = 16
FLOAT16_MAX = float(np.finfo(np.float16).max)


def int8_schemes(backends: tuple[str, ...]) -> dict[str, str]:
    """The int8 scheme of each segment backend (lower-case names) of an int8 bundle."""
    return {backend: SEGMENT_SCHEMES[backend] for backend in backends}


def quantize_segment(segment: onnx.ModelProto, calibration: np.ndarray) -> onnx.ModelProto:
    """The int8 (QDQ) version of `segment`, calibrated on `calibration` (N, *input shape).

    The input model is left untouched. Raises `ConversionError` if onnxruntime cannot
    quantize the segment.
    """
    # Imported here: onnxruntime.quantization is slow to import and only this option needs it.
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    source = onnx.ModelProto()
    source.CopyFrom(segment)  # quantize_static rewrites the model it is given
    _export_outputs_through_identities(source.graph)
    input_name = segment.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="s2conv-quant-") as tmp, _quiet_quantizer():
        path = Path(tmp) / "segment.int8.onnx"
        try:
            quantize_static(
                source,
                path,
                _Reader(input_name, calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True,
                reduce_range=True,  # 7-bit weights: no u8 x s8 pair saturates int16 (module docstring)
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"QuantizeBias": False},
            )
        except Exception as e:  # onnxruntime.quantization raises untyped errors
            raise ConversionError(f"onnxruntime.quantization cannot quantize the frozen segment: {e}") from e
        quantized = onnx.load(path)
    _keep_outputs_float(quantized, _float_outputs(segment))
    _logits_layer_reads_float(quantized.graph)
    _prune(quantized.graph)
    _strip_debug_info(quantized.graph)
    _store_float16(quantized.graph)
    _check(quantized, segment)
    return quantized


def quantized_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The int8 weight of every quantized op (read through a DequantizeLinear), by op name."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    constants = {t.name: t for t in graph.initializer}
    weights = {}
    for node in graph.node:
        dq = producer.get(node.input[1]) if node.op_type in QUANTIZED_OPS and len(node.input) > 1 else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in constants:
            w = numpy_helper.to_array(constants[dq.input[0]])
            if w.dtype == np.int8:
                weights[node.name or node.output[0]] = w
    return weights


def worst_u8s8_pair(model: onnx.ModelProto) -> int:
    """The largest |a0*w0 + a1*w1| that a u8 x s8 kernel can meet in `model`'s int8 ops, for
    any uint8 activations a and any two weights w of one op: 255 x (the two largest |w|).
    Above 32,767 the kernels of x86 CPUs without VNNI saturate their int16 pair sums; a
    segment of scheme `ONNX_SCHEME` is at most 2 x 255 x 64 = 32,640."""
    worst = 0
    for w in quantized_weights(model).values():
        largest = np.sort(np.abs(w.astype(np.int32)).ravel())[-2:]
        worst = max(worst, int(largest.sum()) * U8_MAX)
    return worst


def _export_outputs_through_identities(graph: onnx.GraphProto) -> None:
    """Give every output that a computing node writes directly (as in a compacted segment)
    an Identity of its own, as `split` does, so that quantization never rounds an output."""
    produced = {out: node for node in graph.node for out in node.output}
    for output in graph.output:
        node = produced.get(output.name)
        if node is None or node.op_type in ("Identity", "Cast"):
            continue
        value = f"{output.name}.value"
        for reader in graph.node:
            reader.input[:] = [value if name == output.name else name for name in reader.input]
        node.output[:] = [value if name == output.name else name for name in node.output]
        graph.node.append(helper.make_node("Identity", [value], [output.name]))


def _float_outputs(segment: onnx.ModelProto) -> set[str]:
    return {o.name for o in segment.graph.output if o.name.startswith(TAP_OUTPUT_PREFIX) or o.name == LOGITS_OUTPUT}


def _keep_outputs_float(model: onnx.ModelProto, outputs: set[str]) -> None:
    """Make the nodes that only export outputs (an Identity, a Cast, a tap's pooling) read
    the float tensor in front of a QuantizeLinear ▸ DequantizeLinear round trip instead
    of the round trip's result."""
    nodes = model.graph.node
    producer = {out: node for node in nodes for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    exporters = {id(producer[o]): producer[o] for o in outputs if o in producer}
    grown = True
    while grown:  # add the nodes whose results only exporters read
        grown = False
        for node in list(exporters.values()):
            for name in node.input:
                source = producer.get(name)
                if source is None or id(source) in exporters or source.op_type in (*QDQ_OPS, *QUANTIZED_OPS):
                    continue
                if all(id(r) in exporters for out in source.output for r in readers.get(out, [])):
                    exporters[id(source)] = source
                    grown = True
    for node in exporters.values():
        _read_before_round_trips(node, producer)


def _logits_layer_reads_float(graph: onnx.GraphProto) -> None:
    """The layer that computes the frozen logits keeps its int8 weights but reads float
    activations: its output stays float, so onnxruntime runs it as a float op anyway and a
    QuantizeLinear ▸ DequantizeLinear round trip in front of it would only add rounding."""
    producer = {out: node for node in graph.node for out in node.output}
    exporter = producer.get(LOGITS_OUTPUT)
    layer = producer.get(exporter.input[0]) if exporter is not None and exporter.input else None
    if layer is not None and layer.op_type in QUANTIZED_OPS:
        _read_before_round_trips(layer, producer)


def _read_before_round_trips(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto]) -> None:
    """Rewire each input of `node` that is a QuantizeLinear ▸ DequantizeLinear round trip's
    result to the float tensor the round trip started from (int8 constants stay as they are)."""
    for i, name in enumerate(node.input):
        dq = producer.get(name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[i] = q.input[0]


def _prune(graph: onnx.GraphProto) -> None:
    """Drop the Q/DQ nodes whose outputs nothing reads (the logits' round trip), then unread initialisers."""
    while True:
        read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in QDQ_OPS and not read.intersection(n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input}
    for init in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(init)


def _strip_debug_info(graph: onnx.GraphProto) -> None:
    """Drop per-node doc strings and metadata: exporters put debug information there (torch's
    dynamo exporter: the Python stack trace and fx node, about 0.7 KB a node), which the
    device never reads and which would otherwise outweigh a small model's int8 weights."""
    for node in graph.node:
        node.doc_string = ""
        del node.metadata_props[:]


def _store_float16(graph: onnx.GraphProto) -> None:
    """Store every float32 constant of at least `FLOAT16_MIN_SIZE` values as float16, read
    through a Cast, unless float16 cannot hold it (out of range, or a rounding error above
    2^-10 of its largest magnitude). Smaller ones stay: the Cast would cost more than it saves."""
    readers = {name for node in graph.node for name in node.input}
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or init.name not in readers:
            continue
        values = numpy_helper.to_array(init)
        if values.size < FLOAT16_MIN_SIZE or not np.all(np.isfinite(values)):
            continue
        largest = float(np.max(np.abs(values)))
        if largest > FLOAT16_MAX:
            continue
        halves = values.astype(np.float16)
        if float(np.max(np.abs(halves.astype(np.float32) - values))) > largest * 2.0**-10:
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(halves, f"{name}.float16"))
        casts.append(helper.make_node("Cast", [init.name], [name], to=onnx.TensorProto.FLOAT))
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)


def _check(quantized: onnx.ModelProto, source: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(quantized)
    except onnx.checker.ValidationError as e:
        raise ConversionError(f"the int8 frozen segment fails the ONNX checker: {' '.join(str(e).split())}") from e
    want = [(o.name, o.type.tensor_type.elem_type) for o in source.graph.output]
    have = [(o.name, o.type.tensor_type.elem_type) for o in quantized.graph.output]
    if have != want:
        raise ConversionError(f"the int8 frozen segment has outputs {have}, expected {want}")


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an in-memory array."""

    def __init__(self, input_name: str, x: np.ndarray) -> None:
        self._feeds = iter([{input_name: chunk} for chunk in batches(x)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger; keep it at debug level."""

    def demote(record: logging.LogRecord) -> bool:
        if "onnxruntime" in record.pathname and record.levelno < logging.ERROR:
            log.debug("onnxruntime.quantization: %s", record.getMessage())
            return False
        return True

    root = logging.getLogger()
    root.addFilter(demote)
    try:
        yield
    finally:
        root.removeFilter(demote)
