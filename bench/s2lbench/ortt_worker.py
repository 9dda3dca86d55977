"""onnxruntime-training peer: runs in its own venv (bench/.venv-ortt), one JSON request a line.

    bench/.venv-ortt/bin/python bench/s2lbench/ortt_worker.py   # stdin: requests, stdout: replies

Standalone on purpose: that venv has onnxruntime-training, onnx <= 1.17, numpy and torch
(its package imports it), but not s2rt or s2lbench. Requests:

    {"cmd": "prepare", "key": K, "onnx": PATH, "which": "all"|"last"|"bias", "threads": N}
    {"cmd": "run", "key": K, "train": NPZ, "eval": NPZ, "epochs": E, "batch_size": B, "lr": LR, "seed": S}
    {"cmd": "quit"}

`prepare` writes the training artifacts (AdamW without weight decay, eps 1e-8: torch's
Adam) for the chosen trainable initialisers; `run` starts from the pretrained checkpoint,
trains with the shared epoch orders and replies {"seconds", "accuracy", "loss", "trainable"}.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LAYER_OPS = ("Gemm", "MatMul", "Conv")


def layer_params(model: Any) -> list[tuple[str, str | None]]:
    """(weight, bias or None) initialiser names of every layer, in graph order."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type in LAYER_OPS and len(node.input) > 1 and node.input[1] in inits:
            bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
            out.append((node.input[1], bias))
    return out


def trainable_names(model: Any, which: str) -> list[str]:
    layers = layer_params(model)
    if which == "all":
        return [n for w, b in layers for n in (w, b) if n]
    if which == "last":
        return [n for n in layers[-1] if n]
    if which == "bias":
        return [b for _, b in layers if b]
    raise ValueError(f"unknown parameter selection {which!r}")


class Peer:
    def __init__(self) -> None:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
        self.root = Path(tempfile.mkdtemp(prefix="s2lbench-ortt-"))
        self.prepared: dict[str, dict[str, Any]] = {}

    def prepare(self, key: str, onnx_path: str, which: str, threads: int) -> dict[str, Any]:
        import onnx
        from onnxruntime.training import artifacts, onnxblock

        model = onnx.load(onnx_path)
        model.ir_version = min(model.ir_version, 10)  # onnx 1.17 writes and reads IR version 10
        trainable = trainable_names(model, which)
        frozen = [t.name for t in model.graph.initializer if t.name not in trainable]
        directory = self.root / key.replace("/", "_")
        directory.mkdir(parents=True, exist_ok=True)
        artifacts.generate_artifacts(
            model,
            requires_grad=trainable,
            frozen_params=frozen,
            loss=artifacts.LossType.CrossEntropyLoss,
            optimizer=onnxblock.optim.AdamW(eps=1e-8, weight_decay=0.0),
            artifact_directory=directory,
            additional_output_names=[model.graph.output[0].name],
        )
        sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
        self.prepared[key] = {"dir": directory, "threads": threads, "trainable": sum(sizes[n] for n in trainable)}
        return {"trainable": self.prepared[key]["trainable"]}

    def run(self, key: str, request: dict[str, Any]) -> dict[str, Any]:
        import onnxruntime as ort
        from onnxruntime.training.api import CheckpointState, Module, Optimizer

        prepared = self.prepared[key]
        directory = prepared["dir"]
        options = ort.SessionOptions()
        if prepared["threads"]:
            options.intra_op_num_threads = prepared["threads"]
            options.inter_op_num_threads = 1
        state = CheckpointState.load_checkpoint(str(directory / "checkpoint"))
        module = Module(str(directory / "training_model.onnx"), state, str(directory / "eval_model.onnx"), "cpu", options)
        optimizer = Optimizer(str(directory / "optimizer_model.onnx"), module)
        optimizer.set_learning_rate(float(request["lr"]))
        train, evaluate = load(request["train"]), load(request["eval"])
        x, y = train
        bs = int(request["batch_size"])
        rng = np.random.default_rng(int(request["seed"]))
        orders = [rng.permutation(np.arange(len(y))) for _ in range(int(request["epochs"]))]
        module.train()
        start = time.perf_counter()
        for order in orders:
            for i in range(0, len(order), bs):
                idx = order[i : i + bs]
                module(x[idx], y[idx])
                optimizer.step()
                module.lazy_reset_grad()
        seconds = time.perf_counter() - start
        module.eval()
        logits = np.concatenate([module(evaluate[0][i : i + 1024], evaluate[1][i : i + 1024])[1] for i in range(0, len(evaluate[1]), 1024)])
        z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        loss = float(np.mean(lse - z[np.arange(len(evaluate[1])), evaluate[1]]))
        return {
            "seconds": seconds,
            "accuracy": float(np.mean(logits.argmax(axis=1) == evaluate[1])),
            "loss": loss,
            "trainable": prepared["trainable"],
        }


def load(path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as arrays:
        return np.ascontiguousarray(arrays["x"], dtype=np.float32), arrays["y"].astype(np.int64)


def main() -> int:
    replies = sys.stdout
    sys.stdout = sys.stderr  # whatever the libraries print must not reach the reply stream
    peer = Peer()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["cmd"] == "quit":
                break
            if request["cmd"] == "prepare":
                reply = peer.prepare(request["key"], request["onnx"], request["which"], int(request["threads"]))
            else:
                reply = peer.run(request["key"], request)
            reply["ok"] = True
        except Exception as e:  # reported to the parent, which prints it and skips this method
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), file=replies, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
