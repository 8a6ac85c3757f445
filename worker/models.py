"""The models of the study language. Every model has ``forward_features(x) -> h`` (the pooled
penultimate features, N x D) and a ``head`` (linear, or the normalised cosine head LDAM needs);
``model(x)`` is ``head(forward_features(x))``."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CosineHead(nn.Module):
    """``cos(h, w_c)``: normalised features times normalised class weights (logits in [-1, 1];
    the loss scales them, e.g. LDAM's ``s``)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features).uniform_(-1, 1))

    def forward(self, h: Tensor) -> Tensor:
        return F.normalize(h, dim=1) @ F.normalize(self.weight, dim=1).t()


def make_head(kind: str, in_features: int, num_classes: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "cosine":
        return CosineHead(in_features, num_classes)
    raise ValueError(f"unknown head {kind!r}; valid: linear, cosine")


class Classifier(nn.Module):
    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, head: str) -> None:
        super().__init__()
        self.body = body
        self.head = make_head(head, feature_dim, num_classes)
        self.feature_dim = feature_dim

    def forward_features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def mlp(in_shape: tuple[int, ...], num_classes: int, head: str) -> Classifier:
    d = 1
    for s in in_shape:
        d *= s
    body = nn.Sequential(nn.Flatten(), nn.Linear(d, 256), nn.ReLU(inplace=True),
                         nn.Linear(256, 128), nn.ReLU(inplace=True))
    return Classifier(body, 128, num_classes, head)


def small_cnn(in_shape: tuple[int, ...], num_classes: int, head: str) -> Classifier:
    if len(in_shape) != 3:
        raise ValueError(f"small-cnn needs images (C x H x W), got input shape {in_shape}")

    def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        return layers + ([nn.MaxPool2d(2)] if pool else [])

    big = min(in_shape[1:]) >= 16
    body = nn.Sequential(*block(in_shape[0], 32, big), *block(32, 64, True), *block(64, 128, False),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(body, 128, num_classes, head)


class BasicBlockA(nn.Module):
    """The CIFAR ResNet basic block with the parameter-free option-A shortcut: subsample by 2
    and zero-pad the new channels (He et al. 2016, section 4.2; the LDAM-DRW code)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride = stride
        self.pad = cout - cin

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def resnet32(in_shape: tuple[int, ...], num_classes: int, head: str) -> Classifier:
    """ResNet-32 of the long-tail papers: a 3x3 stem of 16 channels, 3 stages x 5 basic
    blocks of widths 16/32/64 (stride 2 at stages 2 and 3), global average pooling;
    0.46 M parameters with 10 classes."""
    if len(in_shape) != 3:
        raise ValueError(f"resnet32 needs images (C x H x W), got input shape {in_shape}")
    layers: list[nn.Module] = [nn.Conv2d(in_shape[0], 16, 3, padding=1, bias=False),
                               nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
    cin = 16
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(5):
            layers.append(BasicBlockA(cin, width, stride if i == 0 else 1))
            cin = width
    body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    return Classifier(body, 64, num_classes, head)


def resnet18(in_shape: tuple[int, ...], num_classes: int, head: str) -> Classifier:
    """torchvision's ResNet-18 for small images: a 3x3 stride-1 stem and no max-pool (a 7x7
    stride-2 stem and a pool would shrink a 32x32 image to 8x8 before the first block)."""
    if len(in_shape) != 3:
        raise ValueError(f"resnet18 needs images (C x H x W), got input shape {in_shape}")
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_shape[0], 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()  # the Classifier's head replaces it; body returns pooled features
    return Classifier(net, 512, num_classes, head)


MODELS: dict[str, Callable[[tuple[int, ...], int, str], Classifier]] = {
    "mlp": mlp,
    "small-cnn": small_cnn,
    "resnet32": resnet32,
    "resnet18": resnet18,
}


def build_model(name: str, *, in_shape: tuple[int, ...], num_classes: int,
                head: str = "linear") -> Classifier:
    """A freshly initialised model for inputs of ``in_shape`` (without the batch dimension)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name](tuple(in_shape), num_classes, head)
