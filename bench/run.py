"""The s2l benchmark: s2rt Skip2-LoRA side by side with PyTorch, PEFT and onnxruntime-training.

.venv/bin/python bench/run.py                 # both profiles -> bench/results/ (make bench)
.venv/bin/python bench/run.py --quick         # a small slice -> bench/results/quick/ (make bench-quick)
.venv/bin/python bench/run.py --help
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent / "runtime", HERE.parent / "converter", HERE.parent / "models"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from s2lbench.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
