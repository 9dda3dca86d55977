"""npz + data: hostile sample files are refused before they cost memory, with a message naming the problem."""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pytest
import s2rt.npz as npz
from helpers.mutate import npz_bytes
from s2rt.bundle import InputSignature
from s2rt.data import MAX_CHARS_PER_VALUE, load_samples
from s2rt.errors import RuntimeInputError

SIG = InputSignature("x", (4,))


def refused(tmp_path, name: str, data: bytes, match: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(RuntimeInputError, match=match):
        load_samples(path, SIG, num_classes=3)


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    monkeypatch.setattr(npz, "MIN_BUDGET", 1 << 20)
    bomb = npz_bytes(compressed=True, x=np.zeros((1 << 19, 4), np.float32))  # 8 MiB of zeros in a few KiB
    assert len(bomb) < 64 << 10
    refused(tmp_path, "bomb.npz", bomb, r"declare 8,388,7\d\d bytes, more than the 1,048,576 allowed")


def npy(array: np.ndarray, shape: tuple[int, ...] | None = None) -> bytes:
    """An .npy member; with `shape`, its header claims that shape whatever the data."""
    buffer = io.BytesIO()
    header = {"descr": array.dtype.str, "fortran_order": False, "shape": shape or array.shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + array.tobytes()


def zipped(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def test_a_header_that_promises_more_than_the_member_holds_is_refused_unallocated(tmp_path):
    lie = npy(np.ones((3, 4), np.float32), shape=(1 << 28, 4))  # 4 GiB promised, 48 bytes held
    message = r"declares float32 \(268435456, 4\) \(4,294,967,296 bytes\) but the member holds 48"
    refused(tmp_path, "lie.npz", zipped(**{"x.npy": lie}), message)


def test_a_negative_shape_is_named_even_when_its_product_matches_the_data(tmp_path):
    member = npy(np.ones((2, 4), np.float32), shape=(-2, -4))
    refused(tmp_path, "negative.npz", zipped(**{"x.npy": member}), r"shape \(-2, -4\), with a negative dimension")


def test_an_unparsable_npy_header_is_named(tmp_path):
    """Found by fuzzing: numpy re-parses a bad header with tokenize, which raised TokenError."""
    member = npy(np.ones((2, 4), np.float32)).replace(b"(2, 4)", b"(2, 4\x00")
    refused(tmp_path, "bad.npz", zipped(**{"x.npy": member}), r"unreadable .npy header \(TokenError\)")


def test_object_arrays_and_stray_members_are_refused(tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"a": 1}], dtype=object))
    refused(tmp_path, "obj.npz", buffer.getvalue(), "Python objects")
    stray = zipped(**{"x.npy": npy(np.ones((2, 4))), "notes.txt": b"hello"})
    refused(tmp_path, "stray.npz", stray, "'notes.txt' is not an .npy array")


def test_an_encrypted_member_is_named(tmp_path):
    data = bytearray(npz_bytes(x=np.ones((2, 4), np.float32)))
    central = data.index(b"PK\x01\x02")
    flags = struct.unpack_from("<H", data, central + 8)[0]
    struct.pack_into("<H", data, central + 8, flags | 1)
    refused(tmp_path, "enc.npz", bytes(data), "is encrypted")


def test_a_valid_npz_reads_as_np_load_does(tmp_path):
    x = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))
    (tmp_path / "ok.npz").write_bytes(npz_bytes(compressed=True, x=x, y=np.array([0, 1, 2])))
    s = load_samples(tmp_path / "ok.npz", SIG, num_classes=3)
    np.testing.assert_array_equal(s.x, x.astype(np.float32))
    assert s.y.tolist() == [0, 1, 2]


def test_an_overlong_csv_line_is_refused_without_reading_it_whole(tmp_path):
    refused(tmp_path, "long.csv", b"1," * (MAX_CHARS_PER_VALUE * 5 + 5000) + b"1\n", "a line longer than")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b,c,d,e,label\n1,2,3,4,0\n", "rows have 6 values"),  # a header wider than its rows
        ("1,2,3,4,0\n1,2,3\n", "row 2 has 3 values"),
        ("1,2,3,4,1e300\n", "labels range"),
        ("1,2,3,1e300,0\n", "values beyond float32"),
        ("a,b,c,d\n", "no samples"),
    ],
)
def test_bad_csv_is_named(tmp_path, text, match):
    refused(tmp_path, "d.csv", text.encode(), match)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.float32(3.0)}, "no samples"),
        ({"x": np.ones((2, 4)), "y": np.array([0, 2**40])}, "labels range"),
        ({"x": np.full((2, 4), 1e300)}, "values beyond float32"),
    ],
)
def test_bad_npz_values_are_named(tmp_path, arrays, match):
    refused(tmp_path, "d.npz", npz_bytes(**arrays), match)
