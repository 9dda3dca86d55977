"""Request payloads to checked arrays: samples from JSON or a raw `.npy` body, labels.

Every refusal is an `ApiError` (422) that names the field and says what was expected.
A `.npy` body is parsed here, not by `np.load`: its header is checked against the body
length before any allocation, and object arrays are refused (no pickle).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from s2rt.bundle.model import InputSignature
from s2rt.errors import RuntimeInputError
from s2rt.heads.grown import check_new_labels
from s2rt.serve.errors import ApiError, invalid

MAX_NPY_HEADER = 10_000


def samples_from_json(value: Any, sig: InputSignature, field: str = "x") -> tuple[np.ndarray, bool]:
    """(batch (N, *shape) of the input dtype, whether `value` was one sample rather than a list of them)."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        raise invalid(field, "nested lists of different lengths; expected a rectangular array of numbers") from None
    if arr.dtype.kind == "O":
        arr = _numbers_in(arr, field)
    if arr.dtype.kind not in "fiu":
        found = "strings" if arr.dtype.kind == "U" else "true/false" if arr.dtype.kind == "b" else f"{arr.dtype} values"
        raise invalid(field, f"expected numbers, found {found}")
    return checked_batch(arr, sig, field)


def _numbers_in(arr: np.ndarray, field: str) -> np.ndarray:
    """NumPy makes an object array of JSON numbers when one is an integer beyond int64 (2**70), or of
    a mix with null, true/false, objects: float64 values, or an error naming the first bad element."""
    for index, v in np.ndenumerate(arr):
        where = field + "".join(f"[{i}]" for i in index)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _invalid_at(field, where, f"expected a number, found {_json_kind(v)}")
        try:
            float(v)
        except OverflowError:
            limit = np.finfo(np.float64).max
            raise _invalid_at(field, where, f"an integer of {len(str(abs(v)))} digits is out of range (beyond ±{limit:.3g})") from None
    return arr.astype(np.float64)


def _invalid_at(field: str, where: str, message: str) -> ApiError:
    """A refusal of `field` whose message points inside it (x[2][5])."""
    return ApiError(422, "invalid_input", f"{where}: {message}", field)


def _json_kind(v: Any) -> str:
    return {type(None): "null", bool: "true/false", str: "a string", dict: "an object", list: "a list"}.get(type(v), type(v).__name__)


def samples_from_npy(body: bytes, sig: InputSignature, field: str = "body") -> tuple[np.ndarray, bool]:
    return checked_batch(npy_array(body, field), sig, field)


def npy_array(body: bytes, field: str) -> np.ndarray:
    f = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_NPY_HEADER)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_NPY_HEADER)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, SyntaxError, TypeError, EOFError) as e:
        raise invalid(field, f"not a .npy array ({e})") from None
    if dtype.hasobject or dtype.kind not in "fiu":
        raise invalid(field, f"array dtype is {dtype}, expected numbers (float32 preferred)")
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise invalid(field, f"the .npy header's shape {shape} has a negative dimension")
    count = math.prod(shape)
    if len(body) - f.tell() != count * dtype.itemsize:
        raise invalid(field, f"header says {dtype} {shape} ({count * dtype.itemsize} bytes) but {len(body) - f.tell()} data bytes follow")
    arr = np.frombuffer(body, dtype=dtype, count=count, offset=f.tell())
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def checked_batch(arr: np.ndarray, sig: InputSignature, field: str) -> tuple[np.ndarray, bool]:
    shape = sig.shape
    if arr.shape == shape:
        arr, single = arr.reshape((1, *shape)), True
    elif arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
        single = False
    else:
        batch = ", ".join(["N", *map(str, shape)])
        raise invalid(field, f"expected one sample of shape {list(shape)} or a batch of shape [{batch}], found shape {list(arr.shape)}")
    if not len(arr):
        raise invalid(field, "the batch holds no samples")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=sig.dtype.numpy)
    bad = ~np.isfinite(out.reshape(len(out), -1))
    if bad.any():
        n, k = (int(i) for i in np.argwhere(bad)[0])
        where = f"{field}[{k}]" if single else f"{field}[{n}][{k}]" if len(shape) == 1 else f"{field} (sample {n}, value {k})"
        value = arr.reshape(len(arr), -1)[n, k]
        if np.isfinite(value):
            limit = np.finfo(sig.dtype.numpy).max
            raise _invalid_at(field, where, f"{value:g} is out of range for {sig.dtype.name.lower()} (beyond ±{limit:.3g})")
        raise _invalid_at(field, where, "NaN or Infinity is not a sample value")
    return out, single


def labels_from_json(value: Any, labels: tuple[str, ...], n: int, single: bool, field: str = "y") -> np.ndarray:
    """Class indices for `n` samples from an index or label name (one sample) or a list of them."""
    return labels_and_new_classes(value, labels, n, single, field)[0]


def labels_and_new_classes(
    value: Any, labels: tuple[str, ...], n: int, single: bool, field: str = "y", allow_new: bool = False
) -> tuple[np.ndarray, tuple[str, ...]]:
    """As `labels_from_json`; with `allow_new`, names not in `labels` become new classes: they
    get the indices after `labels` in the order they first appear, and are returned (second)."""
    if single and isinstance(value, list):
        raise invalid(field, "x is one sample, so y must be one label (a class index or name), not a list")
    if not single and not isinstance(value, list):
        raise invalid(field, f"x is a batch of {n} samples, so y must be a list of {n} labels")
    if not single and len(value) != n:
        raise invalid(field, f"{len(value)} labels for {n} samples")
    values = [value] if single else value
    index = {label: i for i, label in enumerate(labels)}
    added: list[str] = []
    out = np.empty(len(values), np.int64)
    for i, v in enumerate(values):
        where = field if single else f"{field}[{i}]"
        if isinstance(v, str) and v not in index and allow_new:
            try:
                check_new_labels([v], labels, where, RuntimeInputError)
            except RuntimeInputError as e:
                raise ApiError(422, "invalid_input", str(e), where) from None
            index[v] = len(labels) + len(added)
            added.append(v)
        out[i] = _label(v, index, len(labels) + len(added), where)
    return out, tuple(added)


def _label(value: Any, index: dict[str, int], count: int, field: str) -> int:
    if isinstance(value, str):
        if value in index:
            return index[value]
        raise invalid(
            field,
            f"unknown label {value!r}; the labels are {list(index)[:50]}; "
            "to learn new classes by name, start the daemon with --allow-new-classes",
        )
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < count:
            return value
        raise invalid(field, f"class index {value} is outside 0..{count - 1}")
    raise invalid(field, f"expected a class index or label name, found {value!r}")


__all__ = ["ApiError", "checked_batch", "labels_and_new_classes", "labels_from_json", "npy_array", "samples_from_json", "samples_from_npy"]
