"""onnxruntime backend: an InferenceSession built from the segment's bytes."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort

from s2rt.bundle.model import Bundle, Segment
from s2rt.errors import BackendError

# onnxruntime's session option for exact u8 x s8 sums on x86 CPUs without VNNI, where its
# int8 kernels otherwise add pairs of products in a saturating int16 (converter/README.md).
EXACT_U8S8 = "session.x64quantprecision"


def needs_exact_u8s8(bundle: Bundle) -> bool:
    """True for an int8 bundle converted before the ONNX segment's weights were 7-bit ("a8w7"):
    its 8-bit weights can saturate on x86 without VNNI unless onnxruntime is told to avoid it."""
    try:
        options = json.loads(bundle.provenance.options_json)
    except ValueError:
        return False
    if not isinstance(options, dict) or options.get("quantize") != "int8":
        return False
    schemes = options.get("int8_scheme")
    return not (isinstance(schemes, dict) and schemes.get("onnx") == "a8w7")


def session_options(threads: int, exact_u8s8: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if exact_u8s8:
        options.add_session_config_entry(EXACT_U8S8, "1")
    return options


class OnnxBackend:
    name = "onnx"

    def __init__(self, segment: Segment, threads: int = 1, exact_u8s8: bool = False) -> None:
        self.threads = threads
        self.exact_u8s8 = exact_u8s8
        options = session_options(threads, exact_u8s8)
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
