"""The paper-style MLP: Linear(in, 96)-ReLU-Linear(96, 96)-ReLU-Linear(96, C), logits out.

With `mean`/`std` given, input standardisation is baked in as the first operation
(registered buffers), so the exported ONNX takes raw features.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

HIDDEN = 96


class Standardize(nn.Module):
    """(x - mean) / std with fixed per-feature statistics."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"Standardize: expected mean and std of one shape (F,), found {mean.shape}, {std.shape}")
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of float32 features; a constant feature gets std 1."""
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def mlp(n_in: int, n_classes: int, standardize: Standardize | None = None) -> nn.Sequential:
    """The MLP; `standardize`, when given, runs first. Layer names become ONNX tensor names."""
    layers: dict[str, nn.Module] = {} if standardize is None else {"norm": standardize}
    layers |= {
        "fc1": nn.Linear(n_in, HIDDEN),
        "relu1": nn.ReLU(),
        "fc2": nn.Linear(HIDDEN, HIDDEN),
        "relu2": nn.ReLU(),
        "fc3": nn.Linear(HIDDEN, n_classes),
    }
    return nn.Sequential(OrderedDict(layers))
