"""The HOSVD helpers: truncation, captured energy, the error bound, sizes."""

from __future__ import annotations

import math

import pytest
import torch

import lance
from lance.core.hosvd import captured_by, compressed_numel, ranks_by_energy, truncation_bound


def _lowrankish(seed=0):
    g = torch.Generator().manual_seed(seed)
    core = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64)
    factors = [torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0]
               for n, r in zip((6, 10, 7, 7), core.shape)]
    return lance.expand(core, factors) + 0.05 * torch.randn(6, 10, 7, 7, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("energy", [0.3, 0.7, 0.95])
def test_truncate_equals_fresh_hosvd(energy):
    x = _lowrankish()
    fresh = lance.hosvd(x, energy)
    cut = lance.hosvd(x, 1.0).truncate(energy)
    assert cut.ranks == fresh.ranks
    assert torch.allclose(cut.reconstruct(), fresh.reconstruct(), atol=1e-9)
    assert cut.numel() == compressed_numel(x.shape, fresh.ranks)


@pytest.mark.parametrize("energy", [0.2, 0.5, 0.8, 0.99])
def test_error_bound_holds_and_captured_energy_matches_error(energy):
    x = _lowrankish(1)
    full = lance.hosvd(x, 1.0)
    h = full.truncate(energy)
    err2 = float((x - h.reconstruct()).pow(2).sum())
    assert err2 <= truncation_bound(full.spectra, h.ranks) * (1 + 1e-9)
    # orthonormal factors: |core|^2 + |x - x_rec|^2 = |x|^2
    assert captured_by(x, h.factors) == pytest.approx(1 - err2 / float(x.pow(2).sum()), rel=1e-9)


def test_exact_low_rank_tensor_is_recovered():
    g = torch.Generator().manual_seed(2)
    core = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    factors = [torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0]
               for n, r in zip((5, 8, 6, 6), core.shape)]
    x = lance.expand(core, factors)
    h = lance.hosvd(x, ranks=[2, 3, 2, 2])
    assert torch.allclose(h.reconstruct(), x, atol=1e-10)
    assert captured_by(x, h.factors) == pytest.approx(1.0)


def test_skip_modes_and_ranks_table():
    x = _lowrankish(3)
    h = lance.hosvd(x, 0.7, skip_modes=(0,))
    assert h.factors[0] is None and h.core.shape[0] == x.shape[0]
    rows = ranks_by_energy(lance.hosvd(x, 1.0).spectra, [0.5, 1.0], ["b", "c", "h", "w"])
    assert [list(r) for r in rows] == [["energy", "b", "c", "h", "w"]] * 2
    assert [rows[1][k] for k in "bchw"] == list(x.shape)
    assert math.isclose(captured_by(torch.zeros(2, 2), [None, None]), 1.0)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_mode_product_of_a_channels_last_tensor_equals_the_contiguous_one(mode):
    from lance.core.hosvd import mode_product

    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    m = torch.randn(2, x.shape[mode], dtype=torch.float64)
    ref = mode_product(x, m, mode)
    got = mode_product(x.to(memory_format=torch.channels_last), m, mode)
    assert got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,mode", [((3, 5, 1, 1), 1), ((6, 4, 3, 3), 1), ((2, 3, 7, 7), 1), ((5, 4, 3), 0),
                                        ((2, 3, 2, 2), 2)])
def test_mode_product_equals_its_definition_whatever_follows_the_mode(shape, mode):
    """Each route (only size-1 modes after it, a few elements after it, many) is the definition
    ``(x ×_m M)[..., j, ...] = sum_i M[j, i] x[..., i, ...]``, contiguous and of the right shape."""
    from lance.core.hosvd import mode_product

    x = torch.randn(shape, dtype=torch.float64)
    m = torch.randn(7, shape[mode], dtype=torch.float64)
    ref = torch.tensordot(m, x, dims=([1], [mode])).movedim(0, mode)
    got = mode_product(x, m, mode)
    assert got.shape == ref.shape and got.is_contiguous()
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["contiguous", "channels-last"])
@pytest.mark.parametrize("kept", [(True, True, True, True), (False, True, True, True), (True, True, False, True)])
def test_project_is_the_chain_of_mode_products_however_it_groups_them(layout, kept):
    """``project`` takes height and width as one mode (factor U_h ⊗ U_w) when both are compressed;
    the core is the chain of Eq. 1's mode products all the same, for non-contiguous factors too."""
    from lance.core.hosvd import mode_product, project

    torch.manual_seed(0)
    x = torch.randn(5, 6, 7, 4, dtype=torch.float64)
    factors = [torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))[0][:, :r].t().contiguous().t() if k else None
               for n, r, k in zip(x.shape, (3, 4, 2, 3), kept)]  # transposed copies: column-major factors
    ref = x
    for m, u in enumerate(factors):
        if u is not None:
            ref = mode_product(ref, u.t(), m)
    got = project(x.to(memory_format=torch.channels_last) if layout == "channels-last" else x, factors)
    assert got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-12, atol=1e-12)
