"""verify: the structural walk that makes the generated accessors safe; its schema mirrors s2l.fbs."""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

import flatbuffers
import pytest
from helpers.tiny import tiny_bundle
from s2rt.bundle import parse_bundle, serialize_bundle
from s2rt.bundle.fb import BundleBody, BundleFile
from s2rt.bundle.reader import read_envelope
from s2rt.bundle.verify import MAX_OBJECTS, SCHEMA, VERSION_HEADER, Kind, verify_buffer
from s2rt.bundle.writer import _build_body, serialize_envelope
from s2rt.errors import BundleError

FBS = Path(__file__).resolve().parents[2] / "runtime" / "s2rt" / "bundle" / "s2l.fbs"
SCALARS = {"bool": 1, "byte": 1, "ubyte": 1, "short": 2, "ushort": 2, "int": 4, "uint": 4, "float": 4, "long": 8, "ulong": 8, "double": 8}


def schema_from_fbs() -> dict[str, list[tuple[str, Kind, int, str]]]:
    text = re.sub(r"//[^\n]*", "", FBS.read_text())
    enums = {name: SCALARS[base] for name, base in re.findall(r"enum\s+(\w+)\s*:\s*(\w+)", text)}
    tables = {}
    for name, body in re.findall(r"table\s+(\w+)\s*\{([^}]*)\}", text):
        fields = []
        for field, type_, attrs in re.findall(r"(\w+)\s*:\s*(\[?\w+\]?)\s*(?:=\s*[\w.]+)?\s*(\([^)]*\))?\s*;", body):
            fields.append((field, type_, attrs))
        tables[name] = fields

    def kind(type_: str, attrs: str) -> tuple[Kind, int, str]:
        nested = re.search(r'nested_flatbuffer:\s*"(\w+)"', attrs or "")
        if nested:
            return Kind.NESTED, 1, nested[1]
        inner = type_.strip("[]")
        size = SCALARS.get(inner) or enums.get(inner)
        if type_.startswith("["):
            if size:
                return Kind.VECTOR, size, ""
            return (Kind.STRINGS, 4, "") if inner == "string" else (Kind.TABLES, 4, inner)
        if size:
            return Kind.SCALAR, size, ""
        return (Kind.STRING, 4, "") if inner == "string" else (Kind.TABLE, 4, inner)

    return {t: [(f, *kind(ty, at)) for f, ty, at in fields] for t, fields in tables.items()}


def test_verifier_schema_mirrors_s2l_fbs_field_by_field():
    ours = {t: [(f.name, f.kind, f.size, f.table) for f in fields] for t, fields in SCHEMA.items() if t != VERSION_HEADER}
    assert ours == schema_from_fbs()
    assert [f.name for f in SCHEMA[VERSION_HEADER]] == [f.name for f in SCHEMA["BundleFile"][:2]]


def test_valid_bundles_pass():
    data, _ = serialize_bundle(tiny_bundle())
    verify_buffer(data, "BundleFile")  # with the nested body


def body_parts(data: bytes) -> tuple[int, BundleBody.BundleBody]:
    env = read_envelope(data)
    return env.body_start, BundleBody.BundleBody.GetRootAs(data, env.body_start)


def resealed(data: bytearray) -> bytes:
    """The (possibly damaged) body in a fresh envelope with a matching digest, so the damage reaches the body check."""
    root = BundleFile.BundleFile.GetRootAs(bytes(data), 0)
    start = root._tab.Vector(8)
    body = bytes(data[start : start + root.BodyLength()])
    return serialize_envelope(body, (1, 1), hashlib.sha256(body).digest())


def labels_vector(data: bytes) -> int:
    _, body = body_parts(data)
    return body._tab.Vector(body._tab.Offset(8)) - 4


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("table soffset", "outside the buffer"),
        ("vector length", "declares 4294967295 elements"),
        ("string terminator", "not zero-terminated"),
        ("vtable size", "vtable size"),
        ("misaligned offset", "not aligned"),
    ],
)
def test_damaged_structure_is_named(damage, message):
    data = bytearray(serialize_bundle(tiny_bundle())[0])
    start, body = body_parts(bytes(data))
    if damage == "table soffset":
        struct.pack_into("<i", data, body._tab.Pos, -0x7FFFFFF0)
    elif damage == "vector length":
        struct.pack_into("<I", data, labels_vector(bytes(data)), 0xFFFFFFFF)
    elif damage == "string terminator":
        first = labels_vector(bytes(data)) + 4
        string = first + struct.unpack_from("<I", data, first)[0]
        n = struct.unpack_from("<I", data, string)[0]
        data[string + 4 + n] = ord("x")
    elif damage == "vtable size":
        vtable = body._tab.Pos - struct.unpack_from("<i", data, body._tab.Pos)[0]
        struct.pack_into("<H", data, vtable, 3)
    elif damage == "misaligned offset":
        struct.pack_into("<I", data, start, struct.unpack_from("<I", data, start)[0] + 1)
    with pytest.raises(BundleError, match=message):
        parse_bundle(resealed(data))


def test_offsets_shared_to_multiply_the_work_are_bounded():
    """30,000 labels that all point at one string: a small file, but too many objects to walk."""
    b = flatbuffers.Builder(1024)
    label = b.CreateString("same")
    b.StartVector(4, 30_000, 4)
    for _ in range(30_000):
        b.PrependUOffsetTRelative(label)
    labels = b.EndVector()
    BundleBody.Start(b)
    BundleBody.AddLabels(b, labels)
    b.Finish(BundleBody.End(b))
    body = bytes(b.Output())
    data = serialize_envelope(body, (1, 1), hashlib.sha256(body).digest())
    assert len(data) < 200_000
    with pytest.raises(BundleError, match=f"more than {MAX_OBJECTS} tables and strings"):
        parse_bundle(data)


def test_fields_of_a_newer_minor_version_are_skipped():
    body = _build_body(tiny_bundle())
    b = flatbuffers.Builder(len(body) + 256)
    vec = b.CreateByteVector(body)
    sha = b.CreateByteVector(hashlib.sha256(body).digest())
    b.StartObject(9)
    b.PrependUint16Slot(0, 1, 0)
    b.PrependUint16Slot(1, 7, 0)
    b.PrependUOffsetTRelativeSlot(2, vec, 0)
    b.PrependUOffsetTRelativeSlot(3, sha, 0)
    b.PrependUint32Slot(8, 12345, 0)  # a field this reader has never heard of
    b.Finish(b.EndObject(), file_identifier=b"S2LB")
    assert parse_bundle(bytes(b.Output())).format_version == (1, 7)
