"""Phase III: a compact memory of each layer's important input directions, and calibration of
each new task in its null space (paper Sec. 2.3).

After task t, :meth:`ContinualMemory.update` accumulates, for every layer, the covariance of
its input along the *input-feature mode* (the channel mode of a convolution, the feature mode
of a linear layer: the axis the weight contracts with) and grows the layer's memory ``M`` by the
fewest directions, orthogonal to ``M``, that bring the captured energy to the threshold (Eq. 5,
GPM's criterion). Before task t+1, :func:`calibrate_in_null_space` runs Phase I as usual, except
that the input-feature factor is chosen among the directions orthogonal to ``M``. The weight
gradient of a LANCE layer is the feature factor applied last (``lance.core.layers``), so every update
of task t+1 lies in the null space of ``M``: the layer's response to inputs in ``span(M)`` does not
change.

Why the channel mode for convolutions: it is the paper's reading (the "last mode, the input
dimension of the layer's weights"). GPM and the authors' continual-learning code use unfolded
patches (C*k*k) instead; the channel memory is k*k times smaller per direction and protects
the same outputs when the stored directions are channel directions, which is what LANCE's
channel factor can express. A grouped (depthwise) convolution never mixes channels, so a
channel projection cannot protect its outputs: such layers are refused.

``ContinualMemory(space="patch")`` is the other choice: the memory holds patch directions,
and :func:`calibrate_in_null_space` then calibrates each convolution on its unfolded patches
(``lance.core.layers.LancePatchConv2d``), its patch factor orthogonal to the memory: the
update rule of GPM's space, with LANCE's compressed activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from lance.core.calibration import SPACES, Calibration, ModeBasis, calibrate, conv_patches, visit_layer_inputs
from lance.errors import LanceError, UnsupportedLayerError
from lance.core.hosvd import basis_from_gram, check_energy, energy_rank, mode_gram
from lance.core.selection import resolve_layers

__all__ = ["ContinualMemory", "calibrate_in_null_space", "project_gradients", "feature_mode", "gpm_threshold",
           "memory_gram", "SPACES"]


def feature_mode(module: nn.Module, ndim: int) -> int:
    """The mode of a layer input that its weight contracts with: channels for a conv, the last."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise UnsupportedLayerError("a grouped convolution never mixes channels, so a channel memory cannot "
                                        "protect its outputs; leave grouped convolutions out of Phase III.")
        return 1
    return ndim - 1


def memory_gram(module: nn.Module, x: Tensor, space: str = "feature") -> Tensor:
    """The (unnormalised, float64) covariance of a layer input in the memory's space.

    ``feature``: along the input-feature mode (channels of a conv, features of a linear layer),
    LANCE's reading. ``patch``: a conv's input as the unfolded patches its weight sees (C*k*k
    per output position, in the order of ``weight.reshape(out, -1)``), GPM's; for a linear
    layer both are the feature mode."""
    if space not in SPACES:
        raise LanceError(f"unknown memory space {space!r}; choose one of {', '.join(SPACES)}.")
    if space == "patch" and isinstance(module, nn.Conv2d):
        p = conv_patches(module, x.detach())
        p = p.transpose(0, 1).reshape(p.shape[1], -1)
        return (p @ p.t()).to(torch.float64)
    return mode_gram(x, feature_mode(module, x.dim()))


def gpm_threshold(task: int, base: float = 0.97, step: float = 0.003) -> float:
    """GPM's threshold schedule: ``base + step * task`` (task counted from 0), capped at 1."""
    return min(1.0, base + step * task)


def _complement(memory: Optional[Tensor], n: int, dtype, device=None) -> Tensor:
    """An orthonormal basis (n x (n - k)) of the orthogonal complement of ``memory`` (n x k)."""
    if memory is None or memory.shape[1] == 0:
        return torch.eye(n, dtype=dtype, device=device)
    q, _ = torch.linalg.qr(memory.to(dtype), mode="complete")
    return q[:, memory.shape[1]:]


@dataclass
class ContinualMemory:
    """Per layer, an orthonormal basis ``M`` (n x k) of the input directions used by earlier
    tasks, in the input-feature space (``space="feature"``, LANCE) or, for convolutions, the
    patch space (``space="patch"``, GPM). ``bases[name]`` is absent before the first update."""

    bases: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # per update: {layer: (added, total, captured)}
    space: str = "feature"

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise LanceError(f"unknown memory space {self.space!r}; choose one of {', '.join(SPACES)}.")

    def megabytes(self) -> float:
        """The memory's size in MiB (float32)."""
        return self.bytes() / 2 ** 20

    def sizes(self) -> dict:
        """Per layer: (dimension n, directions k)."""
        return {name: (int(m.shape[0]), int(m.shape[1])) for name, m in self.bases.items() if m is not None}

    def numel(self) -> int:
        return sum(0 if m is None else m.numel() for m in self.bases.values())

    def bytes(self, bytes_per_element: int = 4) -> int:
        return self.numel() * bytes_per_element

    def update(self, model: nn.Module, batches: Iterable, layers: Sequence[str], threshold,
               num_batches: int = 10) -> dict:
        """Grow each layer's memory from the task just learned (Eq. 5): with ``R`` the mean input
        covariance along the feature mode, add the top eigenvectors of ``(I - MM^T) R (I - MM^T)``
        until ``tr(M^T R M) + sum of their eigenvalues >= threshold * tr(R)``. ``threshold`` is one
        number or a dict with one per layer."""
        modules = resolve_layers(model, layers)
        if isinstance(threshold, dict):
            missing = [n for n in modules if n not in threshold]
            if missing:
                raise LanceError(f"no memory threshold for layers {missing}; give one per layer or a single number.")
            thresholds = {n: check_energy(threshold[n], "threshold") for n in modules}
        else:
            thresholds = dict.fromkeys(modules, check_energy(threshold, "threshold"))
        grams: dict[str, Optional[Tensor]] = {n: None for n in modules}

        def accumulate(name, module, x, _batch):
            g = memory_gram(module, x, self.space)
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
            q = _complement(m, n, torch.float64, r.device)
            vectors, values = basis_from_gram(q.t() @ r @ q)
            added = 0
            captured = kept
            while captured < thresholds[name] * total - 1e-12 and added < q.shape[1]:
                captured += float(values[added])
                added += 1
            new = (q @ vectors[:, :added]).to(torch.float32)
            self.bases[name] = new if m is None else torch.cat([m, new], 1)
            report[name] = {"added": added, "total": self.bases[name].shape[1], "size": n,
                            "captured": captured / total if total > 0 else 1.0}
        self.history.append(report)
        return report

    def state_dict(self) -> dict:
        return {"bases": dict(self.bases), "history": list(self.history), "space": self.space}

    def to(self, device) -> "ContinualMemory":
        """The bases moved to ``device`` (in place; returns the memory)."""
        self.bases = {name: None if m is None else m.to(device) for name, m in self.bases.items()}
        return self

    @classmethod
    def from_state_dict(cls, state: dict) -> "ContinualMemory":
        return cls(dict(state["bases"]), list(state["history"]), state.get("space", "feature"))


def calibrate_in_null_space(model: nn.Module, batches, layers: Sequence[str], memory: ContinualMemory,
                            energy: float = 0.7, num_batches: int = 100, *,
                            compress_batch: bool = True, full: str = "error") -> Calibration:
    """Phase I for a new task, with each layer's input-feature factor in the null space of its
    memory: the covariance ``R`` of that mode is restricted to ``M``'s orthogonal complement
    and its top eigenvectors reaching ``energy`` of the restricted energy are kept. The other
    modes are calibrated as in Phase I. The factor can never hold more than ``n - k`` columns.

    The calibration is made in the memory's space: with a ``patch`` memory every convolution is
    calibrated on its unfolded patches (batch, patch, position) and its patch factor is the one
    kept in the null space, so :func:`lance.compress` swaps in patch-space layers whose updates
    are orthogonal to GPM-style patch bases.

    A layer whose memory already spans its whole input space has no direction left to learn
    in: with ``full="error"`` that raises; with ``full="skip"`` the layer is left out of the
    calibration (the caller keeps it frozen for this task), and ``calibration.full`` lists it."""
    if full not in ("error", "skip"):
        raise LanceError(f"full must be 'error' or 'skip', got {full!r}.")
    if not isinstance(memory, ContinualMemory):
        raise LanceError(f"memory must be a lance ContinualMemory, got {type(memory).__name__}.")
    cal = calibrate(model, batches, layers, energy=energy, num_batches=num_batches, compress_batch=compress_batch,
                    space=memory.space)
    modules = resolve_layers(model, layers)
    filled: list[str] = []
    for name, module in modules.items():
        lc = cal[name]
        fm = feature_mode(module, len(lc.input_shape))
        mode = lc.modes[fm]
        m = memory.bases.get(name)
        if m is None or m.shape[1] == 0:
            continue
        if m.shape[1] >= mode.size and full == "skip":
            filled.append(name)
            continue
        if m.shape[1] >= mode.size:
            raise LanceError(f"the memory of layer {name!r} fills its whole input space ({mode.size} directions): "
                             "no room is left for a new task. Lower the memory threshold.")
        r = mode.basis @ torch.diag(mode.eigenvalues) @ mode.basis.t()
        q = _complement(m, mode.size, torch.float64, r.device)
        vectors, values = basis_from_gram(q.t() @ r @ q)
        free = q @ vectors  # n x (n - k), orthogonal to M, by falling restricted energy
        basis = torch.cat([free, m.to(torch.float64)], 1)  # the stored directions last, with zero energy
        eigen = torch.cat([values, torch.zeros(m.shape[1], dtype=values.dtype, device=values.device)])
        limit = free.shape[1]
        rank = min(energy_rank(values, energy), limit)
        lc.modes[fm] = ModeBasis(mode.name, mode.size, rank, basis, eigen, limit=limit)
    for name in filled:
        del cal.layers[name]
    cal.full = filled
    return cal


def project_gradients(model: nn.Module, memory: ContinualMemory) -> None:
    """GPM's update rule: remove from each remembered layer's weight gradient its component on the
    stored input directions, ``G <- G - (G M) M^T`` (in the memory's space), in place."""
    modules = dict(model.named_modules())
    for name, m in memory.bases.items():
        if m is None or m.shape[1] == 0:
            continue
        w = modules[name].weight
        if w.grad is None:
            continue
        g = w.grad
        m = m.to(dtype=g.dtype, device=g.device)
        if g.dim() == 2 or memory.space == "patch":
            flat = g.reshape(g.shape[0], -1)
            g.copy_((flat - (flat @ m) @ m.t()).reshape(g.shape))
        else:  # feature space of a conv: act on the input-channel index
            g.sub_(torch.einsum("ockl,cm,dm->odkl", g, m, m))
