"""Phase III: a compact memory of each layer's important input directions, and calibration of
each new task in its null space (paper Sec. 2.3).

After task t, :meth:`ContinualMemory.update` accumulates, for every layer, the covariance of
its input along the *input-feature mode* (the channel mode of a convolution, the feature mode
of a linear layer: the axis the weight contracts with) and grows the layer's memory ``M`` by the
fewest directions, orthogonal to ``M``, that bring the captured energy to the threshold (Eq. 5,
GPM's criterion). Before task t+1, :func:`calibrate_in_null_space` runs Phase I as usual, except
that the input-feature factor is chosen among the directions orthogonal to ``M``. The weight
gradient of a LANCE layer is the feature factor applied last (``lance.layers``), so every update
of task t+1 lies in the null space of ``M``: the layer's response to inputs in ``span(M)`` does not
change.

Why the channel mode for convolutions: it is the paper's reading (the "last mode, the input
dimension of the layer's weights"). GPM and the authors' continual-learning code use unfolded
patches (C*k*k) instead; the channel memory is k*k times smaller per direction and protects
the same outputs when the stored directions are channel directions, which is what LANCE's
channel factor can express. A grouped (depthwise) convolution never mixes channels, so a
channel projection cannot protect its outputs: such layers are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from .calibration import Calibration, ModeBasis, calibrate, visit_layer_inputs
from .errors import LanceError, UnsupportedLayerError
from .hosvd import basis_from_gram, check_energy, energy_rank, mode_gram
from .selection import resolve_layers

__all__ = ["ContinualMemory", "calibrate_in_null_space", "feature_mode", "gpm_threshold"]


def feature_mode(module: nn.Module, ndim: int) -> int:
    """The mode of a layer input that its weight contracts with: channels for a conv, the last."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise UnsupportedLayerError("a grouped convolution never mixes channels, so a channel memory cannot "
                                        "protect its outputs; leave grouped convolutions out of Phase III.")
        return 1
    return ndim - 1


def gpm_threshold(task: int, base: float = 0.97, step: float = 0.003) -> float:
    """GPM's threshold schedule: ``base + step * task`` (task counted from 0), capped at 1."""
    return min(1.0, base + step * task)


def _complement(memory: Optional[Tensor], n: int, dtype) -> Tensor:
    """An orthonormal basis (n x (n - k)) of the orthogonal complement of ``memory`` (n x k)."""
    if memory is None or memory.shape[1] == 0:
        return torch.eye(n, dtype=dtype)
    q, _ = torch.linalg.qr(memory.to(dtype), mode="complete")
    return q[:, memory.shape[1]:]


@dataclass
class ContinualMemory:
    """Per layer, an orthonormal basis ``M`` (n x k) of the input-feature directions used by
    earlier tasks. ``bases[name]`` is ``None`` before the first update."""

    bases: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # per update: {layer: (added, total, captured)}

    def numel(self) -> int:
        return sum(0 if m is None else m.numel() for m in self.bases.values())

    def bytes(self, bytes_per_element: int = 4) -> int:
        return self.numel() * bytes_per_element

    def update(self, model: nn.Module, batches: Iterable, layers: Sequence[str], threshold: float,
               num_batches: int = 10) -> dict:
        """Grow each layer's memory from the task just learned (Eq. 5): with ``R`` the mean input
        covariance along the feature mode, add the top eigenvectors of ``(I - MM^T) R (I - MM^T)``
        until ``tr(M^T R M) + sum of their eigenvalues >= threshold * tr(R)``."""
        threshold = check_energy(threshold, "threshold")
        modules = resolve_layers(model, layers)
        grams: dict[str, Optional[Tensor]] = {n: None for n in modules}

        def accumulate(name, module, x, _batch):
            g = mode_gram(x, feature_mode(module, x.dim()))
            grams[name] = g if grams[name] is None else grams[name] + g

        count = visit_layer_inputs(model, modules, batches, accumulate, num_batches)
        if count == 0:
            raise LanceError("no batches for the memory update; pass the task's training data.")
        report = {}
        for name, gram in grams.items():
            r = gram / count
            total = float(torch.trace(r))
            m = self.bases.get(name)
            n = r.shape[0]
            kept = 0.0 if m is None else float(torch.trace(m.t().double() @ r @ m.double()))
            q = _complement(m, n, torch.float64)
            vectors, values = basis_from_gram(q.t() @ r @ q)
            added = 0
            captured = kept
            while captured < threshold * total - 1e-12 and added < q.shape[1]:
                captured += float(values[added])
                added += 1
            new = (q @ vectors[:, :added]).to(torch.float32)
            self.bases[name] = new if m is None else torch.cat([m, new], 1)
            report[name] = {"added": added, "total": self.bases[name].shape[1], "size": n,
                            "captured": captured / total if total > 0 else 1.0}
        self.history.append(report)
        return report

    def state_dict(self) -> dict:
        return {"bases": dict(self.bases), "history": list(self.history)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ContinualMemory":
        return cls(dict(state["bases"]), list(state["history"]))


def calibrate_in_null_space(model: nn.Module, batches, layers: Sequence[str], memory: ContinualMemory,
                            energy: float = 0.7, num_batches: int = 100, *,
                            compress_batch: bool = True) -> Calibration:
    """Phase I for a new task, with each layer's input-feature factor in the null space of its
    memory: the covariance ``R`` of that mode is restricted to ``M``'s orthogonal complement
    and its top eigenvectors reaching ``energy`` of the restricted energy are kept. The other
    modes are calibrated as in Phase I. The factor can never hold more than ``n - k`` columns."""
    cal = calibrate(model, batches, layers, energy=energy, num_batches=num_batches, compress_batch=compress_batch)
    modules = resolve_layers(model, layers)
    for name, module in modules.items():
        lc = cal[name]
        fm = feature_mode(module, len(lc.input_shape))
        mode = lc.modes[fm]
        m = memory.bases.get(name)
        if m is None or m.shape[1] == 0:
            continue
        if m.shape[1] >= mode.size:
            raise LanceError(f"the memory of layer {name!r} fills its whole input space ({mode.size} directions): "
                             "no room is left for a new task. Lower the memory threshold.")
        r = mode.basis @ torch.diag(mode.eigenvalues) @ mode.basis.t()
        q = _complement(m, mode.size, torch.float64)
        vectors, values = basis_from_gram(q.t() @ r @ q)
        free = q @ vectors  # n x (n - k), orthogonal to M, by falling restricted energy
        basis = torch.cat([free, m.to(torch.float64)], 1)  # the stored directions last, with zero energy
        eigen = torch.cat([values, torch.zeros(m.shape[1], dtype=values.dtype)])
        limit = free.shape[1]
        rank = min(energy_rank(values, energy), limit)
        lc.modes[fm] = ModeBasis(mode.name, mode.size, rank, basis, eigen, limit=limit)
    return cal
