"""Convergence of LANCE (paper Sec. 2.4 and App. B), checked numerically.

The paper's statements, in the notation used here (``g = ∇L(W)`` the exact weight gradient of
a layer, ``ĝ`` the gradient LANCE's backward returns, ``U`` the layer's calibrated factor of
the *input-feature* mode, ``P = U Uᵀ``):

* **Theorem 2.1** (projected gradient & descent). For a linear layer, or a convolution after
  unfolding, replacing the input ``X`` by ``X P`` gives ``ĝ = g P``, so
  ``<g, ĝ> = ||g P||² >= 0``: a descent direction. :func:`projector_identity_check` tests
  the identity layer by layer; :func:`gradient_cosines` and :func:`descent_statistics`
  measure ``<g, ĝ>`` when the identity does not apply (the paper's projection of *every*
  mode, batch and spatial included; depthwise convolutions).
* **Theorem 2.2** (monotone decrease & projected stationarity). If the loss is ``L``-smooth
  (Assumption A2), the update ``W <- W - η ĝ`` with ``η <= 1/L`` gives
  ``loss(W⁺) <= loss(W) - η/2 ||P∇loss(W)||²``; hence ``Σ ||P∇loss||² < ∞`` and every limit
  point has ``P∇loss = 0``. (``η <= 1/L`` is our reading: the symbols of the statement are lost
  in the text we have. The Descent Lemma behind it gives a decrease for every ``η < 2/L``, by
  ``η (1 - Lη/2) ||P∇loss||²``.) :func:`smoothness_estimate` estimates a local ``L`` and
  :func:`smoothness_along` the largest one met along a run; :func:`projected_descent` runs the
  update and records the loss and both gradient norms; :func:`descent_lemma_holds` checks the
  guaranteed decrease step by step.
* **Proposition 1** (stationarity gap vs. truncation). At a limit point ``P∇L = 0``, so
  ``||∇L|| = ||(I - P)∇L||``: the gradient energy outside the retained input subspace, which
  the energy threshold ``ε`` bounds (Assumption A4). :func:`stationarity` measures the three
  norms at a point.

The theorems hold for the *input-feature* projection only; :func:`input_mode_only` turns a
calibration into that setting (the other modes uncompressed), :func:`restrict_modes` into any
other choice of projected modes. Gradients come from one model
with LANCE layers: its ordinary backward gives ``ĝ``, the same model under
:func:`lance.core.layers.exact_backward` gives ``g``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lance.core.calibration import Calibration, LayerCalibration, ModeBasis
from lance.errors import LanceError
from lance.core.hosvd import mode_product
from lance.core.layers import LanceLayer, compressed_layers, exact_backward

__all__ = [
    "ConvergenceConfig", "PROFILES",
    "restrict_modes", "input_mode_only", "project_weight_gradient", "gradients", "projector_identity_check",
    "gradient_cosines", "descent_statistics",
    "empirical_loss", "hessian_vector_product", "Smoothness", "smoothness_estimate", "smoothness_along",
    "stationarity", "projected_descent", "descent_lemma_holds",
]

LossFn = Callable[[], Tensor]


# ---------------------------------------------------------------------------------------
# Configuration of the chapter's experiments
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvergenceConfig:
    """Sizes of the numerical checks of Sec. 2.4 (one instance per profile)."""

    resolution: int  # input size in pixels (CIFAR-100 images are upscaled to it)
    batch_size: int  # calibration = training batch size (the batch mode is projected)
    calibration_batches: int  # Phase I batches
    angle_batches: int  # held-out batches on which the descent statistics are taken
    fixed_samples: int  # size of the fixed training set of Theorem 2.2 and Proposition 1
    power_iterations: int  # Hessian-vector products of the smoothness estimate at the start (at most)
    path_steps: int  # length of the reference run along which the smoothness is estimated
    step_factors: tuple[float, ...]  # eta = c / L for these c
    factor_steps: int  # steps taken with every c
    stationarity_steps: int  # length of the long run of plain LANCE steps
    energies: tuple[float, ...]  # energy thresholds of Proposition 1
    gap_steps: int  # steps of the projected iteration per energy
    gap_step_factor: float  # their step size is gap_step_factor / L
    gap_momentum: float  # heavy-ball momentum of those runs (0: plain steps)
    prox: float  # weight of the proximal term (prox/2)|W - W0|^2 that gives the loss a finite minimiser


PROFILES: dict[str, ConvergenceConfig] = {
    "smoke": ConvergenceConfig(
        resolution=64, batch_size=8, calibration_batches=2, angle_batches=4, fixed_samples=16,
        power_iterations=8, path_steps=10, step_factors=(0.5, 1.0, 4.0), factor_steps=5,
        stationarity_steps=20, energies=(0.5, 1.0), gap_steps=20, gap_step_factor=3.0, gap_momentum=0.8,
        prox=1.0),
    "book": ConvergenceConfig(
        resolution=96, batch_size=32, calibration_batches=4, angle_batches=16, fixed_samples=48,
        power_iterations=20, path_steps=40, step_factors=(0.25, 0.5, 1.0, 1.5, 2.0, 4.0), factor_steps=20,
        stationarity_steps=120, energies=(0.3, 0.5, 0.7, 0.9, 0.99, 1.0), gap_steps=80, gap_step_factor=3.0,
        gap_momentum=0.8,
        prox=1.0),
    "paper": ConvergenceConfig(
        resolution=224, batch_size=128, calibration_batches=20, angle_batches=50, fixed_samples=256,
        power_iterations=50, path_steps=100, step_factors=(0.25, 0.5, 1.0, 1.5, 2.0, 4.0), factor_steps=50,
        stationarity_steps=1000, energies=(0.3, 0.5, 0.7, 0.9, 0.99, 1.0), gap_steps=500, gap_step_factor=3.0,
        gap_momentum=0.8,
        prox=1.0),
}


# ---------------------------------------------------------------------------------------
# Data: real images, CIFAR-100 when present
# ---------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------
# Theorem 2.1: the projector identity and the descent direction
# ---------------------------------------------------------------------------------------
def restrict_modes(calibration: Calibration, keep: Sequence[str]) -> Calibration:
    """The calibration with only the modes named in ``keep`` projected (mode names as in
    :func:`lance.core.calibration.mode_names`: ``batch``, ``channel``, ``height``, ``width`` for a
    convolution; ``batch``, ``token``, ``feature`` for a linear layer), at their calibrated ranks;
    the other modes are left uncompressed. No new data are needed."""
    keep = set(keep)
    layers = {}
    for name, lc in calibration.layers.items():
        modes = [m if m.name in keep else ModeBasis(m.name, m.size, None) for m in lc.modes]
        layers[name] = LayerCalibration(lc.name, dict(lc.spec), lc.input_shape, modes)
    return Calibration(layers, calibration.energy, calibration.num_batches,
                       compress_batch=calibration.compress_batch and "batch" in keep)


def input_mode_only(calibration: Calibration) -> Calibration:
    """The setting of Theorem 2.1: only the input-feature mode of every layer projected (the
    channels of a convolution, the features of a linear layer), where ``ĝ = g P``."""
    return restrict_modes(calibration, ("channel", "feature"))


def project_weight_gradient(grad: Tensor, factor: Tensor) -> Tensor:
    """``g P`` with ``P = U Uᵀ`` acting on the input axis (axis 1) of a weight gradient: the
    columns of a linear layer's ``(out, in)`` gradient, the input channels of a convolution's
    ``(out, in, kh, kw)`` gradient (the unfolded convolution's columns are channel x kernel
    position, and ``P ⊗ I`` acts on them as ``P`` on the channel axis). Grouped convolutions have
    no such form: their gradient is only the diagonal blocks of a dense one."""
    if grad.shape[1] != factor.shape[0]:
        raise LanceError(f"the factor has {factor.shape[0]} rows but the gradient's input axis has "
                         f"{grad.shape[1]} entries: a grouped convolution has no projector identity.")
    u = factor.to(grad.dtype)
    return mode_product(grad, u @ u.t(), 1)


def gradients(loss_fn: LossFn, params: Mapping[str, Tensor], *, exact: bool = False) -> dict[str, Tensor]:
    """The gradient of ``loss_fn()`` with respect to each named parameter: LANCE's ``ĝ``
    (the layers' own backward), or with ``exact=True`` the exact ``g`` (the same model under
    :func:`~lance.core.layers.exact_backward`)."""
    with exact_backward() if exact else contextlib.nullcontext():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, list(params.values()))
    return dict(zip(params, grads))


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    return "conv" if module.groups == 1 else "grouped conv"


def _factor_of_input_mode(module: LanceLayer) -> Optional[Tensor]:
    return module.factors[1] if isinstance(module, nn.Conv2d) else module.factors[-1]


def projector_identity_check(model: nn.Module, loss_fn: LossFn) -> "pd.DataFrame":  # noqa: F821
    """Theorem 2.1 layer by layer, on one loss of a model with LANCE layers.

    Per compressed layer: ``identity_error = ||ĝ - g P|| / ||g P||`` (zero, up to rounding,
    when only the input-feature mode is projected; NaN for grouped convolutions, which have no
    ``g P``), ``inner = <g, ĝ>``, ``projected_sq = ||g P||²`` (equal to ``inner`` when the
    identity holds), the cosine of ``g`` and ``ĝ``, the rank kept of the input mode, and the
    ``leakage ||g (I - P)|| / ||g||``: the share of the gradient outside the retained input
    subspace (Assumption A4, Proposition 1)."""
    import pandas as pd

    layers = compressed_layers(model)
    if not layers:
        raise LanceError("the model has no LANCE layers: compress it with lance.compress first.")
    params = {name: m.weight for name, m in layers.items()}
    exact, approx = gradients(loss_fn, params, exact=True), gradients(loss_fn, params)
    rows = []
    for name, module in layers.items():
        g, gh = exact[name].double(), approx[name].double()
        u = _factor_of_input_mode(module)
        kind = _kind(module)
        gp = g if u is None else (None if kind == "grouped conv" else project_weight_gradient(g, u))
        size = module.in_features if kind == "linear" else module.in_channels
        rows.append({
            "layer": name, "kind": kind, "input_rank": f"{size if u is None else u.shape[1]}/{size}",
            "identity_error": math.nan if gp is None else float((gh - gp).norm() / gp.norm()),
            "inner": float((g * gh).sum()),
            "projected_sq": math.nan if gp is None else float(gp.pow(2).sum()),
            "cosine": float((g * gh).sum() / (g.norm() * gh.norm())),
            "leakage": math.nan if gp is None else float((g - gp).norm() / g.norm()),
        })
    return pd.DataFrame(rows)


def gradient_cosines(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                     loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> "pd.DataFrame":  # noqa: F821
    """``cos(g, ĝ) = <g, ĝ> / (||g|| ||ĝ||)`` for every LANCE layer of ``model`` and for all of
    them together (row ``layer == "all"``), on every ``(input, target)`` batch.

    A positive cosine means ``ĝ`` is a descent direction for that batch's loss (Theorem 2.1);
    the angle in degrees is the paper's gradient-fidelity measure (its Figs. 2 and 4)."""
    import pandas as pd

    params = {name: m.weight for name, m in compressed_layers(model).items()}
    rows = []
    for b, (x, y) in enumerate(batches):
        loss_fn = lambda: loss(model(x), y)  # noqa: E731
        exact, approx = gradients(loss_fn, params, exact=True), gradients(loss_fn, params)
        pairs = [(n, exact[n].double().flatten(), approx[n].double().flatten()) for n in params]
        pairs.append(("all", torch.cat([p[1] for p in pairs]), torch.cat([p[2] for p in pairs])))
        for name, g, gh in pairs:
            cos = float(g @ gh / (g.norm() * gh.norm()))
            rows.append({"batch": b, "layer": name, "cosine": cos,
                         "angle_deg": math.degrees(math.acos(max(-1.0, min(1.0, cos)))),
                         "relative_error": float((gh - g).norm() / g.norm())})
    return pd.DataFrame(rows)


def descent_statistics(cosines: "pd.DataFrame") -> "pd.DataFrame":  # noqa: F821
    """Summary of :func:`gradient_cosines` per layer: how many batches, the share with
    ``<g, ĝ> > 0`` (a descent direction), the smallest cosine, and the median, 90th percentile
    and largest angle in degrees."""
    grouped = cosines.groupby("layer", sort=False)
    return grouped.agg(batches=("cosine", "size"),
                       share_positive=("cosine", lambda c: float((c > 0).mean())),
                       cosine_min=("cosine", "min"),
                       angle_median=("angle_deg", "median"),
                       angle_p90=("angle_deg", lambda a: float(np.percentile(a, 90))),
                       angle_max=("angle_deg", "max")).reset_index()


# ---------------------------------------------------------------------------------------
# Theorem 2.2: smoothness, the projected iteration, monotone decrease
# ---------------------------------------------------------------------------------------
def empirical_loss(model: nn.Module, inputs: Tensor, targets: Tensor, prox: float = 0.0) -> LossFn:
    """The deterministic loss of Sec. 2.4 on a fixed training set: mean cross-entropy of
    ``model(inputs)``, plus ``prox/2 Σ ||W - W0||²`` over the trainable parameters (``W0``:
    their values now).

    The proximal term gives the loss a minimiser at finite weights (cross-entropy on a small set
    a network can fit has none: it decreases towards 0 as the weights grow). It does not change
    the LANCE iteration's form: every step adds a vector of the form ``ĝ = g P`` to ``W``, so
    ``W - W0`` stays in that subspace, and ``ĝ + prox (W - W0)`` is exactly ``P`` times the
    gradient of the whole loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params]

    def loss_fn() -> Tensor:
        value = F.cross_entropy(model(inputs), targets)
        if prox:
            value = value + 0.5 * prox * sum((p - a).pow(2).sum() for p, a in zip(params, anchor))
        return value

    return loss_fn


def hessian_vector_product(loss_fn: LossFn, params: Sequence[Tensor], vectors: Sequence[Tensor]) -> list[Tensor]:
    """``H v`` for the Hessian ``H`` of ``loss_fn()`` with respect to ``params``, by double
    backward (Pearlmutter's trick). LANCE layers run exactly here: the smoothness of Assumption
    A2 is that of the true loss."""
    with exact_backward():
        grads = torch.autograd.grad(loss_fn(), list(params), create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vectors))
        return [h.detach() for h in torch.autograd.grad(dot, list(params))]


@dataclass
class Smoothness:
    """A local smoothness estimate: ``L = |λ|`` for the eigenvalue ``λ`` of largest magnitude
    of the Hessian (signed, as the Rayleigh quotient gives it), the estimates per iteration and
    the last iterate (a warm start for an estimate at nearby weights)."""

    L: float
    eigenvalue: float
    iterations: int
    history: list[float] = field(default_factory=list)
    vector: list[Tensor] = field(default_factory=list, repr=False)


def smoothness_estimate(loss_fn: LossFn, params: Sequence[Tensor], iterations: int = 30, tol: float = 1e-3,
                        seed: int = 0, start: Optional[Sequence[Tensor]] = None) -> Smoothness:
    """Estimate the smoothness constant of Assumption A2 near the current weights: the spectral
    norm ``||H||`` of the Hessian of ``loss_fn()`` restricted to ``params``, by power iteration on
    Hessian-vector products from a random start (or ``start``), stopped after ``iterations`` or
    when two successive estimates agree to ``tol`` (relative).

    Power iteration approaches ``||H||`` from below. And it is a *local* constant: on an
    L-smooth loss ``||H|| <= L`` everywhere, so an estimate at one point is a lower bound for the
    L of the theorem, which must hold wherever the iterates go. A ReLU network is not globally
    L-smooth at all (its gradient jumps where a unit switches); autograd's Hessian is that of the
    current piecewise-linear region."""
    params = list(params)
    if start is None:
        g = torch.Generator().manual_seed(seed)
        v = [torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) for p in params]  # the same on every device
    else:
        v = [t.detach().clone() for t in start]
    norm = math.sqrt(sum(float(t.pow(2).sum()) for t in v))
    v = [t / norm for t in v]
    history: list[float] = []
    rayleigh = 0.0
    for k in range(1, iterations + 1):
        hv = hessian_vector_product(loss_fn, params, v)
        rayleigh = sum(float((a * b).sum()) for a, b in zip(v, hv))
        size = math.sqrt(sum(float(t.pow(2).sum()) for t in hv))
        history.append(size)
        if size == 0:
            break
        v = [t / size for t in hv]
        if k > 1 and abs(history[-1] - history[-2]) <= tol * history[-1]:
            break
    return Smoothness(L=history[-1], eigenvalue=rayleigh, iterations=len(history), history=history, vector=v)


def smoothness_along(loss_fn: LossFn, params: Sequence[Tensor], steps: int, step_factor: float = 0.25,
                     every: int = 10, iterations: int = 10, first_iterations: int = 30) -> "pd.DataFrame":  # noqa: F821
    """The local smoothness met along a run: :func:`smoothness_estimate` at the start (``L_0``,
    up to ``first_iterations`` products) and after every ``every`` of ``steps`` plain LANCE steps
    of size ``step_factor / L_0`` (taken in place; each estimate warm-started from the last).

    One row per estimate (``step``, ``L``). Its maximum is a better stand-in for the L of
    Assumption A2, which must hold wherever the iterates go, than ``L_0``."""
    import pandas as pd

    first = smoothness_estimate(loss_fn, params, iterations=first_iterations)
    lr = step_factor / first.L
    rows, vector, done = [{"step": 0, "L": first.L}], first.vector, 0
    while done < steps:
        n = min(every, steps - done)
        projected_descent(loss_fn, params, lr, n)
        done += n
        est = smoothness_estimate(loss_fn, params, iterations=iterations, start=vector)
        rows.append({"step": done, "L": est.L})
        vector = est.vector
    return pd.DataFrame(rows)


def stationarity(loss_fn: LossFn, params: Sequence[Tensor]) -> dict[str, float]:
    """The measures of Sec. 2.4 at the current weights: ``loss``, ``exact = ||∇L||``,
    ``lance = ||ĝ||`` (``||P∇L||`` in the theorem's setting) and ``gap = ||∇L - ĝ||``
    (``||(I - P)∇L||`` there): the distance from stationarity that Proposition 1 bounds."""
    named = {str(i): p for i, p in enumerate(params)}
    exact, approx = gradients(loss_fn, named, exact=True), gradients(loss_fn, named)
    with torch.no_grad(), exact_backward():
        value = float(loss_fn())

    def norm(ts):
        return math.sqrt(sum(float(t.double().pow(2).sum()) for t in ts))

    return {"loss": value, "exact": norm(exact.values()), "lance": norm(approx.values()),
            "gap": norm([exact[k] - approx[k] for k in named])}


def projected_descent(loss_fn: LossFn, params: Sequence[Tensor], lr: float, steps: int,
                      exact_every: int = 0, momentum: float = 0.0) -> "pd.DataFrame":  # noqa: F821
    """Run the LANCE update ``W <- W - lr ĝ`` (Theorem 2.2: plain gradient steps on a
    deterministic loss, no weight decay) for ``steps`` steps, in place.

    With ``momentum`` β > 0 the step is heavy-ball, ``v <- β v + ĝ``, ``W <- W - lr v`` (as the
    paper's training runs): every step still lies in the span of past ``ĝ``, and its fixed points
    are again those with ``ĝ = 0``, so its limit points are the projected stationary points of
    Proposition 1; Theorem 2.2's monotone decrease is proved for ``momentum = 0`` only.

    One row per iterate ``t = 0..steps``: ``loss`` ``L(W_t)`` and ``lance_grad_norm`` ``||ĝ_t||``;
    every ``exact_every`` steps (and at the end) also the exact gradient norm and the gap of
    :func:`stationarity`. Stops early, with a last row, if the loss stops being finite."""
    import pandas as pd

    params = list(params)
    velocity = [torch.zeros_like(p) for p in params]
    rows = []
    for t in range(steps + 1):
        with torch.enable_grad():
            loss = loss_fn()
            grads = torch.autograd.grad(loss, params)
        row = {"step": t, "loss": float(loss.detach()),
               "lance_grad_norm": math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))}
        finite = math.isfinite(row["loss"]) and math.isfinite(row["lance_grad_norm"])
        if exact_every and finite and (t % exact_every == 0 or t == steps):
            s = stationarity(loss_fn, params)
            row.update(exact_grad_norm=s["exact"], gap=s["gap"])
        rows.append(row)
        if t == steps or not finite:
            break
        with torch.no_grad():
            for p, g, v in zip(params, grads, velocity):
                v.mul_(momentum).add_(g)
                p.sub_(lr * v)
    return pd.DataFrame(rows)


def descent_lemma_holds(trace: "pd.DataFrame", L: float, lr: float) -> "pd.Series":  # noqa: F821
    """For each step of a :func:`projected_descent` trace: does the decrease the Descent Lemma
    guarantees, ``L(W_{t+1}) <= L(W_t) - lr (1 - L lr / 2) ||ĝ_t||²``, hold (with a relative
    slack of 1e-6 for float32 rounding)? Meaningful for ``lr < 2 / L``, where the guarantee is a
    decrease; Theorem 2.2's ``lr <= 1/L`` makes it at least ``lr/2 ||ĝ_t||²``."""
    import pandas as pd

    loss = trace.loss.to_numpy()
    g2 = trace.lance_grad_norm.to_numpy() ** 2
    bound = loss[:-1] - lr * (1 - L * lr / 2) * g2[:-1]
    slack = 1e-6 * np.abs(loss[:-1])
    return pd.Series(loss[1:] <= bound + slack, index=trace.step.to_numpy()[:-1], name="descent_lemma_holds")
