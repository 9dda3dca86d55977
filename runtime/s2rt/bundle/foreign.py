"""Recognise a model file given where a bundle is expected, so the error says what to do.

The bundle reader can only say that the file identifier is wrong; a newcomer who passes
the ONNX model itself (or a TFLite file) needs to hear that it must be converted first.
"""

from __future__ import annotations

import os
from pathlib import Path

from s2rt.bundle.model import FILE_IDENTIFIER
from s2rt.errors import BundleError

TFLITE_IDENTIFIER = b"TFL3"
# An ONNX ModelProto starts with field 1 (ir_version, varint: tag 0x08), then the tag of
# another length-delimited field: producer_name (0x12) … graph (0x3a), opset_import (0x42).
_ONNX_NEXT_TAGS = frozenset({0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42, 0x4A, 0x52, 0x5A, 0x62, 0x6A, 0x72, 0x7A})


def kind_of(head: bytes, suffix: str = "") -> str | None:
    """ "ONNX", "TFLite", or None (a bundle, or a file we cannot name) from the first bytes."""
    if head[4:8] == FILE_IDENTIFIER:
        return None
    if head[4:8] == TFLITE_IDENTIFIER or suffix == ".tflite":
        return "TFLite"
    onnx_header = len(head) >= 3 and head[0] == 0x08 and head[1] < 0x80 and head[2] in _ONNX_NEXT_TAGS
    if onnx_header or suffix == ".onnx":
        return "ONNX"
    return None


def refuse_foreign(path: str | os.PathLike[str]) -> None:
    """BundleError when `path` holds an ONNX or TFLite model rather than a bundle; else nothing
    (the bundle reader then checks the file as usual)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(8)
    except OSError:
        return  # the reader names the problem
    kind = kind_of(head, p.suffix.lower())
    if kind == "ONNX":
        raise BundleError(f"{p} is an ONNX model, not an s2l bundle: convert it first with `s2conv {p} -o {p.with_suffix('.s2l')}`")
    if kind == "TFLite":
        raise BundleError(
            f"{p} is a TFLite model, not an s2l bundle: s2conv converts ONNX models; export the model to ONNX "
            "and convert it with `s2conv MODEL.onnx -o BUNDLE.s2l`"
        )
