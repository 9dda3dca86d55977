"""Stage 5, emit: write the bundle (and, on request, the frozen segment) to disk."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from s2rt.bundle import write_bundle
from s2rt.bundle.model import Bundle, SegmentBackend
from s2rt.bundle.writer import Signer
from s2rt.errors import ConversionError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Artefact:
    """A file the converter wrote."""

    kind: str  # "bundle", "onnx segment" or "tflite segment"
    path: Path
    size: int  # bytes


def emit(
    bundle: Bundle, bundle_path: str | Path, segment_path: str | Path | None = None, signer: Signer | None = None
) -> tuple[Bundle, list[Artefact]]:
    """Write `bundle` to `bundle_path` (atomically, via the runtime's bundle writer; signed
    by `signer` if given) and, if `segment_path` is given, its ONNX frozen segment as a
    plain .onnx file.

    Returns the bundle with its digest set, and one `Artefact` per file written, in the
    order written; logs one line per artefact. Raises `ConversionError` naming the file
    when it cannot be written.
    """
    written = _write_bundle(bundle, Path(bundle_path), signer)
    artefacts = [Artefact("bundle", Path(bundle_path), Path(bundle_path).stat().st_size)]
    if segment_path is not None:
        artefacts.append(_write_segment(bundle, Path(segment_path)))
    for artefact in artefacts:
        log.info("wrote %s %s (%d bytes)", artefact.kind, artefact.path, artefact.size)
    return written, artefacts


def _write_bundle(bundle: Bundle, path: Path, signer: Signer | None) -> Bundle:
    try:
        return write_bundle(bundle, path, signer)
    except OSError as e:
        raise ConversionError(f"{path}: cannot write the bundle: {e.strerror or e}") from e


def _write_segment(bundle: Bundle, path: Path) -> Artefact:
    """The segment whose format the suffix names: .tflite the TFLite one, anything else ONNX."""
    kind = SegmentBackend.TFLITE if path.suffix.lower() == ".tflite" else SegmentBackend.ONNX
    try:
        model = bytes(bundle.segment(kind).model)
    except KeyError:
        have = " and ".join(s.backend.name for s in bundle.segments)
        raise ConversionError(
            f"{path}: the bundle has no {kind.name} segment to save (it has {have}); name the file .onnx or .tflite "
            "after one it has, or convert with --backend both"
        ) from None
    try:
        path.write_bytes(model)
    except OSError as e:
        raise ConversionError(f"{path}: cannot write the frozen segment: {e.strerror or e}") from e
    return Artefact(f"{kind.name.lower()} segment", path, len(model))
