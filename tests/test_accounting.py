"""Memory and FLOPs: the analytic accounting (App. C) against what autograd really saves and runs."""

from __future__ import annotations

import copy
from math import prod

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lance

from helpers import random_batches


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )


LAYERS = ["3", "6", "10"]
B = 6
INPUT = (3, 12, 12)


def _train_only(model, layers):
    for name, p in model.named_parameters():
        p.requires_grad_(name.rsplit(".", 1)[0] in layers)
    model.eval()  # frozen BatchNorm, as in the paper's fine-tuning
    return model


@pytest.mark.parametrize("compress_batch", [True, False])
def test_measured_saved_bytes_equal_analytic(compress_batch):
    model = _train_only(_net(), LAYERS)
    x = torch.randn(B, *INPUT)
    # plain backprop: each trainable layer keeps its input
    report = lance.saved_tensors(model, x)
    table = lance.activation_memory(model, LAYERS, INPUT, B)
    measured = lance.measured_bytes(report, LAYERS)
    assert measured == dict(zip(table.layer, table.bp_bytes))
    # LANCE: core plus factors, nothing else (weights are parameters, not counted)
    cal = lance.calibrate(model, random_batches((B, *INPUT), n=3, dtype=torch.float32), LAYERS, energy=0.7,
                          compress_batch=compress_batch)
    lance.compress(model, cal)
    report = lance.saved_tensors(model, x)
    table = lance.activation_memory(model, LAYERS, INPUT, B, calibration=cal)
    measured = lance.measured_bytes(report, LAYERS)
    assert measured == dict(zip(table.layer, table.lance_bytes))
    assert (table.lance_bytes < table.bp_bytes).all()
    for name in LAYERS:
        kinds = set(report[report.module == name].kind)
        assert kinds <= {"activation", "buffer", "parameter"} and "activation" in kinds
    # the tensors neither BP nor LANCE compresses are there too, attributed to their modules
    other = report[~report.module.isin(LAYERS) & (report.kind == "activation")]
    assert set(other.module_type) >= {"BatchNorm2d", "ReLU"}


def test_analytic_memory_formula():
    model = _train_only(_net(), LAYERS)
    cal = lance.calibrate(model, random_batches((B, *INPUT), n=2, dtype=torch.float32), LAYERS, energy=0.5)
    table = lance.activation_memory(model, LAYERS, INPUT, B, calibration=cal).set_index("layer")
    row = table.loc["6"]
    assert row.input_shape == (B, 8, 6, 6) and row.bp_bytes == B * 8 * 6 * 6 * 4
    ranks = cal["6"].ranks
    expected = prod(ranks) + sum(n * r for n, r in zip((B, 8, 6, 6), ranks))
    assert row.lance_bytes == 4 * expected
    with pytest.raises(lance.BatchSizeError, match="batch size 6"):
        lance.activation_memory(model, LAYERS, INPUT, 12, calibration=cal)


def _count(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("layer,shape", [
    (nn.Conv2d(8, 6, 3, padding=1), (5, 8, 7, 7)),
    (nn.Conv2d(8, 6, 3, stride=2, padding=(1, 2), dilation=(1, 2)), (5, 8, 9, 9)),
    (nn.Conv2d(8, 6, 1), (5, 8, 7, 7)),  # pointwise: the weight gradient is a contraction
    (nn.Conv2d(8, 6, 1, stride=2, bias=False), (5, 8, 9, 8)),
    (nn.Conv2d(8, 6, 1, padding=1), (5, 8, 7, 7)),  # padded: the conv's own weight gradient
    (nn.Linear(9, 4), (6, 9)),
    (nn.Linear(9, 4), (6, 3, 9)),
])
@pytest.mark.parametrize("compress_batch", [True, False])
def test_analytic_flops_equal_counted_flops(layer, shape, compress_batch):
    """App. C's forward/backward FLOPs against torch's FLOP counter on the real layers."""
    torch.manual_seed(0)
    model = nn.Sequential(layer)
    x = torch.randn(shape)
    cal = lance.calibrate(model, random_batches(shape, n=2, dtype=torch.float32), ["0"], energy=0.6,
                          compress_batch=compress_batch)
    table = lance.activation_memory(model, ["0"], shape[1:], shape[0], calibration=cal).iloc[0]
    for compressed in (False, True):
        m = lance.compress(copy.deepcopy(model), cal) if compressed else model
        holder = {}
        fwd = _count(lambda: holder.setdefault("y", m(x)))
        up = torch.randn_like(holder["y"])
        bwd = _count(lambda: holder["y"].backward(up))
        prefix = "lance" if compressed else "bp"
        assert fwd == table[f"{prefix}_fwd_flops"]
        assert bwd == table[f"{prefix}_bwd_flops"]


def test_grouped_conv_flops_by_hand():
    """torch's FLOP counter counts a grouped conv's weight gradient as if ungrouped, so the
    depthwise case is checked against the formula written out by hand instead."""
    layer = nn.Conv2d(6, 6, 3, padding=1, groups=6)
    model = nn.Sequential(layer)
    shape = (5, 6, 7, 7)
    cal = lance.calibrate(model, random_batches(shape, n=2, dtype=torch.float32), ["0"], energy=0.6)
    row = lance.activation_memory(model, ["0"], shape[1:], 5, calibration=cal).iloc[0]
    macs = 5 * 6 * 7 * 7 * 1 * 3 * 3
    assert row.bp_fwd_flops == 2 * macs and row.bp_bwd_flops == 2 * macs  # no input grad for the first layer
    r_b, r_c, r_h, r_w = cal["0"].ranks
    dy_proj = 2 * r_b * 5 * 6 * 7 * 7
    # expand the core (r_b, r_c, r_h, r_w) to (r_b, r_c, 7, 7) along H and W, in the cheaper order
    order = sorted([2, 3], key=lambda m: (cal["0"].ranks[m] / 7, m), reverse=True)
    s = [r_b, r_c, r_h, r_w]
    expand = 0
    for m in order:
        expand += 2 * 7 * s[0] * s[1] * s[2] * s[3]
        s[m] = 7
    channels = 2 * r_b * r_c * 7 * 7 * 6
    wgrad = 2 * r_b * 6 * 7 * 7 * 1 * 3 * 3
    assert row.lance_bwd_flops == dy_proj + expand + channels + wgrad


def test_the_papers_count_of_bp_is_forward_plus_weight_gradient_macs_and_gives_its_resnet_figures():
    from lance.analysis.accounting import activation_memory, paper_convention_tmacs
    from lance.core.selection import trainable_layers
    from lance.models import zoo

    # the paper's Table 1: BP on ResNet18's last 2 / 4 convolutions, ImageNet at 224 px, batch 128
    model = zoo.build("resnet18", num_classes=1000, pretrained=False)
    got = [paper_convention_tmacs(activation_memory(model, trainable_layers(model, n), (3, 224, 224), 128))
           for n in (2, 4)]
    assert [round(g, 3) for g in got] == [0.059, 0.090]
    # by hand: layer4.1.conv1 and conv2, 512 -> 512, 3 x 3, 7 x 7 outputs; forward and weight gradient
    assert got[0] * 1e12 == 2 * (2 * 512 * 512 * 9 * 49 * 128)


def test_the_papers_hosvd_count_is_a_full_svd_of_every_unfolding_plus_the_forward():
    from lance.analysis.accounting import activation_memory, paper_hosvd_tmacs
    from lance.core.selection import trainable_layers
    from lance.models import zoo

    model = zoo.build("resnet18", num_classes=1000, pretrained=False)
    table = activation_memory(model, trainable_layers(model, 2), (3, 224, 224), 128)
    assert round(paper_hosvd_tmacs(table), 2) == 6.12  # the paper's Table 2, ResNet18, 2 layers
    x = 128 * 512 * 7 * 7  # by hand: each layer's input (128, 512, 7, 7), four unfoldings
    svd = sum(max(m, x // m) ** 2 * min(m, x // m) for m in (128, 512, 7, 7))
    assert paper_hosvd_tmacs(table) * 1e12 == 2 * (svd + 512 * 512 * 9 * 49 * 128)
