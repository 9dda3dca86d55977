"""The other seed papers' methods, on the same torch mirror, samples, epochs and order.

- DoRA (PEFT `use_dora=True`), rank 4, alpha 8, on every layer PEFT can wrap at that rank
  (a depthwise conv needs a rank divisible by its groups: those stay frozen, as for LoRA-All);
- LoRA-C (s2lbench.lora_c), rank 4, alpha 8: a layer-level delta on every conv, depthwise
  included, and LoRA on the linear;
- GaLore (s2lbench.galore), rank 4, projector refreshed every 50 steps, scale 0.25: every
  weight trained, Adam's state in the projected space.

They run on the CNN workloads (`kinds`), where the seed papers compare them. Each reports
the parameters it trained and, in its note, what it did with layers it cannot handle.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from s2lbench.methods import ADAPTER_GRID, Job, Method, RunResult, score
from s2lbench.methods_torch import _trainable, lora_targets, predict_torch, train_torch

RANK, ALPHA = 4, 8.0
GALORE_GAP, GALORE_SCALE = 50, 0.25
CNN = ("cnn",)


@dataclass(frozen=True)
class Prepared:
    model: Any
    note: str = ""
    make_optimizer: Callable[[list[Any], float], Any] | None = None  # None: Adam


def dora(net: Any) -> Prepared:
    import peft

    targets = lora_targets(net, RANK)
    left = [n for n in net.layer_names if n not in targets]
    model = peft.get_peft_model(net, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, use_dora=True, target_modules=targets))
    note = f"PEFT cannot put rank-{RANK} DoRA on grouped convs: {', '.join(left)} stay frozen" if left else ""
    return Prepared(model, note)


def lora_c(net: Any) -> Prepared:
    from s2lbench.lora_c import apply_lora_c

    wide = apply_lora_c(net, RANK, ALPHA)
    note = f"LoRA-C r={RANK} adapters larger than the layer they adapt: {', '.join(wide)}" if wide else ""
    return Prepared(net, note)


def galore(net: Any) -> Prepared:
    from s2lbench.galore import GaLoreAdam, projectable

    net.requires_grad_(True)
    plain = [n for n, p in net.named_parameters() if p.dim() >= 2 and not projectable(p, RANK)]
    note = f"GaLore r={RANK}: weights with a side <= {RANK} get plain Adam: {', '.join(plain)}" if plain else ""

    def make(params: list[Any], lr: float) -> Any:
        return GaLoreAdam(params, lr=lr, rank=RANK, update_gap=GALORE_GAP, scale=GALORE_SCALE)

    return Prepared(net, note, make)


PEERS: dict[str, tuple[str, Callable[[Any], Prepared]]] = {
    "peft-dora-all": (f"DoRA-All r={RANK} (PEFT)", dora),
    "lora-c-all": (f"LoRA-C r={RANK} (torch)", lora_c),
    "galore-all": (f"GaLore r={RANK} (torch)", galore),
}


def prepare(name: str, context: Any, seed: int) -> Prepared:
    """A fresh copy of the workload's torch mirror with peer `name` applied (seeded init)."""
    import torch

    net = copy.deepcopy(context.torch_net())  # before seeding: building the mirror draws from torch's RNG
    torch.manual_seed(seed)
    return PEERS[name][1](net)


def _runner(name: str):
    def run(job: Job, context: Any) -> RunResult:
        prepared = prepare(name, context, job.seed)
        trainable = sum(p.numel() for p in _trainable(prepared.model))
        seconds = train_torch(prepared.model, job, prepared.make_optimizer)
        accuracy, loss, calibrated = score(predict_torch(prepared.model, job.eval.x), job.eval.y)
        return RunResult(seconds, accuracy, loss, trainable, note=prepared.note, calibrated_loss=calibrated)

    return run


def methods() -> list[Method]:
    """The peers whose packages are installed (found, not imported: an s2rt process must not load torch)."""
    import importlib.util

    available = [n for n in PEERS if not n.startswith("peft") or importlib.util.find_spec("peft") is not None]
    family = {n: "peft" if n.startswith("peft") else "torch" for n in PEERS}
    return [Method(n, PEERS[n][0], family[n], ADAPTER_GRID, _runner(n), kinds=CNN) for n in available]
