"""LANCE in the patch space (GPM's memory space for convolutions): the layer against autograd,
its calibration's round trip, its accounting against what autograd saves, and its refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lance
from lance.analysis.accounting import activation_memory, measured_bytes, saved_tensors
from lance.core.calibration import Calibration, conv_patches
from lance.core.hosvd import expand, project
from lance.core.layers import LancePatchConv2d
from lance.core.memory import ContinualMemory, calibrate_in_null_space
from lance.errors import LanceError, UnsupportedLayerError

from helpers import grads_of, random_batches, rel, single_layer_model

CASES = {
    "plain3x3": (lambda: nn.Conv2d(4, 6, 3, padding=1), (5, 4, 8, 8)),
    "no-bias-stride2": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), (5, 4, 9, 9)),
    "unequal-padding-dilation": (lambda: nn.Conv2d(3, 5, 3, padding=(1, 2), dilation=(2, 1)), (4, 3, 9, 7)),
    "stride-2x1-no-padding": (lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1)), (4, 3, 8, 6)),
    "pointwise": (lambda: nn.Conv2d(8, 3, 1), (6, 8, 5, 5)),
}


def _pair(factory, shape, energy, compress_batch=True):
    plain = single_layer_model(factory())
    cal = lance.calibrate(plain, random_batches(shape), ["0"], energy=energy, compress_batch=compress_batch,
                          space="patch")
    return plain, lance.compress(copy.deepcopy(plain), cal), cal


@pytest.mark.parametrize("compress_batch", [True, False], ids=["batch-projected", "batch-kept"])
@pytest.mark.parametrize("case", list(CASES))
def test_full_rank_patch_layer_equals_autograd(case, compress_batch):
    factory, shape = CASES[case]
    torch.manual_seed(0)
    plain, compressed, cal = _pair(factory, shape, 1.0, compress_batch)
    assert isinstance(compressed[0], LancePatchConv2d)
    assert [m.name for m in cal["0"].modes] == ["batch", "patch", "position"]
    x = torch.randn(shape, dtype=torch.float64)
    upstream = torch.randn_like(plain(x))
    y_ref, gx_ref, gw_ref, gb_ref = grads_of(plain, plain[0], x, upstream)
    y, gx, gw, gb = grads_of(compressed, compressed[0], x, upstream)
    assert torch.equal(y, y_ref), "the forward is the plain convolution"
    assert rel(gx, gx_ref) < 1e-10
    assert rel(gw, gw_ref) < 1e-8
    if gb_ref is not None:
        assert rel(gb, gb_ref) < 1e-10


@pytest.mark.parametrize("case", list(CASES))
def test_truncated_patch_gradient_is_that_of_the_reconstructed_patches(case):
    """Below full rank the weight gradient is dy (as B x out x L) against the patches rebuilt from
    the core, and its rows lie in the span of the patch factor."""
    factory, shape = CASES[case]
    plain, compressed, cal = _pair(factory, shape, 0.7)
    lc = cal["0"]
    assert any(r is not None and r < n for r, n in zip(lc.ranks, lc.input_shape)), "something is truncated"
    x = torch.randn(shape, dtype=torch.float64)
    upstream = torch.randn_like(plain(x))
    _, gx_ref, _, _ = grads_of(plain, plain[0], x, upstream)
    _, gx, gw, _ = grads_of(compressed, compressed[0], x, upstream)
    patches = conv_patches(plain[0], x)
    rebuilt = expand(project(patches, lc.factors), lc.factors)
    expected = torch.einsum("bol,bpl->op", upstream.reshape(shape[0], upstream.shape[1], -1), rebuilt)
    assert rel(gw.reshape(gw.shape[0], -1), expected) < 1e-10
    assert rel(gx, gx_ref) < 1e-10, "the input gradient stays exact"
    u_p = lc.modes[1].factor
    flat = gw.reshape(gw.shape[0], -1)
    assert rel(flat @ u_p @ u_p.t(), flat) < 1e-10


def test_patch_calibration_survives_save_load_and_truncate(tmp_path):
    factory, shape = CASES["no-bias-stride2"]
    plain, _, cal = _pair(factory, shape, 0.8)
    path = tmp_path / "cal.pt"
    cal.save(path, plain)
    back = Calibration.load(path, plain)
    assert back["0"].space == "patch" and back["0"].tensor_shape == tuple(shape)
    assert back["0"].ranks == cal["0"].ranks
    assert back.truncate(0.9)["0"].space == "patch"
    assert isinstance(lance.compress(copy.deepcopy(plain), back)[0], LancePatchConv2d)
    row = back.rows()[0]
    assert row["input_shape"] == "x".join(map(str, shape)), "BP's input, not its patches"
    feature = lance.calibrate(plain, random_batches(shape), ["0"], energy=0.8)
    assert "space" not in feature.state_dict()["layers"]["0"], "channel-space files are written as before"


def test_analytic_memory_is_what_autograd_saves():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 7 * 7, 5))
    batches = [torch.randn(16, 3, 16, 16) for _ in range(3)]
    layers = ["2", "5"]
    cal = lance.calibrate(model, batches, layers, energy=0.8, space="patch")
    lance.compress(model, cal)
    table = activation_memory(model, layers, (3, 16, 16), 16, cal)
    report = saved_tensors(model, batches[0])
    measured = measured_bytes(report, layers)
    for _, row in table.iterrows():
        assert measured[row.layer] == row.lance_bytes, row.layer
        assert row.lance_fwd_flops > row.bp_fwd_flops and row.lance_bwd_flops > 0


def test_refusals():
    depthwise = single_layer_model(nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(UnsupportedLayerError, match="groups == 1"):
        lance.calibrate(depthwise, random_batches((5, 4, 8, 8)), ["0"], space="patch")
    reflect = single_layer_model(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(UnsupportedLayerError, match="zero padding"):
        lance.calibrate(reflect, random_batches((5, 4, 8, 8)), ["0"], space="patch")
    with pytest.raises(LanceError, match="unknown space 'pixels'"):
        lance.calibrate(depthwise, random_batches((5, 4, 8, 8)), ["0"], space="pixels")
    plain, compressed, _ = _pair(*CASES["plain3x3"], 0.8)
    with pytest.raises(lance.errors.InputShapeError, match="36 numbers per patch at 64 positions"):
        compressed.train()(torch.randn(5, 4, 10, 10, dtype=torch.float64))
    with pytest.raises(lance.errors.BatchSizeError, match="batch size 5"):
        compressed.train()(torch.randn(3, 4, 8, 8, dtype=torch.float64))
    with pytest.raises(LanceError, match="ContinualMemory"):
        calibrate_in_null_space(plain, random_batches((5, 4, 8, 8)), ["0"], memory="patch")


def test_null_space_factor_is_orthogonal_to_a_patch_memory():
    factory, shape = CASES["plain3x3"]
    plain = single_layer_model(factory())
    memory = ContinualMemory(space="patch")
    memory.update(plain, random_batches(shape, seed=1), ["0"], threshold=0.9, num_batches=3)
    m = memory.bases["0"].double()
    assert m.shape[0] == 4 * 9
    cal = calibrate_in_null_space(plain, random_batches(shape, seed=2), ["0"], memory, energy=0.9, num_batches=3)
    assert cal["0"].space == "patch"
    u_p = cal["0"].modes[1].factor
    assert float((m.t() @ u_p).abs().max()) < 1e-10
    x = torch.randn(shape, dtype=torch.float64)
    compressed = lance.compress(copy.deepcopy(plain), cal)
    _, _, gw, _ = grads_of(compressed, compressed[0], x, torch.randn_like(plain(x)))
    # the update leaves the output on every stored patch direction unchanged
    assert float((gw.reshape(gw.shape[0], -1) @ m).abs().max()) < 1e-10 * float(gw.abs().max())
