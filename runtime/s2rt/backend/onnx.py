"""onnxruntime backend: an InferenceSession built from the segment's bytes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from s2rt.bundle.model import Segment
from s2rt.errors import BackendError


class OnnxBackend:
    name = "onnx"

    def __init__(self, segment: Segment, threads: int = 1) -> None:
        self.threads = threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                bytes(segment.model), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise BackendError(f"onnxruntime cannot load the frozen segment: {e}") from None
        self.input_name = segment.input_name
        self.output_names = [o.name for o in self.session.get_outputs()]
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != [self.input_name]:
            raise BackendError(f"frozen segment inputs are {inputs}, the bundle says {[self.input_name]}")

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(self.output_names, {self.input_name: x})
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise BackendError(f"onnxruntime failed to run the frozen segment: {e}") from None
        return dict(zip(self.output_names, outputs))
