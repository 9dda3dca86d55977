"""The in-memory picture of a bundle: small frozen dataclasses mirroring `s2l.fbs`.

The converter builds a `Bundle` and hands it to `writer.write_bundle`; the runtime gets
one back from `reader.read_bundle`. Enum values mirror the schema's enums line for line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

FORMAT_MAJOR = 1
FORMAT_MINOR = 2  # 1.1: the envelope's optional signature and signer_key_id; 1.2: Head.a_init_rule (A regenerated
# from the seed instead of stored; a 1.1 reader refuses such a bundle: it finds no a_init)
FILE_IDENTIFIER = b"S2LB"
ARRAY_ALIGNMENT = 16

# Signatures (s2l.fbs `BundleFile.signature`): Ed25519 over signing_message(...).
SIGNATURE_BYTES = 64
KEY_ID_CHARS = 16
SIGNED_SINCE = (1, 1)
_SIGNATURE_DOMAIN = b"s2l bundle signature v1\x00"


def signing_message(version: tuple[int, int], body_sha256: bytes) -> bytes:
    """What a bundle's signature covers: a domain tag, the format version and the body's SHA-256."""
    major, minor = version
    return _SIGNATURE_DOMAIN + major.to_bytes(2, "little") + minor.to_bytes(2, "little") + bytes(body_sha256)


class DType(IntEnum):
    """s2l.fbs `enum DType`."""

    FLOAT32 = 0
    FLOAT16 = 1
    INT8 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(_NUMPY_DTYPES[self]).newbyteorder("<")

    @classmethod
    def from_numpy(cls, dtype: np.dtype | type | str) -> DType:
        name = np.dtype(dtype).name
        for code, np_name in _NUMPY_DTYPES.items():
            if np_name == name:
                return code
        raise ValueError(f"no s2l DType for numpy dtype {name!r}")


_NUMPY_DTYPES = {
    DType.FLOAT32: "float32",
    DType.FLOAT16: "float16",
    DType.INT8: "int8",
    DType.INT32: "int32",
    DType.INT64: "int64",
    DType.UINT8: "uint8",
}


class SegmentBackend(IntEnum):
    """s2l.fbs `enum SegmentBackend`."""

    ONNX = 0
    TFLITE = 1


class TapReduction(IntEnum):
    """s2l.fbs `enum TapReduction`."""

    NONE = 0
    GLOBAL_AVG_POOL = 1  # [C, H, W] -> [C]
    AVG_POOL = 2  # [C, H, W] -> [C, gh, gw], a small fixed grid


class Loss(IntEnum):
    """s2l.fbs `enum Loss`."""

    SOFTMAX_CROSS_ENTROPY = 0
    MSE = 1


class Optimizer(IntEnum):
    """s2l.fbs `enum Optimizer`."""

    SGD = 0
    ADAM = 1


class OutputActivation(IntEnum):
    """s2l.fbs `enum OutputActivation`: what the source model applied after its logits."""

    NONE = 0
    SOFTMAX = 1
    LOG_SOFTMAX = 2


class AInitRule(IntEnum):
    """s2l.fbs `enum AInitRule`: where the head's initial A matrices come from."""

    STORED = 0  # Head.a_init in the bundle
    SPLITMIX64_UNIFORM = 1  # s2rt.lora_init.lora_a(rank, tap size, Head.seed, tap index)


class CacheFieldKind(IntEnum):
    """s2l.fbs `enum CacheFieldKind`."""

    KEY = 0
    TAP = 1
    LOGITS = 2
    LABEL = 3


@dataclass(frozen=True)
class Provenance:
    source_sha256: str
    source_name: str
    producer: str
    producer_version: str
    created_utc: str
    options_json: str = "{}"


@dataclass(frozen=True, eq=False)
class InputSignature:
    """One sample's input: `shape` has no batch dimension."""

    name: str
    shape: tuple[int, ...]
    dtype: DType = DType.FLOAT32
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, eq=False)
class Segment:
    """A frozen segment: outputs every `Tap.name` plus `logits_output`."""

    backend: SegmentBackend
    model: bytes | memoryview
    input_name: str
    logits_output: str


@dataclass(frozen=True)
class Tap:
    name: str
    source: str
    layer: str
    shape: tuple[int, ...]
    reduction: TapReduction = TapReduction.NONE

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class TrainDefaults:
    optimizer: Optimizer = Optimizer.ADAM
    learning_rate: float = 0.01
    epochs: int = 20
    batch_size: int = 32


@dataclass(frozen=True, eq=False)
class Head:
    """Skip2-LoRA head: z = logits + (alpha / rank) * sum_l B_l A_l x_l, B_l = 0 at start.

    `a_init[l]` is the (rank x taps[l].size) float32 initial A of tap l, always
    materialised: the writer leaves it out of the file when it is the seed's
    `s2rt.lora_init.lora_a` (`AInitRule`), and the reader regenerates it.
    """

    rank: int
    alpha: float
    num_outputs: int
    a_init: tuple[np.ndarray, ...]
    loss: Loss = Loss.SOFTMAX_CROSS_ENTROPY
    seed: int = 0
    defaults: TrainDefaults = field(default_factory=TrainDefaults)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def num_parameters(self) -> int:
        return sum(a.size for a in self.a_init) + self.num_outputs * self.rank * len(self.a_init)


@dataclass(frozen=True)
class CacheField:
    kind: CacheFieldKind
    name: str
    offset: int
    shape: tuple[int, ...]
    dtype: DType
    scale: float = 1.0

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.numpy.itemsize


@dataclass(frozen=True)
class CacheLayout:
    """The byte layout of one cached sample; a cache is a flat array of such records.

    Taps are stored back to back in tap order with one storage dtype, so all of a
    record's taps read as one fused row X = [x_1 ... x_L].
    """

    fields: tuple[CacheField, ...]
    record_size: int
    alignment: int

    def field(self, name: str) -> CacheField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def taps(self) -> tuple[CacheField, ...]:
        return tuple(f for f in self.fields if f.kind == CacheFieldKind.TAP)


KEY_FIELD = "key"
LOGITS_FIELD = "logits"
LABEL_FIELD = "label"
KEY_BYTES = 16


CACHE_TAP_DTYPES = (DType.FLOAT32, DType.FLOAT16, DType.INT8)
SCALE_ON_DEVICE = 0.0  # an int8 tap field's scale when the runtime chooses it (s2rt.cache)


def plan_cache_layout(
    taps: tuple[Tap, ...] | list[Tap],
    num_outputs: int,
    tap_dtype: DType = DType.FLOAT32,
    alignment: int = ARRAY_ALIGNMENT,
    tap_scales: Sequence[float] | None = None,
) -> CacheLayout:
    """Lay out one record: key (16 bytes), label (int64), logits (float32), then all taps.

    int8 taps store round(value / scale) with one scale per tap: `tap_scales` (one per
    tap, say from calibration data at conversion time) or, without them,
    `SCALE_ON_DEVICE`: the runtime picks each scale from the first activations it caches.
    """
    if tap_dtype not in CACHE_TAP_DTYPES:
        raise ValueError(f"cache storage dtype must be float32, float16 or int8, got {tap_dtype.name}")
    scales = _tap_scales(tap_scales, len(taps), tap_dtype)
    fields: list[CacheField] = []
    offset = 0

    def add(kind: CacheFieldKind, name: str, shape: tuple[int, ...], dtype: DType, scale: float = 1.0) -> None:
        nonlocal offset
        f = CacheField(kind, name, offset, shape, dtype, scale)
        fields.append(f)
        offset += f.nbytes

    add(CacheFieldKind.KEY, KEY_FIELD, (KEY_BYTES,), DType.UINT8)
    add(CacheFieldKind.LABEL, LABEL_FIELD, (), DType.INT64)
    add(CacheFieldKind.LOGITS, LOGITS_FIELD, (num_outputs,), DType.FLOAT32)
    offset = _round_up(offset, tap_dtype.numpy.itemsize)
    for tap, scale in zip(taps, scales):
        add(CacheFieldKind.TAP, tap.name, tap.shape, tap_dtype, scale)
    return CacheLayout(tuple(fields), _round_up(offset, alignment), alignment)


def _tap_scales(scales: Sequence[float] | None, count: int, dtype: DType) -> tuple[float, ...]:
    if scales is None:
        return (SCALE_ON_DEVICE if dtype == DType.INT8 else 1.0,) * count
    if dtype != DType.INT8:
        raise ValueError(f"tap scales apply to int8 cache storage, not {dtype.name}")
    values = tuple(float(s) for s in scales)
    if len(values) != count or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"expected {count} finite tap scales > 0, got {list(values)}")
    return values


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True, eq=False)
class Bundle:
    provenance: Provenance
    input: InputSignature
    labels: tuple[str, ...]
    segments: tuple[Segment, ...]
    taps: tuple[Tap, ...]
    head: Head
    cache: CacheLayout
    output_activation: OutputActivation = OutputActivation.NONE
    format_version: tuple[int, int] = (FORMAT_MAJOR, FORMAT_MINOR)
    digest: str = ""  # hex SHA-256 of the body; set by the reader and the writer
    signature: bytes = b""  # Ed25519 over signing_message(format_version, digest); set by the reader and a signing writer
    signer_key_id: str = ""

    def segment(self, backend: SegmentBackend) -> Segment:
        for s in self.segments:
            if s.backend == backend:
                return s
        have = ", ".join(s.backend.name for s in self.segments) or "none"
        raise KeyError(f"bundle has no {backend.name} segment (it has: {have})")

    @property
    def tap_width(self) -> int:
        """D: the length of the fused tap row [x_1 ... x_L]."""
        return sum(t.size for t in self.taps)
