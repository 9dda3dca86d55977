"""Walk a FlatBuffers buffer against the s2l schema before any generated accessor reads it.

The generated Python accessors trust every offset they read: a hostile uoffset or vector
length sends them past the buffer or, through `struct.unpack_from` with a negative
position, to the wrong end of it. `verify_buffer` checks, in the manner of the C++
`flatbuffers::Verifier`: every table's vtable offset and size, every field's offset
within its table and its alignment, every vector's and string's length against the end
of the buffer (so declared sizes are capped by the file size), strings' terminators,
nested flatbuffers within their byte vector, the nesting depth and the number of
objects visited (so offsets shared in a DAG cannot multiply the work). After it passes,
the accessors only ever read inside the buffer.

`SCHEMA` mirrors `s2l.fbs` field by field (a test compares the two). Fields a newer minor
version adds are beyond a table's known fields: only their offset is checked, and the
reader never touches them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum

from s2rt.errors import BundleError

MAX_DEPTH = 64
MAX_OBJECTS = 20_000  # tables and strings; a bundle with a thousand taps uses under 10,000
MAX_BUFFER = 2**31 - 1  # FlatBuffers' own limit

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")


class Kind(Enum):
    SCALAR = "scalar"
    STRING = "string"
    TABLE = "table"
    VECTOR = "vector of scalars"
    STRINGS = "vector of strings"
    TABLES = "vector of tables"
    NESTED = "nested flatbuffer"


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    size: int = 4  # a scalar's size, or a scalar vector's element size
    table: str = ""  # the table of TABLE, TABLES and NESTED


def scalar(name: str, size: int) -> Field:
    return Field(name, Kind.SCALAR, size)


def string(name: str) -> Field:
    return Field(name, Kind.STRING)


def table(name: str, of: str) -> Field:
    return Field(name, Kind.TABLE, table=of)


def vector(name: str, size: int) -> Field:
    return Field(name, Kind.VECTOR, size)


def strings(name: str) -> Field:
    return Field(name, Kind.STRINGS)


def tables(name: str, of: str) -> Field:
    return Field(name, Kind.TABLES, table=of)


def nested(name: str, of: str) -> Field:
    return Field(name, Kind.NESTED, 1, table=of)


VERSION_HEADER = "BundleFile (version only)"

# Field i sits in vtable slot i, as in s2l.fbs. Enums are their underlying scalar type.
SCHEMA: dict[str, tuple[Field, ...]] = {
    "Tensor": (vector("shape", 8), scalar("dtype", 1), vector("data", 1)),
    "Provenance": (
        string("source_sha256"),
        string("source_name"),
        string("producer"),
        string("producer_version"),
        string("created_utc"),
        string("options_json"),
    ),
    "InputSignature": (
        string("name"),
        vector("shape", 8),
        scalar("dtype", 1),
        table("mean", "Tensor"),
        table("std", "Tensor"),
    ),
    "Segment": (scalar("backend", 1), vector("model", 1), string("input_name"), string("logits_output")),
    "Tap": (string("name"), string("source"), string("layer"), vector("shape", 8), scalar("reduction", 1)),
    "TrainDefaults": (scalar("optimizer", 1), scalar("learning_rate", 4), scalar("epochs", 4), scalar("batch_size", 4)),
    "Head": (
        scalar("rank", 4),
        scalar("alpha", 4),
        scalar("num_outputs", 4),
        scalar("loss", 1),
        scalar("seed", 8),
        tables("a_init", "Tensor"),
        table("defaults", "TrainDefaults"),
        scalar("a_init_rule", 1),
    ),
    "CacheField": (
        scalar("kind", 1),
        string("name"),
        scalar("offset", 8),
        vector("shape", 8),
        scalar("dtype", 1),
        scalar("scale", 4),
    ),
    "CacheLayout": (tables("fields", "CacheField"), scalar("record_size", 8), scalar("alignment", 4)),
    "BundleBody": (
        table("provenance", "Provenance"),
        table("input", "InputSignature"),
        strings("labels"),
        tables("segments", "Segment"),
        tables("taps", "Tap"),
        table("head", "Head"),
        table("cache", "CacheLayout"),
        scalar("output_activation", 1),
    ),
    "BundleFile": (
        scalar("format_major", 2),
        scalar("format_minor", 2),
        nested("body", "BundleBody"),
        vector("body_sha256", 1),
        vector("signature", 1),
        string("signer_key_id"),
    ),
    # The first pass over the envelope: every later field is checked only for its offset.
    VERSION_HEADER: (scalar("format_major", 2), scalar("format_minor", 2)),
}


def verify_buffer(data: bytes | memoryview, root: str, start: int = 0, end: int | None = None, nested_roots: bool = True) -> None:
    """Check the flatbuffer `data[start:end]` whose root table is `root`; BundleError if it is unsafe.

    With `nested_roots=False` a nested flatbuffer field is checked as a plain byte vector
    (the reader verifies the body separately, after its digest).
    """
    _Verifier(data, nested_roots).buffer(root, start, len(data) if end is None else end, root)


class _Verifier:
    def __init__(self, data: bytes | memoryview, nested_roots: bool) -> None:
        self.data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self.nested_roots = nested_roots
        self.start = 0
        self.end = 0
        self.depth = 0
        self.objects = 0

    def fail(self, where: str, message: str) -> BundleError:
        return BundleError(f"{where}: {message}")

    # -- reads with bounds -------------------------------------------------------------
    def u16(self, pos: int, where: str) -> int:
        self.within(pos, 2, where)
        return int(_U16.unpack_from(self.data, pos)[0])

    def u32(self, pos: int, where: str) -> int:
        self.within(pos, 4, where)
        return int(_U32.unpack_from(self.data, pos)[0])

    def within(self, pos: int, size: int, where: str) -> None:
        if pos < self.start or pos + size > self.end:
            raise self.fail(where, f"{size} bytes at offset {pos} lie outside the buffer [{self.start}, {self.end})")

    def aligned(self, pos: int, align: int, where: str) -> None:
        if (pos - self.start) % align:
            raise self.fail(where, f"offset {pos} is not aligned to {align} bytes")

    def count(self, where: str) -> None:
        self.objects += 1
        if self.objects > MAX_OBJECTS:
            raise self.fail(where, f"more than {MAX_OBJECTS} tables and strings (offsets shared to multiply the work?)")

    # -- structure ---------------------------------------------------------------------
    def buffer(self, root: str, start: int, end: int, where: str) -> None:
        if end > MAX_BUFFER or start < 0 or end > len(self.data) or end - start < 8:
            raise self.fail(where, f"a flatbuffer of {end - start} bytes cannot hold a root table")
        outer = (self.start, self.end)
        self.start, self.end = start, end
        self.table(self.uoffset(start, f"{where} root offset"), root, where)
        self.start, self.end = outer

    def uoffset(self, pos: int, where: str) -> int:
        """The position a uoffset at `pos` points to (forward only, so no cycles)."""
        self.aligned(pos, 4, where)
        return pos + self.u32(pos, where)

    def table(self, pos: int, name: str, where: str) -> None:
        self.count(where)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(where, f"tables nested deeper than {MAX_DEPTH}")
        self.aligned(pos, 4, where)
        self.within(pos, 4, where)
        vtable = pos - int(_I32.unpack_from(self.data, pos)[0])
        self.aligned(vtable, 2, f"{where} vtable")
        vsize = self.u16(vtable, f"{where} vtable")
        tsize = self.u16(vtable + 2, f"{where} vtable")
        if vsize < 4 or vsize % 2:
            raise self.fail(where, f"vtable size {vsize} is not an even number of at least 4 bytes")
        self.within(vtable, vsize, f"{where} vtable")
        if tsize < 4:
            raise self.fail(where, f"table size {tsize} is smaller than its vtable offset")
        self.within(pos, tsize, where)
        fields = SCHEMA[name]
        for slot in range((vsize - 4) // 2):
            offset = self.u16(vtable + 4 + 2 * slot, f"{where} vtable")
            if offset == 0:
                continue
            if slot >= len(fields):  # a field of a newer minor version; never read
                if not 4 <= offset < tsize:
                    raise self.fail(where, f"unknown field {slot} at offset {offset}, outside the {tsize}-byte table")
                continue
            self.field(pos, tsize, offset, fields[slot], f"{where}.{fields[slot].name}")
        self.depth -= 1

    def field(self, pos: int, tsize: int, offset: int, f: Field, where: str) -> None:
        size = f.size if f.kind == Kind.SCALAR else 4
        if offset < 4 or offset + size > tsize:
            raise self.fail(where, f"field at offset {offset} (+{size} bytes) lies outside its {tsize}-byte table")
        at = pos + offset
        self.aligned(at, size, where)
        if f.kind == Kind.SCALAR:
            return
        target = self.uoffset(at, where)
        if f.kind == Kind.STRING:
            self.string(target, where)
        elif f.kind == Kind.TABLE:
            self.table(target, f.table, where)
        elif f.kind == Kind.VECTOR:
            self.vector(target, f.size, where)
        elif f.kind == Kind.NESTED:
            data, n = self.vector(target, 1, where)
            if self.nested_roots:
                self.buffer(f.table, data, data + n, where)
        else:
            data, n = self.vector(target, 4, where)
            for i in range(n):
                element = self.uoffset(data + 4 * i, f"{where}[{i}]")
                if f.kind == Kind.STRINGS:
                    self.string(element, f"{where}[{i}]")
                else:
                    self.table(element, f.table, f"{where}[{i}]")

    def vector(self, pos: int, itemsize: int, where: str) -> tuple[int, int]:
        """(position of the first element, element count) of the vector at `pos`."""
        self.aligned(pos, 4, where)
        n = self.u32(pos, where)
        if n * itemsize > self.end - pos - 4:
            raise self.fail(where, f"declares {n} elements of {itemsize} bytes, more than the {self.end - pos - 4} bytes left")
        return pos + 4, n

    def string(self, pos: int, where: str) -> None:
        self.count(where)
        data, n = self.vector(pos, 1, where)
        self.within(data + n, 1, f"{where} terminator")
        if self.data[data + n] != 0:
            raise self.fail(where, "string is not zero-terminated")
