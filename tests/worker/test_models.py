"""Every model: shapes, both heads, pooled features; ResNet-32 and ResNet-18 as specified."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worker.models import MODELS, BasicBlockA, build_model


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_resnet32_has_the_published_size() -> None:
    model = build_model("resnet32", in_shape=(3, 32, 32), num_classes=10)
    assert 455_000 < n_params(model) < 470_000  # 0.46 M in the papers
    blocks = [m for m in model.modules() if isinstance(m, BasicBlockA)]
    assert len(blocks) == 15
    assert [b.conv2.out_channels for b in blocks[::5]] == [16, 32, 64]


def test_option_a_shortcut_has_no_parameters() -> None:
    block = BasicBlockA(16, 32, 2)
    convs_and_bns = 16 * 32 * 9 + 32 * 32 * 9 + 2 * 2 * 32
    assert n_params(block) == convs_and_bns
    assert block(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)


def test_resnet18_is_adapted_to_small_images() -> None:
    model = build_model("resnet18", in_shape=(1, 8, 8), num_classes=7)
    stem = model.body.conv1
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and stem.in_channels == 1
    assert isinstance(model.body.maxpool, nn.Identity)
    assert model.forward_features(torch.randn(2, 1, 8, 8)).shape == (2, 512)


@pytest.mark.parametrize("name", ["mlp", "small-cnn", "resnet32", "resnet18"])
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_forward_features_and_heads(name: str, head: str) -> None:
    assert name in MODELS
    model = build_model(name, in_shape=(3, 8, 8), num_classes=5, head=head).eval()
    x = torch.randn(3, 3, 8, 8)
    h = model.forward_features(x)
    assert h.ndim == 2 and h.shape == (3, model.feature_dim)
    logits = model(x)
    assert logits.shape == (3, 5)
    assert torch.allclose(logits, model.head(h))
    if head == "cosine":
        assert bool((logits.abs() <= 1 + 1e-5).all())


def test_image_models_refuse_vectors() -> None:
    with pytest.raises(ValueError, match="needs images"):
        build_model("resnet32", in_shape=(32,), num_classes=10)


def test_unknown_model_and_head() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", in_shape=(3, 32, 32), num_classes=10)
    with pytest.raises(ValueError, match="unknown head"):
        build_model("mlp", in_shape=(4,), num_classes=2, head="arc")
