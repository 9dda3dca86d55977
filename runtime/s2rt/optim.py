"""SGD and Adam over a dict of named float32 arrays, updated in place.

The update rules are torch.optim's (SGD without dampening or Nesterov; Adam without
weight decay or AMSGrad). Every step runs a fixed handful of ufuncs with `out=` into
preallocated buffers, so a step allocates nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from s2rt.bundle.model import Optimizer
from s2rt.errors import RuntimeInputError, StateError

Params = Mapping[str, np.ndarray]


class _Stepper:
    """Shared state handling: named buffers per parameter and a step count."""

    def __init__(self, params: Params, buffers: tuple[str, ...], lr: float) -> None:
        _check_hyper("learning rate", lr, lo=0.0, lo_open=True)
        self.params = params
        self.lr = float(lr)
        self.steps = 0
        self._tmp = {k: np.empty_like(p) for k, p in params.items()}
        self._state = {f"{b}.{k}": np.zeros_like(p) for b in buffers for k, p in params.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the optimizer state as plain arrays (`steps` and one array per buffer)."""
        return {"steps": np.array(self.steps, np.int64)} | {k: v.copy() for k, v in self._state.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        names = {"steps", *self._state}
        if set(state) != names:
            missing, extra = sorted(names - set(state)), sorted(set(state) - names)
            raise StateError(f"optimizer state arrays: missing {missing}, unexpected {extra}")
        for k, buf in self._state.items():
            if np.shape(state[k]) != buf.shape:
                raise StateError(f"optimizer state array {k}: expected shape {buf.shape}, found {np.shape(state[k])}")
        for k, buf in self._state.items():
            buf[...] = state[k]
        self.steps = int(state["steps"])


class SGD(_Stepper):
    """p -= lr * d,  d = g + wd * p, with momentum: buf = momentum * buf + d, d = buf."""

    def __init__(self, params: Params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        _check_hyper("momentum", momentum, lo=0.0, hi=1.0)
        _check_hyper("weight decay", weight_decay, lo=0.0)
        super().__init__(params, ("momentum",) if momentum else (), lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)

    def step(self, grads: Params) -> None:
        self.steps += 1
        for k, p in self.params.items():
            d, tmp = grads[k], self._tmp[k]
            if self.weight_decay:
                np.multiply(p, self.weight_decay, out=tmp)
                tmp += d
                d = tmp
            if self.momentum:
                buf = self._state[f"momentum.{k}"]
                buf *= self.momentum
                buf += d
                d = buf
            np.multiply(d, self.lr, out=tmp)
            p -= tmp


class Adam(_Stepper):
    """torch.optim.Adam: m, v moving averages of g and g^2, bias-corrected step."""

    def __init__(
        self,
        params: Params,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        _check_hyper("beta1", betas[0], lo=0.0, hi=1.0)
        _check_hyper("beta2", betas[1], lo=0.0, hi=1.0)
        _check_hyper("eps", eps, lo=0.0, lo_open=True)
        super().__init__(params, ("exp_avg", "exp_avg_sq"), lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)

    def step(self, grads: Params) -> None:
        self.steps += 1
        b1, b2 = self.betas
        step_size = self.lr / (1.0 - b1**self.steps)
        # p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps), with step_size folded into the
        # denominator: denom' = sqrt(v) * inv + eps / step_size, p -= m / denom'
        inv = 1.0 / (math.sqrt(1.0 - b2**self.steps) * step_size)
        eps = self.eps / step_size
        for k, p in self.params.items():
            g, tmp = grads[k], self._tmp[k]
            m, v = self._state[f"exp_avg.{k}"], self._state[f"exp_avg_sq.{k}"]
            np.subtract(g, m, out=tmp)  # m = lerp(m, g, 1 - b1), as torch
            tmp *= 1.0 - b1
            m += tmp
            v *= b2
            np.multiply(g, g, out=tmp)
            tmp *= 1.0 - b2
            v += tmp
            np.sqrt(v, out=tmp)
            tmp *= inv
            tmp += eps
            np.divide(m, tmp, out=tmp)
            p -= tmp


StepOptimizer = SGD | Adam

_FACTORIES: Mapping[Optimizer, Callable[[Params, float], StepOptimizer]] = {
    Optimizer.SGD: SGD,
    Optimizer.ADAM: Adam,
}


def make_optimizer(kind: Optimizer, params: Params, lr: float) -> StepOptimizer:
    """The optimizer named by a bundle's `Optimizer` code, with its default settings."""
    try:
        factory = _FACTORIES[Optimizer(kind)]
    except (ValueError, KeyError):
        known = ", ".join(o.name for o in _FACTORIES)
        raise RuntimeInputError(f"unknown optimizer {kind!r}; supported: {known}") from None
    return factory(params, lr)


def _check_hyper(name: str, value: float, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value < hi
    if not ok:
        low = "(" if lo_open else "["
        raise RuntimeInputError(f"{name} must be in {low}{lo}, {hi}), got {value}")
