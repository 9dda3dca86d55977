"""Serialise a `Bundle` into the `.s2l` FlatBuffers format (see s2l.fbs).

The head's initial A is written as its rule alone (`AInitRule.SPLITMIX64_UNIFORM`, no
arrays) when it is exactly the seed's `s2rt.lora_init.lora_a`, and stored otherwise.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import flatbuffers
import numpy as np

from s2rt.atomic import atomic_write_bytes
from s2rt.bundle.a_init import a_init_rule
from s2rt.bundle.fb import (
    BundleBody,
    BundleFile,
    CacheField,
    CacheLayout,
    Head,
    InputSignature,
    Provenance,
    Segment,
    Tap,
    Tensor,
    TrainDefaults,
)
from s2rt.bundle.model import (
    ARRAY_ALIGNMENT,
    FILE_IDENTIFIER,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    AInitRule,
    Bundle,
    DType,
    signing_message,
)
from s2rt.bundle.model import CacheLayout as CacheLayoutModel
from s2rt.bundle.model import Head as HeadModel
from s2rt.bundle.model import InputSignature as InputModel
from s2rt.bundle.model import Provenance as ProvenanceModel
from s2rt.bundle.model import Segment as SegmentModel
from s2rt.bundle.model import Tap as TapModel


class Signer(Protocol):
    """Signs bundles: `s2rt.bundle.signing.SigningKey` is one."""

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


def serialize_bundle(bundle: Bundle, signer: Signer | None = None) -> tuple[bytes, str]:
    """Return the file bytes and the hex SHA-256 digest of the body; signed when `signer` is given."""
    data, written = _serialize(bundle, signer)
    return data, written.digest


def _serialize(bundle: Bundle, signer: Signer | None) -> tuple[bytes, Bundle]:
    body = _build_body(bundle)
    digest = hashlib.sha256(body).digest()
    version = (FORMAT_MAJOR, FORMAT_MINOR)
    signature = signer.sign(signing_message(version, digest)) if signer is not None else b""
    key_id = signer.key_id if signer is not None else ""
    data = serialize_envelope(body, version, digest, signature, key_id)
    return data, replace(bundle, digest=digest.hex(), format_version=version, signature=signature, signer_key_id=key_id)


def serialize_envelope(
    body: bytes | memoryview, version: tuple[int, int], body_sha256: bytes, signature: bytes = b"", signer_key_id: str = ""
) -> bytes:
    """The `BundleFile` around finished body bytes, which it copies unchanged (16-byte aligned)."""
    b = flatbuffers.Builder(len(body) + 512)
    body_vec = _aligned_bytes(b, body)
    sha_vec = b.CreateByteVector(bytes(body_sha256))
    sig_vec = b.CreateByteVector(signature) if signature else None
    key_id = b.CreateString(signer_key_id) if signer_key_id else None
    BundleFile.Start(b)
    BundleFile.AddFormatMajor(b, version[0])
    BundleFile.AddFormatMinor(b, version[1])
    BundleFile.AddBody(b, body_vec)
    BundleFile.AddBodySha256(b, sha_vec)
    _add_if(b, BundleFile.AddSignature, sig_vec)
    _add_if(b, BundleFile.AddSignerKeyId, key_id)
    b.Finish(BundleFile.End(b), file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def write_bundle(bundle: Bundle, path: str | os.PathLike[str], signer: Signer | None = None) -> Bundle:
    """Write `bundle` to `path` atomically (signed by `signer` if given) and return it with
    its digest, version and signature filled in.

    Writes one file (temp file in the same folder, fsync, rename). Raises OSError when
    the folder is not writable.
    """
    data, written = _serialize(bundle, signer)
    atomic_write_bytes(Path(path), data)
    return written


def _build_body(bundle: Bundle) -> bytes:
    b = flatbuffers.Builder(sum(len(s.model) for s in bundle.segments) + 4096)
    provenance = _provenance(b, bundle.provenance)
    signature = _input(b, bundle.input)
    labels = _vector_of_offsets(b, [b.CreateString(x) for x in bundle.labels])
    segments = _vector_of_offsets(b, [_segment(b, s) for s in bundle.segments])
    taps = _vector_of_offsets(b, [_tap(b, t) for t in bundle.taps])
    head = _head(b, bundle.head, a_init_rule(bundle.head, bundle.taps))
    cache = _cache_layout(b, bundle.cache)
    BundleBody.Start(b)
    BundleBody.AddProvenance(b, provenance)
    BundleBody.AddInput(b, signature)
    BundleBody.AddLabels(b, labels)
    BundleBody.AddSegments(b, segments)
    BundleBody.AddTaps(b, taps)
    BundleBody.AddHead(b, head)
    BundleBody.AddCache(b, cache)
    BundleBody.AddOutputActivation(b, int(bundle.output_activation))
    b.Finish(BundleBody.End(b))
    return bytes(b.Output())


def _aligned_bytes(b: flatbuffers.Builder, data: bytes | memoryview) -> int:
    """A byte vector whose first byte is ARRAY_ALIGNMENT-aligned in the finished buffer."""
    n = len(data)
    b.StartVector(1, n, ARRAY_ALIGNMENT)
    b.head = b.head - n
    b.Bytes[b.head : b.head + n] = data
    return int(b.EndVector())


def _longs(b: flatbuffers.Builder, values: Sequence[int]) -> int:
    return int(b.CreateNumpyVector(np.asarray(values, dtype="<i8").reshape(-1)))


def _vector_of_offsets(b: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())


def _tensor(b: flatbuffers.Builder, array: np.ndarray) -> int:
    dtype = DType.from_numpy(array.dtype)
    data = _aligned_bytes(b, np.ascontiguousarray(array, dtype=dtype.numpy).tobytes())
    shape = _longs(b, array.shape)
    Tensor.Start(b)
    Tensor.AddShape(b, shape)
    Tensor.AddDtype(b, int(dtype))
    Tensor.AddData(b, data)
    return int(Tensor.End(b))


def _strings(b: flatbuffers.Builder, *values: str) -> list[int]:
    return [b.CreateString(v) for v in values]


def _provenance(b: flatbuffers.Builder, p: ProvenanceModel) -> int:
    sha, name, producer, version, created, options = _strings(
        b, p.source_sha256, p.source_name, p.producer, p.producer_version, p.created_utc, p.options_json
    )
    Provenance.Start(b)
    Provenance.AddSourceSha256(b, sha)
    Provenance.AddSourceName(b, name)
    Provenance.AddProducer(b, producer)
    Provenance.AddProducerVersion(b, version)
    Provenance.AddCreatedUtc(b, created)
    Provenance.AddOptionsJson(b, options)
    return int(Provenance.End(b))


def _input(b: flatbuffers.Builder, s: InputModel) -> int:
    (name,) = _strings(b, s.name)
    shape = _longs(b, s.shape)
    mean = _tensor(b, s.mean) if s.mean is not None else None
    std = _tensor(b, s.std) if s.std is not None else None
    InputSignature.Start(b)
    InputSignature.AddName(b, name)
    InputSignature.AddShape(b, shape)
    InputSignature.AddDtype(b, int(s.dtype))
    _add_if(b, InputSignature.AddMean, mean)
    _add_if(b, InputSignature.AddStd, std)
    return int(InputSignature.End(b))


def _add_if(b: flatbuffers.Builder, add: Callable[[flatbuffers.Builder, int], None], off: int | None) -> None:
    if off is not None:
        add(b, off)


def _segment(b: flatbuffers.Builder, s: SegmentModel) -> int:
    model = _aligned_bytes(b, s.model)
    input_name, logits = _strings(b, s.input_name, s.logits_output)
    Segment.Start(b)
    Segment.AddBackend(b, int(s.backend))
    Segment.AddModel(b, model)
    Segment.AddInputName(b, input_name)
    Segment.AddLogitsOutput(b, logits)
    return int(Segment.End(b))


def _tap(b: flatbuffers.Builder, t: TapModel) -> int:
    name, source, layer = _strings(b, t.name, t.source, t.layer)
    shape = _longs(b, t.shape)
    Tap.Start(b)
    Tap.AddName(b, name)
    Tap.AddSource(b, source)
    Tap.AddLayer(b, layer)
    Tap.AddShape(b, shape)
    Tap.AddReduction(b, int(t.reduction))
    return int(Tap.End(b))


def _head(b: flatbuffers.Builder, h: HeadModel, rule: AInitRule) -> int:
    a_init = None
    if rule == AInitRule.STORED:
        a_init = _vector_of_offsets(b, [_tensor(b, np.asarray(a, dtype=np.float32)) for a in h.a_init])
    d = h.defaults
    TrainDefaults.Start(b)
    TrainDefaults.AddOptimizer(b, int(d.optimizer))
    TrainDefaults.AddLearningRate(b, d.learning_rate)
    TrainDefaults.AddEpochs(b, d.epochs)
    TrainDefaults.AddBatchSize(b, d.batch_size)
    defaults = TrainDefaults.End(b)
    Head.Start(b)
    Head.AddRank(b, h.rank)
    Head.AddAlpha(b, h.alpha)
    Head.AddNumOutputs(b, h.num_outputs)
    Head.AddLoss(b, int(h.loss))
    Head.AddSeed(b, h.seed)
    _add_if(b, Head.AddAInit, a_init)
    Head.AddDefaults(b, defaults)
    Head.AddAInitRule(b, int(rule))  # STORED, the default, is not written: a 1.1 reader reads such a head as before
    return int(Head.End(b))


def _cache_layout(b: flatbuffers.Builder, c: CacheLayoutModel) -> int:
    fields = []
    for f in c.fields:
        (name,) = _strings(b, f.name)
        shape = _longs(b, f.shape)
        CacheField.Start(b)
        CacheField.AddKind(b, int(f.kind))
        CacheField.AddName(b, name)
        CacheField.AddOffset(b, f.offset)
        CacheField.AddShape(b, shape)
        CacheField.AddDtype(b, int(f.dtype))
        CacheField.AddScale(b, f.scale)
        fields.append(CacheField.End(b))
    vec = _vector_of_offsets(b, fields)
    CacheLayout.Start(b)
    CacheLayout.AddFields(b, vec)
    CacheLayout.AddRecordSize(b, c.record_size)
    CacheLayout.AddAlignment(b, c.alignment)
    return int(CacheLayout.End(b))
