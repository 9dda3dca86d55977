"""The pipeline: load ▸ analyse ▸ split ▸ (quantize) ▸ compact ▸ head ▸ layout → an in-memory `Bundle`.

`convert(model_path, options)` builds the bundle; `s2conv.emit.write` puts it on disk.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from s2rt.bundle.model import (
    Bundle,
    CacheLayout,
    DType,
    InputSignature,
    Loss,
    Optimizer,
    Provenance,
    Segment,
    SegmentBackend,
    Tap,
    TrainDefaults,
    plan_cache_layout,
)
from s2rt.errors import ConversionError

from s2conv.analyse import TapPlan, find_taps, input_signature
from s2conv.calibrate import load_calibration, tap_scales
from s2conv.compact import compact_segment
from s2conv.emit import emit
from s2conv.graph import view_graph
from s2conv.head import init_head
from s2conv.load import LoadedModel, load_model
from s2conv.quantize import QUANTIZE_CHOICES, int8_schemes, quantize_segment
from s2conv.split import LOGITS_OUTPUT, extract_segment, segment_outputs, tap_output_name
from s2conv.stages import Progress, silent
from s2conv.version import PRODUCER, __version__

log = logging.getLogger(__name__)

CACHE_DTYPES = {"float32": DType.FLOAT32, "float16": DType.FLOAT16, "int8": DType.INT8}
LOSSES = {"cross_entropy": Loss.SOFTMAX_CROSS_ENTROPY, "mse": Loss.MSE}
OPTIMIZERS = {"adam": Optimizer.ADAM, "sgd": Optimizer.SGD}
SEGMENT_BACKENDS = {
    "onnx": (SegmentBackend.ONNX,),
    "tflite": (SegmentBackend.TFLITE,),
    "both": (SegmentBackend.ONNX, SegmentBackend.TFLITE),
}
MAX_SEED = 2**63 - 1
MAX_RANK = 4096  # the bundle reader's limit
MAX_TAP_POOL = 8


class InvalidOptionError(ConversionError, ValueError):
    """A `ConvertOptions` field has a value the converter cannot use.

    The message names the field (`option rank: ...`); `for_cli` words it with the flag the
    user typed instead (`--rank: ...`), so the CLI never shows a Python name.
    """

    def __init__(self, field_name: str, detail: str, *, message: str | None = None, cli: str | None = None) -> None:
        super().__init__(message or f"option {field_name}: {detail}")
        self.field = field_name
        self.detail = detail
        self.cli = cli

    def for_cli(self, flags: Mapping[str, str]) -> str:
        return self.cli or f"{flags.get(self.field, self.field)}: {self.detail}"


def _option(default: Any, help: str) -> Any:  # noqa: A002 - argparse's name for it
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert; written into the bundle's `Provenance.options_json`."""

    rank: int = _option(4, "rank r of every adapter: A_l is r x d_l, B_l is C x r")
    alpha: float = _option(8.0, "LoRA alpha: the adapters' sum is scaled by alpha / rank")
    taps: tuple[str, ...] | None = _option(
        None, "tap tensors of the source model, in order; None finds one per layer or block input on the main path"
    )
    tap_pool: int = _option(
        1,
        "feature-map taps [C, H, W] are averaged inside the frozen segment: 1 = global average (C floats), "
        "g = a g x g grid (C*g*g floats), 0 = not at all (the whole map is cached)",
    )
    scores: str | None = _option(None, "the tensor holding the class scores; None finds it from the graph outputs")
    cache_dtype: str = _option(
        "float32",
        "storage dtype of cached taps: float32, float16 (half the bytes) or int8 (a quarter; one scale per tap, "
        "from calib when given, else chosen on the device)",
    )
    seed: int = _option(0, "seed of the random initial A matrices")
    labels: tuple[str, ...] | None = _option(None, "class labels, one per model output; None: class_0 ... class_{C-1}")
    loss: str = _option("cross_entropy", "training loss: cross_entropy (softmax, classification) or mse")
    optimizer: str = _option("adam", "default optimizer for fine-tuning: adam or sgd")
    learning_rate: float = _option(0.01, "default learning rate for fine-tuning")
    epochs: int = _option(20, "default number of fine-tuning epochs")
    batch_size: int = _option(32, "default mini-batch size for fine-tuning")
    backend: str = _option(
        "onnx",
        "format of the frozen segment in the bundle: onnx (onnxruntime), tflite (LiteRT) or both (the device picks)",
    )
    quantize: str = _option(
        "none",
        "none, or int8: static int8 quantization of the frozen segment (ONNX: QDQ; TFLite: int8 FULLY_CONNECTED/CONV_2D), "
        "per-channel weights, float taps and logits; needs calib",
    )
    calib: str | None = _option(
        None, "calibration inputs (.npz with x, or .csv) for quantize=int8 and for the tap scales of cache_dtype=int8"
    )

    def __post_init__(self) -> None:
        self._normalise_names("taps")
        self._normalise_names("labels")
        _require_int("rank", self.rank, minimum=1, maximum=MAX_RANK)
        for name in ("epochs", "batch_size"):
            _require_int(name, getattr(self, name), minimum=1)
        _require_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        _require_int("tap_pool", self.tap_pool, minimum=0, maximum=MAX_TAP_POOL)
        if self.scores is not None and (not isinstance(self.scores, str) or not self.scores.strip()):
            raise InvalidOptionError("scores", f"expected a tensor name, got {self.scores!r}")
        for name in ("alpha", "learning_rate"):
            _require_positive_float(name, getattr(self, name))
        _require_choice("cache_dtype", self.cache_dtype, CACHE_DTYPES)
        _require_choice("loss", self.loss, LOSSES)
        _require_choice("optimizer", self.optimizer, OPTIMIZERS)
        self._check_calibration()
        _require_choice("backend", self.backend, SEGMENT_BACKENDS)

    def _check_calibration(self) -> None:
        _require_choice("quantize", self.quantize, dict.fromkeys(QUANTIZE_CHOICES))
        if isinstance(self.calib, os.PathLike):
            object.__setattr__(self, "calib", os.fspath(self.calib))
        if self.calib is not None and (not isinstance(self.calib, str) or not self.calib):
            raise InvalidOptionError("calib", f"expected the path of a calibration file, got {self.calib!r}")
        if self.quantize == "int8" and self.calib is None:
            raise InvalidOptionError(
                "quantize",
                "int8 needs calibration inputs",
                message="option quantize=int8 needs calibration inputs: give calib (s2conv --calib FILE.npz)",
                cli="--quantize int8 needs calibration inputs: give --calib FILE.npz (a sample of real inputs)",
            )
        if self.calib is not None and self.quantize == "none" and self.cache_dtype != "int8":
            raise InvalidOptionError(
                "calib",
                "only used with quantize=int8 or cache_dtype=int8",
                message="option calib is only used with quantize=int8 or cache_dtype=int8",
                cli="--calib is only used with --quantize int8 or --cache-dtype int8",
            )

    def _normalise_names(self, name: str) -> None:
        value = getattr(self, name)
        if value is None:
            return
        if isinstance(value, str) or not all(isinstance(v, str) and v.strip() for v in value):
            raise InvalidOptionError(name, f"expected a sequence of non-empty names, got {value!r}")
        names = tuple(v.strip() for v in value)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if not names or duplicates:
            problem = "is empty" if not names else "repeats " + ", ".join(repr(d) for d in duplicates)
            raise InvalidOptionError(name, f"the list {problem}; expected distinct names")
        object.__setattr__(self, name, names)

    @classmethod
    def help(cls, name: str) -> str:
        """The help string of field `name` (the CLI uses these, so they stay true)."""
        return str(next(f for f in dataclasses.fields(cls) if f.name == name).metadata["help"])

    def to_json(self) -> str:
        """The options as compact JSON; the calibration file by its name only (host paths do
        not go to devices); an int8 bundle's segment schemes under "int8_scheme"."""
        options: dict[str, Any] = dataclasses.asdict(self)
        if self.calib is not None:
            options["calib"] = Path(self.calib).name
        if self.quantize == "int8":  # which int8 scheme each segment uses: `s2conv inspect` shows it
            options["int8_scheme"] = int8_schemes(tuple(kind.name.lower() for kind in SEGMENT_BACKENDS[self.backend]))
        return json.dumps(options, sort_keys=True, separators=(",", ":"))

    @property
    def train_defaults(self) -> TrainDefaults:
        return TrainDefaults(OPTIMIZERS[self.optimizer], self.learning_rate, self.epochs, self.batch_size)


def _require_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    in_range = isinstance(value, int) and value >= minimum and (maximum is None or value <= maximum)
    if isinstance(value, bool) or not in_range:
        bound = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
        raise InvalidOptionError(name, f"expected {bound}, got {value!r}")


def _require_positive_float(name: str, value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise InvalidOptionError(name, f"expected a finite number > 0, got {value!r}")


def _require_choice(name: str, value: object, choices: dict[str, Any]) -> None:
    if value not in choices:
        raise InvalidOptionError(name, f"expected one of {', '.join(choices)}, got {value!r}")


def convert(
    model_path: str | Path,
    options: ConvertOptions | None = None,
    *,
    output: str | Path | None = None,
    progress: Progress | None = None,
    **fields: Any,
) -> Bundle:
    """Convert the ONNX model at `model_path` into a bundle, written to `output` when given.

    `options`, or `ConvertOptions(**fields)` (`rank=8, quantize="int8", calib="c.npz"`, …);
    `progress` (`s2conv.stages.StageProgress`) reports the slow stages. Returns the bundle
    (with its digest when written). Raises `ConversionError` (or its `UnsupportedGraphError`)
    naming the file, node or tensor at fault when the model cannot be converted, and
    `InvalidOptionError` for a bad option.
    """
    if options is not None and fields:
        raise TypeError(f"convert: give options or option fields ({', '.join(fields)}), not both")
    options = options or ConvertOptions(**fields)
    bundle = _convert(model_path, options, progress.stage if progress is not None else silent)
    if output is None:
        return bundle
    return emit(bundle, output)[0]


def _convert(model_path: str | Path, options: ConvertOptions, stage: Callable[[str], AbstractContextManager[None]]) -> Bundle:
    loaded = load_model(model_path, options.scores)
    for note in loaded.notes:
        log.warning("%s: %s", loaded.source_name, note)
    view = view_graph(loaded.model, loaded.input_name, loaded.output_name)
    plan = find_taps(view, options.taps, options.tap_pool)
    labels = resolve_labels(options.labels, plan.num_outputs)
    signature = input_signature(view)
    segment = extract_segment(loaded.model, signature, segment_outputs(plan))
    calibration = load_calibration(options.calib, signature) if options.calib is not None else None
    int8_calibration = calibration if options.quantize == "int8" else None
    if int8_calibration is None:
        onnx_segment = segment
    else:
        with stage(f"quantizing the frozen segment to int8 ({len(int8_calibration)} calibration samples)"):
            onnx_segment = quantize_segment(segment, int8_calibration)
    segment_bytes = compact_segment(onnx_segment).SerializeToString()
    taps = bundle_taps(plan)
    log.debug("taps: %s", ", ".join(f"{t.source} {t.shape}" for t in taps))
    head = init_head(
        taps,
        plan.num_outputs,
        rank=options.rank,
        alpha=options.alpha,
        seed=options.seed,
        loss=LOSSES[options.loss],
        defaults=options.train_defaults,
    )
    return Bundle(
        provenance=provenance(loaded, options),
        input=signature,
        labels=labels,
        segments=frozen_segments(segment, segment_bytes, signature.name, options.backend, int8_calibration, stage),
        taps=taps,
        head=head,
        cache=cache_layout(taps, plan.num_outputs, options.cache_dtype, segment_bytes, signature, calibration, stage),
        output_activation=plan.output_activation,
    )


def frozen_segments(
    segment: onnx.ModelProto,
    onnx_bytes: bytes,
    input_name: str,
    backend: str,
    int8_calibration: np.ndarray | None = None,
    stage: Callable[[str], AbstractContextManager[None]] = silent,
) -> tuple[Segment, ...]:
    """The frozen segment in each format `backend` names: ONNX as cut (`onnx_bytes`, perhaps
    quantized), TFLite emitted from the float cut `segment` and, given `int8_calibration`,
    quantized to int8."""
    segments = []
    for kind in SEGMENT_BACKENDS[backend]:
        if kind == SegmentBackend.ONNX:
            data = onnx_bytes
        elif int8_calibration is None:
            from s2conv.tflite import onnx_to_tflite  # the tflite bindings load only when asked for

            with stage("emitting the TFLite segment"):
                data = onnx_to_tflite(segment)
        else:
            from s2conv.tflite.quantize import quantized_tflite

            with stage("emitting the int8 TFLite segment (calibrating it)"):
                data = quantized_tflite(segment, int8_calibration)
        segments.append(Segment(kind, data, input_name, LOGITS_OUTPUT))
    return tuple(segments)


def bundle_taps(plan: TapPlan) -> tuple[Tap, ...]:
    return tuple(Tap(tap_output_name(i), t.source, t.layer, t.shape, t.pooling.reduction) for i, t in enumerate(plan.taps))


def cache_layout(
    taps: tuple[Tap, ...],
    num_outputs: int,
    cache_dtype: str,
    segment: bytes,
    signature: InputSignature,
    calibration: np.ndarray | None,
    stage: Callable[[str], AbstractContextManager[None]] = silent,
) -> CacheLayout:
    """The cache record; int8 taps get their scales from the calibration inputs when there
    are any (else the runtime picks them from the first activations it caches)."""
    dtype = CACHE_DTYPES[cache_dtype]
    scales = None
    if dtype == DType.INT8 and calibration is not None:
        with stage("calibrating the int8 cache's tap scales"):
            scales = tap_scales(segment, signature, taps, calibration)
        log.debug("int8 cache tap scales: %s", ", ".join(f"{s:.4g}" for s in scales))
    return plan_cache_layout(taps, num_outputs, dtype, tap_scales=scales)


def resolve_labels(labels: tuple[str, ...] | None, num_outputs: int) -> tuple[str, ...]:
    """The given labels if there is one per output, else `class_0 … class_{C-1}`."""
    if labels is None:
        return tuple(f"class_{i}" for i in range(num_outputs))
    if len(labels) != num_outputs:
        raise ConversionError(
            f"{len(labels)} labels given ({', '.join(labels)}) but the model has {num_outputs} outputs; give exactly {num_outputs} labels"
        )
    return labels


def provenance(loaded: LoadedModel, options: ConvertOptions) -> Provenance:
    return Provenance(
        source_sha256=loaded.sha256,
        source_name=loaded.source_name,
        producer=PRODUCER,
        producer_version=__version__,
        created_utc=_created_utc(),
        options_json=options.to_json(),
    )


def _created_utc() -> str:
    """Now, or `SOURCE_DATE_EPOCH` when set (reproducible builds)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    moment = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch.isdigit() else datetime.now(timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
