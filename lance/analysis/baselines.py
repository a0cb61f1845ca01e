"""The per-iteration baselines the paper compares against, on LANCE's own backward.

* HOSVD {Nguyen et al., NeurIPS 2024}: a fresh truncated HOSVD of every activation at every
  training step; each mode's rank is the smallest reaching the energy threshold. Each mode's
  basis comes from ``eigh`` of its Gram matrix (``solver="gram"``, the default: the same
  subspaces, cheaper) or from an SVD of the unfolding (``solver="svd"``, as the paper
  describes the baseline); ``python -m lance latency --hosvd-solver`` times either.
* ASI {Nguyen et al., ICML 2025}: fixed ranks chosen offline; at every step, one subspace
  iteration per mode warm-started from the previous step's basis,
  ``U <- orth(X_(m) X_(m)^T U_prev)``.

Both keep, like LANCE, only a core and factors for backward and compute the weight gradient
with the same contraction (``lance.core.layers``); they differ only in where the factors come
from, which is what :meth:`LanceLayer.factors_for` decides. Use them through
``lance.compress(model, calibration, factory=hosvd_factory(0.8))`` or ``asi_factory()``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from lance.core.calibration import LayerCalibration
from lance.errors import LanceError
from lance.core.hosvd import SOLVERS, check_energy, energy_rank, mode_basis, unfold
from lance.core.layers import LanceConv2d, LanceLinear

__all__ = ["HOSVDConv2d", "HOSVDLinear", "ASIConv2d", "ASILinear", "hosvd_factory", "asi_factory"]


class _PerStepStats:
    """Running record of what a per-step method kept (its ranks change from step to step)."""

    def _reset_stats(self) -> None:
        self.steps = 0
        self.stored_elements_sum = 0
        self.stored_elements_max = 0
        self.stored_elements_first: Optional[int] = None
        self.last_ranks: list[Optional[int]] = []

    def _record(self, shape, factors) -> None:
        ranks = [None if f is None else f.shape[1] for f in factors]
        core = 1
        for n, r in zip(shape, ranks):
            core *= n if r is None else r
        stored = core + sum(f.numel() for f in factors if f is not None)
        self.steps += 1
        self.stored_elements_sum += stored
        self.stored_elements_max = max(self.stored_elements_max, stored)
        if self.stored_elements_first is None:
            self.stored_elements_first = stored
        self.last_ranks = ranks

    @property
    def mean_stored_elements(self) -> float:
        return self.stored_elements_sum / max(self.steps, 1)


class _HOSVDMixin(_PerStepStats):
    energy: float
    compress_batch: bool
    solver: str = "gram"

    def factors_for(self, x: Tensor) -> list[Optional[Tensor]]:
        factors = []
        for m in range(x.dim()):
            if m == 0 and not self.compress_batch:
                factors.append(None)
                continue
            vectors, values = mode_basis(x, m, self.solver)
            factors.append(vectors[:, : energy_rank(values, self.energy)].to(x.dtype).contiguous())
        self._record(x.shape, factors)
        return factors


class _ASIMixin(_PerStepStats):
    """One warm-started subspace iteration per mode and step, at fixed ranks."""

    def _init_asi(self, lc: Optional[LayerCalibration], ranks: Optional[list[Optional[int]]]) -> None:
        if ranks is None:
            ranks = lc.ranks if lc is not None else None
        self.asi_ranks = ranks
        self._bases: list[Optional[Tensor]] = [None if lc is None else lc.modes[m].factor
                                               for m in range(self.n_modes)]

    def factors_for(self, x: Tensor) -> list[Optional[Tensor]]:
        factors = []
        for m in range(x.dim()):
            r = self.asi_ranks[m] if self.asi_ranks is not None else None
            if r is None:
                factors.append(None)
                continue
            a = unfold(x.detach(), m)
            prev = self._bases[m]
            if prev is None or prev.shape != (a.shape[0], r):
                g = torch.Generator().manual_seed(m)
                prev = torch.randn(a.shape[0], r, generator=g).to(a)
            prev = prev.to(a.dtype)
            q, _ = torch.linalg.qr(a @ (a.t() @ prev))
            self._bases[m] = q
            factors.append(q.contiguous())
        self._record(x.shape, factors)
        return factors


class HOSVDConv2d(_HOSVDMixin, LanceConv2d):
    pass


class HOSVDLinear(_HOSVDMixin, LanceLinear):
    pass


class ASIConv2d(_ASIMixin, LanceConv2d):
    pass


class ASILinear(_ASIMixin, LanceLinear):
    pass


def hosvd_factory(energy: float = 0.8, compress_batch: bool = True, solver: str = "gram"):
    """For ``lance.compress(..., factory=...)``: per-step HOSVD layers at ``energy``; ``solver``
    (``"gram"`` or ``"svd"``) says how each mode's basis is computed (:func:`lance.core.hosvd.mode_basis`)."""
    energy = check_energy(energy)
    if solver not in SOLVERS:
        raise LanceError(f"unknown HOSVD solver {solver!r}; choose one of {SOLVERS}.")

    def make(module: nn.Module, lc: LayerCalibration) -> nn.Module:
        cls = HOSVDConv2d if isinstance(module, nn.Conv2d) else HOSVDLinear
        new = cls.from_conv(module, lc) if cls is HOSVDConv2d else cls.from_linear(module, lc)
        for m in range(new.n_modes):  # no fixed factors: they are computed at every step
            setattr(new, f"factor_{m}", None)
        new.energy, new.compress_batch, new.solver = energy, compress_batch, solver
        new._reset_stats()
        return new

    return make


def asi_factory(ranks: Optional[dict[str, list[Optional[int]]]] = None):
    """For ``lance.compress(..., factory=...)``: ASI layers. Their fixed ranks are the
    calibration's (the energy threshold then plays the role of ASI's offline memory budget)
    unless ``ranks`` gives them per layer; the calibrated bases warm-start the iteration."""

    def make(module: nn.Module, lc: LayerCalibration) -> nn.Module:
        cls = ASIConv2d if isinstance(module, nn.Conv2d) else ASILinear
        new = cls.from_conv(module, lc) if cls is ASIConv2d else cls.from_linear(module, lc)
        new._init_asi(lc, None if ranks is None else ranks.get(lc.name))
        for m in range(new.n_modes):
            setattr(new, f"factor_{m}", None)
        new._reset_stats()
        return new

    return make
