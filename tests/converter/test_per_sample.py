"""per_sample: a frozen segment whose outputs for a batch are not its outputs for each
sample alone is refused, naming the node at fault; a per-sample one converts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conv_graphs import BATCH, GraphBuilder, random_input, run_original, run_segment
from onnx import TensorProto
from s2conv import convert
from s2rt.errors import ConversionError


def mlp_with(op: str, **attrs: object) -> onnx.ModelProto:
    """x [N, 4] → Gemm → `op` → Gemm (logits)."""
    g = GraphBuilder(9)
    g.gemm("x", 4, 6, "h", "fc0")
    g.node(op, ["h"], "m", name="middle", **attrs)
    g.gemm("m", 6, 3, "logits", "fc1")
    return g.model([("x", [BATCH, 4], TensorProto.FLOAT)], [("logits", [BATCH, 3])])


def save(model: onnx.ModelProto, tmp_path) -> str:
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return str(path)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_a_node_that_mixes_samples_is_refused_by_name(tmp_path, op):
    with pytest.raises(ConversionError) as e:
        convert(save(mlp_with(op, axis=0), tmp_path))
    message = str(e.value)
    assert message.startswith("the frozen segment does not compute each sample on its own")
    assert f"node 'middle' ({op}) mixes the samples of a batch or pins its size" in message
    assert "differs between a batch of 3 and one sample at a time" in message


def test_an_output_with_rows_that_are_not_samples_is_refused(tmp_path):
    g = GraphBuilder(10)
    g.node("Flatten", ["x"], "flat", name="flat_across", axis=2)  # [N, 2, 3] -> [2N, 3]
    g.gemm("flat", 3, 3, "logits", "fc0")
    model = g.model([("x", [BATCH, 2, 3], TensorProto.FLOAT)], [("logits", ["rows", 3])])
    with pytest.raises(ConversionError, match=r"node 'flat_across' \(Flatten\) mixes .* has 6 rows for a batch of 3 samples and 2 for one"):
        convert(save(model, tmp_path))


def test_the_same_op_over_the_features_converts_and_runs_as_the_source(tmp_path):
    model = mlp_with("Softmax", axis=1)
    bundle = convert(save(model, tmp_path))
    x = random_input((4,), 5)
    np.testing.assert_allclose(run_segment(bundle, x)["s2l.logits"], run_original(model, x, ["logits"])["logits"], rtol=1e-6, atol=1e-6)
