"""Offline weights and the sample images the live chapters use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lance
from lance import data, models


def test_set_trainable_and_layer_inputs():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 2, 1)), nn.Flatten())
    params = lance.set_trainable(model, ["2"])
    assert [p.shape for p in params] == [model[2][0].weight.shape, model[2][0].bias.shape]
    assert not model[0].weight.requires_grad
    x = torch.randn(2, 3, 6, 6)
    inputs = lance.layer_inputs(model, ["0", "2.0"], x)
    assert torch.equal(inputs["0"], x)
    assert torch.equal(inputs["2.0"], torch.relu(model[0](x)))
    with pytest.raises(lance.UnknownLayerError):
        lance.set_trainable(model, ["9"])


def test_augmented_batches_are_deterministic_and_normalised():
    images = torch.rand(5, 3, 32, 32)
    labels = torch.arange(5)
    a = list(data.augmented_batches(images, 4, 2, seed=3, labels=labels))
    b = list(data.augmented_batches(images, 4, 2, seed=3, labels=labels))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert a[0][0].shape == (4, 3, 32, 32) and not torch.equal(a[0][0], a[1][0])
    state = torch.random.get_rng_state()
    list(data.augmented_batches(images, 2, 1, seed=0))
    assert torch.equal(state, torch.random.get_rng_state()), "the global RNG is left alone"


def test_unknown_model_and_missing_weights(tmp_path, monkeypatch):
    with pytest.raises(lance.LanceError, match="unknown model"):
        models.build("vgg11")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("LANCE_WEIGHTS_DIR", raising=False)
    assert models.weights_file("resnet18") is None


def test_weights_dir_is_searched_first(tmp_path):
    net = models.build("resnet18", pretrained=False)
    torch.save(net.state_dict(), tmp_path / models.MODELS["resnet18"])
    found = models.weights_file("resnet18", tmp_path)
    assert found == tmp_path / models.MODELS["resnet18"]
    again = models.build("resnet18", num_classes=7, weights_dir=tmp_path)
    assert again.fc.out_features == 7
    assert torch.equal(again.conv1.weight, net.conv1.weight)


@pytest.mark.skipif(models.weights_file("mobilenet_v2") is None, reason="MobileNetV2 weights package not installed")
def test_real_mobilenet_weights_classify_the_sample_images():
    model = models.build("mobilenet_v2").eval()
    images, labels = data.sample_images()
    assert images.shape == (20, 3, 224, 224) and 0 <= images.min() and images.max() <= 1
    with torch.no_grad():
        top1 = (model(data.normalize(images)).argmax(1) == labels).float().mean()
    assert top1 >= 0.7  # random weights would get ~0.001
