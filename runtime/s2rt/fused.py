"""The trainer's batch steps, fused for NumPy's per-call floor.

At these sizes (batches of 32, a few hundred features, rank 4) a NumPy call costs about
as much as the arithmetic it does, so a step is counted in calls. Per chunk of an epoch
(the whole epoch unless a memory budget says otherwise) the fused path:

- copies each tap into its own contiguous buffer, multiplied by the adapter scaling
  alpha / r, so no step multiplies by it again;
- keeps the logits transposed (C x n): the softmax reduces over rows and the gradients
  come out in the layout the backward GEMMs want;
- precomputes the loss's per-sample constants (label positions, one-hot rows already
  multiplied by the optimizer's `grad_scale` / n), so the loss gradient arrives scaled
  for the optimizer and the optimizer needs no multiply of its own;
- leaves the loss values in per-sample buffers: the trainer checks them once per epoch.

A head opts in by describing itself with `fused_form()`: a `LoRAForm` (adapters from
taps to the logits through a rank-r bottleneck) or a `DenseForm` (a dense matrix on one
tap plus a bias). A head without one trains through `GenericSteps`: its own
`forward_taps`/`backward`, one batch at a time, same chunks and same checks.
Per batch, Skip2-LoRA with L taps costs 2L + 17 calls (L + 1 GEMMs forward, 6 for the
softmax cross-entropy, L + 2 GEMMs backward, 8 for Adam); the old loop took about 37.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from s2rt.bundle.model import Loss
from s2rt.loss import LOSSES, FusedLoss, make_fused_loss

FLOAT = np.float32


@dataclass(frozen=True)
class LoRAForm:
    """z = F + sum_l B_l A_l (s x_l): per-tap A_l (r x d_l), the fused B (C x len(cols)*r).

    `split` maps a flat vector laid out like the head's parameters (the weights, or the
    optimizer's gradient buffer) to views (A_0 .. A_{L-1}, B)."""

    cols: tuple[slice, ...]
    rank: int
    scaling: float
    split: Callable[[np.ndarray], tuple[list[np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class DenseForm:
    """z = F + W [x; 1]: W (C x (d + 1)), its last column the bias; x is the columns `cols`
    of the fused row (an empty slice: a bias alone). `split` maps a flat parameter-shaped
    vector to W's view."""

    cols: slice
    split: Callable[[np.ndarray], np.ndarray]


class Stepper(Protocol):
    grad_scale: float
    grad_buffers: dict[str, np.ndarray]

    def update(self) -> None: ...

    def step(self, grads: Any) -> None: ...


class Head(Protocol):
    """What `GenericSteps` needs of a head (the `TrainableHead` protocol's training half)."""

    @property
    def grads(self) -> dict[str, np.ndarray]: ...

    def split_taps(self, X: np.ndarray) -> list[np.ndarray]: ...

    def forward_taps(self, xs: Sequence[np.ndarray], F: np.ndarray) -> np.ndarray: ...

    def backward(self, dz: np.ndarray) -> None: ...


@dataclass(frozen=True)
class Layout:
    """An epoch of n samples in batches of `batch_size`, served in chunks of `per_chunk` batches."""

    n: int
    batch_size: int
    per_chunk: int

    @property
    def batches(self) -> int:
        return -(-self.n // self.batch_size)

    @property
    def chunk_rows(self) -> int:
        return min(self.n, self.per_chunk * self.batch_size)

    def chunks(self) -> range:
        """The first batch of every chunk."""
        return range(0, self.batches, self.per_chunk)

    def rows(self, b: int) -> slice:
        """Batch b's rows in the epoch."""
        return slice(b * self.batch_size, min(self.n, (b + 1) * self.batch_size))

    def in_chunk(self, b: int) -> slice:
        """Batch b's rows in its chunk's buffers."""
        start = (b % self.per_chunk) * self.batch_size
        return slice(start, start + self.size(b))

    def size(self, b: int) -> int:
        r = self.rows(b)
        return r.stop - r.start


TapTargets = list[tuple[slice, float, np.ndarray]]


class Steps(Protocol):
    """One training run's batch steps: `load` a chunk, `run` its batches, then read the losses.

    A chunk arrives either as fused rows (`load`) or, from a source with `features_into`,
    written straight into the steps' own tap buffers (`into` says where, `load_logits`
    takes the rest)."""

    def load(self, X: np.ndarray, F: np.ndarray, y: np.ndarray, first: int) -> None: ...

    def into(self, n: int) -> TapTargets | None: ...

    def load_logits(self, F: np.ndarray, y: np.ndarray, first: int) -> None: ...

    def run(self, first: int, count: int, on_batch: Callable[[int], None] | None) -> None: ...

    def batch_losses(self) -> np.ndarray: ...

    def batch_loss(self, b: int) -> float: ...

    def unsure(self) -> bool:
        """Whether the epoch just run must be run again after `make_exact` (see loss.FusedSoftmaxCE)."""
        ...

    def make_exact(self) -> None: ...


class _FusedSteps:
    """Shared by the fused kernels: the transposed logits buffers and the fused loss."""

    def __init__(self, layout: Layout, num_outputs: int, loss: Loss, optimizer: Stepper) -> None:
        self.layout, self.optimizer = layout, optimizer
        R, C = layout.chunk_rows, num_outputs
        self.FT = np.empty((C, R), FLOAT)  # the chunk's frozen logits, transposed
        self._z = {n: np.empty((C, n), FLOAT) for n in {layout.size(b) for b in range(layout.batches)}}
        zs = [self._z[layout.size(b)] for b in range(layout.batches)]
        self.loss: FusedLoss = make_fused_loss(loss, layout, self.FT, zs, optimizer.grad_scale)

    def load_logits(self, F: np.ndarray, y: np.ndarray, first: int) -> None:
        np.copyto(self.FT[:, : len(F)], F.T)
        self.loss.load(y, first)

    def batch_losses(self) -> np.ndarray:
        return self.loss.batch_losses()

    def batch_loss(self, b: int) -> float:
        return self.loss.batch_loss(b)

    def unsure(self) -> bool:
        return self.loss.unsure()

    def make_exact(self) -> None:
        self.loss.make_exact()


class LoRASteps(_FusedSteps):
    """H^T = A_l (s x_l)^T per tap, z^T = B H^T + F^T; dB = dz^T H, G^T = B^T dz^T, dA_l = G_l^T (s x_l)."""

    def __init__(self, form: LoRAForm, theta: np.ndarray, layout: Layout, num_outputs: int, loss: Loss, optimizer: Stepper) -> None:
        super().__init__(layout, num_outputs, loss, optimizer)
        self.form = form
        self.A, self.B = form.split(theta)
        self.dA, self.dB = form.split(optimizer.grad_buffers["theta"])
        self.BT = self.B.T
        R, r = layout.chunk_rows, form.rank
        self.xs = [np.empty((R, c.stop - c.start), FLOAT) for c in form.cols]
        hidden = r * len(form.cols)
        work = {}
        tap_rows = [slice(t * r, (t + 1) * r) for t in range(len(form.cols))]  # each tap's rows of H^T and G^T
        for n in self._z:
            HT, GT, Z = np.empty((hidden, n), FLOAT), np.empty((hidden, n), FLOAT), self._z[n]
            work[n] = (HT, HT.T, [HT[h] for h in tap_rows], GT, [GT[h].dot for h in tap_rows], Z, Z.dot)
        self._batch = []
        for b in range(layout.batches):
            rows = layout.in_chunk(b)
            xs = [x[rows] for x in self.xs]
            self._batch.append((xs, [x.T for x in xs], *work[layout.size(b)]))

    def into(self, n: int) -> TapTargets:
        return [(cols, self.form.scaling, buf[:n]) for cols, buf in zip(self.form.cols, self.xs)]

    def load(self, X: np.ndarray, F: np.ndarray, y: np.ndarray, first: int) -> None:
        for cols, factor, out in self.into(len(X)):
            np.multiply(X[:, cols], FLOAT(factor), out=out)
        self.load_logits(F, y, first)

    def run(self, first: int, count: int, on_batch: Callable[[int], None] | None) -> None:
        # GEMMs through bound ndarray.dot methods: the same C routine as np.dot without its
        # Python-level dispatch, the same results
        a_dots, b_dot, bt_dot, dA, dB = [a.dot for a in self.A], self.B.dot, self.BT.dot, self.dA, self.dB
        grad, update = self.loss.grad, self.optimizer.update
        for b in range(first, first + count):
            xs, xts, HT, H, hts, GT, g_dots, Z, z_dot = self._batch[b]
            for a_dot, xt, h in zip(a_dots, xts, hts):
                a_dot(xt, h)
            b_dot(HT, Z)
            grad(b, Z)
            z_dot(H, dB)
            bt_dot(Z, GT)
            for g_dot, x, da in zip(g_dots, xs, dA):
                g_dot(x, da)
            update()
            if on_batch is not None:
                on_batch(b)


class DenseSteps(_FusedSteps):
    """z^T = W [x; 1]^T + F^T; dW = dz^T [x; 1]."""

    def __init__(self, form: DenseForm, theta: np.ndarray, layout: Layout, num_outputs: int, loss: Loss, optimizer: Stepper) -> None:
        super().__init__(layout, num_outputs, loss, optimizer)
        self.cols = form.cols
        self.W, self.dW = form.split(theta), form.split(optimizer.grad_buffers["theta"])
        d = self.W.shape[1] - 1
        self.x = np.ones((layout.chunk_rows, d + 1), FLOAT)  # the last column stays 1: the bias's input
        self._batch = []
        for b in range(layout.batches):
            x, Z = self.x[layout.in_chunk(b)], self._z[layout.size(b)]
            self._batch.append((x, x.T, Z, Z.dot))

    def into(self, n: int) -> TapTargets:
        return [(self.cols, 1.0, self.x[:n, :-1])] if self.x.shape[1] > 1 else []

    def load(self, X: np.ndarray, F: np.ndarray, y: np.ndarray, first: int) -> None:
        for cols, _, out in self.into(len(X)):
            np.copyto(out, X[:, cols])
        self.load_logits(F, y, first)

    def run(self, first: int, count: int, on_batch: Callable[[int], None] | None) -> None:
        w_dot, dW = self.W.dot, self.dW
        grad, update = self.loss.grad, self.optimizer.update
        for b in range(first, first + count):
            x, xt, Z, z_dot = self._batch[b]
            w_dot(xt, Z)
            grad(b, Z)
            z_dot(x, dW)
            update()
            if on_batch is not None:
                on_batch(b)


class GenericSteps:
    """Any head, through its own forward_taps / loss / backward and the optimizer's `step`."""

    def __init__(self, head: Head, layout: Layout, loss: Loss, optimizer: Stepper) -> None:
        self.head, self.layout, self.optimizer = head, layout, optimizer
        self.loss_fn = LOSSES[loss]
        self.losses = np.zeros(layout.batches)
        self._xs: list[np.ndarray] = []
        self._F = self._y = np.empty(0, FLOAT)

    def into(self, n: int) -> None:
        return None

    def load_logits(self, F: np.ndarray, y: np.ndarray, first: int) -> None:
        raise NotImplementedError("GenericSteps takes fused rows only (load)")

    def load(self, X: np.ndarray, F: np.ndarray, y: np.ndarray, first: int) -> None:
        self._xs, self._F, self._y = self.head.split_taps(X), F, y

    def run(self, first: int, count: int, on_batch: Callable[[int], None] | None) -> None:
        head, grads, step = self.head, self.head.grads, self.optimizer.step
        for b in range(first, first + count):
            rows = self.layout.in_chunk(b)
            loss, dz = self.loss_fn(head.forward_taps([x[rows] for x in self._xs], self._F[rows]), self._y[rows])
            self.losses[b] = loss
            head.backward(dz)
            step(grads)
            if on_batch is not None:
                on_batch(b)

    def batch_losses(self) -> np.ndarray:
        return self.losses

    def batch_loss(self, b: int) -> float:
        return float(self.losses[b])

    def unsure(self) -> bool:
        return False

    def make_exact(self) -> None:
        pass


def _lora(head: Any, form: LoRAForm, layout: Layout, num_outputs: int, loss: Loss, optimizer: Stepper) -> Steps:
    return LoRASteps(form, head.parameters()["theta"], layout, num_outputs, loss, optimizer)


def _dense(head: Any, form: DenseForm, layout: Layout, num_outputs: int, loss: Loss, optimizer: Stepper) -> Steps:
    return DenseSteps(form, head.parameters()["theta"], layout, num_outputs, loss, optimizer)


_KERNELS: dict[type, Callable[..., Steps]] = {LoRAForm: _lora, DenseForm: _dense}


def make_steps(head: Any, layout: Layout, loss: Loss, optimizer: Stepper) -> Steps:
    """The fused kernel for the head's `fused_form()`, or `GenericSteps` for a head without one."""
    describe = getattr(head, "fused_form", None)
    form = describe() if describe is not None else None
    kernel = _KERNELS.get(type(form))
    if kernel is None:
        return GenericSteps(head, layout, loss, optimizer)
    return kernel(head, form, layout, head.num_outputs, loss, optimizer)
