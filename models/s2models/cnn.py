"""The reference CNNs: small, channels-first (N, 1, H, W) input, logits out.

- `digits_cnn`: for scikit-learn's 8x8 digits. Conv-BN-ReLU, a strided Conv-BN-ReLU,
  a ResNet basic block (Conv-BN-ReLU-Conv-BN plus the identity, ReLU), global average
  pooling and a Linear classifier.
- `mnist_mobilenet`: MobileNet-style, for 28x28 MNIST. A strided stem with HardSwish,
  two depthwise-separable pairs (depthwise 3x3, pointwise 1x1), a MobileNetV3 inverted
  residual (expand 1x1, HardSwish, depthwise 3x3, squeeze-excite with a HardSigmoid
  gate, project 1x1, plus the identity), a 1x1 head conv, global average pooling and a
  Linear classifier.

Module names become ONNX tensor and initialiser names, so they are kept short and stable.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def conv_bn(
    c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU
) -> nn.Sequential:
    layers: dict[str, nn.Module] = {
        "conv": nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        "bn": nn.BatchNorm2d(c_out),
    }
    if act is not None:
        layers["act"] = act()
    return nn.Sequential(OrderedDict(layers))


class BasicBlock(nn.Module):
    """ResNet basic block with an identity shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(channels, channels)
        self.conv2 = conv_bn(channels, channels, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(self.conv1(x)))


class SqueezeExcite(nn.Module):
    """Channel gate: global average → 1x1 reduce → ReLU → 1x1 expand → HardSigmoid, times the input."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(gate))))


class InvertedResidual(nn.Module):
    """MobileNetV3 block, stride 1, same width in and out: the identity is added."""

    def __init__(self, channels: int, expanded: int) -> None:
        super().__init__()
        self.expand = conv_bn(channels, expanded, kernel=1, act=nn.Hardswish)
        self.depthwise = conv_bn(expanded, expanded, groups=expanded, act=nn.Hardswish)
        self.se = SqueezeExcite(expanded, expanded // 4)
        self.project = conv_bn(expanded, channels, kernel=1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class Classifier(nn.Module):
    """Global average pooling, flatten, Linear: logits."""

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def digits_cnn(n_classes: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            {
                "conv1": conv_bn(1, 16),
                "conv2": conv_bn(16, 32, stride=2),
                "block": BasicBlock(32),
                "head": Classifier(32, n_classes),
            }
        )
    )


def mnist_mobilenet(n_classes: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            {
                "stem": conv_bn(1, 16, stride=2, act=nn.Hardswish),
                "dw1": conv_bn(16, 16, groups=16),
                "pw1": conv_bn(16, 24, kernel=1),
                "dw2": conv_bn(24, 24, stride=2, groups=24),
                "pw2": conv_bn(24, 32, kernel=1),
                "block": InvertedResidual(32, 64),
                "last": conv_bn(32, 48, kernel=1, act=nn.Hardswish),
                "head": Classifier(48, n_classes),
            }
        )
    )
