"""Build every workload: data, pretrained MLP or CNN, ONNX, device npz files and models.json.

    python -m s2models.build [--out models/] [--only har|digits|fan|digits_cnn|mnist_cnn|har_open]

Writes, under --out: <name>_mlp.onnx (an MLP) or <name>.onnx (a CNN, input N x 1 x H x W),
data/<workload>_ft.npz, data/<workload>_test.npz, data/<workload>_labels.txt (one class
name a line; digits_cnn shares the digits files) and models.json (one entry per recipe;
--only updates just that entry). Open-set recipes (classes hidden from pretraining, whose
device files name their labels) go to open_set.json instead, so that what reads every
models.json entry (the bench, the reference-model tests) sees closed-set workloads only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from torch import nn

from s2models.cnn import digits_cnn, mnist_mobilenet
from s2models.data import Split, Workload, digits, fan, har, mnist, open_set, save_npz
from s2models.export import INPUT_NAME, OUTPUT_NAME, accuracy, export, session
from s2models.mlp import Standardize, feature_stats, mlp
from s2models.train import TrainConfig, TrainResult, pretrain

DEVICE_SPLITS = ("ft", "test")


@dataclass(frozen=True)
class Recipe:
    """How one workload is built."""

    load: Callable[[], Workload]
    standardize: bool  # bake the pretraining features' mean/std into the model
    train: TrainConfig = TrainConfig()
    cnn: Callable[[int], nn.Module] | None = None  # classes -> model; None: the paper-style MLP
    input_shape: tuple[int, ...] | None = None  # a CNN's per-sample input (channels first); None: flat features
    hidden: tuple[str, ...] = ()  # classes left out of pretraining, on the device only (s2models.data.open_set)


RECIPES: dict[str, Recipe] = {
    "har": Recipe(load=har.load, standardize=True),
    "digits": Recipe(load=digits.load, standardize=False),
    "fan": Recipe(load=fan.load, standardize=True),
    "digits_cnn": Recipe(digits.load, False, TrainConfig(lr=3e-3, patience=5), digits_cnn, (1, 8, 8)),
    "mnist_cnn": Recipe(mnist.load, False, TrainConfig(lr=4e-3, batch_size=64, max_epochs=12, patience=5), mnist_mobilenet, (1, 28, 28)),
    "har_open": Recipe(load=har.load, standardize=True, hidden=("TRAP", "ROW")),  # new classes on the device
}


def features(split: Split, recipe: Recipe) -> np.ndarray:
    """The split's rows as the model takes them: flat, or images for a CNN."""
    return split.x if recipe.input_shape is None else split.x.reshape(len(split), *recipe.input_shape)


def pretrained_cnn(workload: Workload, recipe: Recipe) -> tuple[onnx.ModelProto, TrainResult]:
    """Pretrain the recipe's CNN on the workload's train split (as images) and export it, verified on val."""
    make = recipe.cnn
    assert make is not None
    train, val = (Split(features(s, recipe), s.y, s.group) for s in (workload.train, workload.val))
    model, result = pretrain(lambda: make(len(workload.labels)), train, val, recipe.train)
    doc = f"s2models {workload.name}: {make.__name__}, input {list(recipe.input_shape or ())} per sample, logits out; {workload.source}"
    return export(model, val.x, workload.name, workload.labels, doc), result


def without_trace(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node debug metadata (stack traces with this checkout's absolute
    paths), so the same seeds give the same bytes wherever the repository lives."""
    for item in (*model.graph.node, *model.graph.input, *model.graph.output, *model.graph.value_info):
        del item.metadata_props[:]
    return model


def pretrained_model(workload: Workload, recipe: Recipe) -> tuple[onnx.ModelProto, TrainResult]:
    """Pretrain the MLP (or the CNN) on the workload's train split and export it, verified on val."""
    if recipe.cnn is not None:
        exported, result = pretrained_cnn(workload, recipe)
        return without_trace(exported), result
    norm = Standardize(*feature_stats(workload.train.x)) if recipe.standardize else None
    model, result = pretrain(lambda: mlp(workload.n_features, len(workload.labels), norm), workload.train, workload.val, recipe.train)
    doc = f"s2models {workload.name}: MLP {workload.n_features}-96-96-{len(workload.labels)}, logits out; {workload.source}"
    return without_trace(export(model, workload.val.x, workload.name, workload.labels, doc)), result


def write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    report(path)


def report(path: Path) -> None:
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


def describe(workload: Workload, recipe: Recipe, model: onnx.ModelProto, result: TrainResult, onnx_name: str) -> dict[str, Any]:
    """The models.json entry: provenance, signature, splits and measured accuracies."""
    sess = session(model)
    known = workload.test.y < len(workload.labels)  # an open-set workload's test also holds the hidden classes
    return {
        "onnx": onnx_name,
        "sha256": hashlib.sha256(model.SerializeToString()).hexdigest(),
        "source": workload.source,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", *(recipe.input_shape or (workload.n_features,))],
            "dtype": "float32",
            "standardized_in_model": recipe.standardize,
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(workload.labels)], "dtype": "float32"},
        "classes": list(workload.labels),
        "pretrain_val_accuracy": accuracy(sess, features(workload.val, recipe), workload.val.y),
        "shifted_test_accuracy": accuracy(sess, features(workload.test, recipe)[known], workload.test.y[known]),
        "samples": workload.sizes(),
        "data": {split: f"data/{workload.name}_{split}.npz" for split in DEVICE_SPLITS} | {"labels": f"data/{workload.name}_labels.txt"},
        "data_config": workload.config,
        **({"device_only_classes": list(recipe.hidden)} if recipe.hidden else {}),
        "train_config": asdict(recipe.train),
        "train_result": {"epochs": result.epochs, "best_epoch": result.best_epoch},
    }


def build(name: str, out: Path) -> dict[str, Any]:
    """Build one workload's artefacts under `out`; returns its models.json entry."""
    recipe = RECIPES[name]
    workload = recipe.load()
    if recipe.hidden:
        workload = open_set.hide_classes(workload, recipe.hidden, name)
    model, result = pretrained_model(workload, recipe)
    (out / "data").mkdir(parents=True, exist_ok=True)
    onnx_name = f"{name}.onnx" if recipe.cnn is not None else f"{name}_mlp.onnx"
    write(out / onnx_name, model.SerializeToString())
    for split in DEVICE_SPLITS:
        path = out / "data" / f"{workload.name}_{split}.npz"
        save_npz(path, getattr(workload, split), open_set.device_labels(workload), named=bool(recipe.hidden))
        report(path)
    write(out / "data" / f"{workload.name}_labels.txt", "".join(f"{label}\n" for label in workload.labels).encode())
    return describe(workload, recipe, model, result, onnx_name)


def update_index(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Merge entries into models.json, keeping the other workloads' entries."""
    index = json.loads(path.read_text()) if path.exists() else {}
    index |= entries
    write(path, (json.dumps(dict(sorted(index.items())), indent=2) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s2models.build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"), help="output directory (default: models)")
    parser.add_argument("--only", choices=sorted(RECIPES), help="build just this workload")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    names = [args.only] if args.only else list(RECIPES)
    entries = {name: build(name, args.out) for name in names}
    for index, open_set_index in (("models.json", False), ("open_set.json", True)):
        chosen = {name: entry for name, entry in entries.items() if bool(RECIPES[name].hidden) == open_set_index}
        if chosen:
            update_index(args.out / index, chosen)
    print(f"built {', '.join(names)} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
