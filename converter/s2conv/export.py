"""`s2conv export`: one standalone model with the trained adapters baked in.

The bundle's ONNX frozen segment plus, per tap l, one MatMul by W_l^T and an Add:

    z = F + sum_l x_l W_l^T,    W_l = (alpha / rank) B_l A_l   (C x d_l)

then the source model's output activation (softmax, log-softmax) re-applied. Heads that
cannot fold into one matrix per tap (skip2relu, oselm-rf: `s2rt.heads.branches`) add their
branches instead: per branch MatMuls by the taps, a bias, a Relu and a MatMul to the
logits, the taps' standardization folded into the first MatMul. The result
equals `s2rt predict`'s tuned logits (`Model.logits`), activation applied; written as
.onnx, or as .tflite through the TFLite emitter; a bundle with only a TFLite segment gets
the same ops appended to that segment (`s2conv.tflite.tuned`). For devices that only
predict after tuning, or to send a tuned model home.

Adapters that learned classes the bundle lacks (`new_labels`, `s2rt.heads.grown`) export
as one linear branch over C + K logits; the frozen logits are first widened to C + K by
a MatMul with [I | 0] (the new classes' frozen logit is 0, as in the runtime). Every
exported file carries its class labels, in output order, as JSON under `s2l.labels`: ONNX
`metadata_props`, TFLite Model `metadata` (`exported_labels` reads either).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from s2rt.bundle.model import Bundle, OutputActivation, SegmentBackend
from s2rt.errors import ConversionError, StateError
from s2rt.head import AdapterHead
from s2rt.heads.branches import Branch
from s2rt.heads.grown import check_new_labels, grow
from s2rt.methods import get_method
from s2rt.state import load_adapters, load_state

from s2conv.version import PRODUCER, __version__

log = logging.getLogger(__name__)

Adapters = Sequence[tuple[np.ndarray, np.ndarray]]
# The output's name when the source model's own is not in the bundle (it cut an activation off).
ACTIVATION_OUTPUTS = {OutputActivation.SOFTMAX: "probabilities", OutputActivation.LOG_SOFTMAX: "log_probabilities"}
ACTIVATION_OPS = {OutputActivation.SOFTMAX: "Softmax", OutputActivation.LOG_SOFTMAX: "LogSoftmax"}
PREFIX = "s2l.tuned"
LABELS_KEY = "s2l.labels"  # the exported file's class labels (JSON list), in output order


class ExportFormat(Enum):
    ONNX = ".onnx"
    TFLITE = ".tflite"

    @classmethod
    def for_path(cls, path: Path) -> ExportFormat:
        for fmt in cls:
            if path.suffix.lower() == fmt.value:
                return fmt
        raise ConversionError(f"{path}: cannot tell the format from the suffix; name the file *.onnx or *.tflite")


def export_file(bundle: Bundle, adapters_path: str | Path, output: str | Path, output_name: str | None = None) -> int:
    """Write the tuned model for `bundle` with the adapters in `adapters_path` to `output`
    (.onnx or .tflite, by suffix); returns the bytes written."""
    path = Path(output)
    fmt = ExportFormat.for_path(path)
    head, labels = exported_head(bundle, adapters_path)
    data = tuned_bytes(bundle, head, fmt, output_name, labels)
    try:
        path.write_bytes(data)
    except OSError as e:
        raise ConversionError(f"{path}: cannot write the tuned model: {e.strerror or e}") from e
    log.info("wrote tuned model %s (%d bytes)", path, len(data))
    return len(data)


def exported_head(bundle: Bundle, adapters_path: str | Path) -> tuple[Adapters | list[Branch], tuple[str, ...]]:
    """The head of an adapter file in graph form (skip2lora's (A, B) pairs, or branches) and
    the labels of its outputs: the bundle's, then the file's `new_labels`."""
    _, meta = load_state(adapters_path, bundle)
    if "new_labels" in meta:
        new = check_new_labels(meta["new_labels"], bundle.labels, f"{adapters_path}: new_labels")
        return grown_branches(bundle, adapters_path, len(new)), bundle.labels + new
    if get_method(meta["method"]).family == "skip2lora":
        return load_adapters(adapters_path, bundle)[0], bundle.labels
    return head_branches(bundle, adapters_path), bundle.labels


def grown_branches(bundle: Bundle, adapters_path: str | Path, extra: int) -> list[Branch]:
    """The graph form of a skip2lora file grown by `extra` classes (`GrownHead.export_branches`)."""
    arrays, meta = load_state(adapters_path, bundle, "skip2lora")
    base = get_method(meta["method"]).make_head(bundle)
    if not isinstance(base, AdapterHead):
        raise StateError(f"{adapters_path}: new classes are learned by skip2lora heads, this file holds {meta['method']} state")
    head = grow(base, bundle.head.num_outputs, extra)
    try:
        head.load_state_dict(arrays)
    except StateError as e:
        raise StateError(f"{adapters_path}: {e}") from None
    return head.export_branches()


def head_branches(bundle: Bundle, adapters_path: str | Path) -> list[Branch]:
    """The graph form of a non-skip2lora adapter file's head (`export_branches`)."""
    arrays, meta = load_state(adapters_path, bundle)
    method = get_method(meta["method"])
    head = method.make_head(bundle)
    export = getattr(head, "export_branches", None)
    if export is None:
        raise ConversionError(
            f"{adapters_path}: {method.name} adapters cannot be exported yet; export skip2lora, skip2relu or oselm adapters"
        )
    head.load_state_dict(arrays)
    return list(export())


def tuned_bytes(
    bundle: Bundle,
    adapters: Adapters | Sequence[Branch],
    fmt: ExportFormat,
    output_name: str | None = None,
    labels: Sequence[str] | None = None,
) -> bytes:
    """The tuned model file: built on the ONNX segment when the bundle has one (and emitted
    as TFLite for .tflite), else on the TFLite segment (.tflite only). `adapters`: skip2lora's
    per-tap (A, B) pairs, or any head's branches. `labels` (default: the bundle's) name the
    outputs, one per logit, and are stored in the file under LABELS_KEY."""
    kinds = {s.backend for s in bundle.segments}
    branches = [b for b in adapters if isinstance(b, Branch)]
    pairs = [p for p in adapters if not isinstance(p, Branch)]
    labels = tuple(bundle.labels if labels is None else labels)
    width = max([bundle.head.num_outputs, *(logit_width(b) for b in branches)])
    if len(labels) != width:
        raise ConversionError(f"export: {len(labels)} labels for a head with {width} outputs")
    metadata = {LABELS_KEY: json.dumps(list(labels)).encode()}
    if SegmentBackend.ONNX in kinds:
        tuned = tuned_model(bundle, pairs, output_name) if not branches else tuned_model_branches(bundle, branches, output_name)
        if fmt is ExportFormat.ONNX:
            tuned.metadata_props.add(key=LABELS_KEY, value=metadata[LABELS_KEY].decode())
            return tuned.SerializeToString()
        from s2conv.tflite import onnx_to_tflite

        return onnx_to_tflite(tuned, metadata)
    if fmt is ExportFormat.ONNX:
        raise ConversionError(
            "the bundle has only a TFLite segment, so the tuned model can only be written as .tflite; "
            "convert with --backend onnx or --backend both to export ONNX"
        )
    from s2conv.tflite.tuned import tuned_tflite

    segment = bundle.segment(SegmentBackend.TFLITE)
    activation = {OutputActivation.SOFTMAX: "softmax", OutputActivation.LOG_SOFTMAX: "log_softmax"}.get(bundle.output_activation)
    name = output_name or ACTIVATION_OUTPUTS.get(bundle.output_activation, "logits")
    taps = [t.name for t in bundle.taps]
    if not branches:
        branches = [plain_branch(w, i, len(taps)) for i, w in enumerate(delta_weights(bundle, pairs))]
    return tuned_tflite(bytes(segment.model), taps, segment.logits_output, branches, activation, name, metadata)


def logit_width(branch: Branch) -> int:
    """How many logits a branch adds to: its output layer's rows, else its own width."""
    return branch.width if branch.out is None else int(branch.out.shape[0])


def exported_labels(path: str | Path) -> tuple[str, ...]:
    """The class labels an exported .onnx or .tflite file stores (LABELS_KEY), in output order."""
    p = Path(path)
    fmt = ExportFormat.for_path(p)
    if fmt is ExportFormat.ONNX:
        props = {m.key: m.value for m in onnx.load(p, load_external_data=False).metadata_props}
        raw = props.get(LABELS_KEY)
    else:
        from s2conv.tflite.read import read_metadata

        raw = read_metadata(p.read_bytes()).get(LABELS_KEY, b"").decode() or None
    if raw is None:
        raise ConversionError(f"{p}: has no {LABELS_KEY} metadata; export it with s2conv export")
    labels = json.loads(raw)
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ConversionError(f"{p}: {LABELS_KEY} metadata: expected a JSON list of names, found {raw[:80]}")
    return tuple(labels)


def plain_branch(weight: np.ndarray, tap: int, taps: int) -> Branch:
    """x_tap W^T straight onto the logits: a skip2lora tap as a branch."""
    return Branch(tuple(weight if t == tap else None for t in range(taps)), None, False, None)


def tuned_model(bundle: Bundle, adapters: Adapters, output_name: str | None = None) -> onnx.ModelProto:
    """The frozen segment with the adapters folded into one MatMul per tap; one output."""
    model, graph, total, name = _tuned_start(bundle, output_name)
    weights = delta_weights(bundle, adapters)
    for index, (tap, weight) in enumerate(zip(bundle.taps, weights)):
        total = _add_tap(graph, tap.name, len(tap.shape), weight, total, index)
    return _tuned_finish(bundle, model, total, name)


def tuned_model_branches(bundle: Bundle, branches: Sequence[Branch], output_name: str | None = None) -> onnx.ModelProto:
    """The frozen segment plus each branch's MatMuls, bias, Relu and output MatMul; one output."""
    model, graph, total, name = _tuned_start(bundle, output_name)
    width = max([bundle.head.num_outputs, *(logit_width(b) for b in branches)])
    if width > bundle.head.num_outputs:
        total = _widen(graph, total, bundle.head.num_outputs, width)
    flat: dict[int, str] = {}
    for b, branch in enumerate(branches):
        total = _add_branch(graph, bundle, branch, total, b, flat)
    return _tuned_finish(bundle, model, total, name, width)


def _tuned_start(bundle: Bundle, output_name: str | None) -> tuple[onnx.ModelProto, onnx.GraphProto, str, str]:
    model = _onnx_segment(bundle)
    graph = model.graph
    frozen_logits = bundle.segment(SegmentBackend.ONNX).logits_output
    name = output_name or _default_output_name(graph, frozen_logits, bundle.output_activation)
    _free_name(graph, name)
    return model, graph, frozen_logits, name


def _widen(graph: onnx.GraphProto, total: str, classes: int, width: int) -> str:
    """The frozen logits (N x classes) followed by zeros to `width` columns: a MatMul by [I | 0]
    (exact: each output is one logit times 1 plus zeros)."""
    graph.initializer.append(numpy_helper.from_array(widening(classes, width), f"{PREFIX}.widen.W"))
    graph.node.append(helper.make_node("MatMul", [total, f"{PREFIX}.widen.W"], [f"{PREFIX}.widened"], name=f"{PREFIX}/widen"))
    return f"{PREFIX}.widened"


def widening(classes: int, width: int) -> np.ndarray:
    """[I | 0]: classes x width."""
    return np.eye(classes, width, dtype=np.float32)


def _tuned_finish(bundle: Bundle, model: onnx.ModelProto, total: str, name: str, width: int | None = None) -> onnx.ModelProto:
    graph = model.graph
    activation = ACTIVATION_OPS.get(bundle.output_activation)
    if activation is None:
        graph.node.append(helper.make_node("Identity", [total], [name], name=f"{PREFIX}/output"))
    else:
        graph.node.append(helper.make_node(activation, [total], [name], name=f"{PREFIX}/{activation}", axis=-1))
    _normalise_input(graph, bundle)
    del graph.output[:]
    outputs = width or bundle.head.num_outputs
    graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [_batch_dim(graph), outputs]))
    graph.name = f"{graph.name}_tuned"
    graph.doc_string = "s2l tuned model: the frozen network with its Skip2-LoRA adapters merged in"
    model.producer_name, model.producer_version = PRODUCER, __version__
    _check(model)
    return model


def delta_weights(bundle: Bundle, adapters: Adapters) -> list[np.ndarray]:
    """W_l = (alpha / rank) B_l A_l, C x d_l, per tap (PEFT's `delta_weight`)."""
    scaling = bundle.head.scaling
    return [(scaling * (b.astype(np.float64) @ a.astype(np.float64))).astype(np.float32) for a, b in adapters]


def _onnx_segment(bundle: Bundle) -> onnx.ModelProto:
    try:
        segment = bundle.segment(SegmentBackend.ONNX)
    except KeyError:
        raise ConversionError(
            "export builds on the bundle's ONNX frozen segment and this bundle has only "
            + ", ".join(s.backend.name for s in bundle.segments)
            + "; convert the model again with --backend onnx or --backend both"
        ) from None
    return onnx.load_from_string(bytes(segment.model))


def _default_output_name(graph: onnx.GraphProto, frozen_logits: str, activation: OutputActivation) -> str:
    """The source model's output name: the tensor behind the frozen logits when nothing was
    cut after it, else a name for what the activation gives."""
    if activation in ACTIVATION_OUTPUTS:
        return ACTIVATION_OUTPUTS[activation]
    for node in graph.node:
        if frozen_logits in node.output and node.op_type in ("Identity", "Cast") and node.input:
            return str(node.input[0])
    return "logits"


def _free_name(graph: onnx.GraphProto, name: str) -> None:
    """Rename the segment's tensor called `name` (the frozen logits, typically) out of the way."""
    renamed = f"{name}/frozen"
    for node in graph.node:
        node.input[:] = [renamed if n == name else n for n in node.input]
        node.output[:] = [renamed if n == name else n for n in node.output]
    for info in graph.value_info:
        if info.name == name:
            info.name = renamed
    if any(i.name == name for i in (*graph.input, *graph.initializer)):
        raise ConversionError(f"the output name {name!r} is the model's input or a weight; choose another with --output-name")


def _add_tap(graph: onnx.GraphProto, tap: str, rank: int, weight: np.ndarray, total: str, index: int) -> str:
    """total + flatten(tap) @ W^T; returns the new total's name."""
    source = tap
    if rank != 1:
        source = f"{PREFIX}.flat.{index}"
        graph.node.append(helper.make_node("Flatten", [tap], [source], name=f"{PREFIX}/flatten.{index}", axis=1))
    weight_name = f"{PREFIX}.W.{index}"
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), weight_name))
    delta, summed = f"{PREFIX}.delta.{index}", f"{PREFIX}.sum.{index}"
    graph.node.append(helper.make_node("MatMul", [source, weight_name], [delta], name=f"{PREFIX}/matmul.{index}"))
    graph.node.append(helper.make_node("Add", [total, delta], [summed], name=f"{PREFIX}/add.{index}"))
    return summed


def _add_branch(graph: onnx.GraphProto, bundle: Bundle, branch: Branch, total: str, b: int, flat: dict[int, str]) -> str:
    """total + out(act(sum_l flatten(x_l) W_l^T + bias)); returns the new total's name."""
    name = f"{PREFIX}.branch.{b}"
    summed = ""
    for t, (tap, weight) in enumerate(zip(bundle.taps, branch.weights)):
        if weight is None:
            continue
        source = flat.get(t, tap.name)
        if len(tap.shape) != 1 and t not in flat:
            source = flat[t] = f"{PREFIX}.flat.{t}"
            graph.node.append(helper.make_node("Flatten", [tap.name], [source], name=f"{PREFIX}/flatten.{t}", axis=1))
        part = _matmul(graph, source, weight, f"{name}.tap.{t}")
        if summed:
            graph.node.append(helper.make_node("Add", [summed, part], [f"{part}.sum"], name=f"{PREFIX}/{name}.add.{t}"))
            part = f"{part}.sum"
        summed = part
    if branch.bias is not None:
        graph.initializer.append(numpy_helper.from_array(branch.bias.astype(np.float32), f"{name}.bias"))
        graph.node.append(helper.make_node("Add", [summed, f"{name}.bias"], [f"{name}.biased"], name=f"{PREFIX}/{name}.bias"))
        summed = f"{name}.biased"
    if branch.relu:
        graph.node.append(helper.make_node("Relu", [summed], [f"{name}.relu"], name=f"{PREFIX}/{name}.relu"))
        summed = f"{name}.relu"
    if branch.out is not None:
        summed = _matmul(graph, summed, branch.out, f"{name}.out")
    graph.node.append(helper.make_node("Add", [total, summed], [f"{name}.total"], name=f"{PREFIX}/{name}.total"))
    return f"{name}.total"


def _matmul(graph: onnx.GraphProto, source: str, weight: np.ndarray, name: str) -> str:
    """source @ weight^T (weight: k x d) as a MatMul by an initializer; returns the product's name."""
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T, dtype=np.float32), f"{name}.W"))
    graph.node.append(helper.make_node("MatMul", [source, f"{name}.W"], [name], name=f"{PREFIX}/{name}"))
    return name


def _normalise_input(graph: onnx.GraphProto, bundle: Bundle) -> None:
    """Bake the bundle's input normalisation (if it has one) in front of the segment."""
    signature = bundle.input
    if signature.mean is None or signature.std is None:
        return
    inner = f"{signature.name}/normalised"
    for node in graph.node:
        node.input[:] = [inner if n == signature.name else n for n in node.input]
    mean, std = f"{PREFIX}.input_mean", f"{PREFIX}.input_std"
    graph.initializer.extend(
        [numpy_helper.from_array(signature.mean.astype(np.float32), mean), numpy_helper.from_array(signature.std.astype(np.float32), std)]
    )
    centred = f"{signature.name}/centred"
    nodes = [
        helper.make_node("Sub", [signature.name, mean], [centred], name=f"{PREFIX}/input_sub"),
        helper.make_node("Div", [centred, std], [inner], name=f"{PREFIX}/input_div"),
    ]
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)


def _batch_dim(graph: onnx.GraphProto) -> str | int:
    dim = graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_param if dim.HasField("dim_param") else "batch"


def _check(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ConversionError(f"the tuned model fails the ONNX checker: {' '.join(str(e).split())}") from e
