"""MCUNet / ProxylessNAS networks built from the model zoo's JSON descriptions (lance.models.mcunet).

The weights are found in $LANCE_WEIGHTS_DIR, else in ../shared/weights beside the repository
(folder mcunet/ with the four .json/.pth pairs, see shared/weights/SOURCES.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import lance
from lance import data, models
from lance.models import mcunet


def _weights_root() -> Path | None:
    for root in (os.environ.get("LANCE_WEIGHTS_DIR"), Path(__file__).resolve().parents[2] / "shared" / "weights"):
        if root and any((Path(root) / sub / "mcunet-256kb-1mb_imagenet.json").is_file() for sub in ("", "mcunet")):
            return Path(root)
    return None


ROOT = _weights_root()
needs_weights = pytest.mark.skipif(
    ROOT is None, reason="MCUNet zoo files not found: set LANCE_WEIGHTS_DIR, or put them in "
                         "../shared/weights/mcunet/ beside the repository (see shared/weights/SOURCES.md)")


def _files(name: str) -> tuple[Path, Path]:
    return models.config_file(name, ROOT), models.weights_file(name, ROOT)


def _state_dict(path: Path) -> dict:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return sd["state_dict"] if set(sd) == {"state_dict"} else sd


def _sample_images(size: int):
    try:
        return data.sample_images(size)
    except lance.LanceError as exc:
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


@needs_weights
@pytest.mark.parametrize("name", list(models.MCUNET_MODELS))
def test_builds_from_json_and_loads_strictly(name):
    cfg_path, pth = _files(name)
    assert cfg_path is not None and pth is not None
    config = mcunet.load_config(cfg_path)
    model = mcunet.build_from_config(config)
    mcunet.load_checkpoint(model, pth, strict=True)
    assert set(model.state_dict()) == set(_state_dict(pth))
    assert model.resolution == config["resolution"] == models.resolution(name)
    # every module holding parameters is a plain torch layer: convolutions are real nn.Conv2d
    assert all(type(m) in (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
               for m in model.modules() if list(m.parameters(recurse=False)))
    r = model.resolution
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, r, r))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


@needs_weights
def test_mcunet_in2_classifies_the_sample_photographs():
    model = models.build("mcunet-in2", weights_dir=ROOT).eval()
    images, labels = _sample_images(model.resolution)
    assert images.shape == (20, 3, 160, 160)
    with torch.no_grad():
        logits = model(data.normalize(images))
        raw = mcunet.load_checkpoint(mcunet.build_from_config(mcunet.load_config(_files("mcunet-in2")[0])),
                                     _files("mcunet-in2")[1]).eval()
        # the zoo's own input convention, (x - 0.5) / 0.5, gives the same logits
        assert torch.allclose(raw((images - 0.5) / 0.5), logits, atol=1e-4, rtol=1e-4)
    top1 = (logits.argmax(1) == labels).float().mean().item()
    print(f"mcunet-in2 top-1 on the 20 sample photographs: {top1:.2f}")
    assert top1 >= 0.6  # random weights would get ~0.001


@needs_weights
@pytest.mark.parametrize("name", list(models.MCUNET_MODELS))
def test_first_batchnorm_statistics_say_inputs_were_in_minus_one_to_one(name):
    """Why build() converts ImageNet-normalised inputs: the first BN's running variance is
    the first conv's output variance for inputs of std ~0.5 ((x - 0.5) / 0.5), not ~0.23."""
    model = mcunet.load_checkpoint(mcunet.build_from_config(mcunet.load_config(_files(name)[0])), _files(name)[1])
    images, _ = _sample_images(model.resolution)
    conv, bn = model.first_conv.conv, model.first_conv.bn
    with torch.no_grad():
        out = nn.functional.conv2d(images - images.mean((0, 2, 3), keepdim=True), conv.weight,
                                   stride=conv.stride, padding=conv.padding)
    implied_std = (out.var((0, 2, 3)) / bn.running_var).median().sqrt().item()
    print(f"{name}: input std implied by the first BN statistics {implied_std:.3f}")
    assert 0.38 < implied_std < 0.65, "expected ~0.5 (zoo normalisation), ImageNet's would be ~0.23"


@needs_weights
def test_last_four_layers_are_the_last_four_convs_executed():
    config = mcunet.load_config(_files("mcunet-in2")[0])
    model = models.build("mcunet-in2", weights_dir=ROOT)
    layers = lance.trainable_layers(model, 4)
    last, prev = len(config["blocks"]) - 1, len(config["blocks"]) - 2
    p = "blocks.{}.mobile_inverted_conv.{}.conv"
    assert layers == [p.format(prev, "point_linear"), p.format(last, "inverted_bottleneck"),
                      p.format(last, "depth_conv"), p.format(last, "point_linear")]
    assert last == 17

    executed = []
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: executed.append(n))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 160, 160))
    for h in hooks:
        h.remove()
    assert executed[-4:] == layers

    block = config["blocks"][last]["mobile_inverted_conv"]
    dw = dict(model.named_modules())[layers[2]]
    mid = block["mid_channels"]
    assert (mid, block["kernel_size"]) == (480, 5)
    assert dw.groups == dw.in_channels == dw.out_channels == mid
    assert dw.kernel_size == (block["kernel_size"],) * 2 and dw.weight.shape == (mid, 1, 5, 5)
    pl = dict(model.named_modules())[layers[3]]
    assert (pl.in_channels, pl.out_channels, pl.groups) == (mid, block["out_channels"], 1)


@needs_weights
@pytest.mark.parametrize("name", ["mcunet-in2", "proxyless-w0.3"])
def test_new_head_keeps_every_other_tensor(name):
    model = models.build(name, num_classes=100, weights_dir=ROOT)
    ref = _state_dict(_files(name)[1])
    sd = model.state_dict()
    assert set(sd) == set(ref)
    head = model.classifier.linear
    assert isinstance(head, nn.Linear) and head.out_features == 100
    assert head.in_features == ref["classifier.linear.weight"].shape[1]
    for key, value in ref.items():
        if key.startswith("classifier."):
            assert sd[key].shape[0] == 100
        else:
            assert torch.equal(sd[key], value), key
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, model.resolution, model.resolution)).shape == (2, 100)


def test_missing_zoo_files_raise_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("LANCE_WEIGHTS_DIR", raising=False)
    with pytest.raises(lance.LanceError) as info:
        models.build("mcunet-in2", weights_dir=tmp_path)
    msg = str(info.value)
    for part in ("mcunet-256kb-1mb_imagenet.json", "mcunet-256kb-1mb_imagenet.pth", "mcunet/",
                 "model zoo", "LANCE_WEIGHTS_DIR", str(tmp_path)):
        assert part in msg
    with pytest.raises(lance.LanceError, match="LANCE_WEIGHTS_DIR unset"):
        models.build("mcunet-in3", pretrained=False)
    assert models.weights_file("mcunet-in2", tmp_path) is None
    assert models.config_file("mcunet-in2", tmp_path) is None
    with pytest.raises(lance.LanceError, match="unknown model"):
        models.build("mcunet-in9")
    assert models.resolution("resnet18") == 224 and models.resolution("mcunet-in2") == 160
    assert models.resolution("proxyless-w0.25") == 112


@needs_weights
def test_architecture_only_needs_the_json(tmp_path, monkeypatch):
    monkeypatch.delenv("LANCE_WEIGHTS_DIR", raising=False)
    (tmp_path / "mcunet").mkdir()
    shutil.copy(_files("mcunet-in2")[0], tmp_path / "mcunet")
    model = models.build("mcunet-in2", num_classes=10, pretrained=False, weights_dir=tmp_path)
    assert model.classifier.linear.out_features == 10 and model.resolution == 160
    with pytest.raises(lance.LanceError, match=r"mcunet-256kb-1mb_imagenet\.pth"):
        models.build("mcunet-in2", weights_dir=tmp_path)
    monkeypatch.setenv("LANCE_WEIGHTS_DIR", str(tmp_path))  # found through the variable too
    assert models.config_file("mcunet-in2") == tmp_path / "mcunet" / "mcunet-256kb-1mb_imagenet.json"


def _tiny_config(**block):
    conv = {"name": "MBInvertedConvLayer", "in_channels": 8, "out_channels": 8, "kernel_size": 3,
            "stride": 1, "expand_ratio": 3}
    conv.update(block)
    identity = {"name": "IdentityLayer", "in_channels": 8, "out_channels": 8}
    return {"name": "ProxylessNASNets", "bn": {"momentum": 0.1, "eps": 1e-3},
            "first_conv": {"name": "ConvLayer", "kernel_size": 3, "stride": 2, "in_channels": 3, "out_channels": 8,
                           "use_bn": True, "act_func": "relu6", "ops_order": "weight_bn_act"},
            "blocks": [{"name": "MobileInvertedResidualBlock", "mobile_inverted_conv": conv, "shortcut": identity},
                       {"name": "MobileInvertedResidualBlock", "mobile_inverted_conv": {"name": "ZeroLayer", "stride": 1},
                        "shortcut": identity}],
            "feature_mix_layer": None,
            "classifier": {"name": "LinearLayer", "in_features": 8, "out_features": 5, "bias": False}}


def test_block_semantics_on_a_tiny_description():
    model = mcunet.build_from_config(_tiny_config(act_func="h_swish"), name="proxyless-w0.25").eval()
    assert model.resolution == 112  # no "resolution" entry: taken from the name table
    conv = model.blocks[0].mobile_inverted_conv
    assert conv.inverted_bottleneck.conv.out_channels == 24  # round(8 * 3)
    assert isinstance(conv.depth_conv.act, nn.Hardswish) and conv.point_linear.act is None
    assert model.blocks[1].mobile_inverted_conv is None and model.classifier.linear.bias is None
    assert model.first_conv.bn.eps == 1e-3
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        h = model.first_conv(x)
        assert torch.allclose(model.blocks[0](h), conv(h) + h)
        assert torch.equal(model.blocks[1](h), h)
        assert torch.allclose(model(x), model.classifier.linear((conv(h) + h).mean((2, 3))))
        ref = model(x)
        model.set_input_normalization(models.IMAGENET_MEAN, models.IMAGENET_STD)
        z = (x * 0.5 + 0.5 - torch.tensor(models.IMAGENET_MEAN).view(1, 3, 1, 1)) \
            / torch.tensor(models.IMAGENET_STD).view(1, 3, 1, 1)
        assert torch.allclose(model(z), ref, atol=1e-5)
    assert "input_scale" not in model.state_dict()
    with pytest.raises(lance.LanceError, match="squeeze-excitation"):
        mcunet.build_from_config(_tiny_config(use_se=True))
    bad = _tiny_config()
    bad["blocks"][1]["shortcut"] = None
    with pytest.raises(lance.LanceError, match="ZeroLayer"):
        mcunet.build_from_config(bad)


@needs_weights
def test_backprop_activation_memory_of_the_last_layers():
    """Analytic BP memory (inputs kept for the weight gradients) of the last 2 and 4 convs,
    batch 128, 160 px. The paper's MCUNet figures, 11.71 MB and 17.57 MB, are these MiB
    values truncated to two decimals (11.71875 and 17.578125) for mcunet-in2 (and mcunet-in3,
    whose last two blocks have the same shapes)."""
    found = {}
    for name in models.MCUNET_MODELS:
        model = models.build(name, pretrained=False, weights_dir=ROOT)
        for n in (2, 4):
            table = lance.activation_memory(model, lance.trainable_layers(model, n), (3, 160, 160), 128)
            found[name, n] = int(table.bp_bytes.sum())
            print(f"{name}: last {n} layers, batch 128, 160 px: BP activations "
                  f"{found[name, n] / 2**20:.4f} MiB")
    # blocks.17: 480 x 5 x 5 into the depthwise and the pointwise conv, 96 x 5 x 5 into the
    # expansion; blocks.16's pointwise conv: 384 x 5 x 5; 4 bytes each, batch 128
    assert found["mcunet-in2", 2] == 128 * 4 * 25 * (480 + 480) == 12_288_000
    assert found["mcunet-in2", 4] == 128 * 4 * 25 * (384 + 96 + 480 + 480) == 18_432_000
    assert math.floor(found["mcunet-in2", 2] / 2**20 * 100) / 100 == 11.71
    assert math.floor(found["mcunet-in2", 4] / 2**20 * 100) / 100 == 17.57
