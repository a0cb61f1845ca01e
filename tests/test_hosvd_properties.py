"""Properties of the truncated HOSVD on random shapes and thresholds (hypothesis): every factor
is orthonormal, every rank is the smallest that reaches the threshold (Eq. 3), the ranks grow
with the threshold, and at threshold 1 the tensor is rebuilt exactly."""

from __future__ import annotations

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import lance  # noqa: E402

shapes = st.lists(st.integers(1, 7), min_size=2, max_size=4)
energies = st.floats(0.05, 1.0, allow_nan=False)


def _tensor(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, energy=energies, seed=st.integers(0, 2**16))
def test_factors_are_orthonormal_and_ranks_are_the_smallest_that_reach_the_threshold(shape, energy, seed):
    x = _tensor(shape, seed)
    h = lance.hosvd(x, energy)
    for m, (u, spectrum) in enumerate(zip(h.factors, h.spectra)):
        n, r = u.shape
        assert n == shape[m] and 1 <= r <= n
        assert torch.allclose(u.T @ u, torch.eye(r, dtype=u.dtype), atol=1e-8)
        share = spectrum.clamp_min(0).cumsum(0) / spectrum.clamp_min(0).sum()
        assert share[r - 1] >= energy - 1e-9 or r == n  # r reaches the threshold ...
        if r > 1:
            assert share[r - 2] < energy + 1e-12  # ... and r - 1 does not
    assert h.core.shape == tuple(h.ranks)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, low=energies, high=energies, seed=st.integers(0, 2**16))
def test_ranks_grow_with_the_threshold(shape, low, high, seed):
    low, high = sorted((low, high))
    x = _tensor(shape, seed)
    assert all(a <= b for a, b in zip(lance.hosvd(x, low).ranks, lance.hosvd(x, high).ranks))


@settings(max_examples=30, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_full_energy_rebuilds_the_tensor(shape, seed):
    x = _tensor(shape, seed)
    h = lance.hosvd(x, 1.0)
    assert h.ranks == list(shape)
    assert torch.allclose(h.reconstruct(), x, atol=1e-9)
