"""Reading an emitted .tflite back into the IR: nothing is lost (same ops, same outputs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from helpers.parity import run_tflite, tflite_ops
from s2conv.tflite import onnx_to_tflite
from s2conv.tflite.read import read_graph
from s2conv.tflite.serialize import serialize
from s2rt.errors import ConversionError

_spec = importlib.util.spec_from_file_location("tflite_op_cases", Path(__file__).with_name("test_tflite_ops.py"))
assert _spec is not None and _spec.loader is not None
CASES_MODULE = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(CASES_MODULE)
CASES = CASES_MODULE.CASES


@pytest.mark.parametrize("name", ["conv_bn_relu_folded", "squeeze_excite_conv", "pad_modes", "averagepool_variants", "softmax_logsoftmax"])
def test_round_trip_keeps_ops_and_outputs(name):
    model, shape = CASES[name]()
    data = onnx_to_tflite(model)
    again = serialize(read_graph(data))
    assert tflite_ops(again) == tflite_ops(data)
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    first, second = run_tflite(data, x), run_tflite(again, x)
    assert sorted(first) == sorted(second)
    for key in first:
        np.testing.assert_array_equal(second[key], first[key])


def test_garbage_is_a_conversion_error():
    with pytest.raises(ConversionError):
        read_graph(b"\x00" * 7)
