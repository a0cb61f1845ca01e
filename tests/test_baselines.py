"""HOSVD and ASI baselines on LANCE's backward: their semantics against autograd."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lance
from lance.analysis.baselines import asi_factory, hosvd_factory
from lance.core.hosvd import captured_by

from helpers import grads_of, random_batches, rel, single_layer_model


def _setup(factory, energy=0.7, shape=(6, 4, 8, 8)):
    torch.manual_seed(0)
    plain = single_layer_model(nn.Conv2d(4, 5, 3, padding=1))
    cal = lance.calibrate(plain, random_batches(shape), ["0"], energy=energy)
    return plain, lance.compress(copy.deepcopy(plain), cal, factory=factory), cal


def test_hosvd_layer_uses_the_batch_own_decomposition():
    plain, model, _ = _setup(hosvd_factory(0.6))
    x = torch.randn(6, 4, 8, 8, dtype=torch.float64)
    up = torch.randn(6, 5, 8, 8, dtype=torch.float64)
    h = lance.hosvd(x, 0.6)
    _, gx_ref, _, gb_ref = grads_of(plain, plain[0], x, up)
    _, _, gw_rec, _ = grads_of(plain, plain[0], h.reconstruct(), up)
    _, gx, gw, gb = grads_of(model, model[0], x, up)
    assert rel(gw, gw_rec) < 1e-9 and rel(gx, gx_ref) < 1e-10 and rel(gb, gb_ref) < 1e-10
    assert model[0].last_ranks == h.ranks and model[0].steps == 1
    # any batch size works: the factors are computed per batch
    grads_of(model, model[0], torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 5, 8, 8, dtype=torch.float64))


def test_hosvd_full_energy_is_exact():
    plain, model, _ = _setup(hosvd_factory(1.0))
    x = torch.randn(6, 4, 8, 8, dtype=torch.float64)
    up = torch.randn(6, 5, 8, 8, dtype=torch.float64)
    assert rel(grads_of(model, model[0], x, up)[2], grads_of(plain, plain[0], x, up)[2]) < 1e-8


def test_hosvd_by_svd_of_the_unfolding_equals_hosvd_by_gram():
    """The paper's route (an SVD of every unfolding) and ours (eigh of every Gram matrix) keep
    the same subspaces, ranks and weight gradients."""
    x = torch.randn(6, 4, 8, 8, dtype=torch.float64)
    up = torch.randn(6, 5, 8, 8, dtype=torch.float64)
    a, b = lance.hosvd(x, 0.6), lance.hosvd(x, 0.6, solver="svd")
    assert a.ranks == b.ranks and rel(b.reconstruct(), a.reconstruct()) < 1e-10
    for sa, sb in zip(a.spectra, b.spectra):
        assert rel(sb, sa) < 1e-10
    _, gram_model, _ = _setup(hosvd_factory(0.6))
    _, svd_model, _ = _setup(hosvd_factory(0.6, solver="svd"))
    assert svd_model[0].solver == "svd"
    g_gram, g_svd = grads_of(gram_model, gram_model[0], x, up), grads_of(svd_model, svd_model[0], x, up)
    assert svd_model[0].last_ranks == gram_model[0].last_ranks == a.ranks
    assert all(rel(u, v) < 1e-9 for u, v in zip(g_svd[1:], g_gram[1:]))


def test_unknown_hosvd_solver_is_refused():
    with pytest.raises(lance.LanceError, match="unknown HOSVD solver 'qr'"):
        hosvd_factory(0.8, solver="qr")
    with pytest.raises(lance.LanceError, match="choose one of"):
        lance.hosvd(torch.randn(3, 4, 5), 0.8, solver="qr")


def test_asi_converges_to_the_dominant_subspace_at_fixed_ranks():
    ranks = [3, 2, 3, 3]
    plain, model, cal = _setup(asi_factory({"0": ranks}), energy=0.5)
    layer = model[0]
    assert layer.asi_ranks == ranks
    g = torch.Generator().manual_seed(1)
    core = torch.randn(*ranks, generator=g, dtype=torch.float64)
    bases = [torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0] for n, r in zip((6, 4, 8, 8), ranks)]
    x = lance.expand(core, bases) + 0.01 * torch.randn(6, 4, 8, 8, generator=g, dtype=torch.float64)
    up = torch.randn(6, 5, 8, 8, dtype=torch.float64)
    for _ in range(5):
        grads_of(model, layer, x, up)
    best = lance.hosvd(x, ranks=ranks)
    for m in range(4):  # each mode's basis spans the dominant subspace (projectors agree)
        p_asi = layer._bases[m] @ layer._bases[m].t()
        p_best = best.factors[m] @ best.factors[m].t()
        assert float((p_asi - p_best).norm()) < 1e-3
    # its gradient is that of the reconstruction from its own factors of that step
    before = [b.clone() for b in layer._bases]
    _, _, gw, _ = grads_of(model, layer, x, up)
    factors = layer._bases
    _, _, gw_rec, _ = grads_of(plain, plain[0], lance.expand(lance.project(x, factors), factors), up)
    assert rel(gw, gw_rec) < 1e-9
    assert layer.steps == 6 and any(not torch.equal(a, b) for a, b in zip(before, factors))
