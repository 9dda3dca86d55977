"""Stage 1, load: read an .onnx file (and its external weight data), check it, infer
shapes, hash it, find its input and the tensor that holds the class scores.

Everything later in the pipeline works on the `LoadedModel` this returns, never on the
file again.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper
from s2rt.errors import ConversionError, UnsupportedGraphError

from s2conv.outputs import select_output

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A checked, shape-inferred model and where it came from."""

    path: Path
    model: onnx.ModelProto
    sha256: str
    input_name: str
    output_name: str  # the class scores: a graph output, or the tensor behind its post-processing
    notes: tuple[str, ...] = ()  # what `select_output` ignored, for the user

    @property
    def source_name(self) -> str:
        return self.path.name


def load_model(path: str | Path, scores: str | None = None) -> LoadedModel:
    """Read, check and shape-infer `path`; `scores` names the class-score tensor when the
    outputs do not say (see `outputs.select_output`). Raises `ConversionError` naming
    the file if it is missing or not a valid ONNX model, `UnsupportedGraphError` if it
    does not have exactly one (non-initialiser) input or no clear score output."""
    path = Path(path)
    data = _read_file(path)
    model = _parse(path, data)
    _check(path, model)
    model = _infer_shapes(path, model)
    try:
        selected = select_output(model.graph, scores)
    except UnsupportedGraphError as e:
        raise UnsupportedGraphError(f"{path}: {e}") from None
    return LoadedModel(
        path=path,
        model=model,
        sha256=hashlib.sha256(data).hexdigest(),
        input_name=_single_input(path, model.graph),
        output_name=selected.tensor,
        notes=selected.notes,
    )


def _read_file(path: Path) -> bytes:
    if not path.exists():
        raise ConversionError(f"{path}: no such file (expected an .onnx model)")
    if not path.is_file():
        raise ConversionError(f"{path}: not a file (expected an .onnx model)")
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConversionError(f"{path}: cannot read: {e.strerror or e}") from e


def _parse(path: Path, data: bytes) -> onnx.ModelProto:
    try:
        model = onnx.load_model_from_string(data)
    except DecodeError as e:
        raise ConversionError(f"{path}: not an ONNX model (protobuf parse failed: {e})") from e
    if not model.HasField("graph"):
        raise ConversionError(f"{path}: not an ONNX model (it has no graph)")
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: cannot load the model's external weight data: {e}") from e
    return model


def _check(path: Path, model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ConversionError(f"{path}: the ONNX checker rejects the model: {_one_line(e)}") from e


def _infer_shapes(path: Path, model: onnx.ModelProto) -> onnx.ModelProto:
    """Strict shape inference; if only the strict mode fails (e.g. an op without a
    shape function), fall back to the lenient one and let the tap finder report any
    tensor whose shape stays unknown."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as strict_error:
        log.warning("%s: strict shape inference failed (%s); using lenient inference", path, _one_line(strict_error))
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except onnx.shape_inference.InferenceError as e:
        raise ConversionError(f"{path}: ONNX shape inference failed: {_one_line(e)}") from e


def _single_input(path: Path, graph: onnx.GraphProto) -> str:
    initialisers = {init.name for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise UnsupportedGraphError(
            f"{path}: expected exactly one graph input (initialisers excluded), "
            f"found {len(inputs)}: {_names(inputs)}; s2l feeds one input tensor per sample"
        )
    return inputs[0]


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names) or "none"


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
