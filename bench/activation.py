"""skip2relu's activation, measured: ReLU (what s2rt ships) against GELU (tanh form) in the
same head, same seeds, rates and epochs as `make bench` picks for skip2relu.

    .venv/bin/python bench/activation.py [har,digits,fan,digits_cnn,mnist_cnn]

Prints the shifted-test accuracy (mean of 3 seeds) and the fine-tuning CPU time per run.
The GELU head here is a straightforward NumPy version for the comparison only.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _sub in ("runtime", "converter", "bench"):
    sys.path.insert(0, str(ROOT / _sub))

import numpy as np  # noqa: E402
from s2conv import ConvertOptions, convert  # noqa: E402
from s2lbench.workloads import load  # noqa: E402
from s2rt.data import Samples  # noqa: E402
from s2rt.heads.nonlinear import Skip2ReLUHead  # noqa: E402
from s2rt.session import Model  # noqa: E402
from s2rt.trainer import TrainConfig  # noqa: E402

C = np.float32(np.sqrt(2 / np.pi))


class GELUHead(Skip2ReLUHead):
    def forward_taps(self, us, F):
        n = F.shape[0]
        if self._PT.shape[1] != n:
            self._PT, self._HT = np.empty((len(self._c), n), np.float32), np.empty((len(self._c), n), np.float32)
        PT, HT = self._PT, self._HT
        for a, u, hc in zip(self._A, us, self._h_cols):
            np.dot(a, u.T, out=PT[hc])
        PT += self._c[:, None]
        self._T = np.tanh(C * (PT + np.float32(0.044715) * PT**3))
        HT[...] = 0.5 * PT * (1 + self._T)
        z = np.dot(HT.T, self._BT)
        z += F
        self._us = us
        return z

    def backward(self, dz):
        us = self._us
        np.dot(dz.T, self._HT.T, out=self._dB)
        GT = np.dot(self._BT, dz.T)
        P, T = self._PT, self._T
        d = 0.5 * (1 + T) + 0.5 * P * (1 - T * T) * C * (1 + np.float32(3 * 0.044715) * P * P)
        GT *= d
        np.sum(GT, axis=1, out=self._dc)
        for da, u, hc in zip(self._dA, us, self._h_cols):
            np.dot(GT[hc], u, out=da)

    def delta_logits(self, X):
        X = np.asarray(X, dtype=np.float32)
        HT = np.empty((len(self._c), X.shape[0]), np.float32)
        for a, u, hc in zip(self._A, self.split_taps(X), self._h_cols):
            np.dot(a, u.T, out=HT[hc])
        HT += self._c[:, None]
        T = np.tanh(C * (HT + np.float32(0.044715) * HT**3))
        return np.dot((0.5 * HT * (1 + T)).T, self._BT)


LRS = {"har": 0.01, "digits": 0.003, "fan": 0.01, "digits_cnn": 0.01, "mnist_cnn": 0.003}  # make bench's picks


def main() -> None:
    for wl in (sys.argv[1] if len(sys.argv) > 1 else ",".join(LRS)).split(","):
        w = load(wl)
        res = {"relu": [], "gelu": []}
        cpu = {"relu": 0.0, "gelu": 0.0}
        for seed in (0, 1, 2):
            b = convert(w.onnx, ConvertOptions(seed=seed, tap_pool=2 if w.kind == "cnn" else 1))
            for act in ("relu", "gelu"):
                model = Model(b, threads=1, method="skip2relu")
                if act == "gelu":
                    h = model.head
                    g = GELUHead(h.tap_sizes, h.rank, h.num_outputs, [a.copy() for a in h._A])
                    model.head = g
                t = time.process_time()
                model.fine_tune(Samples(w.ft.x, w.ft.y), TrainConfig(epochs=5 if w.kind == "cnn" else 20, learning_rate=LRS[wl], seed=seed))
                cpu[act] += time.process_time() - t
                res[act].append(float(np.mean(model.logits(w.test.x).argmax(1) == w.test.y)))
        print(
            wl,
            {k: round(float(np.mean(v)), 3) for k, v in res.items()},
            {k: round(v / 3 * 1e3) for k, v in cpu.items()},
            "ms cpu",
            flush=True,
        )


if __name__ == "__main__":
    main()
