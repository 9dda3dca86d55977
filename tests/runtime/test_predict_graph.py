"""The predict graph (one onnxruntime call with the adapters bound as inputs) gives the
answers of the frozen segment plus the head in NumPy, for every affine method, with and
without input normalisation, on an MLP and on a CNN with pooled conv taps; it is a valid
ONNX model; a new adapter version needs no new session; a malformed segment is refused
with a BackendError, never a crash."""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.tiny import tiny_bundle
from s2conv import ConvertOptions, convert
from s2rt.backend import onnx_proto
from s2rt.backend.predict_graph import CLASSES, LOGITS, PROBABILITIES, PredictGraph, predict_model
from s2rt.bundle import Bundle, InputSignature, Loss, parse_bundle, serialize_bundle
from s2rt.errors import BackendError, RuntimeInputError
from s2rt.folded import AFFINE_METHODS, fold
from s2rt.methods import get_method
from s2rt.session import Model, softmax
from s2rt.trainer import predict_logits

MODELS = Path(__file__).resolve().parents[2] / "models"


def normalised(bundle: Bundle) -> Bundle:
    rng = np.random.default_rng(1)
    shape = bundle.input.shape
    mean = rng.normal(size=shape).astype(np.float32)
    std = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
    return dataclasses.replace(bundle, input=InputSignature(bundle.input.name, shape, mean=mean, std=std))


@cache
def digits_cnn() -> Bundle:
    return parse_bundle(serialize_bundle(convert(MODELS / "digits_cnn.onnx", ConvertOptions(tap_pool=2)))[0])


def bundles() -> dict[str, Bundle]:
    return {"tiny": tiny_bundle(), "tiny-normalised": normalised(tiny_bundle()), "digits_cnn-2x2": digits_cnn()}


def inputs(bundle: Bundle, n: int = 40) -> np.ndarray:
    return np.random.default_rng(2).normal(size=(n, *bundle.input.shape)).astype(np.float32)


def trained(model: Model, seed: int = 0) -> None:
    """Random numbers in every trainable parameter, as after fine-tuning (nothing is zero)."""
    for p in model.head.parameters().values():
        p[...] = np.random.default_rng(seed).normal(0.0, 0.1, p.shape)


def numpy_path(model: Model, x: np.ndarray) -> np.ndarray:
    taps, frozen_logits = model.frozen.run(x)
    return predict_logits(model.head, taps, frozen_logits)


@pytest.mark.parametrize("method", sorted(AFFINE_METHODS))
@pytest.mark.parametrize("name", ["tiny", "tiny-normalised", "digits_cnn-2x2"])
def test_predict_graph_matches_the_numpy_path(name, method):
    bundle = bundles()[name]
    model = Model(bundle, method=method)
    trained(model)
    x = inputs(bundle)
    expected = numpy_path(model, x)
    classes, probabilities = model.classify(x)
    assert model._predict_graph() is not None
    np.testing.assert_allclose(model.logits(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probabilities, softmax(expected), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(classes, expected.argmax(axis=1))
    np.testing.assert_allclose(model.predict_proba(x), probabilities, rtol=0, atol=0)


@pytest.mark.parametrize("method", sorted(AFFINE_METHODS))
def test_fold_is_the_head_as_one_affine_map(method):
    bundle = digits_cnn()
    head = get_method(method).make_head(bundle)
    for p in head.parameters().values():
        p[...] = np.random.default_rng(3).normal(0.0, 0.1, p.shape)
    weight, bias = fold(head)
    X = np.random.default_rng(4).normal(size=(16, head.tap_width)).astype(np.float32)
    np.testing.assert_allclose(X @ weight + bias, head.delta_logits(X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny", "tiny-normalised", "digits_cnn-2x2"])
def test_the_predict_graph_is_a_valid_onnx_model(name):
    bundle = bundles()[name]
    segment = bundle.segments[0]
    model = onnx.load_from_string(predict_model(bundle, segment))
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == [LOGITS, PROBABILITIES, CLASSES]
    graph_inputs = [i.name for i in model.graph.input]
    assert graph_inputs[-2:] == ["s2l.predict.weight", "s2l.predict.bias"]
    assert (segment.input_name in graph_inputs) == (bundle.input.mean is None)


def test_a_regression_head_has_only_logits():
    bundle = dataclasses.replace(tiny_bundle(), head=dataclasses.replace(tiny_bundle().head, loss=Loss.MSE))
    model = onnx.load_from_string(predict_model(bundle, bundle.segments[0]))
    assert [o.name for o in model.graph.output] == [LOGITS]
    m = Model(bundle)
    trained(m)
    x = inputs(bundle)
    classes, outputs = m.classify(x)
    np.testing.assert_array_equal(classes, 0)
    np.testing.assert_allclose(outputs, numpy_path(m, x), rtol=1e-5, atol=1e-5)


def test_new_adapters_need_no_new_session():
    model = Model(tiny_bundle())
    x = inputs(model.bundle)
    before = model.logits(x)
    session = model._predict_graph().session  # type: ignore[union-attr]
    trained(model, seed=5)
    after = model.logits(x)
    assert model._predict_graph().session is session  # type: ignore[union-attr]
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, numpy_path(model, x), rtol=1e-5, atol=1e-5)


def test_batches_larger_than_one_call_give_the_same_answers():
    model = Model(tiny_bundle())
    trained(model)
    x = inputs(model.bundle, n=70)
    classes, probabilities = model.classify(x, batch_size=32)
    whole_classes, whole_probabilities = model.classify(x)
    np.testing.assert_array_equal(classes, whole_classes)
    np.testing.assert_allclose(probabilities, whole_probabilities, rtol=1e-6, atol=1e-7)
    assert model.classify(x[:0])[1].shape == (0, model.bundle.head.num_outputs)


def test_a_segment_without_a_tap_output_is_refused_by_name():
    bundle = tiny_bundle()
    segment = dataclasses.replace(bundle.segments[0], logits_output="s2l.missing")
    with pytest.raises(BackendError, match="no output named 's2l.missing'"):
        predict_model(bundle, segment)


@pytest.mark.parametrize("cut", [1, 7, 100, -3])
def test_truncated_segments_are_refused_with_a_backend_error(cut):
    bundle = tiny_bundle()
    segment = bundle.segments[0]
    broken = dataclasses.replace(segment, model=bytes(segment.model)[:cut])
    with pytest.raises(BackendError, match="not a valid ONNX model|no output named|cannot load"):
        PredictGraph(bundle, broken)


def test_mutated_segments_raise_only_backend_errors():
    """Random byte flips: the protobuf reader raises BackendError or yields bytes, never anything else."""
    bundle = tiny_bundle()
    original = bytearray(bundle.segments[0].model)
    rng = np.random.default_rng(6)
    refused = 0
    for _ in range(300):
        data = bytearray(original)
        for at in rng.integers(0, len(data), size=3):
            data[at] = int(rng.integers(0, 256))
        try:
            predict_model(bundle, dataclasses.replace(bundle.segments[0], model=bytes(data)))
        except BackendError:
            refused += 1
    assert refused > 0


def test_varints_round_trip():
    for value in (0, 1, 127, 128, 300, 2**32, 2**63 - 1):
        encoded = onnx_proto.integer(3, value)
        (field,) = onnx_proto.fields(encoded)
        assert (field.number, field.value, field.raw) == (3, value, encoded)
    with pytest.raises(BackendError, match="longer than 10 bytes"):
        onnx_proto.fields(b"\x08" + b"\xff" * 11)


def test_a_call_leaves_earlier_results_alone():
    model = Model(tiny_bundle())
    trained(model)
    x = inputs(model.bundle, n=8)
    _, first = model.classify(x)
    kept = first.copy()
    model.classify(x[::-1].copy())
    np.testing.assert_array_equal(first, kept)


def test_threads_predicting_at_once_each_get_their_own_answers():
    """The daemon predicts from a thread pool; bindings are per thread."""
    from concurrent.futures import ThreadPoolExecutor

    model = Model(tiny_bundle())
    trained(model)
    batches = [inputs(model.bundle, n=n) * (1 + n / 10) for n in (1, 3, 5, 8) * 25]
    expected = [numpy_path(model, x).argmax(axis=1) for x in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: model.classify(x)[0], batches))
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize(
    ("options", "exact"),
    [
        ('{"quantize": "int8"}', True),  # converted before 7-bit weights: 8-bit weights can saturate without VNNI
        ('{"quantize": "int8", "int8_scheme": {"onnx": "a8w7"}}', False),
        ('{"quantize": "none"}', False),
        ("not json", False),
    ],
)
def test_old_int8_bundles_ask_onnxruntime_for_exact_u8s8_sums(options, exact):
    from s2rt.backend.onnx import EXACT_U8S8

    bundle = tiny_bundle()
    bundle = dataclasses.replace(bundle, provenance=dataclasses.replace(bundle.provenance, options_json=options))
    model = Model(bundle)
    graph = model._predict_graph()
    for session in (model.frozen.backend.session, graph.session):  # type: ignore[attr-defined,union-attr]
        try:
            entry = session.get_session_options().get_session_config_entry(EXACT_U8S8)
        except RuntimeError:  # onnxruntime's answer for a key never set
            entry = None
        assert entry == ("1" if exact else None)


def test_oselm_folds_its_standardization_into_the_map():
    """The fit's standardization is part of the served map: a head with a non-trivial one folds exactly."""
    bundle = digits_cnn()
    head = get_method("oselm").make_head(bundle)
    rng = np.random.default_rng(5)
    head.beta[...] = rng.normal(0.0, 0.1, head.beta.shape)
    head.standardizer.set(rng.normal(size=head.tap_width).astype(np.float32), rng.uniform(0.5, 2.0, head.tap_width).astype(np.float32))
    weight, bias = fold(head)
    X = rng.normal(size=(16, head.tap_width)).astype(np.float32)
    np.testing.assert_allclose(X @ weight + bias, head.delta_logits(X), rtol=1e-4, atol=1e-4)
    rf = get_method("oselm-rf").make_head(bundle)
    with pytest.raises(RuntimeInputError, match="not affine"):
        rf.affine()


def _with_segment_model(bundle: Bundle, edit) -> Bundle:
    """The bundle with its segment's ONNX model changed by `edit(onnx.ModelProto)`."""
    segment = bundle.segments[0]
    model = onnx.load_from_string(bytes(segment.model))
    edit(model)
    return dataclasses.replace(bundle, segments=(dataclasses.replace(segment, model=model.SerializeToString()), *bundle.segments[1:]))


def _logits_gemm(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if "s2l.logits" in n.output)


def _trans_b(model: onnx.ModelProto) -> None:
    """The logits layer's weight stored transposed, with transB=1 (what torch exports)."""
    node = _logits_gemm(model)
    init = next(i for i in model.graph.initializer if i.name == node.input[1])
    init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init).T.copy(), init.name))
    node.attribute.append(onnx.helper.make_attribute("transB", 1))


def _float_data(model: onnx.ModelProto) -> None:
    """The logits layer's weight and bias in TensorProto.float_data instead of raw_data."""
    node = _logits_gemm(model)
    for init in model.graph.initializer:
        if init.name in node.input[1:]:
            values = onnx.numpy_helper.to_array(init).ravel().tolist()
            init.ClearField("raw_data")
            init.float_data.extend(values)


def _alpha(model: onnx.ModelProto) -> None:
    _logits_gemm(model).attribute.append(onnx.helper.make_attribute("alpha", 0.5))


def _weight_from_a_node(model: onnx.ModelProto) -> None:
    """The logits layer's weight computed by a node, not stored: nothing to fold."""
    node = _logits_gemm(model)
    model.graph.node.insert(0, onnx.helper.make_node("Identity", [node.input[1]], ["s2l.test.w"]))
    node.input[1] = "s2l.test.w"


@pytest.mark.parametrize(
    ("edit", "folds"),
    [(lambda m: None, True), (_trans_b, True), (_float_data, True), (_alpha, False), (_weight_from_a_node, False)],
    ids=["plain", "transB", "float_data", "alpha", "computed-weight"],
)
def test_the_logits_layer_folds_into_the_bound_weight_only_when_it_is_a_plain_gemm(edit, folds):
    bundle = _with_segment_model(normalised(tiny_bundle()), edit)
    model = Model(bundle)
    trained(model)
    x = inputs(bundle)
    expected = numpy_path(model, x)
    graph = model._predict_graph()
    assert (graph.last_layer is not None) == folds  # type: ignore[union-attr]
    np.testing.assert_allclose(model.logits(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.classify(x)[0], expected.argmax(axis=1))
    ops = [n.op_type for n in onnx.load_from_string(predict_model(bundle, bundle.segments[0])).graph.node]
    segment_ops = [n.op_type for n in onnx.load_from_string(bytes(bundle.segments[0].model)).graph.node]
    if folds:  # the segment's logits Gemm is replaced by the head's: no Add, no second Gemm
        assert ops.count("Gemm") == segment_ops.count("Gemm") and ops.count("Add") == segment_ops.count("Add")
    else:
        assert ops.count("Gemm") == segment_ops.count("Gemm") + 1 and ops.count("Add") == segment_ops.count("Add") + 1


def test_converted_models_fold_their_logits_layer():
    bundle = digits_cnn()
    graph = PredictGraph(bundle, bundle.segments[0])
    assert graph.last_layer is not None
    last = bundle.taps[-1]
    assert graph.last_layer.rows == slice(sum(t.size for t in bundle.taps[:-1]), sum(t.size for t in bundle.taps))
    assert graph.last_layer.weight.shape == (last.size, bundle.head.num_outputs)


def test_a_new_adapter_version_rebinds_the_folded_weight():
    """The bound W' is made from W when W changes; the old binding's W' is not reused."""
    model = Model(tiny_bundle())
    x = inputs(model.bundle)
    for seed in (1, 2, 3):
        trained(model, seed=seed)
        np.testing.assert_allclose(model.logits(x), numpy_path(model, x), rtol=1e-5, atol=1e-5)
