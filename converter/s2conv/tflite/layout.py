"""Tensor layouts: how a TFLite tensor's axes map to its ONNX tensor's axes.

A layout is a permutation `p` with `tflite_dims[i] == onnx_dims[p[i]]`. ONNX feature maps
are NCHW, TFLite's convolutions and pools want NHWC: conv-like ops produce channels-last
tensors and every other op works in whatever layout its input has, mapping its axes
through `p`. A tensor changes layout only where an op needs the ONNX order (a Flatten of
a feature map, a graph output), so there is no Transpose around every op.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Layout = tuple[int, ...]
BATCH = -1  # the batch dimension in shapes: -1 in a TFLite shape signature


def identity(rank: int) -> Layout:
    return tuple(range(rank))


def channels_last(rank: int) -> Layout:
    """NCHW -> NHWC (and NCW -> NWC, NCDHW -> NDHWC)."""
    return (0, *range(2, rank), 1)


def permute(values: Sequence[int], layout: Layout) -> tuple[int, ...]:
    """The ONNX-ordered `values` in the layout's order."""
    return tuple(values[p] for p in layout)


def axis_in(layout: Layout, onnx_axis: int) -> int:
    """Where ONNX axis `onnx_axis` (normalised, >= 0) sits in the TFLite tensor."""
    return layout.index(onnx_axis)


def transpose_between(current: Layout, wanted: Layout) -> tuple[int, ...]:
    """The TRANSPOSE permutation that turns a tensor in `current` into `wanted`."""
    return tuple(current.index(axis) for axis in wanted)


def is_pure_reshape(onnx_shape: Sequence[int], current: Layout, wanted: Layout) -> bool:
    """True if going from `current` to `wanted` moves only size-1 axes, so the bytes stay
    in the same order and a RESHAPE (no data movement) does the job."""
    moves = transpose_between(current, wanted)
    big = [new for new, old in enumerate(moves) if onnx_shape[current[old]] != 1]
    order = [moves[new] for new in big]
    return order == sorted(order)


def constant_in(array: np.ndarray, rank: int, layout: Layout) -> np.ndarray:
    """An ONNX-broadcastable constant for an operand of rank `rank`, laid out like it."""
    if array.ndim > rank:
        raise ValueError(f"a constant of rank {array.ndim} cannot broadcast against a tensor of rank {rank}")
    full = array.reshape((1,) * (rank - array.ndim) + array.shape)
    return np.ascontiguousarray(full.transpose(layout))
