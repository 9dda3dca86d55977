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
from s2rt.serve.errors import ApiError, invalid

MAX_NPY_HEADER = 10_000


def samples_from_json(value: Any, sig: InputSignature, field: str = "x") -> tuple[np.ndarray, bool]:
    """(batch (N, *shape) of the input dtype, whether `value` was one sample rather than a list of them)."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        raise invalid(field, "nested lists of different lengths; expected a rectangular array of numbers") from None
    if arr.dtype.kind not in "fiu":
        found = "strings" if arr.dtype.kind == "U" else "true/false" if arr.dtype.kind == "b" else "null or mixed values"
        raise invalid(field, f"expected numbers, found {found}")
    return checked_batch(arr, sig, field)


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
    bad = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    if bad.any():
        where = "" if single else f" (sample {int(np.flatnonzero(bad)[0])})"
        raise invalid(field, f"contains NaN, Inf or a value outside {sig.dtype.name.lower()}{where}")
    return out, single


def labels_from_json(value: Any, labels: tuple[str, ...], n: int, single: bool, field: str = "y") -> np.ndarray:
    """Class indices for `n` samples from an index or label name (one sample) or a list of them."""
    if single:
        if isinstance(value, list):
            raise invalid(field, "x is one sample, so y must be one label (a class index or name), not a list")
        return np.array([_label(value, labels, field)], np.int64)
    if not isinstance(value, list):
        raise invalid(field, f"x is a batch of {n} samples, so y must be a list of {n} labels")
    if len(value) != n:
        raise invalid(field, f"{len(value)} labels for {n} samples")
    return np.array([_label(v, labels, f"{field}[{i}]") for i, v in enumerate(value)], np.int64)


def _label(value: Any, labels: tuple[str, ...], field: str) -> int:
    if isinstance(value, str):
        if value in labels:
            return labels.index(value)
        raise invalid(field, f"unknown label {value!r}; the bundle's labels are {list(labels)}")
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(labels):
            return value
        raise invalid(field, f"class index {value} is outside 0..{len(labels) - 1}")
    raise invalid(field, f"expected a class index or label name, found {value!r}")


__all__ = ["ApiError", "checked_batch", "labels_from_json", "npy_array", "samples_from_json", "samples_from_npy"]
