"""Sample files: `.npz` (arrays `x` and, for training, `y`) or CSV. No pickle, ever.

CSV: one sample per row, numbers only, an optional header. A row with one value more
than the input size carries its label last (or in a column named `label` / `y` when
there is a header); a row of exactly the input size is unlabelled.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from s2rt.bundle.model import InputSignature
from s2rt.errors import RuntimeInputError
from s2rt.npz import read_npz

LABEL_COLUMNS = ("label", "y")
MAX_CHARS_PER_VALUE = 64  # a CSV line may hold this many characters per expected value...
MAX_HEADER_CHARS = 4096  # ...plus this many (long column names)
MAX_LABEL = 2**31
LabelIndex = Callable[[np.ndarray], np.ndarray]  # label names -> class indices (the model's `label_indices`)


@dataclass(frozen=True)
class Samples:
    x: np.ndarray  # (N, *input shape)
    y: np.ndarray | None  # (N,) int64, or None when unlabelled


def load_samples(
    path: str | os.PathLike[str],
    signature: InputSignature,
    num_classes: int | None = None,
    require_labels: bool = False,
    label_index: LabelIndex | None = None,
) -> Samples:
    """Read a sample file and check it against the bundle's input signature. An .npz file's
    `y` may hold label names (strings): `label_index` turns them into class indices."""
    p = Path(path)
    if p.is_dir():
        raise RuntimeInputError(f"{p}: is a folder, expected a data file (.npz or .csv)")
    if not p.is_file():
        raise RuntimeInputError(f"{p}: no such data file")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        x, y = _read_npz(p)
    elif suffix in (".csv", ".txt"):
        x, y = _read_csv(p, signature.size)
    else:
        raise RuntimeInputError(f"{p}: unknown data file type {suffix!r}; expected .npz (arrays x, y) or .csv")
    if y is not None and y.dtype.kind in "US":
        if label_index is None:
            raise RuntimeInputError(f"{p}: labels are names ({y.dtype}); expected integer class indices here")
        try:
            y = label_index(y)
        except RuntimeInputError as e:
            raise RuntimeInputError(f"{p}: {e}") from None
        num_classes = None  # the indices come from the model's own (possibly just grown) labels
    return _checked(p, x, y, signature, num_classes, require_labels)


def check_samples(x: object, y: object, signature: InputSignature, num_classes: int | None = None, require_labels: bool = False) -> Samples:
    """Arrays (or nested lists) checked and cast as `load_samples` checks a file's."""
    return _checked(Path("<arrays>"), np.asarray(x), None if y is None else np.asarray(y), signature, num_classes, require_labels)


def _read_npz(p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    arrays = read_npz(p, RuntimeInputError, ".npz file")
    if "x" not in arrays:
        raise RuntimeInputError(f"{p}: has arrays {sorted(arrays)}, expected 'x' (and 'y' for labels)")
    return arrays["x"], arrays.get("y")


def _read_csv(p: Path, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows streamed into one float64 buffer: memory is 8 bytes per value, whatever the text."""
    columns = size + 1
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = csv.reader(_bounded_lines(p, f, MAX_CHARS_PER_VALUE * columns + MAX_HEADER_CHARS))
            first = next((row for row in rows if row), None)
            if first is None:
                raise RuntimeInputError(f"{p}: no rows")
            header = None if _is_number(first[0]) else [h.strip().lower() for h in first]
            width = len(header) if header is not None else len(first)
            if width not in (size, columns):
                raise RuntimeInputError(f"{p}: rows have {width} values, expected {size} features (+1 label)")
            values = array("d")
            for i, row in enumerate(rows if header is not None else itertools.chain([first], rows)):
                if not row:
                    continue
                if len(row) != width:
                    raise RuntimeInputError(f"{p}: row {i + 1} has {len(row)} values, expected {width}")
                try:
                    values.extend(float(v) for v in row)
                except ValueError:
                    raise RuntimeInputError(f"{p}: row {i + 1} holds a value that is not a number") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise RuntimeInputError(f"{p}: not a readable CSV file ({e})") from None
    table = np.frombuffer(values, dtype=np.float64).reshape(-1, width)
    if width == size:
        return table, None
    label_col = next((header.index(c) for c in LABEL_COLUMNS if c in header), None) if header is not None else None
    col = width - 1 if label_col is None else label_col
    return np.delete(table, col, axis=1), table[:, col]


def _bounded_lines(p: Path, f: TextIO, limit: int) -> Iterator[str]:
    """The file's lines, refusing one longer than `limit` characters before holding it whole."""
    while line := f.readline(limit + 1):
        if len(line) > limit:
            raise RuntimeInputError(f"{p}: a line longer than {limit:,} characters; expected one sample per line")
        yield line


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _checked(
    p: Path,
    x: np.ndarray,
    y: np.ndarray | None,
    signature: InputSignature,
    num_classes: int | None,
    require_labels: bool,
) -> Samples:
    if x.dtype.kind not in "fiu":
        raise RuntimeInputError(f"{p}: x has dtype {x.dtype}, expected numbers")
    if x.ndim == 0 or len(x) == 0:
        raise RuntimeInputError(f"{p}: holds no samples (x has shape {x.shape})")
    if x.shape[1:] != signature.shape:
        if math.prod(x.shape[1:]) != signature.size:
            raise RuntimeInputError(
                f"{p}: samples have shape {x.shape[1:]}, the bundle's input {signature.name!r} expects {signature.shape}"
            )
        x = x.reshape((len(x), *signature.shape))
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become Inf, refused below
        x = x.astype(signature.dtype.numpy, copy=False)
    if not np.isfinite(x).all():
        raise RuntimeInputError(f"{p}: x contains NaN or Inf, or values beyond {signature.dtype.name.lower()}")
    if y is None:
        if require_labels:
            raise RuntimeInputError(f"{p}: has no labels (array 'y' / a label column), which training needs")
        return Samples(x, None)
    return Samples(x, _labels(p, y, len(x), num_classes))


def _labels(p: Path, y: np.ndarray, n: int, num_classes: int | None) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if len(y) != n:
        raise RuntimeInputError(f"{p}: {len(y)} labels for {n} samples")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            raise RuntimeInputError(f"{p}: labels must be whole class indices")
    elif y.dtype.kind not in "iu":
        raise RuntimeInputError(f"{p}: labels have dtype {y.dtype}, expected integer class indices")
    if len(y) and (y.min() < -MAX_LABEL or y.max() > MAX_LABEL):  # before the cast, which would wrap them
        raise RuntimeInputError(f"{p}: labels range from {y.min()} to {y.max()}, not class indices")
    y = y.astype(np.int64)
    if num_classes is not None and ((y < 0) | (y >= num_classes)).any():
        bad = int(y[(y < 0) | (y >= num_classes)][0])
        raise RuntimeInputError(f"{p}: label {bad} is outside the bundle's classes 0..{num_classes - 1}")
    return y
