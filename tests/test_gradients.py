"""The compressed layers against autograd: exact at full rank, the paper's semantics below it."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import lance
from lance.core.hosvd import expand, project

from helpers import calibrated_pair, grads_of, random_batches, rel, single_layer_model

# (module factory, input shape); every option the layers claim to support
CONV_CASES = {
    "plain3x3": (lambda: nn.Conv2d(4, 6, 3, padding=1), (5, 4, 8, 8)),
    "no-bias-stride2": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), (5, 4, 9, 9)),
    "unequal-padding-dilation": (lambda: nn.Conv2d(3, 5, 3, padding=(1, 2), dilation=(2, 1)), (4, 3, 9, 7)),
    "stride-2x1-no-padding": (lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1)), (4, 3, 8, 6)),
    "same-even-kernel": (lambda: nn.Conv2d(4, 6, 4, padding="same"), (5, 4, 8, 8)),
    "valid": (lambda: nn.Conv2d(4, 6, 3, padding="valid"), (5, 4, 7, 7)),
    "reflect": (lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), (5, 4, 8, 8)),
    "circular-same-dilated": (lambda: nn.Conv2d(4, 6, 3, padding="same", dilation=2, padding_mode="circular"),
                              (5, 4, 8, 8)),
    "replicate-unequal": (lambda: nn.Conv2d(3, 4, 3, padding=(2, 1), padding_mode="replicate"), (4, 3, 6, 6)),
    "groups2": (lambda: nn.Conv2d(4, 8, 3, padding=1, groups=2), (5, 4, 8, 8)),
    "depthwise-stride2": (lambda: nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6, bias=False), (5, 6, 9, 9)),
    "pointwise": (lambda: nn.Conv2d(8, 3, 1), (6, 8, 5, 5)),
    "pointwise-stride2": (lambda: nn.Conv2d(8, 3, 1, stride=2, bias=False), (6, 8, 7, 6)),
    "pointwise-stride-2x1": (lambda: nn.Conv2d(8, 3, 1, stride=(2, 1)), (6, 8, 5, 5)),
    "pointwise-padded": (lambda: nn.Conv2d(8, 3, 1, padding=1), (6, 8, 5, 5)),
}
LINEAR_CASES = {
    "linear-2d": (lambda: nn.Linear(7, 5), (6, 7)),
    "linear-2d-no-bias": (lambda: nn.Linear(7, 5, bias=False), (6, 7)),
    "linear-3d": (lambda: nn.Linear(7, 5), (6, 4, 7)),
}
CASES = {**CONV_CASES, **LINEAR_CASES}


@pytest.mark.parametrize("compress_batch", [True, False], ids=["batch-projected", "batch-kept"])
@pytest.mark.parametrize("case", list(CASES))
def test_full_rank_gradients_equal_autograd(case, compress_batch):
    factory, shape = CASES[case]
    torch.manual_seed(0)
    plain, compressed, cal = calibrated_pair(factory(), shape, energy=1.0, compress_batch=compress_batch)
    assert all(r is None or r == n for r, n in zip(cal["0"].ranks, shape)), "energy=1 keeps full ranks"
    assert isinstance(compressed[0], lance.core.layers.LanceLayer)
    x = torch.randn(shape, dtype=torch.float64)
    upstream = torch.randn_like(plain(x))
    y_ref, gx_ref, gw_ref, gb_ref = grads_of(plain, plain[0], x, upstream)
    y, gx, gw, gb = grads_of(compressed, compressed[0], x, upstream)
    assert torch.allclose(y, y_ref, rtol=1e-12, atol=1e-12), "forward is unchanged"
    assert rel(gx, gx_ref) < 1e-10
    assert rel(gw, gw_ref) < 1e-5
    if gb_ref is not None:
        assert rel(gb, gb_ref) < 1e-10


@pytest.mark.parametrize("compress_batch", [True, False], ids=["batch-projected", "batch-kept"])
@pytest.mark.parametrize("case", list(CASES))
def test_truncated_weight_gradient_is_gradient_of_reconstructed_input(case, compress_batch):
    """Below full energy, LANCE's weight gradient is the gradient of the same layer fed with the
    reconstruction ``core x_1 U_1 ... x_N U_N`` of its input (paper Eq. 4); the input gradient
    and the bias gradient stay exact."""
    factory, shape = CASES[case]
    torch.manual_seed(1)
    plain, compressed, cal = calibrated_pair(factory(), shape, energy=0.6, compress_batch=compress_batch)
    factors = cal["0"].factors
    assert any(f is not None and f.shape[1] < f.shape[0] for f in factors), "something was truncated"
    x = torch.randn(shape, dtype=torch.float64)
    upstream = torch.randn_like(plain(x))
    _, gx_ref, gw_exact, gb_ref = grads_of(plain, plain[0], x, upstream)
    x_rec = expand(project(x, factors), factors)
    _, _, gw_rec, _ = grads_of(plain, plain[0], x_rec, upstream)
    _, gx, gw, gb = grads_of(compressed, compressed[0], x, upstream)
    assert rel(gw, gw_rec) < 1e-9
    assert rel(gx, gx_ref) < 1e-10
    if gb_ref is not None:
        assert rel(gb, gb_ref) < 1e-10
    angle = lance.gradient_angle(gw, gw_exact)
    cos = float((gw * gw_exact).sum() / (gw.norm() * gw_exact.norm()))
    assert angle == pytest.approx(math.degrees(math.acos(cos)), abs=1e-9)
    assert angle > 1e-6, "a truncated gradient differs from the exact one"


def test_float32_full_rank_within_1e5():
    torch.manual_seed(2)
    plain, compressed, _ = calibrated_pair(nn.Conv2d(16, 8, 3, padding=1), (8, 16, 10, 10),
                                           energy=1.0, dtype=torch.float32)
    x = torch.randn(8, 16, 10, 10)
    upstream = torch.randn(8, 8, 10, 10)
    _, gx_ref, gw_ref, gb_ref = grads_of(plain, plain[0], x, upstream)
    _, gx, gw, gb = grads_of(compressed, compressed[0], x, upstream)
    assert rel(gw, gw_ref) < 1e-5 and rel(gx, gx_ref) < 1e-5 and rel(gb, gb_ref) < 1e-5


def test_only_bias_trainable_and_input_without_grad():
    torch.manual_seed(3)
    plain, compressed, _ = calibrated_pair(nn.Conv2d(3, 4, 3, padding=1), (4, 3, 6, 6), energy=0.5)
    for m in (plain, compressed):
        m[0].weight.requires_grad_(False)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    upstream = torch.randn(4, 4, 6, 6, dtype=torch.float64)
    gb_ref = torch.autograd.grad(plain(x), plain[0].bias, upstream)[0]
    gb = torch.autograd.grad(compressed(x), compressed[0].bias, upstream)[0]
    assert rel(gb, gb_ref) < 1e-12


def _small_cnn():
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU(),
        nn.Conv2d(8, 16, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).double()


def test_training_loop_at_full_rank_matches_backprop():
    """An ordinary loop with an optimiser built before compress: same trajectory as BP."""
    model = _small_cnn()
    layers = lance.trainable_layers(model, 2)
    assert layers == ["3", "5"]
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[0] in {"3", "5", "9"})
    data = random_batches((6, 3, 8, 8), n=4, seed=5)
    targets = [torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    reference = copy.deepcopy(model)
    cal = lance.calibrate(model, data, layers, energy=1.0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    lance.compress(model, cal)
    ref_opt = torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for m, o in ((model, opt), (reference, ref_opt)):
        m.train()
        for x, t in zip(data, targets):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), t).backward()
            o.step()
    for (n, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert rel(p.detach(), q.detach()) < 1e-9, n
    # the parameters are the same objects before and after (de)compression
    before = {n: p for n, p in model.named_parameters()}
    lance.decompress(model)
    assert all(before[n] is p for n, p in model.named_parameters())
    assert not lance.compressed_layers(model)
    assert type(model[3]) is nn.Conv2d and type(model[5]) is nn.Conv2d


def test_eval_and_no_grad_use_the_plain_forward_for_any_batch_size():
    plain, compressed, _ = calibrated_pair(nn.Conv2d(3, 4, 3, padding=1), (4, 3, 6, 6), energy=0.5)
    x = torch.randn(7, 3, 6, 6, dtype=torch.float64)  # not the calibration batch size
    with torch.no_grad():
        assert torch.allclose(compressed(x), plain(x))


def test_gradient_angle_known_values():
    a = torch.tensor([1.0, 0.0])
    assert lance.gradient_angle(a, torch.tensor([1.0, 1.0])) == pytest.approx(45.0)
    assert lance.gradient_angle([a, a], [a, -a]) == pytest.approx(90.0)
    assert lance.gradient_angle(a, -a) == pytest.approx(180.0)
    with pytest.raises(ValueError):
        lance.gradient_angle(a, torch.zeros(2))


def test_angle_sweep_matches_direct_angles_and_is_zero_at_full_energy():
    model = _small_cnn()
    layers = ["3", "5"]
    data = random_batches((6, 3, 8, 8), n=3, seed=7)
    batches = [(x, torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(i))) for i, x in enumerate(data)]
    cal = lance.calibrate(model, data, layers, energy=0.5)
    sweep = lance.analysis.fidelity.angle_sweep(model, layers, batches[:2], cal, [0.5, 1.0])
    assert len(sweep) == 2 * 2 * 2
    full = sweep[sweep.energy == 1.0]
    assert (full.angle_deg < 1e-5).all()
    # one entry recomputed by hand
    direct = lance.compress(copy.deepcopy(model), cal.truncate(0.5))
    exact = lance.weight_gradients(model, layers, *batches[1])
    approx = lance.weight_gradients(direct, layers, *batches[1])
    row = sweep[(sweep.energy == 0.5) & (sweep.batch == 1) & (sweep.layer == "5")].iloc[0]
    assert row.angle_deg == pytest.approx(lance.gradient_angle(approx["5"], exact["5"]), abs=1e-9)
    assert row.memory_ratio > 0


def test_position_energy_locates_the_energy_and_sums_to_one():
    x = torch.zeros(2, 3, 4, 5)
    x[:, :, 0, 0] = 3.0
    x[1, 2, 3, 4] = 4.0  # 16 of 18 * 9 + 16
    e = lance.analysis.fidelity.position_energy(x)
    assert e.shape == (4, 5) and float(e.sum()) == pytest.approx(1.0)
    assert float(e[0, 0]) == pytest.approx(54 / 70) and float(e[3, 4]) == pytest.approx(16 / 70)
    y = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lance.analysis.fidelity.position_energy(y), (y.double() ** 2).sum((0, 1)) / (y.double() ** 2).sum())
    with pytest.raises(ValueError, match="B, C, H, W"):
        lance.analysis.fidelity.position_energy(torch.ones(3, 4, 5))


def test_gradient_share_is_one_when_the_inputs_live_in_the_kept_directions():
    g = torch.Generator().manual_seed(1)
    basis, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    conv = nn.Conv2d(6, 4, 1)
    # every input position is a combination of the first two basis directions
    coeffs = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    x = torch.einsum("ck,bkhw->bchw", basis[:, :2], coeffs).float()
    loss = conv(x).pow(2).sum()
    (grad,) = torch.autograd.grad(loss, [conv.weight])
    shares = lance.analysis.fidelity.gradient_share(grad, basis, [0, 1, 2, 6])
    assert shares[0] == 0.0 and shares[2] == pytest.approx(1.0, abs=1e-6) and shares[3] == pytest.approx(1.0)
    assert 0 < shares[1] < 1
    # the share by definition: the projection of the gradient's input-channel rows
    proj = basis[:, :1] @ basis[:, :1].T @ grad.double().reshape(4, 6).T
    assert shares[1] == pytest.approx(float(proj.pow(2).sum() / grad.double().pow(2).sum()))
    with pytest.raises(ValueError, match="depthwise"):
        lance.analysis.fidelity.gradient_share(torch.ones(6, 1, 3, 3), basis, [1])
    with pytest.raises(ValueError, match="outside"):
        lance.analysis.fidelity.gradient_share(grad, basis, [7])


@pytest.mark.parametrize("case", ["plain3x3", "depthwise-stride2", "pointwise", "reflect"])
def test_channels_last_input_gives_the_same_gradients_in_its_own_layout(case):
    """oneDNN leaves feature maps channels-last; LANCE's input gradient must then come back
    channels-last too (a layout mismatch makes the frozen BatchNorm's backward take a slow
    path), with the same values as for a contiguous input."""
    factory, shape = CONV_CASES[case]
    torch.manual_seed(3)
    _, compressed, _ = calibrated_pair(factory(), shape, energy=0.6)
    x = torch.randn(shape, dtype=torch.float64)
    upstream = torch.randn_like(compressed(x))
    _, gx_ref, gw_ref, _ = grads_of(compressed, compressed[0], x, upstream)
    x_cl = x.to(memory_format=torch.channels_last)
    _, gx, gw, _ = grads_of(compressed, compressed[0], x_cl, upstream)
    assert rel(gx, gx_ref) < 1e-12 and rel(gw, gw_ref) < 1e-12
    assert gx.is_contiguous(memory_format=torch.channels_last)
