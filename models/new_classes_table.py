"""Measure new classes on the device: old-class accuracy and per-new-class recall.

usage: python models/new_classes_table.py [--seeds 0 1 2] [--digits]

har_open: the committed models/har_open_mlp.onnx (HAR pretrained without TRAP and ROW),
fine-tuned on models/data/har_open_ft.npz, tested on har_open_test.npz. With --digits,
also the digits MLP pretrained here (a few seconds of torch) without 8 and 9. For each
training seed: the old-class accuracy of the frozen model, of skip2lora fine-tuned on
the old-class samples only ("before": the model before the classes were added), and of
skip2lora with the grown head on every sample, and each new class's recall.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from s2conv.convert import convert
from s2rt import Model

MODELS = Path(__file__).resolve().parent


def har_open(folder: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    labels = tuple((MODELS / "data/har_open_labels.txt").read_text().split())
    convert(MODELS / "har_open_mlp.onnx", output=folder / "har_open.s2l", labels=labels)
    ft, test = (dict(np.load(MODELS / f"data/har_open_{s}.npz", allow_pickle=False)) for s in ("ft", "test"))
    return folder / "har_open.s2l", ft, test


def digits_open(folder: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    from s2models.data import digits, open_set
    from s2models.export import export
    from s2models.mlp import mlp
    from s2models.train import pretrain

    w = open_set.hide_classes(digits.load(), ("8", "9"), "digits_open")
    model, _ = pretrain(lambda: mlp(w.n_features, len(w.labels)), w.train, w.val)
    (folder / "digits_open.onnx").write_bytes(export(model, w.val.x, w.name, w.labels, "digits without 8, 9").SerializeToString())
    convert(folder / "digits_open.onnx", output=folder / "digits_open.s2l", labels=w.labels)
    names = np.array(open_set.device_labels(w))
    return folder / "digits_open.s2l", {"x": w.ft.x, "y": names[w.ft.y]}, {"x": w.test.x, "y": names[w.test.y]}


def measure(bundle: Path, ft: dict[str, np.ndarray], test: dict[str, np.ndarray], seed: int) -> dict[str, object]:
    frozen = Model.open(bundle)
    old_ft, old_test = (np.isin(d["y"], frozen.labels) for d in (ft, test))
    old = frozen.samples(test["x"][old_test], test["y"][old_test])
    before = Model.open(bundle)
    before.fine_tune(before.samples(ft["x"][old_ft], ft["y"][old_ft]), seed=seed)
    grown = Model.open(bundle)
    grown.fine_tune(grown.samples(ft["x"], ft["y"], allow_new_classes=True), seed=seed)
    result = grown.evaluate(grown.samples(test["x"], test["y"]))
    return {
        "frozen": frozen.evaluate(old)["accuracy"],
        "before": before.evaluate(old)["accuracy"],
        "old": result["old_class_accuracy"],
        "recall": result["new_class_recall"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--digits", action="store_true", help="also the digits MLP without 8 and 9 (pretrained here)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workloads = {"har_open": har_open(Path(tmp))}
        if args.digits:
            workloads["digits_open"] = digits_open(Path(tmp))
        print("| workload | seed | old classes: frozen | old: fine-tuned without the new | old: grown head | new-class recall |")
        print("|---|---|---|---|---|---|")
        for name, (bundle, ft, test) in workloads.items():
            for seed in args.seeds:
                m = measure(bundle, ft, test, seed)
                recall = ", ".join(f"{k} {v:.3f}" for k, v in m["recall"].items())  # type: ignore[attr-defined]
                print(f"| {name} | {seed} | {m['frozen']:.3f} | {m['before']:.3f} | {m['old']:.3f} | {recall} |")


if __name__ == "__main__":
    main()
