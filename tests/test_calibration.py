"""Phase I: mode covariances (Eq. 2), ranks by energy (Eq. 3), orthonormal factors, persistence."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lance
from lance.errors import LanceError
from lance.core.hosvd import energy_rank, fold, mode_product, unfold

from helpers import grads_of, random_batches, rel, single_layer_model


def test_unfold_fold_and_mode_product_agree_with_definitions():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    for m in range(4):
        a = unfold(x, m)
        assert a.shape == (x.shape[m], x.numel() // x.shape[m])
        assert torch.equal(fold(a, m, x.shape), x)
        mat = torch.randn(7, x.shape[m], dtype=torch.float64)
        assert torch.allclose(unfold(mode_product(x, mat, m), m), mat @ a)
    # a mode product by hand, mode 2
    mat = torch.randn(6, 4, dtype=torch.float64)
    assert torch.allclose(mode_product(x, mat, 2), torch.einsum("bchw,jh->bcjw", x, mat))


@pytest.mark.parametrize("energy", [0.05, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0])
def test_energy_rank_is_smallest_k_reaching_threshold(energy):
    values = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.25, 0.25], dtype=torch.float64)
    k = energy_rank(values, energy)
    share = torch.cumsum(values, 0) / values.sum()
    assert share[k - 1] >= energy - 1e-15
    if k > 1:
        assert share[k - 2] < energy


def test_energy_rank_exact_boundary_and_full():
    values = torch.tensor([1.0, 1.0, 1.0, 1.0])
    assert energy_rank(values, 0.5) == 2  # share after 2 is exactly 0.5: reaches it
    assert energy_rank(values, 1.0) == 4
    assert energy_rank(torch.zeros(3), 0.7) == 1


def test_calibration_accumulates_mode_covariances_of_eq2():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    model = single_layer_model(conv)
    batches = random_batches((5, 3, 6, 6), n=4)
    cal = lance.calibrate(model, batches, ["0"], energy=0.8)
    lc = cal["0"]
    assert cal.num_batches == 4 and lc.input_shape == (5, 3, 6, 6)
    for m, mode in enumerate(lc.modes):
        cov = sum(unfold(x, m) @ unfold(x, m).t() for x in batches) / len(batches)
        # the stored basis diagonalises the running mean covariance, eigenvalues descending
        recon = mode.basis @ torch.diag(mode.eigenvalues) @ mode.basis.t()
        assert torch.allclose(recon, cov, rtol=1e-9, atol=1e-9)
        assert torch.all(mode.eigenvalues[:-1] >= mode.eigenvalues[1:])
        assert mode.rank == energy_rank(mode.eigenvalues, 0.8)
        f = mode.factor
        assert f.shape == (mode.size, mode.rank)
        assert torch.allclose(f.t() @ f, torch.eye(mode.rank, dtype=f.dtype), atol=1e-10)
        assert mode.energy >= 0.8


def test_num_batches_limits_the_pass_and_tuple_batches_are_accepted():
    model = single_layer_model(nn.Linear(6, 3))
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    batches = [(x, torch.zeros(4)) for x in random_batches((4, 6), n=10)]
    cal = lance.calibrate(model, iter(batches), ["0"], num_batches=3)
    assert len(seen) == 3 and cal.num_batches == 3


def test_model_mode_restored_and_no_grad():
    model = single_layer_model(nn.Sequential(nn.Linear(6, 3)))
    model.train()
    grads = []
    model[0][0].register_forward_pre_hook(lambda m, a: grads.append(torch.is_grad_enabled() or m.training))
    lance.calibrate(model, random_batches((4, 6)), ["0.0"])
    assert model.training and not any(grads)


def test_compress_batch_false_leaves_batch_mode_and_allows_any_batch():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    model = single_layer_model(conv)
    cal = lance.calibrate(model, random_batches((5, 3, 6, 6)), ["0"], compress_batch=False)
    assert cal["0"].ranks[0] is None and cal["0"].batch_size is None
    lance.compress(model, cal)
    x = torch.randn(9, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    model(x).sum().backward()  # a batch of another size trains fine
    assert model[0].weight.grad is not None


def test_save_load_roundtrip_and_truncate(tmp_path):
    model = single_layer_model(nn.Conv2d(3, 4, 3, padding=1))
    cal = lance.calibrate(model, random_batches((5, 3, 6, 6)), ["0"], energy=0.9)
    path = tmp_path / "sub" / "cal.pt"
    cal.save(path)
    assert not list(path.parent.glob("*.tmp")), "no temporary file left behind"
    back = lance.Calibration.load(path)
    assert back.energy == cal.energy and back.names == cal.names
    assert back["0"].ranks == cal["0"].ranks
    for a, b in zip(back["0"].factors, cal["0"].factors):
        assert torch.equal(a, b)
    low = cal.truncate(0.3)
    assert all(r_low <= r for r_low, r in zip(low["0"].ranks, cal["0"].ranks))
    assert low["0"].ranks == [energy_rank(m.eigenvalues, 0.3) for m in cal["0"].modes]
    text = repr(cal)
    assert "0" in text and "x".join(map(str, cal["0"].ranks)) in text
    (row,) = cal.rows()
    assert row["layer"] == "0"
    assert row["stored_elements"] == cal["0"].stored_numel() and row["input_elements"] == 5 * 3 * 6 * 6
    assert "<td>0</td>" in cal._repr_html_()


def test_linear_3d_modes_named():
    model = single_layer_model(nn.Linear(6, 3))
    cal = lance.calibrate(model, random_batches((4, 5, 6)), ["0"])
    assert [m.name for m in cal["0"].modes] == ["batch", "token", "feature"]


def test_only_modes_keeps_the_named_projections_and_refuses_unknown_modes():
    model = single_layer_model(nn.Conv2d(5, 4, 3, padding=1))
    cal = lance.calibrate(model, random_batches((6, 5, 7, 7), seed=3), ["0"], energy=0.6)
    only = cal.only_modes(["channel"])
    assert only["0"].ranks[1] == cal["0"].ranks[1] and only["0"].ranks[0] is None
    assert only["0"].ranks[2:] == [None, None] and cal["0"].ranks[2] is not None  # the original is untouched
    with pytest.raises(LanceError, match="no mode 'colour'"):
        cal.only_modes(["colour"])


def test_channel_only_projection_gives_the_exact_gradient_times_a_projection():
    # With only the channel mode projected, LANCE's weight gradient is the exact one with its
    # input-channel rows projected: so it can never point more than 90 degrees away.
    conv = nn.Conv2d(5, 4, 3, padding=1)
    model = single_layer_model(conv)
    data = random_batches((6, 5, 7, 7), seed=4)
    cal = lance.calibrate(model, data, ["0"], energy=0.6).only_modes(["channel"])
    compressed = lance.compress(copy.deepcopy(model), cal)
    x = data[0]
    upstream = torch.randn(6, 4, 7, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    _, _, g_exact, _ = grads_of(model, conv, x, upstream)
    _, _, g_lance, _ = grads_of(compressed, compressed[0], x, upstream)
    u = cal["0"].modes[1].factor
    projected = torch.einsum("ck,dk,odij->ocij", u, u, g_exact)
    assert rel(g_lance, projected) < 1e-10
    assert lance.gradient_angle(g_lance, g_exact) <= 90.0
