"""tflite.compact and the sharing serialiser: the TFLite segments of the five reference models,
float and int8, get smaller and compute bit-identical outputs in LiteRT (with its default
XNNPACK delegate, as the runtime runs them, and on the builtin kernels alone)."""

from __future__ import annotations

import functools
import importlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from s2conv.analyse import find_taps, input_signature
from s2conv.graph import view_graph
from s2conv.load import load_model
from s2conv.split import LOGITS_OUTPUT, extract_segment, segment_outputs
from s2conv.tflite import onnx_to_tflite
from s2conv.tflite.compact import compact, drop_unused_tensors, share_constants
from s2conv.tflite.emit import onnx_to_graph
from s2conv.tflite.ir import Graph, Quantization, Tensor
from s2conv.tflite.quantize import quantize_graph, quantized_tflite
from s2conv.tflite.serialize import serialize
from s2conv.version import PRODUCER, __version__
from tflite.BuiltinOperator import BuiltinOperator

MODELS = Path(__file__).resolve().parents[2] / "models"
REFERENCE = {"har_mlp": "har", "digits_mlp": "digits", "fan_mlp": "fan", "digits_cnn": "digits", "mnist_cnn": "mnist"}
RESOLVERS = (OpResolverType.AUTO, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
SAMPLES = 256
TFLiteModel = importlib.import_module("tflite.Model").Model  # the package's __init__ shadows submodules
# The model analyzer behind tf.lite.experimental.Analyzer: it runs the TFLite flatbuffer verifier first.
analyzer = importlib.import_module("ai_edge_litert._pywrap_analyzer_wrapper")


class Reference:
    """A reference model's float frozen segment, cut as `s2conv` cuts it, and its data."""

    def __init__(self, name: str) -> None:
        loaded = load_model(MODELS / f"{name}.onnx")
        view = view_graph(loaded.model, loaded.input_name, loaded.output_name)
        self.segment = extract_segment(loaded.model, input_signature(view), segment_outputs(find_taps(view)))
        shape = [d.dim_value for d in self.segment.graph.input[0].type.tensor_type.shape.dim[1:]]
        data = {split: np.load(MODELS / "data" / f"{REFERENCE[name]}_{split}.npz")["x"] for split in ("ft", "test")}
        self.calibration = data["ft"][:SAMPLES].reshape(-1, *shape)
        self.x = data["test"][:SAMPLES].reshape(-1, *shape)

    def plain_and_compact(self, kind: str) -> tuple[bytes, bytes, Graph]:
        """The segment serialised as the emitter builds it, and as `s2conv` writes it."""
        graph = onnx_to_graph(self.segment)
        if kind == "int8":
            graph = quantize_graph(graph, self.calibration, {LOGITS_OUTPUT})
        plain = serialize(graph)
        return plain, serialize(compact(graph)), graph


@functools.cache
def reference(name: str) -> Reference:
    return Reference(name)


def run(data: bytes, x: np.ndarray, resolver: OpResolverType) -> tuple[str, dict[str, np.ndarray]]:
    interpreter = Interpreter(model_content=data, num_threads=1, experimental_op_resolver_type=resolver)
    (given,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(given["index"], list(x.shape), strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], np.ascontiguousarray(x, dtype=np.float32))
    interpreter.invoke()
    return given["name"], {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


def tensors(data: bytes) -> list:
    graph = TFLiteModel.GetRootAs(data, 0).Subgraphs(0)
    return [graph.Tensors(i) for i in range(graph.TensorsLength())]


# --- the reference models ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["float", "int8"])
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_compact_segment_computes_bit_identical_outputs(name, kind):
    ref = reference(name)
    plain, compacted, _ = ref.plain_and_compact(kind)
    product = onnx_to_tflite(ref.segment) if kind == "float" else quantized_tflite(ref.segment, ref.calibration)
    assert compacted == product, "the test compacts what s2conv writes"
    assert len(compacted) < len(plain)
    assert "The model is not a valid Flatbuffer" not in analyzer.ModelAnalyzer(compacted, False, False)
    for resolver in RESOLVERS:
        (plain_input, want), (got_input, got) = run(plain, ref.x, resolver), run(compacted, ref.x, resolver)
        assert got_input == plain_input == ref.segment.graph.input[0].name
        assert list(got) == list(want) == [o.name for o in ref.segment.graph.output]
        for output, value in want.items():
            np.testing.assert_array_equal(got[output], value, err_msg=f"{name} {kind} {resolver.name} {output}")


@pytest.mark.parametrize("kind", ["float", "int8"])
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_only_input_and_outputs_are_named_and_constants_are_stored_once(name, kind):
    _, data, _ = reference(name).plain_and_compact(kind)
    model = TFLiteModel.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    named = {*graph.InputsAsNumpy().tolist(), *graph.OutputsAsNumpy().tolist()}
    assert {i for i, t in enumerate(tensors(data)) if t.Name() is not None} == named
    assert model.Description().decode() == f"{PRODUCER} {__version__}"
    constant_buffers = [t.Buffer() for t in tensors(data) if t.Buffer()]
    assert len(set(constant_buffers)) == len(constant_buffers) == model.BuffersLength() - 1, "one buffer per constant, 0 is empty"
    contents = Counter(
        (t.Type(), tuple(t.ShapeAsNumpy().tolist()) if t.ShapeLength() else (), model.Buffers(t.Buffer()).DataAsNumpy().tobytes())
        for t in tensors(data)
        if t.Buffer()
    )
    assert max(contents.values()) == 1, "equal constants are one tensor"


def test_int8_quantization_vectors_are_shared_and_read_back_unchanged():
    _, data, graph = reference("mnist_cnn").plain_and_compact("int8")
    positions: dict[tuple[str, bytes], set[int]] = {}
    for tensor, stored in zip(tensors(data), graph.tensors):
        q = tensor.Quantization()
        if stored.quantization is None:
            assert q is None or not q.ScaleLength()
            continue
        assert q.ScaleLength() == q.ZeroPointLength() == len(stored.quantization.scale)  # LiteRT's loader requires equal counts
        np.testing.assert_array_equal(q.ScaleAsNumpy(), np.asarray(stored.quantization.scale, np.float32))
        np.testing.assert_array_equal(q.ZeroPointAsNumpy(), stored.quantization.zero_point)
        assert q.QuantizedDimension() == stored.quantization.dimension
        for field, values in ((8, q.ScaleAsNumpy()), (10, q.ZeroPointAsNumpy())):  # vtable slots of scale, zero_point
            positions.setdefault((values.dtype.str, values.tobytes()), set()).add(q._tab.Vector(q._tab.Offset(field)))
    assert all(len(p) == 1 for p in positions.values()), "each distinct vector is written once"
    per_channel_zeros = [key for key in positions if key[0] == "<i8" and len(key[1]) > 8]
    assert len(per_channel_zeros) < sum(1 for t in graph.tensors if t.quantization and len(t.quantization.scale) > 1)


def test_har_int8_segment_shrank():
    # Before compaction and sharing: 22,608 bytes, of which 15,676 constant data (HAR MLP 48-96-96-7).
    ref = reference("har_mlp")
    data = quantized_tflite(ref.segment, ref.calibration)
    constant_data = sum(TFLiteModel.GetRootAs(data, 0).Buffers(t.Buffer()).DataLength() for t in tensors(data))
    assert len(data) <= 20_000 and len(data) - constant_data <= 4_200


# --- why the bias quantization stays ---------------------------------------------------------


def test_int8_bias_quantization_is_what_xnnpack_needs():
    """LiteRT's builtin kernels never read an int32 bias's scale, but its default XNNPACK
    delegate does not take an int8 FULLY_CONNECTED whose bias has none: without them the op
    falls back to the builtin kernel and the outputs change. So compact keeps them."""
    ref = reference("har_mlp")
    _, with_bias_scales, graph = ref.plain_and_compact("int8")
    biases = [graph.tensors[op.inputs[2]] for op in graph.operators if op.opcode == BuiltinOperator.FULLY_CONNECTED]
    stripped = [b for b in biases if b.dtype == np.int32]
    assert stripped, "the HAR MLP has int8 FULLY_CONNECTED ops with int32 biases"
    for bias in stripped:
        bias.quantization = None
    without = serialize(graph)
    for resolver, same in ((OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, True), (OpResolverType.AUTO, False)):
        (_, want), (_, got) = run(with_bias_scales, ref.x, resolver), run(without, ref.x, resolver)
        assert all(np.array_equal(got[k], want[k]) for k in want) == same, resolver.name


# --- the passes on a tiny graph ----------------------------------------------------------------


def tiny_graph() -> Graph:
    """x -> RESHAPE by shape a -> h -> RESHAPE by shape b (equal to a) -> y -> RESHAPE by a
    quantized twin of a -> z, plus look-alike constants of another type or shape that
    nothing reads."""
    graph = Graph(description="d")

    def data(name: str) -> int:
        return graph.add_tensor(Tensor(name, (1, 4), np.dtype(np.float32), signature=(-1, 4)))

    x = data("x")
    a = graph.constant("shape_a", [-1, 4], np.int32)
    b = graph.constant("shape_b", [-1, 4], np.int32)
    graph.constant("other_type", [-1, 4], np.float32)
    graph.constant("other_shape", [[-1, 4]], np.int32)
    q = graph.constant("quantized", [-1, 4], np.int32)
    graph.tensors[q].quantization = Quantization((0.5,), (0,))
    h, y, z = data("h"), data("y"), data("z")
    graph.add_operator(BuiltinOperator.RESHAPE, [x, a], [h])
    graph.add_operator(BuiltinOperator.RESHAPE, [h, b], [y])
    graph.add_operator(BuiltinOperator.RESHAPE, [y, q], [z])
    graph.inputs, graph.outputs = [x], [y]
    return graph


def test_share_constants_merges_only_equal_ones():
    graph = share_constants(tiny_graph())
    assert [op.inputs[1] for op in graph.operators] == [1, 1, 5], "shape_b reads as shape_a; the quantized twin stays"


def test_drop_unused_tensors_renumbers_everything():
    graph = drop_unused_tensors(share_constants(tiny_graph()))
    assert [t.name for t in graph.tensors] == ["x", "shape_a", "quantized", "h", "y", "z"]
    assert [(op.inputs, op.outputs) for op in graph.operators] == [([0, 1], [3]), ([3, 1], [4]), ([4, 2], [5])]
    assert (graph.inputs, graph.outputs) == ([0], [4])


def test_compact_tiny_graph_keeps_only_io_names_and_runs():
    graph = compact(tiny_graph())
    assert [t.name for t in graph.tensors] == ["x", "", "", "", "y", ""]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for resolver in RESOLVERS:
        assert run(serialize(graph), x, resolver)[0] == "x"
        np.testing.assert_array_equal(run(serialize(graph), x, resolver)[1]["y"], x)
