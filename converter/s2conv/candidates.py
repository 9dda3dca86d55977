"""What `s2conv inspect model.onnx` shows: every candidate tap of a plain ONNX model
with its cost, so a user can choose taps before converting.

A candidate is a main-path tensor (`blocks.main_path`): a point where the network is a
single tensor. For each: the shape, how `--tap-pool` reduces it, the floats and cache
bytes it adds per sample, and the adapter parameters it adds at the chosen rank. The
taps `--taps auto` would choose are marked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto
from s2rt.bundle.model import OutputActivation, Tap, plan_cache_layout
from s2rt.errors import UnsupportedGraphError

from s2conv.analyse import find_taps, input_signature, strip_output_activation
from s2conv.batch import fixed_batch
from s2conv.blocks import main_path
from s2conv.graph import GraphView, view_graph
from s2conv.load import LoadedModel
from s2conv.reduce import describe_pooling, plan_pooling

MAX_OPS_SHOWN = 4


@dataclass(frozen=True)
class Candidate:
    tensor: str
    produced_by: str  # op, or "input"
    next_ops: tuple[str, ...]  # the ops of the stage it starts
    shape: tuple[int, ...]  # per sample, before reduction
    reduction: str
    size: int  # floats per sample after reduction
    auto: bool


def describe_model(loaded: LoadedModel, rank: int, tap_pool: int, cache_dtype: Any) -> dict[str, Any]:
    """The candidate taps of `loaded` and the cost of the automatic choice, JSON-ready."""
    view = view_graph(loaded.model, loaded.input_name, loaded.output_name)
    logits, activation = strip_output_activation(view)
    signature = input_signature(view)
    notes = list(loaded.notes)
    if activation is not OutputActivation.NONE:
        notes.append(f"the trailing {activation.name.lower()} is cut off; the bundle's logits are {logits!r}")
    batch = fixed_batch(loaded.model.graph, loaded.input_name)
    if batch is not None:
        notes.append(f"the model fixes the batch size to {batch}; the frozen segment gets a free batch dimension")
    try:
        plan = find_taps(view, None, tap_pool)
    except UnsupportedGraphError as e:
        plan, notes = None, [*notes, f"no automatic taps: {e}"]
    auto = {t.source for t in plan.taps} if plan else set()
    candidates = _candidates(view, logits, tap_pool, auto)
    logits_shape = view.value(logits).sample_shape
    num_outputs = plan.num_outputs if plan else (logits_shape[-1] if logits_shape else 0)
    out: dict[str, Any] = {
        "model": str(loaded.path),
        "sha256": loaded.sha256,
        "input": {"name": signature.name, "shape": list(signature.shape), "dtype": signature.dtype.name.lower()},
        "logits": logits,
        "num_outputs": num_outputs,
        "output_activation": activation.name.lower(),
        "notes": notes,
        "rank": rank,
        "tap_pool": tap_pool,
        "cache_dtype": cache_dtype.name.lower(),
        "model_parameters": model_parameters(loaded),
        "candidates": [_candidate_json(c, rank, num_outputs, cache_dtype) for c in candidates],
    }
    if plan is not None:
        taps = tuple(Tap(t.source, t.source, t.layer, t.shape, t.pooling.reduction) for t in plan.taps)
        last = taps[-1].size
        out["auto"] = {
            "taps": [t.source for t in taps],
            "tap_width": sum(t.size for t in taps),
            "cache_record_bytes": plan_cache_layout(taps, num_outputs, cache_dtype).record_size,
            "adapter_parameters": {
                "skip2lora": rank * sum(t.size for t in taps) + rank * num_outputs * len(taps),
                "lora-last": rank * (last + num_outputs),
                "ft-last": num_outputs * (last + 1),
                "ft-bias": num_outputs,
            },
        }
    return out


def _candidates(view: GraphView, logits: str, tap_pool: int, auto: set[str]) -> list[Candidate]:
    out = []
    for stage in main_path(view, logits):
        value = view.value(stage.input)
        shape = value.sample_shape
        if shape is None or not value.is_float:
            continue
        try:
            pooling = plan_pooling(stage.input, shape, tap_pool)
            reduction, size = describe_pooling(pooling), int(np.prod(pooling.reduced_shape))
        except UnsupportedGraphError:
            reduction, size = f"cannot pool to {tap_pool}x{tap_pool}", int(np.prod(shape))
        producer = view.producer(stage.input)
        out.append(Candidate(stage.input, producer.op if producer else "input", stage.ops, shape, reduction, size, stage.input in auto))
    return out


def _candidate_json(c: Candidate, rank: int, num_outputs: int, cache_dtype: Any) -> dict[str, Any]:
    return {
        "tensor": c.tensor,
        "auto": c.auto,
        "produced_by": c.produced_by,
        "next_ops": list(c.next_ops),
        "shape": list(c.shape),
        "reduction": c.reduction,
        "size": c.size,
        "cache_bytes": c.size * cache_dtype.numpy.itemsize,
        "adapter_parameters": rank * (c.size + num_outputs),
    }


def model_parameters(loaded: LoadedModel) -> int:
    """Float numbers in the model's initialisers: its weights."""
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
    return sum(int(np.prod(init.dims)) for init in loaded.model.graph.initializer if init.data_type in floats)


def render_model_text(d: dict[str, Any]) -> str:
    """The human-readable view of `describe_model`'s result."""
    i = d["input"]
    lines = [
        f"model       {d['model']}  sha256 {d['sha256']}",
        f"input       {i['name']}  {i['dtype']} [{', '.join(str(n) for n in i['shape'])}]",
        f"logits      {d['logits']}  ({d['num_outputs']} classes)",
        f"weights     {d['model_parameters']:,} parameters",
        *(f"note        {note}" for note in d["notes"]),
        f"candidates  {len(d['candidates'])} main-path tensors (* = chosen by --taps auto); "
        f"rank {d['rank']}, --tap-pool {d['tap_pool']}, {d['cache_dtype']} cache",
    ]
    rows = [
        [
            "*" if c["auto"] else "",
            c["tensor"],
            c["produced_by"],
            _ops(c["next_ops"]),
            "[" + ", ".join(str(n) for n in c["shape"]) + "]",
            c["reduction"],
            str(c["size"]),
            f"{c['cache_bytes']:,}",
            f"{c['adapter_parameters']:,}",
        ]
        for c in d["candidates"]
    ]
    header = ["", "tensor", "from", "then", "shape", "reduction", "floats", "cache B", "adapter params"]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines += ["            " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    auto = d.get("auto")
    if auto:
        params = auto["adapter_parameters"]
        lines += [
            f"auto taps   {len(auto['taps'])}, fused width {auto['tap_width']}, "
            f"cache record {auto['cache_record_bytes']:,} bytes per sample",
            "adapters    "
            + ", ".join(f"{method} {n:,}" for method, n in params.items())
            + f" parameters (the model has {d['model_parameters']:,})",
        ]
    return "\n".join(lines)


def _ops(ops: list[str]) -> str:
    shown = " ".join(ops[:MAX_OPS_SHOWN])
    return shown + (f" … ({len(ops)} ops)" if len(ops) > MAX_OPS_SHOWN else "")
