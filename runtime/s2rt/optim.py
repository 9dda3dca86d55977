"""SGD and Adam over a dict of named float32 arrays, updated in place.

The update rules are torch.optim's (SGD without dampening or Nesterov; Adam without
weight decay or AMSGrad). Every step runs a fixed handful of ufuncs with `out=` into
preallocated buffers, so a step allocates nothing.

Two ways to step:

- `step(grads)`: the plain API, dL/dp in, one update.
- the fused path the trainer uses: the loss gradient is computed already multiplied by
  `grad_scale` and written straight into `grad_buffers` (the head's backward writes its
  gradients there), `plan(n)` computes the step-dependent constants of the next n steps
  in one go, and `update()` applies one step. Adam's `grad_scale` is its 1 - beta1, so
  the moving average needs no extra multiply; plain SGD's is its learning rate.

Adam keeps m and v stacked as one (2, P) array per parameter, with the squared gradient
beside the gradient, so both moving averages move in two calls: one step is 8 NumPy
calls. It stores v / c, c = (1 - beta2) / (1 - beta1)^2 (the factor the scaled gradient
squared is missing), and folds sqrt(c) into the step constants; `state_dict` gives and
takes torch's m and v.
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

    grad_scale = 1.0

    def __init__(self, params: Params, lr: float) -> None:
        _check_hyper("learning rate", lr, lo=0.0, lo_open=True)
        self.params = params
        self._lr = float(lr)
        self.steps = 0
        self._tmp = {k: np.empty_like(p) for k, p in params.items()}
        self.grad_buffers: dict[str, np.ndarray] = {k: np.zeros_like(p) for k, p in params.items()}

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        """A new rate for the steps to come (a schedule sets it per epoch), as torch's param_group["lr"]."""
        _check_hyper("learning rate", value, lo=0.0, lo_open=True)
        self._lr = float(value)
        self._lr_changed()

    def _lr_changed(self) -> None:
        """Recompute whatever was derived from the rate (nothing by default)."""

    # -- the state as torch names it ----------------------------------------------------
    def _named_state(self) -> dict[str, np.ndarray]:
        return {}

    def _load_named(self, name: str, value: np.ndarray) -> None:
        raise KeyError(name)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the optimizer state as plain arrays (`steps` and one array per buffer)."""
        return {"steps": np.array(self.steps, np.int64)} | {k: v.copy() for k, v in self._named_state().items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        own = self._named_state()
        names = {"steps", *own}
        if set(state) != names:
            missing, extra = sorted(names - set(state)), sorted(set(state) - names)
            raise StateError(f"optimizer state arrays: missing {missing}, unexpected {extra}")
        for k, buf in own.items():
            if np.shape(state[k]) != buf.shape:
                raise StateError(f"optimizer state array {k}: expected shape {buf.shape}, found {np.shape(state[k])}")
        for k in own:
            self._load_named(k, np.asarray(state[k]))
        self.steps = int(state["steps"])

    # -- exact snapshots, for rolling back --------------------------------------------------
    def _buffers(self) -> list[np.ndarray]:
        return []

    def snapshot(self) -> tuple[int, list[np.ndarray]]:
        """An exact copy of the internal state (cheaper than `state_dict`, no conversion)."""
        return self.steps, [b.copy() for b in self._buffers()]

    def restore(self, snap: tuple[int, list[np.ndarray]]) -> None:
        self.steps = snap[0]
        for buf, saved in zip(self._buffers(), snap[1]):
            buf[...] = saved

    # -- the plain API ----------------------------------------------------------------------
    def step(self, grads: Params) -> None:
        for k, buf in self.grad_buffers.items():
            np.multiply(grads[k], self.grad_scale, out=buf)
        self.plan(1)
        self.update()

    def plan(self, steps: int) -> None:
        """Compute the step-dependent constants of the next `steps` updates (no-op by default)."""

    def update(self) -> None:
        raise NotImplementedError


class SGD(_Stepper):
    """p -= lr * d,  d = g + wd * p, with momentum: buf = momentum * buf + d, d = buf.

    Without momentum and weight decay, `grad_scale` is lr and a step is `p -= scaled g`.
    """

    def __init__(self, params: Params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        _check_hyper("momentum", momentum, lo=0.0, hi=1.0)
        _check_hyper("weight decay", weight_decay, lo=0.0)
        super().__init__(params, lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self._momentum = {k: np.zeros_like(p) for k, p in params.items()} if momentum else {}
        self._plain = not (momentum or weight_decay)
        # plain: the loss writes lr0 * g (the rate when the step's constants were made), and
        # a later rate scales the step by lr / lr0
        self.grad_scale = self.lr if self._plain else 1.0
        self._rescale = 1.0

    def _lr_changed(self) -> None:
        if self._plain:
            self._rescale = self.lr / self.grad_scale

    def _named_state(self) -> dict[str, np.ndarray]:
        return {f"momentum.{k}": v for k, v in self._momentum.items()}

    def _load_named(self, name: str, value: np.ndarray) -> None:
        self._momentum[name.removeprefix("momentum.")][...] = value

    def _buffers(self) -> list[np.ndarray]:
        return list(self._momentum.values())

    def update(self) -> None:
        self.steps += 1
        for k, p in self.params.items():
            d = self.grad_buffers[k]
            if self._plain:  # d is lr0 * g already
                if self._rescale == 1.0:
                    p -= d
                else:
                    np.multiply(d, self._rescale, out=self._tmp[k])
                    p -= self._tmp[k]
                continue
            tmp = self._tmp[k]
            if self.weight_decay:
                np.multiply(p, self.weight_decay, out=tmp)
                tmp += d
                d = tmp
            if self.momentum:
                buf = self._momentum[k]
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
        super().__init__(params, lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        b1, b2 = self.betas
        self.grad_scale = 1.0 - b1
        self._c = (1.0 - b2) / (1.0 - b1) ** 2  # v = c * the stored second moment
        self._decay = np.array([[b1], [b2]], np.float32)
        # per parameter: S = [m; v / c] and G = [scaled g; its square], each (2, P)
        self._S = {k: np.zeros((2, p.size), np.float32) for k, p in params.items()}
        self._G = {k: np.zeros((2, p.size), np.float32) for k, p in params.items()}
        self.grad_buffers = {k: self._G[k][0].reshape(p.shape) for k, p in params.items()}
        # per parameter, the views one update uses: p, G, G[0], G[1], S, S[0], S[1], tmp, tmp shaped as p
        self._views = []
        for k, p in params.items():
            G, S, tmp = self._G[k], self._S[k], np.empty(p.size, np.float32)
            self._views.append((p, G, G[0], G[1], S, S[0], S[1], tmp, tmp.reshape(p.shape)))
        self._inv: list[float] = []  # per step number: multiplier of sqrt(stored v)
        self._eps: list[float] = []  # per step number: eps over the step size

    def _named_state(self) -> dict[str, np.ndarray]:
        out = {}
        for k, p in self.params.items():
            out[f"exp_avg.{k}"] = self._S[k][0].reshape(p.shape)
            out[f"exp_avg_sq.{k}"] = (self._S[k][1] * np.float32(self._c)).reshape(p.shape)
        return out

    def _load_named(self, name: str, value: np.ndarray) -> None:
        kind, k = name.split(".", 1)
        if kind == "exp_avg":
            self._S[k][0] = value.reshape(-1)
        else:
            self._S[k][1] = value.reshape(-1) / np.float32(self._c)

    def _buffers(self) -> list[np.ndarray]:
        return list(self._S.values())

    def _lr_changed(self) -> None:
        """The planned steps not taken yet get the new rate's constants."""
        planned = len(self._inv) - self.steps
        if planned > 0:
            del self._inv[self.steps :], self._eps[self.steps :]
            self.plan(planned)

    def plan(self, steps: int) -> None:
        """Constants of steps 1 .. self.steps + steps, kept for the whole run (indexed by step)."""
        have, need = len(self._inv), self.steps + steps
        if need <= have:
            return
        b1, b2 = self.betas
        t = np.arange(have + 1, need + 1, dtype=np.float64)
        step_size = self.lr / (1.0 - b1**t)
        # p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps), with step_size folded into the
        # denominator: denom' = sqrt(stored v) * inv + eps / step_size, p -= m / denom'
        inv = math.sqrt(self._c) / (np.sqrt(1.0 - b2**t) * step_size)
        self._inv += inv.tolist()
        self._eps += (self.eps / step_size).tolist()

    def update(self) -> None:
        i = self.steps
        self.steps = i + 1
        inv, eps = self._inv[i], self._eps[i]
        decay = self._decay
        for p, G, g, g2, S, m, v, tmp, step in self._views:
            np.multiply(g, g, out=g2)
            S *= decay  # m = b1 m + (1 - b1) g; v / c = b2 v / c + ((1 - b1) g)^2
            S += G
            np.sqrt(v, out=tmp)
            tmp *= inv
            tmp += eps
            np.divide(m, tmp, out=tmp)
            p -= step


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
