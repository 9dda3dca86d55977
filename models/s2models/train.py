"""Seeded, deterministic pretraining: Adam, mini-batches, early stop on the validation split."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from s2models.data import Split


@dataclass(frozen=True)
class TrainConfig:
    """Pretraining hyper-parameters."""

    seed: int = 0  # seeds the initial weights and the batch order
    lr: float = 1e-3  # Adam learning rate
    batch_size: int = 32
    max_epochs: int = 60
    patience: int = 10  # stop after this many epochs without a better validation loss

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError(f"TrainConfig: batch_size, max_epochs and patience must be >= 1, found {self}")


@dataclass(frozen=True)
class TrainResult:
    epochs: int  # epochs run
    best_epoch: int  # epoch (1-based) whose weights were kept
    val_loss: float
    val_accuracy: float


def tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(split.x), torch.from_numpy(split.y)


def evaluate(model: nn.Module, split: Split) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model on a split."""
    x, y = tensors(split)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(dim=1) == y).double().mean().item()
    return loss, accuracy


def run_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, split: Split, batch_size: int, generator: torch.Generator) -> None:
    x, y = tensors(split)
    model.train()
    for batch in torch.randperm(len(y), generator=generator).split(batch_size):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()


def pretrain(
    make_model: Callable[[], nn.Module], train: Split, val: Split, config: TrainConfig = TrainConfig()
) -> tuple[nn.Module, TrainResult]:
    """Build the model under the seed, train it on one thread, keep the best-validation weights."""
    torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    best_loss, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, config.max_epochs + 1):
        run_epoch(model, optimizer, train, config.batch_size, generator)
        loss, _ = evaluate(model, val)
        if loss < best_loss:
            best_loss, best_epoch, best_state = loss, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    val_loss, val_accuracy = evaluate(model, val)
    return model, TrainResult(epoch, best_epoch, val_loss, val_accuracy)
