"""ONNX export: dynamic batch, input `x`, output `logits`, checked and verified before writing."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import s2models

INPUT_NAME = "x"
OUTPUT_NAME = "logits"
OPSET = 18
ATOL = 1e-5


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A single-threaded CPU onnxruntime session (deterministic, the edge profile)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def predict(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """Logits for float32 features x (N, F)."""
    return sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def accuracy(sess: ort.InferenceSession, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(sess, x).argmax(axis=1) == y).mean())


def to_onnx(model: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """Dynamo export with a dynamic batch dimension and the weights inside the model."""
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        verbose=False,
        external_data=False,
        opset_version=OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    return program.model_proto


def stamp(model: onnx.ModelProto, name: str, labels: Sequence[str], doc: str) -> None:
    """Producer, description and class labels (JSON in metadata_props["labels"])."""
    model.producer_name = "s2models"
    model.producer_version = s2models.__version__
    model.doc_string = doc
    model.graph.name = name
    del model.metadata_props[:]
    for key, value in (("workload", name), ("labels", json.dumps(list(labels)))):
        model.metadata_props.add(key=key, value=value)


def verify(model: onnx.ModelProto, torch_model: nn.Module, x: np.ndarray) -> None:
    """onnx.checker, then onnxruntime against torch on x; raises if they differ by more than ATOL."""
    onnx.checker.check_model(model, full_check=True)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    found = predict(session(model), x)
    worst = float(np.abs(found - expected).max())
    if not worst <= ATOL:
        raise AssertionError(f"ONNX export of {model.graph.name!r}: onnxruntime differs from torch by {worst:.3g} > {ATOL}")


def export(model: nn.Module, x: np.ndarray, name: str, labels: Sequence[str], doc: str) -> onnx.ModelProto:
    """Export the model in eval mode, stamp it and verify it on x (N, F); nothing is written."""
    model.eval()
    proto = to_onnx(model, torch.from_numpy(x[:2]))
    stamp(proto, name, labels, doc)
    verify(proto, model, x)
    return proto
