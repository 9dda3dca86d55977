"""Run an ONNX model on onnxruntime and a .tflite model on LiteRT, and compare outputs.

onnxruntime runs with graph optimisations off (its own fusions hide nothing); LiteRT runs
with its default op resolver (XNNPACK), as the runtime backend does.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter
from tflite.BuiltinOperator import BuiltinOperator
from tflite.Model import Model as TfliteModel

REL = 1e-5  # float32 parity: |tflite - onnx| <= REL * max|onnx| for every output
OPCODE_NAMES = {v: k for k, v in vars(BuiltinOperator).items() if isinstance(v, int)}


def run_onnx(model: onnx.ModelProto | bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))


def run_tflite(data: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    interpreter = Interpreter(model_content=data, num_threads=1)
    (given,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(given["index"], list(x.shape), strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], np.ascontiguousarray(x, dtype=np.float32))
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], rel: float = REL) -> None:
    assert sorted(got) == sorted(want), f"outputs {sorted(got)} != {sorted(want)}"
    for name, expected in want.items():
        assert got[name].shape == expected.shape, f"{name}: shape {got[name].shape} != {expected.shape}"
        scale = max(float(np.abs(expected).max()), 1e-30)
        np.testing.assert_allclose(got[name], expected, rtol=rel, atol=rel * scale, err_msg=name)


def tflite_ops(data: bytes) -> list[str]:
    """The builtin op names of a .tflite file's main subgraph, in execution order."""
    model = TfliteModel.GetRootAs(data, 0)
    codes = [model.OperatorCodes(i).BuiltinCode() for i in range(model.OperatorCodesLength())]
    graph = model.Subgraphs(0)
    return [OPCODE_NAMES[codes[graph.Operators(i).OpcodeIndex()]] for i in range(graph.OperatorsLength())]
