"""Read and verify a `.s2l` bundle.

Order of checks: file identifier; the format version (read after verifying the root
table alone, so a future major gets a clear refusal); the envelope's structure; the file
size (the body is the last thing in a file, followed only by zero padding to
ARRAY_ALIGNMENT, so no byte is outside the digest and signature but that padding); the body
digest; the caller's envelope check (a signature); the body's structure (`verify.py`:
every offset and length against the buffer before any generated accessor reads it);
a field-by-field parse; the semantic checks (`consistency.py`). Anything wrong raises
`BundleError` naming the file and field; large arrays come back as read-only zero-copy
NumPy views into the file's bytes.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from s2rt.bundle.a_init import generated_a_init
from s2rt.bundle.consistency import MAX_HEAD_A, MAX_RANK, check_consistency
from s2rt.bundle.fb.BundleBody import BundleBody
from s2rt.bundle.fb.BundleFile import BundleFile
from s2rt.bundle.model import (
    ARRAY_ALIGNMENT,
    FILE_IDENTIFIER,
    FORMAT_MAJOR,
    KEY_ID_CHARS,
    SIGNATURE_BYTES,
    AInitRule,
    Bundle,
    CacheField,
    CacheFieldKind,
    CacheLayout,
    DType,
    Head,
    InputSignature,
    Loss,
    Optimizer,
    OutputActivation,
    Provenance,
    Segment,
    SegmentBackend,
    Tap,
    TapReduction,
    TrainDefaults,
)
from s2rt.bundle.verify import MAX_BUFFER, VERSION_HEADER, verify_buffer
from s2rt.errors import BundleError

# Bounds on declared shapes that no sane bundle reaches.
MAX_DIMS = 8
MAX_ELEMENTS = 1 << 31

_PARSE_ERRORS = (IndexError, struct.error, ValueError, TypeError, UnicodeDecodeError, OverflowError, KeyError)


@dataclass(frozen=True)
class Envelope:
    """The verified `BundleFile` around a body: what a signature check looks at."""

    source: str
    version: tuple[int, int]
    body_start: int  # the body's bytes are data[body_start:body_end]
    body_end: int
    body_sha256: bytes  # checked against the body
    signature: bytes  # empty when unsigned
    signer_key_id: str


EnvelopeCheck = Callable[[Envelope], None]


def read_bundle(path: str | os.PathLike[str], check_envelope: EnvelopeCheck | None = None) -> Bundle:
    """Read, verify and parse the bundle at `path`. Raises BundleError.

    `check_envelope` runs after the digest check and before the body is parsed (the
    signature check of `s2rt.trust`); it raises BundleError to refuse the bundle.
    """
    return parse_bundle(read_bundle_bytes(path), str(path), check_envelope)


def read_bundle_bytes(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes, refused before reading when larger than any bundle can be."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise BundleError(f"{p}: is a directory, expected an .s2l bundle file")
        if size > MAX_BUFFER:
            raise BundleError(f"{p}: {size:,} bytes, more than a bundle can hold ({MAX_BUFFER:,})")
        return p.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{p}: no such bundle file") from None
    except OSError as e:
        raise BundleError(f"{p}: cannot read bundle: {e.strerror}") from None


def parse_bundle(data: bytes, source: str = "<bundle>", check_envelope: EnvelopeCheck | None = None) -> Bundle:
    """Verify and parse bundle bytes. Raises BundleError."""
    return _Parser(data, source).bundle(check_envelope)


def read_envelope(data: bytes, source: str = "<bundle>") -> Envelope:
    """Verify the envelope (structure, version, body digest) without parsing the body."""
    return _Parser(data, source).envelope()


class _Parser:
    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.source = source
        self.where = "file header"

    def fail(self, message: str) -> BundleError:
        return BundleError(f"{self.source}: {self.where}: {message}")

    @contextmanager
    def field(self, name: str) -> Iterator[None]:
        outer, self.where = self.where, name
        try:
            yield
        except BundleError:
            raise
        except _PARSE_ERRORS as e:
            raise self.fail(f"corrupt or truncated ({type(e).__name__}: {e})") from None
        self.where = outer

    def verified(self, root: str, start: int = 0, end: int | None = None, nested_roots: bool = True) -> None:
        try:
            verify_buffer(self.data, root, start, end, nested_roots)
        except BundleError as e:
            raise BundleError(f"{self.source}: corrupt or hostile file structure: {e}") from None

    # -- envelope -------------------------------------------------------------------
    def bundle(self, check_envelope: EnvelopeCheck | None) -> Bundle:
        envelope = self.envelope()
        if check_envelope is not None:
            check_envelope(envelope)
        self.verified("BundleBody", envelope.body_start, envelope.body_end)
        with self.field("body"):
            body = BundleBody.GetRootAs(self.data, envelope.body_start)
        bundle = self.body(body)
        check_consistency(bundle, self.source)
        return replace(
            bundle,
            format_version=envelope.version,
            digest=envelope.body_sha256.hex(),
            signature=envelope.signature,
            signer_key_id=envelope.signer_key_id,
        )

    def envelope(self) -> Envelope:
        if len(self.data) < 16:
            raise self.fail(f"file is {len(self.data)} bytes, too short to be an s2l bundle")
        if self.data[4:8] != FILE_IDENTIFIER:
            raise self.fail(f"not an s2l bundle: file identifier is {bytes(self.data[4:8])!r}, expected {FILE_IDENTIFIER!r}")
        self.verified(VERSION_HEADER)  # the version first: a future major may change the rest
        root = BundleFile.GetRootAs(self.data, 0)
        version = (int(root.FormatMajor()), int(root.FormatMinor()))
        if version[0] == 0 or version[0] > FORMAT_MAJOR:
            raise self.fail(
                f"format version {version[0]}.{version[1]} is not readable by this runtime, which reads "
                f"major version {FORMAT_MAJOR} and older; upgrade s2rt or re-convert the model"
            )
        self.verified("BundleFile", nested_roots=False)
        with self.field("envelope"):
            body = self.byte_vector(root._tab, 8, "body")
            expected = bytes(self.byte_vector(root._tab, 10, "body_sha256"))
            signature = bytes(self.byte_vector(root._tab, 12, "signature"))
            key_id = self.text(root.SignerKeyId(), "signer_key_id")
        start = self.vector_start(root._tab, 8)
        self.check_size(start + len(body))
        if len(expected) != 32:
            raise self.fail(f"body_sha256 has {len(expected)} bytes, expected 32")
        if hashlib.sha256(body).digest() != expected:
            raise self.fail("digest mismatch: the bundle body does not match its SHA-256 (corrupt or altered file)")
        if len(body) < 8:
            raise self.fail("bundle body is empty")
        self.check_signature_fields(signature, key_id)
        return Envelope(self.source, version, start, start + len(body), expected, signature, key_id)

    def check_size(self, body_end: int) -> None:
        """The file ends with the body and at most its zero padding to ARRAY_ALIGNMENT (as the writer makes it)."""
        padded = -(-body_end // ARRAY_ALIGNMENT) * ARRAY_ALIGNMENT
        if len(self.data) > padded or any(bytes(self.data[body_end:])):
            raise self.fail(
                f"size mismatch: the file is {len(self.data):,} bytes but its body ends at byte {body_end:,} "
                f"(at most {padded:,} bytes with zero padding): {len(self.data) - body_end:,} trailing bytes; "
                "the file was appended to or altered"
            )

    def check_signature_fields(self, signature: bytes, key_id: str) -> None:
        if not signature and not key_id:
            return
        if len(signature) != SIGNATURE_BYTES:
            raise self.fail(f"signature has {len(signature)} bytes, expected {SIGNATURE_BYTES} (Ed25519)")
        if len(key_id) != KEY_ID_CHARS or any(c not in "0123456789abcdef" for c in key_id):
            raise self.fail(f"signer_key_id {key_id[:40]!r} is not {KEY_ID_CHARS} lowercase hex digits")

    # -- primitive readers -----------------------------------------------------------
    def vector_start(self, tab: Any, slot: int) -> int:
        o = tab.Offset(slot)
        return int(tab.Vector(o)) if o else 0

    def byte_vector(self, tab: Any, slot: int, what: str, itemsize: int = 1) -> memoryview:
        """The bytes of a scalar vector, bounds-checked against the file."""
        o = tab.Offset(slot)
        if o == 0:
            return memoryview(b"")
        start, n = int(tab.Vector(o)), int(tab.VectorLen(o))
        if start < 0 or n < 0 or start + n * itemsize > len(self.data):
            raise self.fail(f"{what}: declares {n} elements at offset {start}, past the end of the {len(self.data)}-byte file")
        return memoryview(self.data)[start : start + n * itemsize]

    def count(self, n: int, what: str, itemsize: int = 4) -> int:
        if n < 0 or n * itemsize > len(self.data):
            raise self.fail(f"{what}: declares {n} entries, more than the file can hold")
        return int(n)

    def shape(self, tab: Any, slot: int, what: str) -> tuple[int, ...]:
        raw = self.byte_vector(tab, slot, what, itemsize=8)
        dims = tuple(int(d) for d in np.frombuffer(raw, dtype="<i8"))
        if len(dims) > MAX_DIMS or any(d < 0 for d in dims) or math.prod(dims) > MAX_ELEMENTS:
            raise self.fail(f"{what}: implausible shape {dims}")
        return dims

    def enum(self, cls: Any, value: int, what: str) -> Any:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(f"{m.name}={m.value}" for m in cls)
            raise self.fail(f"{what}: unknown value {value} (known: {names})") from None

    def text(self, raw: bytes | None, what: str) -> str:
        if raw is None:
            return ""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what}: not valid UTF-8") from None

    def tensor(self, t: Any, what: str) -> np.ndarray:
        shape = self.shape(t._tab, 4, f"{what}.shape")
        dtype = self.enum(DType, t.Dtype(), f"{what}.dtype").numpy
        raw = self.byte_vector(t._tab, 8, f"{what}.data")
        expected = math.prod(shape) * dtype.itemsize
        if len(raw) != expected:
            raise self.fail(f"{what}: holds {len(raw)} bytes, shape {shape} of {dtype} needs {expected}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    # -- tables ----------------------------------------------------------------------
    def body(self, body: BundleBody) -> Bundle:
        with self.field("provenance"):
            provenance = self.provenance(body.Provenance())
        with self.field("input"):
            signature = self.input(body.Input())
        with self.field("labels"):
            n = self.count(body.LabelsLength(), "labels")
            labels = tuple(self.text(body.Labels(i), f"labels[{i}]") for i in range(n))
        with self.field("segments"):
            n = self.count(body.SegmentsLength(), "segments")
            segments = tuple(self.segment(body.Segments(i), i) for i in range(n))
        with self.field("taps"):
            n = self.count(body.TapsLength(), "taps")
            taps = tuple(self.tap(body.Taps(i), i) for i in range(n))
        with self.field("head"):
            head = self.head(body.Head(), taps)
        with self.field("cache"):
            cache = self.cache(body.Cache())
        with self.field("output_activation"):
            activation = self.enum(OutputActivation, body.OutputActivation(), "output_activation")
        return Bundle(provenance, signature, labels, segments, taps, head, cache, activation)

    def require(self, table: Any, what: str) -> Any:
        if table is None:
            raise self.fail(f"missing {what} table")
        return table

    def provenance(self, p: Any) -> Provenance:
        p = self.require(p, "provenance")
        return Provenance(
            source_sha256=self.text(p.SourceSha256(), "source_sha256"),
            source_name=self.text(p.SourceName(), "source_name"),
            producer=self.text(p.Producer(), "producer"),
            producer_version=self.text(p.ProducerVersion(), "producer_version"),
            created_utc=self.text(p.CreatedUtc(), "created_utc"),
            options_json=self.text(p.OptionsJson(), "options_json"),
        )

    def input(self, s: Any) -> InputSignature:
        s = self.require(s, "input")
        mean = self.tensor(s.Mean(), "input.mean") if s.Mean() is not None else None
        std = self.tensor(s.Std(), "input.std") if s.Std() is not None else None
        return InputSignature(
            name=self.text(s.Name(), "input.name"),
            shape=self.shape(s._tab, 6, "input.shape"),
            dtype=self.enum(DType, s.Dtype(), "input.dtype"),
            mean=mean,
            std=std,
        )

    def segment(self, s: Any, i: int) -> Segment:
        what = f"segments[{i}]"
        s = self.require(s, what)
        return Segment(
            backend=self.enum(SegmentBackend, s.Backend(), f"{what}.backend"),
            model=self.byte_vector(s._tab, 6, f"{what}.model"),
            input_name=self.text(s.InputName(), f"{what}.input_name"),
            logits_output=self.text(s.LogitsOutput(), f"{what}.logits_output"),
        )

    def tap(self, t: Any, i: int) -> Tap:
        what = f"taps[{i}]"
        t = self.require(t, what)
        return Tap(
            name=self.text(t.Name(), f"{what}.name"),
            source=self.text(t.Source(), f"{what}.source"),
            layer=self.text(t.Layer(), f"{what}.layer"),
            shape=self.shape(t._tab, 10, f"{what}.shape"),
            reduction=self.enum(TapReduction, t.Reduction(), f"{what}.reduction"),
        )

    def head(self, h: Any, taps: tuple[Tap, ...]) -> Head:
        h = self.require(h, "head")
        rank, seed = int(h.Rank()), int(h.Seed())
        n = self.count(h.AInitLength(), "head.a_init")
        rule = self.enum(AInitRule, h.AInitRule(), "head.a_init_rule")
        if rule == AInitRule.STORED:
            a_init = tuple(self.tensor(self.require(h.AInit(i), f"a_init[{i}]"), f"head.a_init[{i}]") for i in range(n))
        elif n:
            raise self.fail(f"head.a_init holds {n} matrices, expected none: head.a_init_rule {rule.name} regenerates them")
        else:
            a_init = self.generated_a_init(rank, taps, seed, rule)
        d = h.Defaults()
        defaults = TrainDefaults()
        if d is not None:
            defaults = TrainDefaults(
                optimizer=self.enum(Optimizer, d.Optimizer(), "head.defaults.optimizer"),
                learning_rate=float(d.LearningRate()),
                epochs=int(d.Epochs()),
                batch_size=int(d.BatchSize()),
            )
        return Head(
            rank=rank,
            alpha=float(h.Alpha()),
            num_outputs=int(h.NumOutputs()),
            a_init=a_init,
            loss=self.enum(Loss, h.Loss(), "head.loss"),
            seed=seed,
            defaults=defaults,
        )

    def generated_a_init(self, rank: int, taps: tuple[Tap, ...], seed: int, rule: AInitRule) -> tuple[np.ndarray, ...]:
        """The A's that `rule` draws, after bounding what they allocate (nothing in the file does)."""
        sizes = [t.size for t in taps]
        if seed < 0:
            raise self.fail(f"head.seed is {seed}, expected 0..2^63-1 for head.a_init_rule {rule.name}")
        if not 1 <= rank <= MAX_RANK or not sizes or min(sizes) < 1:
            raise self.fail(f"head.a_init_rule {rule.name} needs rank 1..{MAX_RANK} and taps of size >= 1, got rank {rank}, sizes {sizes}")
        if rank * sum(sizes) > MAX_HEAD_A:
            raise self.fail(
                f"head.a_init_rule {rule.name} would generate {rank} x {sum(sizes)} numbers, more than this runtime's "
                f"limit of {MAX_HEAD_A:,}"
            )
        return generated_a_init(rank, sizes, seed)

    def cache(self, c: Any) -> CacheLayout:
        c = self.require(c, "cache")
        n = self.count(c.FieldsLength(), "cache.fields")
        fields = []
        for i in range(n):
            f = self.require(c.Fields(i), f"cache.fields[{i}]")
            what = f"cache.fields[{i}]"
            fields.append(
                CacheField(
                    kind=self.enum(CacheFieldKind, f.Kind(), f"{what}.kind"),
                    name=self.text(f.Name(), f"{what}.name"),
                    offset=int(f.Offset()),
                    shape=self.shape(f._tab, 10, f"{what}.shape"),
                    dtype=self.enum(DType, f.Dtype(), f"{what}.dtype"),
                    scale=float(f.Scale()),
                )
            )
        return CacheLayout(tuple(fields), record_size=int(c.RecordSize()), alignment=int(c.Alignment()))
