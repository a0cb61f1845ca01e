"""Tensor algebra of the higher-order SVD (HOSVD): unfoldings, mode products, ranks.

Conventions (as in the paper, Sec. 2.1):

* ``unfold(x, m)`` is the mode-``m`` unfolding ``X_(m)``: shape ``(n_m, prod of the others)``.
* ``mode_product(x, M, m)`` is ``x ×_m M`` for a matrix ``M`` of shape ``(J, n_m)``:
  ``unfold(x ×_m M, m) == M @ unfold(x, m)``.
* A factor ``U`` of mode ``m`` has shape ``(n_m, r_m)`` with orthonormal columns. Projecting
  onto it is ``x ×_m U.T`` (paper Eq. 1); expanding back is ``core ×_m U``.
* ``None`` as a factor means "this mode is not compressed" (the identity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from lance.errors import LanceError

__all__ = [
    "unfold",
    "fold",
    "mode_product",
    "is_channels_last",
    "project",
    "expand",
    "projection_order",
    "energy_rank",
    "captured_energy",
    "check_energy",
    "mode_gram",
    "basis_from_gram",
    "basis_from_unfolding",
    "mode_basis",
    "SOLVERS",
    "hosvd",
    "HOSVD",
    "captured_by",
    "truncation_bound",
    "ranks_by_energy",
    "compressed_numel",
]

Factors = Sequence[Optional[Tensor]]


def check_energy(energy: float, name: str = "energy") -> float:
    """Return ``energy`` as a float if it lies in (0, 1]; otherwise raise a clear error."""
    try:
        value = float(energy)
    except (TypeError, ValueError):
        raise LanceError(f"{name} must be a number in (0, 1], got {energy!r}.") from None
    if not (0.0 < value <= 1.0):
        raise LanceError(
            f"{name} must lie in (0, 1] (the share of activation energy to keep), got {energy!r}. "
            "Use e.g. 0.7 as in the paper, or 1.0 to keep every direction."
        )
    return value


def _check_mode(mode, ndim: int) -> None:
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode < ndim:
        raise LanceError(f"mode must be a whole number in [0, {ndim}) for a tensor of {ndim} modes, got {mode!r}.")


def unfold(x: Tensor, mode: int) -> Tensor:
    """Mode-``mode`` unfolding ``X_(m)`` of shape ``(x.shape[mode], -1)``."""
    _check_mode(mode, x.dim())
    return x.movedim(mode, 0).reshape(x.shape[mode], -1)


def fold(matrix: Tensor, mode: int, shape: Sequence[int]) -> Tensor:
    """Inverse of :func:`unfold` for a tensor of the given ``shape``."""
    _check_mode(mode, len(shape))
    moved = [shape[mode]] + [s for i, s in enumerate(shape) if i != mode]
    if math.prod(moved) != matrix.numel():
        raise LanceError(f"fold: a {tuple(matrix.shape)} matrix does not hold a tensor of shape {tuple(shape)}.")
    return matrix.reshape(moved).movedim(0, mode)


def is_channels_last(x: Tensor) -> bool:
    """An NHWC-strided 4-D tensor (oneDNN's convolutions leave feature maps so on the CPU)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


#: below this many elements after the mode, a mode product moves the mode last and runs one matmul
_FEW = 16


def mode_product(x: Tensor, matrix: Tensor, mode: int) -> Tensor:
    """``x ×_mode matrix`` for ``matrix`` of shape ``(J, x.shape[mode])``."""
    if matrix.shape[1] != x.shape[mode]:
        raise LanceError(
            f"mode_product: matrix has {matrix.shape[1]} columns but mode {mode} of the tensor "
            f"has size {x.shape[mode]} (tensor shape {tuple(x.shape)})."
        )
    if matrix.dtype != x.dtype:
        matrix = matrix.to(x.dtype)
    shape = tuple(x.shape)
    if mode == len(shape) - 1:  # the last mode: one matmul over all leading modes
        return x @ matrix.t()
    if is_channels_last(x):
        # channels-last (NHWC in memory, as oneDNN's convolutions leave them): work on the
        # contiguous NHWC view instead of copying x to NCHW; the result stays channels-last
        return mode_product(x.permute(0, 2, 3, 1), matrix, (0, 3, 1, 2)[mode]).permute(0, 3, 1, 2)
    before, after = math.prod(shape[:mode]), math.prod(shape[mode + 1:])
    if after == 1:  # only size-1 modes follow: one matmul, as for the last mode
        y = x.reshape(before, shape[mode]) @ matrix.t()
        return y.reshape(*shape[:mode], matrix.shape[0], *shape[mode + 1:])
    if after < _FEW:
        # few elements after the mode (a weight gradient's kernel positions): `before` batched matmuls of
        # `after` columns each run far below the machine's speed; one matmul over a moved copy is 4x
        # faster (a ResNet18 3x3 weight gradient, 512 x 100 x 9 by 512 x 100: 85 -> 23 ms on one thread)
        moved = x.movedim(mode, -1)
        y = moved.reshape(-1, shape[mode]) @ matrix.t()
        return y.reshape(*moved.shape[:-1], matrix.shape[0]).movedim(-1, mode).contiguous()
    # (before, n, after) batches of matrix @ slice: no permuted copy of x (3x faster than tensordot here)
    y = torch.matmul(matrix, x.reshape(before, shape[mode], after))
    return y.reshape(*shape[:mode], matrix.shape[0], *shape[mode + 1:])


def projection_order(shape: Sequence[int], ranks: Sequence[Optional[int]]) -> list[int]:
    """Order in which to apply the mode products of a projection: the modes that shrink the
    tensor most go first, which keeps every intermediate tensor, and so the FLOPs, small.
    ``None`` ranks (uncompressed modes) are left out."""
    modes = [m for m, r in enumerate(ranks) if r is not None]
    return sorted(modes, key=lambda m: (ranks[m] / shape[m], m))


def merges_last_two(shape: Sequence[int], factors: Sequence) -> bool:
    """Whether :func:`project` takes the last two modes of a 4-D tensor as one (both compressed;
    ``factors`` may be the factors or their ranks). The accounting counts the same way."""
    return len(shape) == 4 and len(factors) == 4 and factors[2] is not None and factors[3] is not None


def project(x: Tensor, factors: Factors) -> Tensor:
    """The core ``x ×_1 U_1^T ... ×_N U_N^T`` (paper Eq. 1); ``None`` factors are skipped."""
    if merges_last_two(x.shape, factors) and x.is_contiguous():
        # the last two modes (height and width) as one, of factor U_h ⊗ U_w: one matmul that reads
        # the tensor once shrinks it by r_h r_w / (H W), where two products would read it twice or copy it
        h, w = x.shape[2:]
        u_h, u_w = factors[2], factors[3]
        rh, rw = u_h.shape[1], u_w.shape[1]
        u_hw = (u_h[:, None, :, None] * u_w[None, :, None, :]).reshape(h * w, rh * rw)  # U_h ⊗ U_w
        core = project(x.reshape(*x.shape[:2], h * w), [factors[0], factors[1], u_hw])
        return core.reshape(*core.shape[:2], rh, rw)
    ranks = [None if u is None else u.shape[1] for u in factors]
    for m in projection_order(x.shape, ranks):
        x = mode_product(x, factors[m].t(), m)
    return x


def expand(core: Tensor, factors: Factors) -> Tensor:
    """The reconstruction ``core ×_1 U_1 ... ×_N U_N``; ``None`` factors are skipped."""
    # expand the modes that grow the tensor least first, for the same reason as above
    ranks = [None if u is None else u.shape[1] for u in factors]
    full = [core.shape[m] if u is None else u.shape[0] for m, u in enumerate(factors)]
    for m in reversed(projection_order(full, ranks)):
        core = mode_product(core, factors[m], m)
    return core


def energy_rank(eigenvalues: Tensor, energy: float) -> int:
    """Smallest ``k`` whose leading eigenvalues hold at least ``energy`` of their sum (Eq. 3).

    ``eigenvalues`` are those of a mode covariance (the squared singular values of the
    unfolding), sorted in descending order. ``energy == 1`` keeps every direction.
    """
    energy = check_energy(energy)
    n = eigenvalues.numel()
    if n == 0:
        raise LanceError("energy_rank needs at least one eigenvalue; the spectrum is empty.")
    if energy >= 1.0:
        return n
    if bool((eigenvalues.detach() < -1e-6 * eigenvalues.detach().abs().max()).any()):
        raise LanceError("energy_rank needs the eigenvalues of a covariance, which are >= 0; this spectrum has "
                         "negative ones (pass squared singular values, or eigh of a Gram matrix).")
    values = eigenvalues.detach().to(torch.float64).clamp_min(0)
    total = values.sum()
    if total <= 0:
        return 1
    share = torch.cumsum(values, 0) / total
    k = int(torch.searchsorted(share, torch.tensor([energy], dtype=share.dtype, device=share.device)).item()) + 1
    return min(max(k, 1), n)


def captured_energy(eigenvalues: Tensor, rank: int) -> float:
    """Share of the total energy held by the leading ``rank`` eigenvalues."""
    values = eigenvalues.detach().to(torch.float64).clamp_min(0)
    total = float(values.sum())
    return 1.0 if total <= 0 else float(values[:rank].sum()) / total


def mode_gram(x: Tensor, mode: int) -> Tensor:
    """``X_(m) @ X_(m)^T``, returned in float64: the (unnormalised) mode covariance of Eq. 2.
    The product runs in the input's precision (float32 products are several times faster)."""
    a = unfold(x.detach(), mode)
    return (a @ a.t()).to(torch.float64)


def basis_from_gram(gram: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvectors and eigenvalues of a symmetric PSD matrix, largest eigenvalue first."""
    gram = 0.5 * (gram + gram.t())
    # LAPACK's eigh gains nothing from a second thread at these sizes, and loses badly when
    # another process shares the cores (measured here: 64x64 takes 15 ms on two threads, 0.2 ms on one)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        values, vectors = torch.linalg.eigh(gram)
    finally:
        torch.set_num_threads(threads)
    return vectors.flip(-1), values.flip(-1).clamp_min(0)


def basis_from_unfolding(a: Tensor) -> tuple[Tensor, Tensor]:
    """Left singular vectors of an unfolding ``X_(m)`` and the squared singular values (the
    eigenvalues of ``X_(m) X_(m)^T``), largest first, from a thin SVD of the unfolding itself:
    the decomposition as the paper writes it (Sec. 2.1), in the unfolding's precision."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as for eigh: LAPACK at these sizes, a shared machine
    try:
        u, s, _ = torch.linalg.svd(a.detach(), full_matrices=False)
    finally:
        torch.set_num_threads(threads)
    return u, s.to(torch.float64).square()


SOLVERS = ("gram", "svd")


def mode_basis(x: Tensor, mode: int, solver: str = "gram") -> tuple[Tensor, Tensor]:
    """The basis of mode ``mode`` of ``x`` (eigenvectors, eigenvalues; largest first) by
    ``solver``: ``"gram"`` takes ``eigh`` of the ``n_m x n_m`` matrix ``X_(m) X_(m)^T``
    (cheap when the other modes are long), ``"svd"`` a thin SVD of the unfolding ``X_(m)``.
    Both give the same subspaces (up to the signs of the vectors and rounding)."""
    if solver == "gram":
        return basis_from_gram(mode_gram(x, mode))
    if solver == "svd":
        return basis_from_unfolding(unfold(x.detach(), mode))
    raise LanceError(f"unknown HOSVD solver {solver!r}; choose one of {SOLVERS}.")


@dataclass
class HOSVD:
    """A truncated HOSVD: ``core`` and one factor per mode (``None`` = not compressed)."""

    core: Tensor
    factors: list[Optional[Tensor]]
    spectra: list[Optional[Tensor]]

    @property
    def ranks(self) -> list[Optional[int]]:
        return [None if u is None else u.shape[1] for u in self.factors]

    def reconstruct(self) -> Tensor:
        return expand(self.core, self.factors)

    def numel(self) -> int:
        """Elements kept: the core plus every factor (what LANCE stores, App. C)."""
        return self.core.numel() + sum(u.numel() for u in self.factors if u is not None)

    def truncate(self, energy: float) -> "HOSVD":
        """The truncated HOSVD at another energy, from this one without a new decomposition:
        the leading columns of each factor, and the matching corner of the core."""
        ranks = [None if s is None else energy_rank(s, energy) for s in self.spectra]
        if any(r is not None and r > u.shape[1] for r, u in zip(ranks, self.factors)):
            raise LanceError("truncate needs a HOSVD that kept at least the requested ranks; "
                             "compute it with energy=1.0.")
        core = self.core[tuple(slice(None) if r is None else slice(0, r) for r in ranks)]
        factors = [None if u is None else u[:, :r].contiguous() for u, r in zip(self.factors, ranks)]
        return HOSVD(core.contiguous(), factors, self.spectra)


def hosvd(
    x: Tensor,
    energy: float = 0.7,
    *,
    ranks: Optional[Sequence[Optional[int]]] = None,
    skip_modes: Sequence[int] = (),
    solver: str = "gram",
) -> HOSVD:
    """Truncated HOSVD of one tensor: for each mode, the eigenvectors of ``X_(m) X_(m)^T``
    truncated to the smallest rank reaching ``energy`` (or to the given ``ranks``).

    ``skip_modes`` lists modes left uncompressed; ``solver="svd"`` takes each basis from a thin
    SVD of the unfolding instead (:func:`mode_basis`). This is the per-iteration decomposition
    of the HOSVD baseline, and what Phase I does once on accumulated covariances.
    """
    energy = check_energy(energy)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise LanceError(f"hosvd needs a floating-point tensor, got {type(x).__name__}"
                         f"{'' if not isinstance(x, Tensor) else ' of ' + str(x.dtype)}; convert it with .float().")
    if x.numel() == 0 or not torch.isfinite(x).all():
        raise LanceError(f"hosvd needs a non-empty tensor of finite values, got shape {tuple(x.shape)}"
                         f"{'' if x.numel() == 0 else ' with NaN or infinity'}.")
    if ranks is not None and len(ranks) != x.dim():
        raise LanceError(f"ranks has {len(ranks)} entries but the tensor has {x.dim()} modes.")
    if ranks is not None and any(r is not None and (isinstance(r, bool) or not isinstance(r, int)) for r in ranks):
        raise LanceError(f"ranks must be whole numbers or None, got {list(ranks)}.")
    if any(not isinstance(m, int) or not 0 <= m < x.dim() for m in skip_modes):
        raise LanceError(f"skip_modes {list(skip_modes)} must name modes 0..{x.dim() - 1}.")
    factors: list[Optional[Tensor]] = []
    spectra: list[Optional[Tensor]] = []
    for m in range(x.dim()):
        if m in skip_modes or (ranks is not None and ranks[m] is None):
            factors.append(None)
            spectra.append(None)
            continue
        vectors, values = mode_basis(x, m, solver)
        k = energy_rank(values, energy) if ranks is None else int(ranks[m])
        if not 1 <= k <= x.shape[m]:
            raise LanceError(f"rank {k} for mode {m} is outside 1..{x.shape[m]}.")
        factors.append(vectors[:, :k].to(x.dtype).contiguous())
        spectra.append(values)
    return HOSVD(project(x, factors), factors, spectra)


def captured_by(x: Tensor, factors: Factors) -> float:
    """Share of ``|x|^2`` that the projection onto ``factors`` keeps: ``|core|^2 / |x|^2``.

    With orthonormal factors this is also ``1 - |x - x_rec|^2 / |x|^2``: how much of a new
    tensor a fixed (calibrated) subspace explains."""
    total = float(x.detach().double().pow(2).sum())
    return 1.0 if total == 0 else float(project(x.detach(), factors).double().pow(2).sum()) / total


def truncation_bound(spectra: Sequence[Optional[Tensor]], ranks: Sequence[Optional[int]]) -> float:
    """The HOSVD error bound: ``|x - x_rec|^2 <= sum over modes of the discarded eigenvalues``
    of ``X_(m) X_(m)^T`` (de Lathauwer et al., 2000). Returns that sum."""
    return float(sum(s[r:].double().sum() for s, r in zip(spectra, ranks) if s is not None and r is not None))


def ranks_by_energy(spectra: Sequence[Optional[Tensor]], energies: Sequence[float],
                    mode_labels: Optional[Sequence[str]] = None):
    """For each energy threshold, the rank Eq. 3 picks in every mode: one row (a dict) per
    threshold, ``{"energy": e, label: rank, ...}`` (for a table: ``pandas.DataFrame(rows)``)."""
    labels = list(mode_labels) if mode_labels else [f"mode {m}" for m in range(len(spectra))]
    rows = []
    for e in energies:
        row = {"energy": e}
        for label, s in zip(labels, spectra):
            row[label] = None if s is None else energy_rank(s, e)
        rows.append(row)
    return rows


def compressed_numel(shape: Sequence[int], ranks: Sequence[Optional[int]]) -> int:
    """Elements of a core plus its factors for a tensor of ``shape`` at ``ranks`` (App. C)."""
    core = 1
    for n, r in zip(shape, ranks):
        core *= n if r is None else r
    return core + sum(n * r for n, r in zip(shape, ranks) if r is not None)
