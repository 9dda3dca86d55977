"""Tap reductions: a conv feature map is averaged inside the frozen segment, so the
Skip-Cache holds a few floats per channel instead of the whole map.

ONNX feature maps are [N, C, spatial...]. With grid g = 1 a tap becomes
GlobalAveragePool → Flatten, [N, C]. With g > 1 it is averaged to a g x g (x g ...) grid
like torch's `adaptive_avg_pool2d(x, g)`, with one AveragePool whose kernel and stride
reproduce the adaptive windows, [N, C, g, g]. Both ops are in every ONNX opset and in
TFLite (AVERAGE_POOL_2D, MEAN), so every backend can run them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from onnx import NodeProto, TensorProto, helper
from s2rt.bundle.model import TapReduction
from s2rt.errors import UnsupportedGraphError

MAX_GRID = 8


@dataclass(frozen=True)
class Pooling:
    """How one tap is reduced: the per-sample shape before and after, and the AveragePool window."""

    reduction: TapReduction
    shape: tuple[int, ...]  # per sample, before: [C, spatial...]
    reduced_shape: tuple[int, ...]  # per sample, after
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()


def plan_pooling(tensor: str, shape: tuple[int, ...], grid: int) -> Pooling:
    """The reduction of a tap of per-sample `shape` under `--tap-pool grid` (0: none).

    Vectors (rank 1 per sample) are never reduced. Raises `UnsupportedGraphError` when a
    spatial size cannot be pooled to the grid by one uniform AveragePool window.
    """
    if grid == 0 or len(shape) < 2:
        return Pooling(TapReduction.NONE, shape, shape)
    channels, spatial = shape[0], shape[1:]
    if grid == 1:
        return Pooling(TapReduction.GLOBAL_AVG_POOL, shape, (channels,))
    windows = [_uniform_window(tensor, size, grid) for size in spatial]
    cells = tuple(min(grid, size) for size in spatial)
    return Pooling(TapReduction.AVG_POOL, shape, (channels, *cells), tuple(k for k, _ in windows), tuple(s for _, s in windows))


def _uniform_window(tensor: str, size: int, grid: int) -> tuple[int, int]:
    window = _window(size, grid)
    if window is None:
        fits = [g for g in range(1, min(size, MAX_GRID) + 1) if _window(size, g) is not None]
        raise UnsupportedGraphError(
            f"tap {tensor!r} has a spatial size of {size}, which one AveragePool window cannot split into {grid} "
            f"equal cells; choose --tap-pool {' or '.join(str(g) for g in fits)} (or 0 to cache whole feature maps)"
        )
    return window


def _window(size: int, grid: int) -> tuple[int, int] | None:
    """(kernel, stride) of one AveragePool axis that gives adaptive pooling's windows
    [floor(i size / g), ceil((i + 1) size / g)), if one uniform window does."""
    cells = min(grid, size)
    bounds = [(i * size // cells, -(-(i + 1) * size // cells)) for i in range(cells)]
    kernel = bounds[0][1] - bounds[0][0]
    stride = bounds[1][0] - bounds[0][0] if cells > 1 else kernel
    uniform = all(end - start == kernel and start == i * stride for i, (start, end) in enumerate(bounds))
    return (kernel, stride) if uniform else None


def pooling_nodes(source: str, output: str, pooling: Pooling, elem_type: int) -> list[NodeProto]:
    """Nodes that compute segment output `output` (float32) from tap tensor `source`."""
    name = output
    nodes: list[NodeProto] = []
    if elem_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [source], [f"{name}/float"], name=f"{name}/Cast", to=TensorProto.FLOAT))
        source = f"{name}/float"
    if pooling.reduction == TapReduction.NONE:
        nodes.append(helper.make_node("Identity", [source], [output], name=f"{name}/Identity"))
    elif pooling.reduction == TapReduction.GLOBAL_AVG_POOL:
        nodes.append(helper.make_node("GlobalAveragePool", [source], [f"{name}/pooled"], name=f"{name}/GlobalAveragePool"))
        nodes.append(helper.make_node("Flatten", [f"{name}/pooled"], [output], name=f"{name}/Flatten", axis=1))
    else:
        nodes.append(
            helper.make_node(
                "AveragePool",
                [source],
                [output],
                name=f"{name}/AveragePool",
                kernel_shape=list(pooling.kernel),
                strides=list(pooling.strides),
            )
        )
    return nodes


def describe_pooling(pooling: Pooling) -> str:
    """`none`, `global average`, or `average to 2x2`: how `inspect` names a reduction."""
    if pooling.reduction == TapReduction.NONE:
        return "none"
    if pooling.reduction == TapReduction.GLOBAL_AVG_POOL:
        return "global average"
    return "average to " + "x".join(str(n) for n in pooling.reduced_shape[1:])


def reduced_size(pooling: Pooling) -> int:
    return math.prod(pooling.reduced_shape)
