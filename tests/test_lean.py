"""The lean step (issue 19, goal 3): frozen BatchNorm, ReLU and global pooling keep no activations,
and every gradient is bit for bit that of plain LANCE."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

import lance
from lance.analysis.accounting import saved_tensors
from lance.core.lean import LeanBatchNorm2d, LeanReLU, lean, lean_modules, pack_bits, unlean, unpack_bits
from lance.core.selection import head_name, set_trainable, trainable_layers


@pytest.mark.parametrize("shape", [(8,), (3, 5, 7), (2, 1, 1), (1,)])
def test_bits_round_trip(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(mask.numel() / 8)
    assert torch.equal(unpack_bits(packed, shape), mask)


def _compressed(name: str, layers: int = 4, size: int = 64, batch: int = 8):
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(num_classes=10).eval()
    names = trainable_layers(net, layers)
    set_trainable(net, names + [head_name(net)])
    batches = [torch.randn(batch, 3, size, size) for _ in range(2)]
    cal = lance.calibrate(net, batches, names, energy=0.8, num_batches=2)
    return lance.compress(net, cal), names


def _step(model, x):
    for p in model.parameters():
        p.grad = None
    x = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    out = model(x)
    out.square().sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_gradients_are_bit_for_bit_those_of_plain_lance(name, layout):
    plain, _ = _compressed(name)
    thin = lean(copy.deepcopy(plain))
    assert lean_modules(thin) and all(not isinstance(m, (nn.BatchNorm2d, nn.ReLU, nn.ReLU6)) or isinstance(m, LeanBatchNorm2d)
                                      for m in thin.modules())
    x = torch.randn(8, 3, 64, 64).contiguous(memory_format=layout)
    for a, b in zip(_step(plain, x), _step(thin, x)):
        assert torch.equal(a, b)


def test_whole_step_keeps_a_tenth_of_bp_on_mobilenet_v2():
    bp = torchvision.models.mobilenet_v2(num_classes=10).eval()
    plain, names = _compressed("mobilenet_v2")
    set_trainable(bp, names + [head_name(bp)])
    thin = lean(copy.deepcopy(plain))
    x = torch.randn(8, 3, 64, 64)

    def saved(model):
        report = saved_tensors(model, x)
        return report[report.kind != "parameter"].drop_duplicates("storage")

    full, lance_report, lean_report = saved(bp), saved(plain), saved(thin)
    assert lean_report.bytes.sum() * 10 <= full.bytes.sum()
    kept = lean_report[lean_report.kind == "activation"]
    assert not len(kept[kept.module_type == "LeanBatchNorm2d"])
    # one bit where plain LANCE keeps a float32 ReLU6 output
    relu = kept[kept.module_type == "LeanReLU"]
    floats = lance_report[(lance_report.kind == "activation") & (lance_report.module_type == "ReLU6")]
    assert len(relu) == len(floats) > 0
    assert floats.bytes.sum() / 32 <= relu.bytes.sum() <= floats.bytes.sum() / 32 + len(relu)


def test_a_trained_or_training_batchnorm_is_left_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    thin = lean(copy.deepcopy(model))
    assert [type(m) for m in thin][1:4] == [LeanBatchNorm2d, LeanReLU, nn.AdaptiveAvgPool2d]
    x = torch.randn(5, 3, 8, 8)
    for mode in ("train", "trainable-eval"):
        a, b = copy.deepcopy(model), copy.deepcopy(thin)
        for m in (a, b):
            m.train(mode == "train")
        for a_out, b_out in zip(_step(a, x), _step(b, x)):
            assert torch.equal(a_out, b_out)
    assert torch.equal(a[1].running_mean, b[1].running_mean)
    back = unlean(thin)
    assert [type(m) for m in back][1:4] == [nn.BatchNorm2d, nn.ReLU6, nn.AdaptiveAvgPool2d]
    assert list(back.state_dict()) == list(model.state_dict())


def test_benchmark_reports_the_lean(capsys):
    from lance.experiments.benchmark import BenchmarkConfig, format_report, run_benchmark

    cfg = BenchmarkConfig(model="resnet18", resolution=32, batch_size=8, layer_counts=(2,), calibration_batches=1,
                          repeats=1, threads=1, compress_head=True, weights_dir="/nonexistent")
    out = run_benchmark(cfg, log=lambda *_: None)
    rows = {r["method"]: r for r in out["results"]}
    assert set(rows) == {"bp", "lance", "floor", "lean"}
    assert rows["lean"]["total_saved_bytes"] < rows["lance"]["total_saved_bytes"] < rows["bp"]["total_saved_bytes"]
    # the floor keeps one direction per mode of every trained layer
    assert rows["floor"]["ranks"] and all(set(r) <= {1} for r in rows["floor"]["ranks"].values()), rows["floor"]["ranks"]
    assert rows["floor"]["saved_bytes"] <= rows["lance"]["saved_bytes"]
    report = format_report(out)
    assert "BP/lean" in report and "the head's input compressed" in report
    assert "least a LANCE step can take here" in report and "goal <= 0.75" in report
    # FLOPs, counted on one step: the projection adds to the forward, the weight gradient from the core
    # takes from the backward, and the floor's projections are the smallest
    bp, la, fl = rows["bp"], rows["lance"], rows["floor"]
    assert bp["forward_flops"] > 0 and bp["backward_flops"] > bp["forward_flops"]
    assert bp["forward_flops"] < la["forward_flops"] and fl["forward_flops"] <= la["forward_flops"]
    assert la["backward_flops"] < bp["backward_flops"] and fl["backward_flops"] <= la["backward_flops"]
    assert "in counted FLOPs" in report and f"forward {la['forward_flops'] / bp['forward_flops']:.2f}x" in report
    assert out["config"]["allocator"] and out["config"]["allocator"] in report


def test_benchmark_starts_from_a_state_dict_of_the_pretraining_and_says_which(tmp_path):
    """``pretrained``: the body from the file (its head, of another number of classes, left out), the
    file's digest in the result, and the book's label saying that the weights are the split protocol's."""
    import hashlib

    import torchvision

    from lance.book.tables import benchmark_label
    from lance.experiments.benchmark import BenchmarkConfig, run_benchmark
    from lance.experiments.weights import build_pretrained

    torch.manual_seed(5)
    path = tmp_path / "resnet18_split.pt"
    torch.save(torchvision.models.resnet18(num_classes=50).state_dict(), path)
    saved = torch.load(path, weights_only=True)
    model, source = build_pretrained("resnet18", str(path), 100)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest in source and model.fc.out_features == 100
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert body.keys() == {k for k in saved if not k.startswith("fc.")}
    assert all(torch.equal(v, saved[k]) for k, v in body.items())
    cfg = BenchmarkConfig(model="resnet18", resolution=32, batch_size=8, layer_counts=(2,), calibration_batches=1,
                          repeats=1, threads=1, lean=False, pretrained=str(path))
    out = run_benchmark(cfg, log=lambda *_: None)
    assert digest in out["config"]["weights"]
    assert benchmark_label(out) == "ResNet18, split-protocol weights"
    assert benchmark_label({"config": {"model": "resnet18", "pretrained": "imagenet"}}) == "ResNet18"
