"""PyTorch and PEFT baselines on the same weights (the ONNX initialisers, see onnxnet).

FT-All trains every layer, FT-Last the last layer, FT-Bias every bias (BitFit). PEFT
LoRA wraps every layer (LoRA-All) or the last (LoRA-Last) with lora_alpha = 2r, so the
scaling alpha / r matches Skip2-LoRA's 8 / 4. LoRA-All "matched" picks the rank whose
trainable-parameter count is nearest to Skip2-LoRA's, the paper's counterpart.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from s2lbench.methods import ADAPTER_GRID, FT_GRID, Job, Method, RunResult, epoch_orders, score

EVAL_BATCH = 1024


def _trainable(model: Any) -> list[Any]:
    return [p for p in model.parameters() if p.requires_grad]


def _select(which: str) -> Callable[[Any, Job, Any], Any]:
    """A preparer that leaves only `which` parameters of a fresh OnnxNet trainable."""

    def prepare(net: Any, job: Job, context: Any) -> Any:
        net.requires_grad_(which == "all")
        if which == "last":
            net.layers[net.layer_names[-1]].requires_grad_(True)
        elif which == "bias":
            for layer in net.layers.values():
                if getattr(layer, "bias", None) is not None:
                    layer.bias.requires_grad_(True)
        return net

    return prepare


def _lora(where: str, rank: str | int) -> Callable[[Any, Job, Any], Any]:
    def prepare(net: Any, job: Job, context: Any) -> Any:
        import peft

        r = context.matched_lora_rank(job.seed) if rank == "matched" else int(rank)
        if job is not None and rank == "matched":
            import torch

            torch.manual_seed(job.seed)  # resolving the rank the first time builds PEFT models, which draw from the RNG
        targets = lora_targets(net, r) if where == "all" else net.layer_names[-1:]
        config = peft.LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=targets)
        return peft.get_peft_model(net, config)

    return prepare


def lora_targets(net: Any, rank: int) -> list[str]:
    """Every layer PEFT can put LoRA on at this rank: it refuses a grouped (depthwise) conv
    unless the rank is divisible by its groups, so those stay frozen."""
    return [name for name in net.layer_names if rank % getattr(net.layers[name], "groups", 1) == 0]


def train_torch(model: Any, job: Job, make_optimizer: Callable[[list[Any], float], Any] | None = None) -> float:
    """Adam (or `make_optimizer(params, lr)`) over the trainable parameters, the shared epoch
    orders; returns the wall time."""
    import torch

    x, y = torch.from_numpy(job.train.x), torch.from_numpy(job.train.y)
    orders = [torch.from_numpy(o) for o in epoch_orders(len(job.train), job.epochs, job.seed)]
    optimizer = (make_optimizer or torch.optim.Adam)(_trainable(model), lr=job.lr)
    loss_fn = torch.nn.functional.cross_entropy
    model.train()
    start = time.perf_counter()
    for epoch, order in enumerate(orders):
        if job.schedule == "cosine":  # per epoch, as s2rt's TrainConfig.lr_schedule
            for group in optimizer.param_groups:
                group["lr"] = job.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / job.epochs))
        for idx in order.split(job.batch_size):
            optimizer.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return time.perf_counter() - start


def predict_torch(model: Any, x: np.ndarray) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i : i + EVAL_BATCH])).numpy() for i in range(0, len(x), EVAL_BATCH)])


def _runner(prepare: Callable[[Any, Job, Any], Any]):
    def run(job: Job, context: Any) -> RunResult:
        import torch

        net = copy.deepcopy(context.torch_net())  # first call builds the mirror, whose module inits draw from torch's RNG
        torch.manual_seed(job.seed)  # LoRA's A init
        model = prepare(net, job, context)
        trainable = sum(p.numel() for p in _trainable(model))
        seconds = train_torch(model, job)
        accuracy, loss, calibrated = score(predict_torch(model, job.eval.x), job.eval.y)
        return RunResult(seconds, accuracy, loss, trainable, note=_note(model), calibrated_loss=calibrated)

    return run


def _note(model: Any) -> str:
    """Which layers a LoRA-All left out (PEFT cannot wrap them at this rank), if any."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None:
        return ""
    net = model.get_base_model()
    left = [n for n in net.layer_names if n not in config.target_modules] if len(config.target_modules) > 1 else []
    return f"PEFT cannot put rank-{config.r} LoRA on grouped convs: {', '.join(left)} stay frozen" if left else ""


def lora_parameters(net: Any, rank: int, where: str = "all") -> int:
    """Trainable parameters of PEFT LoRA at `rank` on a copy of `net`."""
    model = _lora(where, rank)(copy.deepcopy(net), None, None)  # type: ignore[arg-type]
    return sum(p.numel() for p in _trainable(model))


def methods() -> list[Method]:
    return [
        Method("torch-ft-all", "FT-All (PyTorch)", "torch", FT_GRID, _runner(_select("all"))),
        Method("torch-ft-last", "FT-Last (PyTorch)", "torch", ADAPTER_GRID, _runner(_select("last"))),
        Method("torch-ft-bias", "FT-Bias, every layer (PyTorch)", "torch", ADAPTER_GRID, _runner(_select("bias"))),
        Method("peft-lora-all", "LoRA-All r=4 (PEFT)", "peft", ADAPTER_GRID, _runner(_lora("all", 4))),
        Method("peft-lora-all-matched", "LoRA-All, Skip2-LoRA's params (PEFT)", "peft", ADAPTER_GRID, _runner(_lora("all", "matched"))),
        Method("peft-lora-last", "LoRA-Last r=4 (PEFT)", "peft", ADAPTER_GRID, _runner(_lora("last", 4))),
    ]
