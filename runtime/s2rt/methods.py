"""Fine-tuning methods, for comparison with Skip2-LoRA: each is a head over the same cached
features (the fused tap row X and the frozen logits F), with the `AdapterHead` interface.

    skip2lora  LoRA adapters from every tap to the logits, Skip-Cache on (the default)
    skiplora   the same adapters, no cache: the frozen forward runs every epoch
    lora-last  LoRA on the last tap only:            z = F + s (x_L A^T) B^T
    ft-last    the last layer fine-tuned:            z = F + x_L dW^T + db
    ft-bias    the last layer's bias fine-tuned:     z = F + db
    skip2relu  per tap A_l -> ReLU -> B_l on standardized taps, r=32 (`s2rt.heads.nonlinear`)
    oselm      closed-form ridge on standardized taps to the logit residual (`s2rt.heads.oselm`)
    oselm-rf   the same with 256 random ReLU features of the standardized taps

The last tap is the classifier's input x_L and F = W x_L + b, so ft-last is exactly
fine-tuning the last layer (W + dW, b + db) without needing W, and lora-last is LoRA on
it. The three last-layer methods read only x_L from the cached row. dW, db start at
zero and lora-last's A is the bundle's seeded initial A of the last tap, so a new head
of any method changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from s2rt.bundle.model import Bundle
from s2rt.errors import RuntimeInputError, StateError
from s2rt.fused import DenseForm, LoRAForm
from s2rt.head import FLOAT, AdapterHead, FlatParameters
from s2rt.heads.nonlinear import RANK as RELU_RANK
from s2rt.heads.nonlinear import Skip2ReLUHead, relu_a_init
from s2rt.heads.oselm import RANDOM_FEATURES, OSELMHead


class TrainableHead(Protocol):
    """What the trainer, the session and the state file need from a head."""

    tap_width: int
    num_outputs: int

    @property
    def num_parameters(self) -> int: ...

    def parameters(self) -> dict[str, np.ndarray]: ...

    @property
    def grads(self) -> dict[str, np.ndarray]: ...

    def split_taps(self, X: np.ndarray) -> list[np.ndarray]: ...

    def forward_taps(self, xs: Sequence[np.ndarray], F: np.ndarray) -> np.ndarray: ...

    def forward(self, X: np.ndarray, F: np.ndarray) -> np.ndarray: ...

    def backward(self, dz: np.ndarray) -> None: ...

    def delta_logits(self, X: np.ndarray) -> np.ndarray: ...

    def state_dict(self) -> dict[str, np.ndarray]: ...

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None: ...


class _LastTapHead(FlatParameters):
    """Trainable numbers in one flat vector (like `AdapterHead`), named views into it.
    Reads only the last tap's columns of the fused row: `split_taps` gives that one
    contiguous array, `forward_taps` takes it (the trainer's fast path), `forward` takes
    the fused row."""

    def __init__(self, tap_sizes: tuple[int, ...], num_outputs: int, shapes: dict[str, tuple[int, ...]]) -> None:
        if not tap_sizes or min(tap_sizes) < 1 or num_outputs < 1:
            raise RuntimeInputError(f"head needs taps of positive size and outputs, got taps {tap_sizes}, {num_outputs} outputs")
        self.tap_width = sum(tap_sizes)
        self.num_outputs = num_outputs
        self._last = slice(self.tap_width - tap_sizes[-1], self.tap_width)
        self._shapes = shapes
        total = sum(int(np.prod(s)) for s in shapes.values())
        self._theta = np.zeros(total, FLOAT)
        self._grad = np.zeros_like(self._theta)
        self.w = self._views(self._theta)
        self.dw = self._views(self._grad)
        self._x: np.ndarray | None = None  # the last tap of the batch `forward` saw

    def _views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        views, start = {}, 0
        for name, shape in self._shapes.items():
            size = int(np.prod(shape))
            views[name] = flat[start : start + size].reshape(shape)
            start += size
        return views

    def last_tap(self, X: np.ndarray) -> np.ndarray:
        return X[:, self._last]

    def split_taps(self, X: np.ndarray) -> list[np.ndarray]:
        return [np.ascontiguousarray(self.last_tap(X), dtype=FLOAT)]

    def forward(self, X: np.ndarray, F: np.ndarray) -> np.ndarray:
        return self.forward_taps([self.last_tap(X)], F)

    def forward_taps(self, xs: Sequence[np.ndarray], F: np.ndarray) -> np.ndarray:
        """Forward on `split_taps`' output: [x_L]; keeps x_L for `backward`."""
        self._x = xs[-1]
        return F + self._delta(self._x)

    def delta_logits(self, X: np.ndarray) -> np.ndarray:
        return self._delta(self.last_tap(X))

    def _delta(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _kept_input(self) -> np.ndarray:
        if self._x is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._x

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: view.copy() for name, view in self.w.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        if set(state) != set(self._shapes):
            missing, extra = sorted(set(self._shapes) - set(state)), sorted(set(state) - set(self._shapes))
            raise StateError(f"adapter state arrays: missing {missing}, unexpected {extra}")
        for name, shape in self._shapes.items():
            if np.shape(state[name]) != shape:
                raise StateError(f"adapter state array {name}: expected shape {shape}, found {np.shape(state[name])}")
            if not np.all(np.isfinite(state[name])):
                raise StateError(f"adapter state array {name} holds NaN or inf")
        for name, view in self.w.items():
            view[...] = state[name]


class LastTapLoRAHead(_LastTapHead):
    """lora-last: z = F + s (x_L A^T) B^T, A (r x d_L) seeded, B (C x r) zero."""

    def __init__(self, tap_sizes: tuple[int, ...], rank: int, alpha: float, num_outputs: int, a_init: np.ndarray) -> None:
        super().__init__(tap_sizes, num_outputs, {"A": (rank, tap_sizes[-1]), "B": (num_outputs, rank)})
        if np.shape(a_init) != (rank, tap_sizes[-1]):
            raise RuntimeInputError(f"initial A of the last tap: expected shape {(rank, tap_sizes[-1])}, found {np.shape(a_init)}")
        self.w["A"][...] = a_init
        self.scaling = float(alpha) / rank
        self.rank = rank
        self._H = np.empty((0, rank), FLOAT)

    def fused_form(self) -> LoRAForm:
        r, d, c = self.rank, self.tap_width - self._last.start, self.num_outputs
        return LoRAForm((self._last,), r, self.scaling, lambda flat: ([flat[: r * d].reshape(r, d)], flat[r * d :].reshape(c, r)))

    # forward: H = s x_L A^T, z = F + H B^T
    def forward_taps(self, xs: Sequence[np.ndarray], F: np.ndarray) -> np.ndarray:
        self._x = xs[-1]
        self._H = (self._x @ self.w["A"].T) * FLOAT(self.scaling)
        return F + self._H @ self.w["B"].T

    # backward: dB = dz^T H, dA = (s dz B)^T x_L
    def backward(self, dz: np.ndarray) -> None:
        x = self._kept_input()
        np.matmul(dz.T, self._H, out=self.dw["B"])
        np.matmul((dz @ self.w["B"]).T * FLOAT(self.scaling), x, out=self.dw["A"])

    def _delta(self, x: np.ndarray) -> np.ndarray:
        return ((x @ self.w["A"].T) * FLOAT(self.scaling)) @ self.w["B"].T


class LastLayerHead(_LastTapHead):
    """ft-last: z = F + x_L dW^T + db, i.e. the last layer's W + dW and b + db; both start at zero.

    theta is [dW | db] (C x (d_L + 1)) row-major, so the fused steps treat it as one
    matrix on [x_L, 1]."""

    def __init__(self, tap_sizes: tuple[int, ...], num_outputs: int) -> None:
        super().__init__(tap_sizes, num_outputs, {"dW": (num_outputs, tap_sizes[-1]), "db": (num_outputs,)})

    def _views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        c, d = self._shapes["dW"]
        W = flat.reshape(c, d + 1)
        return {"dW": W[:, :d], "db": W[:, d]}

    def fused_form(self) -> DenseForm:
        return DenseForm(self._last, lambda flat: flat.reshape(self.num_outputs, -1))

    # backward: d dW = dz^T x_L, d db = sum over the batch of dz
    def backward(self, dz: np.ndarray) -> None:
        np.matmul(dz.T, self._kept_input(), out=self.dw["dW"])
        np.sum(dz, axis=0, out=self.dw["db"])

    def _delta(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w["dW"].T + self.w["db"]


class BiasHead(_LastTapHead):
    """ft-bias: z = F + db, db starts at zero."""

    def __init__(self, tap_sizes: tuple[int, ...], num_outputs: int) -> None:
        super().__init__(tap_sizes, num_outputs, {"db": (num_outputs,)})

    def fused_form(self) -> DenseForm:
        return DenseForm(slice(self.tap_width, self.tap_width), lambda flat: flat.reshape(self.num_outputs, 1))

    def backward(self, dz: np.ndarray) -> None:
        self._kept_input()
        np.sum(dz, axis=0, out=self.dw["db"])

    def _delta(self, x: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.w["db"], (len(x), self.num_outputs)).copy()


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    uses_cache: bool
    family: str  # adapter files load into any method of the same family
    make_head: Callable[[Bundle], TrainableHead]


def _tap_sizes(bundle: Bundle) -> tuple[int, ...]:
    return tuple(t.size for t in bundle.taps)


def skip2lora_head(bundle: Bundle) -> AdapterHead:
    h = bundle.head
    return AdapterHead(_tap_sizes(bundle), h.rank, h.alpha, h.num_outputs, h.a_init)


def _lora_last(bundle: Bundle) -> LastTapLoRAHead:
    h = bundle.head
    return LastTapLoRAHead(_tap_sizes(bundle), h.rank, h.alpha, h.num_outputs, h.a_init[-1])


def _skip2relu(bundle: Bundle) -> Skip2ReLUHead:
    sizes = _tap_sizes(bundle)
    return Skip2ReLUHead(sizes, RELU_RANK, bundle.head.num_outputs, relu_a_init(RELU_RANK, sizes, bundle.head.seed))


def _oselm(features: int) -> Callable[[Bundle], OSELMHead]:
    return lambda b: OSELMHead(_tap_sizes(b), b.head.num_outputs, features, b.head.seed)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("skip2lora", "LoRA adapters from every tap to the logits, Skip-Cache on", True, "skip2lora", skip2lora_head),
        Method("skiplora", "the same adapters without the Skip-Cache (frozen forward every epoch)", False, "skip2lora", skip2lora_head),
        Method("lora-last", "LoRA on the last tap (the classifier's input) only", True, "lora-last", _lora_last),
        Method(
            "ft-last",
            "the last layer fine-tuned: a dense dW and db on the last tap",
            True,
            "ft-last",
            lambda b: LastLayerHead(_tap_sizes(b), b.head.num_outputs),
        ),
        Method("ft-bias", "the last layer's bias fine-tuned", True, "ft-bias", lambda b: BiasHead(_tap_sizes(b), b.head.num_outputs)),
        Method(
            "skip2relu", f"per tap A_l -> ReLU -> B_l (r={RELU_RANK}) on standardized taps, Skip-Cache on", True, "skip2relu", _skip2relu
        ),
        Method(
            "oselm", "closed-form ridge (one pass, no learning rate) on standardized taps to the logit residual", True, "oselm", _oselm(0)
        ),
        Method(
            "oselm-rf",
            f"oselm with {RANDOM_FEATURES} random ReLU features of the standardized taps",
            True,
            "oselm-rf",
            _oselm(RANDOM_FEATURES),
        ),
    )
}
DEFAULT_METHOD = "skip2lora"


def get_method(name: str) -> Method:
    method = METHODS.get(name)
    if method is None:
        raise RuntimeInputError(f"unknown fine-tuning method {name!r}; expected one of: {', '.join(METHODS)}")
    return method
