"""convert: options, the whole pipeline into a Bundle, and a torch-exported MLP."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings

import numpy as np
import pytest
from conv_graphs import gemm_chain, normalised_chain, random_input, run_original, run_segment
from s2conv import ConvertOptions, __version__, convert
from s2conv.convert import InvalidOptionError
from s2conv.describe import describe_bundle, render_text
from s2conv.emit import emit
from s2rt.bundle import read_bundle
from s2rt.bundle.model import DType, Loss, Optimizer, OutputActivation, SegmentBackend, plan_cache_layout
from s2rt.errors import ConversionError


def test_bundle_from_a_gemm_chain(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    path = gemm_chain(softmax="Softmax").save(tmp_path)
    bundle = convert(path)
    p = bundle.provenance
    assert p.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (p.source_name, p.producer, p.producer_version) == ("model.onnx", "s2conv", __version__)
    assert p.created_utc == "2023-11-14T22:13:20Z"
    assert json.loads(p.options_json) == json.loads(json.dumps(dataclasses.asdict(ConvertOptions())))
    assert (bundle.input.name, bundle.input.shape, bundle.input.dtype) == ("x", (6,), DType.FLOAT32)
    assert bundle.labels == ("class_0", "class_1", "class_2")
    assert [(t.name, t.source, t.layer, t.shape) for t in bundle.taps] == [
        ("s2l.tap.0", "x", "fc0", (6,)),
        ("s2l.tap.1", "r0", "fc1", (5,)),
        ("s2l.tap.2", "r1", "fc2", (4,)),
    ]
    segment = bundle.segment(SegmentBackend.ONNX)
    assert (segment.input_name, segment.logits_output) == ("x", "s2l.logits")
    assert bundle.output_activation == OutputActivation.SOFTMAX
    assert bundle.head.num_outputs == 3 and bundle.head.rank == 4 and bundle.head.alpha == 8.0
    assert bundle.cache == plan_cache_layout(bundle.taps, 3, DType.FLOAT32)


def test_options_reach_the_bundle(tmp_path):
    options = ConvertOptions(
        rank=2,
        alpha=3.0,
        cache_dtype="float16",
        seed=5,
        labels=("a", "b", "c"),
        loss="mse",
        optimizer="sgd",
        learning_rate=0.1,
        epochs=3,
        batch_size=8,
        taps=("r1",),
    )
    bundle = convert(gemm_chain().save(tmp_path), options)
    assert bundle.labels == ("a", "b", "c")
    assert [t.source for t in bundle.taps] == ["r1"]
    assert bundle.head.loss == Loss.MSE and bundle.head.seed == 5 and bundle.head.scaling == 1.5
    d = bundle.head.defaults
    assert (d.optimizer, d.learning_rate, d.epochs, d.batch_size) == (Optimizer.SGD, 0.1, 3, 8)
    assert bundle.cache.taps[0].dtype == DType.FLOAT16
    assert json.loads(bundle.provenance.options_json)["taps"] == ["r1"]


def test_label_count_must_match_the_outputs(tmp_path):
    with pytest.raises(ConversionError, match="2 labels given .* the model has 3 outputs"):
        convert(gemm_chain().save(tmp_path), ConvertOptions(labels=("a", "b")))


@pytest.mark.parametrize(
    "changes",
    [
        {"rank": 0},
        {"rank": True},
        {"rank": 5000},
        {"alpha": 0.0},
        {"alpha": float("nan")},
        {"cache_dtype": "int4"},
        {"seed": -1},
        {"loss": "hinge"},
        {"optimizer": "lbfgs"},
        {"learning_rate": -1.0},
        {"epochs": 0},
        {"batch_size": 2.5},
        {"labels": ("a", "a")},
        {"labels": "abc"},
        {"taps": ()},
        {"taps": ("x", "")},
    ],
)
def test_invalid_options_are_rejected(changes):
    with pytest.raises(InvalidOptionError, match=f"option {next(iter(changes))}: "):
        ConvertOptions(**changes)


def test_every_option_has_a_help_string():
    for field in dataclasses.fields(ConvertOptions):
        assert len(ConvertOptions.help(field.name)) > 10


def test_emit_writes_a_bundle_the_runtime_reads_back(tmp_path):
    bundle = convert(normalised_chain().save(tmp_path), ConvertOptions(labels=("n", "o", "p")))
    written, artefacts = emit(bundle, tmp_path / "out" / "b.s2l", tmp_path / "segment.onnx")
    assert [a.kind for a in artefacts] == ["bundle", "onnx segment"]
    assert artefacts[0].size == (tmp_path / "out" / "b.s2l").stat().st_size
    read = read_bundle(tmp_path / "out" / "b.s2l")
    assert read.digest == written.digest and len(read.digest) == 64
    assert describe_bundle(read) == describe_bundle(written)
    assert all(np.array_equal(a, b) for a, b in zip(read.head.a_init, bundle.head.a_init))
    assert bytes(read.segments[0].model) == (tmp_path / "segment.onnx").read_bytes()
    assert "s2l.tap.1  d0" in render_text(describe_bundle(read))


def test_emit_names_an_unwritable_path(tmp_path):
    bundle = convert(gemm_chain().save(tmp_path))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConversionError, match="cannot write the bundle"):
        emit(bundle, tmp_path / "file" / "b.s2l")


# --- a real exporter: torch.onnx.export(dynamo=True) -------------------------------------------


@pytest.fixture(scope="module")
def torch_mlp(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from torch import nn

    class Standardize(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.register_buffer("mean", torch.linspace(-1, 1, n))
            self.register_buffer("std", torch.linspace(0.5, 2, n))

        def forward(self, x):
            return (x - self.mean) / self.std

    torch.manual_seed(0)
    model = nn.Sequential(
        Standardize(12),
        nn.Linear(12, 16),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
        nn.Softmax(dim=-1),
    ).eval()
    path = tmp_path_factory.mktemp("torch") / "mlp.onnx"
    example = (torch.randn(3, 12),)
    with torch.no_grad(), warnings.catch_warnings():
        # torch's own exporter trips over its own deprecations (FutureWarning, DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            example,
            str(path),
            dynamo=True,
            external_data=False,
            input_names=["features"],
            output_names=["probs"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    return model, path


def test_torch_exported_mlp(torch_mlp):
    import onnx
    import torch

    model, path = torch_mlp
    bundle = convert(path, ConvertOptions(labels=("w", "x", "y", "z")))
    assert [t.shape for t in bundle.taps] == [(12,), (16,), (16,)]
    assert bundle.output_activation == OutputActivation.SOFTMAX
    assert bundle.input.name == "features" and bundle.input.shape == (12,)
    x = random_input((12,), 9, seed=1)
    got = run_segment(bundle, x)
    source = onnx.load(path)
    logits_source = next(n.input[0] for n in source.graph.node if n.op_type == "Softmax")
    expected = run_original(source, x, [*(t.source for t in bundle.taps), logits_source])
    for tap in bundle.taps:
        np.testing.assert_allclose(got[tap.name], expected[tap.source], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["s2l.logits"], expected[logits_source], rtol=0, atol=1e-6)
    with torch.no_grad():
        probs = model(torch.from_numpy(x)).numpy()
        standardized = model[0](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got["s2l.tap.0"], standardized, atol=1e-5)
    z = got["s2l.logits"]
    softmax = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), probs, atol=1e-5)
