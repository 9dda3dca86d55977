"""Print the `make demo` summary from the JSON the demo's s2rt commands wrote.

usage: python models/demo_table.py OUT_DIR MODEL.onnx
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
from onnx import numpy_helper


def frozen_parameters(model_path: Path) -> int:
    model = onnx.load(str(model_path))
    return sum(numpy_helper.to_array(t).size for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


def main(out: Path, model_path: Path) -> None:
    def load(name: str) -> dict:
        return json.loads((out / name).read_text())

    before, after = load("har_before.json"), load("har_after.json")
    cached, uncached = load("har_train.json"), load("har_train_nocache.json")
    rows = [
        ("shifted-test accuracy, before", f"{before['accuracy']:.3f}  (n={before['n']})"),
        ("shifted-test accuracy, after", f"{after['accuracy']:.3f}  (+{100 * (after['accuracy'] - before['accuracy']):.1f} points)"),
        ("fine-tune samples", str(cached["n"])),
        ("epochs", str(cached["epochs"])),
        ("fine-tune time, Skip-Cache", f"{cached['seconds']:.3f} s"),
        ("fine-tune time, no cache", f"{uncached['seconds']:.3f} s  ({uncached['seconds'] / cached['seconds']:.1f}x slower)"),
        ("cache hits / misses", f"{cached['cache_hits']} / {cached['cache_misses']}"),
        ("trainable parameters (adapters)", f"{cached['trainable_parameters']:,}"),
        ("frozen parameters", f"{frozen_parameters(model_path):,}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\nSkip2-LoRA on {model_path.name}: fine-tuned on the shifted device subjects")
    print("-" * (width + 30))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
