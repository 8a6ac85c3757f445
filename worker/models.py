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


MODELS: dict[str, Callable[[tuple[int, ...], int, str], Classifier]] = {
    "mlp": mlp,
    "small-cnn": small_cnn,
}


def build_model(name: str, *, in_shape: tuple[int, ...], num_classes: int,
                head: str = "linear") -> Classifier:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name](tuple(in_shape), num_classes, head)
