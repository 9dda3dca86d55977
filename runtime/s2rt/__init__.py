"""s2rt: the on-device runtime of s2l (read a bundle, run the frozen segment, train the Skip2-LoRA head).

    from s2rt import Model
    model = Model.open("bundle.s2l")
    model.fine_tune(model.samples(x, y))   # the bundle's default hyper-parameters
    model.predict(x), model.predict_proba(x)
    model.save_adapters("adapters.npz")

The names below load on first use, so `import s2rt` stays cheap (no NumPy, no backend).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Model": "s2rt.session",
    "FineTuneResult": "s2rt.session",
    "TrainConfig": "s2rt.trainer",
    "Samples": "s2rt.data",
    "load_samples": "s2rt.data",
    "S2LError": "s2rt.errors",
}

__all__ = ["FineTuneResult", "Model", "S2LError", "Samples", "TrainConfig", "__version__", "load_samples"]

if TYPE_CHECKING:
    from s2rt.data import Samples, load_samples
    from s2rt.errors import S2LError
    from s2rt.session import FineTuneResult, Model
    from s2rt.trainer import TrainConfig


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 's2rt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
