"""Real exporters' habits: torch legacy and dynamo exports (opsets 13 to 21, fixed batch 1,
weights in an external data file, initialisers listed as inputs, Softmax at the end),
skl2onnx classifiers (MatMul + Add, ArgMax label and ZipMap outputs) and a tf2onnx-shaped
graph (NHWC input, Transpose to NCHW, `name:0` tensors). Each converted segment is checked
against the source model's own intermediates in onnxruntime (optimisations off).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conv_graphs import GraphBuilder, random_input, run_original, run_segment
from onnx import TensorProto
from s2conv import convert
from s2models.cnn import SqueezeExcite
from s2rt.bundle.model import OutputActivation, TapReduction
from s2rt.errors import ConversionError, UnsupportedGraphError
from torch import nn

INPUT_SHAPE = (1, 8, 8)


class TinyMobileNet(nn.Module):
    """Stem, a depthwise-separable pair, an inverted residual with HardSwish and squeeze-excite, a classifier."""

    def __init__(self, softmax: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(12, 24, 1), nn.Hardswish(), nn.Conv2d(24, 24, 3, 1, 1, groups=24), nn.Hardswish())
        self.se = SqueezeExcite(24, 6)
        self.project = nn.Sequential(nn.Conv2d(24, 12, 1), nn.BatchNorm2d(12))
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(12, 10)
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(self.stem(x)))
        x = x + self.project(self.se(self.expand(x)))
        z = self.classifier(self.dropout(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)))
        return z.softmax(dim=1) if self.softmax else z


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    model = TinyMobileNet()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def export(model: nn.Module, path: Path, *, dynamo: bool, opset: int, batch: int | None, **kwargs: object) -> Path:
    """batch None: a dynamic batch dimension; an int: fixed to that size."""
    example = torch.randn(batch or 2, *INPUT_SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dynamic = None if batch else ({0: torch.export.Dim("batch")},)
            torch.onnx.export(
                model, (example,), str(path), dynamo=True, opset_version=opset, dynamic_shapes=dynamic, verbose=False, **kwargs
            )
        else:
            axes = None if batch else {"x": {0: "N"}}
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, opset_version=opset, input_names=["x"], dynamic_axes=axes, **kwargs
            )
    return path


TORCH_EXPORTS = {
    "legacy-opset13-dynamic-initialisers-as-inputs": dict(dynamo=False, opset=13, batch=None, keep_initializers_as_inputs=True),
    "legacy-opset17-batch1": dict(dynamo=False, opset=17, batch=1),
    "dynamo-opset18-batch1": dict(dynamo=True, opset=18, batch=1, external_data=False),
    "dynamo-opset21-dynamic-external-data": dict(dynamo=True, opset=21, batch=None, external_data=True),
}


@pytest.fixture(scope="module", params=list(TORCH_EXPORTS))
def exported(request, net, tmp_path_factory):
    path = export(net, tmp_path_factory.mktemp("torch") / "net.onnx", **TORCH_EXPORTS[request.param])
    return request.param, path


def run_source(path: Path, x: np.ndarray, tensors: list[str]) -> dict[str, np.ndarray]:
    """The source model's tensors, one sample at a time (so a fixed batch of 1 is fine)."""
    model = onnx.load(str(path))
    runs = [run_original(model, x[i : i + 1], tensors) for i in range(len(x))]
    return {name: np.concatenate([run[name] for run in runs]) for name in tensors}


def test_torch_exports_convert_with_block_taps_and_match_the_source(exported, net):
    name, path = exported
    model = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == TORCH_EXPORTS[name]["opset"]
    if "external-data" in name:
        assert any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    if "initialisers-as-inputs" in name:
        assert len(model.graph.input) > 1
    bundle = convert(path)
    # stem input, depthwise input, pointwise input, inverted-residual block input, classifier input
    assert len(bundle.taps) == 5
    assert [t.reduction for t in bundle.taps] == [TapReduction.GLOBAL_AVG_POOL] * 4 + [TapReduction.NONE]
    assert [t.shape for t in bundle.taps] == [(1,), (8,), (8,), (12,), (12,)]
    x = random_input(INPUT_SHAPE, 5)
    source = run_source(path, x, [t.source for t in bundle.taps])
    got = run_segment(bundle, x)  # a batch of 5, whatever batch the export fixed
    for tap in bundle.taps:
        want = source[tap.source]
        want = want.mean(axis=(2, 3)) if want.ndim == 4 else want
        np.testing.assert_allclose(got[tap.name], want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(got["s2l.logits"], net(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)


def test_softmax_at_the_end_is_cut_off(net, tmp_path):
    with_softmax = TinyMobileNet(softmax=True)
    with_softmax.load_state_dict(net.state_dict())
    path = export(with_softmax.eval(), tmp_path / "softmax.onnx", dynamo=False, opset=15, batch=None)
    bundle = convert(path)
    assert bundle.output_activation == OutputActivation.SOFTMAX
    x = random_input(INPUT_SHAPE, 3)
    with torch.no_grad():
        np.testing.assert_allclose(run_segment(bundle, x)["s2l.logits"], net(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


# --- skl2onnx -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16).astype(np.float32), data.target


def sklearn_mlp(x: np.ndarray, y: np.ndarray, zipmap: bool):
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a few iterations are enough here
        clf = MLPClassifier((16,), max_iter=30, random_state=0).fit(x, y)
        proto = to_onnx(clf, x[:1], options={id(clf): {"zipmap": zipmap}}, target_opset=15)
    return clf, proto


@pytest.mark.parametrize("zipmap", [True, False], ids=["zipmap", "plain"])
def test_sklearn_mlp_classifier_converts_from_its_probability_path(zipmap, digits, tmp_path, caplog):
    x, y = digits
    clf, proto = sklearn_mlp(x, y, zipmap)
    path = tmp_path / "mlp.onnx"
    onnx.save(proto, path)
    with caplog.at_level(logging.WARNING, logger="s2conv"):
        bundle = convert(path)
    notes = " ".join(r.getMessage() for r in caplog.records)
    assert "the predicted label via ArgMax) ignored" in notes
    assert ("is a ZipMap" in notes) == zipmap
    assert [t.source for t in bundle.taps] == ["cast_input", "next_activations"]
    assert bundle.output_activation == OutputActivation.SOFTMAX
    logits = run_segment(bundle, x[:50])["s2l.logits"]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, clf.predict_proba(x[:50]), rtol=1e-4, atol=1e-5)


def test_sklearn_binary_classifier_is_refused_with_a_reason(digits, tmp_path):
    x, y = digits
    _, proto = sklearn_mlp(x, y % 2, zipmap=False)
    path = tmp_path / "binary.onnx"
    onnx.save(proto, path)
    with pytest.raises(UnsupportedGraphError, match=r"logits 'probabilities' come from node .*\(Concat\).*Sigmoid"):
        convert(path)


# --- tf2onnx's graph shape, built by hand (TensorFlow is not installed) --------------------


def tf2onnx_like() -> onnx.ModelProto:
    """What tf2onnx writes for a small Keras CNN: NHWC input `input_1:0` with an unnamed batch,
    Transpose to NCHW, Conv, Relu, Transpose back, Reshape to [-1, F], MatMul + Add, Softmax."""
    g = GraphBuilder(9)
    g.node("Transpose", ["input_1:0"], "conv2d/Conv2D__6:0", name="conv2d/Conv2D__6", perm=[0, 3, 1, 2])
    w = g.const("conv2d/Conv2D/ReadVariableOp:0", g.rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32))
    b = g.weight("conv2d/BiasAdd/ReadVariableOp:0", (4,))
    g.node("Conv", ["conv2d/Conv2D__6:0", w, b], "conv2d/BiasAdd:0", name="conv2d/Conv2D", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    g.node("Relu", ["conv2d/BiasAdd:0"], "conv2d/Relu:0", name="conv2d/Relu")
    g.node("Transpose", ["conv2d/Relu:0"], "conv2d/Relu__8:0", name="conv2d/Relu__8", perm=[0, 2, 3, 1])
    g.node("Reshape", ["conv2d/Relu__8:0", g.const("const_fold_opt__12", np.array([-1, 256], np.int64))], "flatten/Reshape:0")
    g.node("MatMul", ["flatten/Reshape:0", g.weight("dense/MatMul/ReadVariableOp:0", (256, 5))], "dense/MatMul:0", name="dense/MatMul")
    g.node("Add", ["dense/MatMul:0", g.weight("dense/BiasAdd/ReadVariableOp:0", (5,))], "dense/BiasAdd:0", name="dense/BiasAdd")
    g.node("Softmax", ["dense/BiasAdd:0"], "dense", name="dense/Softmax", axis=1)
    return g.model([("input_1:0", ["unk__15", 8, 8, 1], TensorProto.FLOAT)], [("dense", ["unk__16", 5])], opset=13)


def test_tf2onnx_shaped_graph_taps_the_channels_first_tensors(tmp_path):
    model = tf2onnx_like()
    path = tmp_path / "keras.onnx"
    onnx.save(model, path)
    bundle = convert(path)
    assert bundle.input.name == "input_1:0" and bundle.input.shape == (8, 8, 1)
    assert [(t.source, t.reduction, t.shape) for t in bundle.taps] == [
        ("conv2d/Conv2D__6:0", TapReduction.GLOBAL_AVG_POOL, (1,)),  # the NCHW transpose of the input, not the NHWC input
        ("flatten/Reshape:0", TapReduction.NONE, (256,)),
    ]
    x = random_input((8, 8, 1), 4)
    want = run_original(model, x, ["conv2d/Conv2D__6:0", "dense/BiasAdd:0"])
    got = run_segment(bundle, x)
    np.testing.assert_allclose(got["s2l.tap.0"], want["conv2d/Conv2D__6:0"].mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["s2l.logits"], want["dense/BiasAdd:0"], rtol=1e-5, atol=1e-6)


def test_a_fixed_batch_the_converter_cannot_free_is_refused(tmp_path):
    g = GraphBuilder(8)
    g.node("Concat", [g.const("one", np.array([1], np.int64)), g.const("eight", np.array([8], np.int64))], "shape", axis=0)
    g.node("Reshape", ["x", "shape"], "flat")
    g.gemm("flat", 8, 3, "logits", "fc0")
    path = tmp_path / "pinned.onnx"
    onnx.save(g.model([("x", [1, 2, 4], TensorProto.FLOAT)], [("logits", [1, 3])]), path)
    with pytest.raises(ConversionError, match=r"fixed batch size .* could not free it .* re-export it with a dynamic batch dimension"):
        convert(path)
