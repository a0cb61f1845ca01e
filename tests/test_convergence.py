"""lance.analysis.convergence: the numerical checks of the paper's Sec. 2.4 (Theorems 2.1, 2.2, Prop. 1)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lance
from lance.analysis import convergence
from lance.core.layers import exact_backward

from helpers import random_batches


def _conv_model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(6, 10, 3, padding=1), nn.ReLU(),
        nn.Conv2d(10, 10, 3, padding=1, groups=10), nn.ReLU(),  # depthwise
        nn.Conv2d(10, 12, 1, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(12 * 4 * 4, 7),
    ).to(dtype)


LAYERS = ["0", "2", "4", "7"]


def _calibrated(energy=0.6, seed=0):
    model = _conv_model(seed=seed)
    batches = random_batches((8, 6, 8, 8), n=4, seed=seed)
    calib = lance.calibrate(model, batches, LAYERS, energy=energy, num_batches=4)
    return model, calib


def _loss(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 6, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 7, (8,), generator=g)
    return lambda: F.cross_entropy(model(x), y)


# ---------------------------------------------------------------------------------------
# Theorem 2.1
# ---------------------------------------------------------------------------------------
def test_input_mode_only_keeps_only_the_feature_mode_at_the_same_rank():
    _, calib = _calibrated()
    only = convergence.input_mode_only(calib)
    for name in LAYERS:
        ranks, full = only[name].ranks, calib[name].ranks
        keep = 1 if calib[name].spec["type"] == "Conv2d" else len(full) - 1
        assert ranks[keep] == full[keep] and ranks[keep] is not None
        assert all(r is None for i, r in enumerate(ranks) if i != keep)
    assert only[LAYERS[0]].batch_size is None  # any batch size works then


def test_restrict_modes_drops_the_batch_mode():
    _, calib = _calibrated()
    spatial = convergence.restrict_modes(calib, ["channel", "height", "width"])
    assert spatial["0"].ranks[0] is None and spatial["0"].ranks[1:] == calib["0"].ranks[1:]
    assert not spatial.compress_batch


def test_projector_identity_holds_to_1e10_for_input_mode_projection():
    model, calib = _calibrated(energy=0.5)
    compressed = lance.compress(copy.deepcopy(model), convergence.input_mode_only(calib))
    table = convergence.projector_identity_check(compressed, _loss(compressed)).set_index("layer")
    assert set(table.index) == set(LAYERS)
    ordinary = table[table.kind != "grouped conv"]
    assert len(ordinary) == 3
    assert (ordinary.identity_error < 1e-10).all()
    # <g, g_hat> = ||g P||^2 >= 0 and the truncation really removed something
    assert ((ordinary.inner - ordinary.projected_sq).abs() <= 1e-10 * ordinary.projected_sq).all()
    assert (ordinary.inner > 0).all() and (ordinary.leakage > 1e-3).all()
    assert math.isnan(table.loc["2", "identity_error"])  # depthwise: no right-multiplication form


def test_projector_identity_fails_when_batch_and_spatial_modes_are_projected():
    model, calib = _calibrated(energy=0.5)
    compressed = lance.compress(copy.deepcopy(model), calib)
    table = convergence.projector_identity_check(compressed, _loss(compressed))
    assert (table[table.kind == "conv"].identity_error > 1e-3).any()


def test_project_weight_gradient_is_right_multiplication_of_the_unfolded_gradient():
    g = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    u, _ = torch.linalg.qr(torch.randn(4, 2, dtype=torch.float64))
    gp = convergence.project_weight_gradient(g, u)
    # unfold (out, in, kh, kw) -> (out, in*kh*kw) with in outermost: P acts as P kron I
    unfolded = g.reshape(5, -1) @ torch.kron(u @ u.T, torch.eye(9, dtype=torch.float64))
    assert torch.allclose(gp.reshape(5, -1), unfolded, atol=1e-12)
    with pytest.raises(lance.LanceError):
        convergence.project_weight_gradient(torch.randn(4, 1, 3, 3), u)


def test_gradient_cosines_equal_one_at_full_energy_and_summary_counts_batches():
    model, calib = _calibrated(energy=0.5)
    full = lance.compress(copy.deepcopy(model), calib.truncate(1.0))
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 6, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 7, (8,), generator=g))
               for _ in range(3)]
    cos = convergence.gradient_cosines(full, batches)
    assert len(cos) == 3 * (len(LAYERS) + 1)
    assert (cos.cosine > 1 - 1e-10).all()
    stats = convergence.descent_statistics(cos).set_index("layer")
    assert (stats.batches == 3).all() and (stats.share_positive == 1.0).all()


def test_descent_statistics_counts_negative_cosines():
    import pandas as pd

    cos = pd.DataFrame({"batch": [0, 1, 2, 3], "layer": ["a"] * 4, "cosine": [0.5, -0.2, 0.1, 0.9],
                        "angle_deg": [60.0, 101.5, 84.3, 25.8]})
    stats = convergence.descent_statistics(cos).iloc[0]
    assert stats.share_positive == 0.75 and stats.cosine_min == -0.2 and stats.angle_max == 101.5


# ---------------------------------------------------------------------------------------
# Smoothness
# ---------------------------------------------------------------------------------------
def _quadratic(eigenvalues, seed=0):
    """0.5 w^T A w with A = Q diag(eigenvalues) Q^T, w one parameter."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    w = nn.Parameter(torch.randn(len(eigenvalues), generator=g, dtype=torch.float64))
    return a, w, lambda: 0.5 * w @ a @ w


def test_hessian_vector_product_of_a_quadratic_is_a_times_v():
    a, w, loss = _quadratic([5.0, 2.0, 1.0, 0.5])
    v = torch.randn(4, dtype=torch.float64)
    (hv,) = convergence.hessian_vector_product(loss, [w], [v])
    assert torch.allclose(hv, a @ v, atol=1e-12)


def test_smoothness_of_a_quadratic_is_its_largest_eigenvalue():
    _, w, loss = _quadratic([10.0, 4.0, 3.0, 1.0, 0.1, 0.0])
    est = convergence.smoothness_estimate(loss, [w], iterations=200, tol=1e-12)
    assert est.L == pytest.approx(10.0, rel=1e-8)
    assert est.eigenvalue == pytest.approx(10.0, rel=1e-8)


def test_smoothness_takes_the_largest_magnitude_of_an_indefinite_hessian():
    _, w, loss = _quadratic([2.0, 1.0, -6.0, 0.5])
    est = convergence.smoothness_estimate(loss, [w], iterations=300, tol=1e-12)
    assert est.L == pytest.approx(6.0, rel=1e-8)
    assert est.eigenvalue == pytest.approx(-6.0, rel=1e-8)


def test_smoothness_estimate_uses_the_exact_backward_of_lance_layers():
    """A2 is about the true loss: the estimate on a compressed model equals the plain model's."""
    model, calib = _calibrated(energy=0.3)
    compressed = lance.compress(copy.deepcopy(model), convergence.input_mode_only(calib))
    plain_est = convergence.smoothness_estimate(_loss(model), list(model.parameters()), iterations=5)
    lance_est = convergence.smoothness_estimate(_loss(compressed), list(compressed.parameters()), iterations=5)
    assert lance_est.L == pytest.approx(plain_est.L, rel=1e-10)


# ---------------------------------------------------------------------------------------
# Theorem 2.2 and Proposition 1 on a convex quadratic through a LANCE layer
# ---------------------------------------------------------------------------------------
def _least_squares(energy=0.7, seed=0):
    """Least squares through a LanceLinear with only its feature mode projected: a convex
    quadratic in W, with Hessian (X^T X / n) kron I, so L = largest eigenvalue of X^T X / n."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([3.0, 2.0, 1.5, 1.0, 0.8, 0.7, 0.6, 0.5], dtype=torch.float64)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64) * scales
    target = torch.randn(64, 3, generator=g, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(8, 3, bias=False)).double()
    calib = lance.calibrate(model, [x], ["0"], energy=energy, num_batches=1, compress_batch=False)
    lance.compress(model, convergence.input_mode_only(calib))
    loss = lambda: 0.5 * (model(x) - target).pow(2).sum() / x.shape[0]  # noqa: E731
    L = float(torch.linalg.eigvalsh(x.T @ x / x.shape[0]).max())
    u = model[0].factors[-1]
    return model, loss, L, u @ u.T


def test_projected_descent_on_a_quadratic_decreases_monotonically_to_a_projected_stationary_point():
    model, loss, L, P = _least_squares()
    w = model[0].weight
    est = convergence.smoothness_estimate(loss, [w], iterations=500, tol=1e-13)
    assert est.L == pytest.approx(L, rel=1e-6)
    trace = convergence.projected_descent(loss, [w], lr=0.9 / L, steps=3000, exact_every=1000)
    assert (trace.loss.diff().dropna() <= 1e-15).all()
    assert convergence.descent_lemma_holds(trace, L, 0.9 / L).all()
    with exact_backward():
        (g,) = torch.autograd.grad(loss(), [w])
    assert float((g @ P).norm()) < 1e-8 * float(g.norm())  # P grad = 0 at the limit ...
    assert float(g.norm()) > 1e-3  # ... but grad != 0: the stationarity gap of Prop. 1
    last = trace.iloc[-1]
    assert last.lance_grad_norm < 1e-8 and last.gap == pytest.approx(last.exact_grad_norm, rel=1e-6)


def test_projected_descent_at_full_energy_reaches_a_true_stationary_point():
    model, loss, L, P = _least_squares(energy=1.0)
    assert torch.allclose(P, torch.eye(8, dtype=torch.float64), atol=1e-12)
    trace = convergence.projected_descent(loss, [model[0].weight], lr=1.0 / L, steps=3000, exact_every=3000)
    assert trace.exact_grad_norm.iloc[-1] < 1e-8 and trace.gap.iloc[-1] < 1e-12


def test_projected_descent_diverges_beyond_two_over_L_along_a_retained_direction():
    model, loss, L, _ = _least_squares()
    trace = convergence.projected_descent(loss, [model[0].weight], lr=2.5 / L, steps=200)
    assert trace.loss.iloc[-1] > 10 * trace.loss.iloc[0]
    assert not (trace.loss.diff().dropna() <= 0).all()


def test_momentum_reaches_the_same_projected_stationary_point():
    model, loss, L, P = _least_squares()
    w = model[0].weight
    start = w.detach().clone()
    plain = convergence.projected_descent(loss, [w], lr=1.0 / L, steps=4000, exact_every=4000)
    w_plain = w.detach().clone()
    with torch.no_grad():
        w.copy_(start)
    heavy = convergence.projected_descent(loss, [w], lr=3.0 / L, steps=1500, exact_every=1500, momentum=0.8)
    assert torch.allclose(w.detach(), w_plain, atol=1e-8)
    assert heavy.gap.iloc[-1] == pytest.approx(plain.gap.iloc[-1], rel=1e-6)


def test_stationarity_gap_is_the_part_outside_the_retained_subspace():
    model, loss, _, P = _least_squares(energy=0.5)
    s = convergence.stationarity(loss, [model[0].weight])
    with exact_backward():
        (g,) = torch.autograd.grad(loss(), [model[0].weight])
    assert s["lance"] == pytest.approx(float((g @ P).norm()), rel=1e-10)
    assert s["gap"] == pytest.approx(float((g - g @ P).norm()), rel=1e-10)
    assert s["exact"] ** 2 == pytest.approx(s["lance"] ** 2 + s["gap"] ** 2, rel=1e-10)


def test_empirical_loss_proximal_term_is_zero_at_the_start_and_keeps_steps_in_the_subspace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4)).double()
    x, y = torch.randn(20, 6, dtype=torch.float64), torch.randint(0, 4, (20,))
    calib = lance.calibrate(model, [x], ["0"], energy=0.5, num_batches=1, compress_batch=False)
    plain = convergence.empirical_loss(model, x, y, prox=0.0)
    lance.compress(model, convergence.input_mode_only(calib))
    u = model[0].factors[-1]
    loss = convergence.empirical_loss(model, x, y, prox=2.0)
    with torch.no_grad():
        assert float(loss()) == pytest.approx(float(plain()), rel=1e-12)
    w0 = model[0].weight.detach().clone()
    convergence.projected_descent(loss, [model[0].weight], lr=0.05, steps=30)
    delta = model[0].weight.detach() - w0
    assert torch.allclose(delta @ u @ u.T, delta, atol=1e-12)  # W - W0 stays in the span of P


def test_descent_lemma_holds_detects_a_violation():
    import pandas as pd

    trace = pd.DataFrame({"step": [0, 1, 2], "loss": [1.0, 0.9, 0.95], "lance_grad_norm": [1.0, 1.0, 1.0]})
    holds = convergence.descent_lemma_holds(trace, L=1.0, lr=0.1)  # guaranteed decrease 0.095 per step
    assert holds.tolist() == [True, False]


def test_smoothness_along_records_estimates_at_every_interval():
    _, w, loss = _quadratic([4.0, 1.0, 0.5])
    path = convergence.smoothness_along(loss, [w], steps=25, every=10, iterations=50)
    assert path.step.tolist() == [0, 10, 20, 25]
    assert path.L.to_numpy() == pytest.approx(4.0, rel=1e-3)  # a quadratic: the same everywhere


def test_training_images_fall_back_to_the_sample_photographs(monkeypatch, tmp_path):
    monkeypatch.setenv("LANCE_DATA_DIR", str(tmp_path))  # an empty data directory
    images = lance.data.training_images(40, 32, seed=0)
    assert images.x.shape == (40, 3, 32, 32) and images.y.shape == (40,)
    assert "sample photographs" in images.source
    assert 2 <= images.num_classes <= 20 and int(images.y.min()) == 0 and int(images.y.max()) < images.num_classes


def test_profiles_are_consistent():
    for name, cfg in convergence.PROFILES.items():
        assert cfg.energies[-1] == 1.0, name  # the gap must vanish at eps = 1
        assert all(0 < e <= 1 for e in cfg.energies)
        assert cfg.gap_step_factor < 2 * (1 + cfg.gap_momentum)  # heavy ball stable on a quadratic
