"""Build every workload: data, pretrained MLP, ONNX, device npz files and models.json.

    python -m s2models.build [--out models/] [--only har|digits|fan]

Writes, under --out: <name>_mlp.onnx, data/<name>_ft.npz, data/<name>_test.npz,
data/<name>_labels.txt (one class name a line) and models.json (one entry per workload;
--only updates just that entry).
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

import onnx

from s2models.data import Workload, digits, fan, har, save_npz
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


RECIPES: dict[str, Recipe] = {
    "har": Recipe(load=har.load, standardize=True),
    "digits": Recipe(load=digits.load, standardize=False),
    "fan": Recipe(load=fan.load, standardize=True),
}


def pretrained_model(workload: Workload, recipe: Recipe) -> tuple[onnx.ModelProto, TrainResult]:
    """Pretrain the MLP on the workload's train split and export it, verified on val."""
    norm = Standardize(*feature_stats(workload.train.x)) if recipe.standardize else None
    model, result = pretrain(lambda: mlp(workload.n_features, len(workload.labels), norm), workload.train, workload.val, recipe.train)
    doc = f"s2models {workload.name}: MLP {workload.n_features}-96-96-{len(workload.labels)}, logits out; {workload.source}"
    return export(model, workload.val.x, workload.name, workload.labels, doc), result


def write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    report(path)


def report(path: Path) -> None:
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


def describe(workload: Workload, recipe: Recipe, model: onnx.ModelProto, result: TrainResult, onnx_name: str) -> dict[str, Any]:
    """The models.json entry: provenance, signature, splits and measured accuracies."""
    sess = session(model)
    return {
        "onnx": onnx_name,
        "sha256": hashlib.sha256(model.SerializeToString()).hexdigest(),
        "source": workload.source,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", workload.n_features],
            "dtype": "float32",
            "standardized_in_model": recipe.standardize,
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(workload.labels)], "dtype": "float32"},
        "classes": list(workload.labels),
        "pretrain_val_accuracy": accuracy(sess, workload.val.x, workload.val.y),
        "shifted_test_accuracy": accuracy(sess, workload.test.x, workload.test.y),
        "samples": workload.sizes(),
        "data": {split: f"data/{workload.name}_{split}.npz" for split in DEVICE_SPLITS} | {"labels": f"data/{workload.name}_labels.txt"},
        "data_config": workload.config,
        "train_config": asdict(recipe.train),
        "train_result": {"epochs": result.epochs, "best_epoch": result.best_epoch},
    }


def build(name: str, out: Path) -> dict[str, Any]:
    """Build one workload's artefacts under `out`; returns its models.json entry."""
    recipe = RECIPES[name]
    workload = recipe.load()
    model, result = pretrained_model(workload, recipe)
    (out / "data").mkdir(parents=True, exist_ok=True)
    onnx_name = f"{name}_mlp.onnx"
    write(out / onnx_name, model.SerializeToString())
    for split in DEVICE_SPLITS:
        path = out / "data" / f"{name}_{split}.npz"
        save_npz(path, getattr(workload, split), workload.labels)
        report(path)
    write(out / "data" / f"{name}_labels.txt", "".join(f"{label}\n" for label in workload.labels).encode())
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
    update_index(args.out / "models.json", {name: build(name, args.out) for name in names})
    print(f"built {', '.join(names)} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
