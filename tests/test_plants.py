"""Tests of ltv_control.plants: dynamics, Jacobians, linearization and certified remainder constants.

Oracles: the defining formulas written out independently, central finite differences, the exact
second-order Taylor identity of the quadratic plant, and sampled remainders (never above the
certified constant, and for the quadratic plant close to it).
"""

from __future__ import annotations

import numpy as np
import pytest

import ltv_control as lc
from ltv_control import bounds
from ltv_control.plants import TANH_SECOND_DERIVATIVE_MAX, QuadraticResidualPlant, ResidualMLPPlant


def _random_spd(rng, n, cond=10.0):
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * np.geomspace(1.0, cond, n)) @ Q.T


def _pnorm(x, P):
    return np.sqrt(np.einsum("...i,ij,...j->...", x, P, x))


PLANTS = {
    "quadratic": lambda: QuadraticResidualPlant.random(5, 4, seed=11, quadratic_scale=0.7),
    "quadratic_B": lambda: QuadraticResidualPlant.random(5, 4, seed=12, m=3),
    "mlp": lambda: ResidualMLPPlant.random(5, 4, seed=13, gain=0.9, input_scale=2.0),
    "mlp_B": lambda: ResidualMLPPlant.random(5, 4, seed=14, hidden=7, m=2),
}


def test_tanh_second_derivative_constant():
    s = np.linspace(-5, 5, 200001)
    t = np.tanh(s)
    assert np.max(np.abs(-2 * t * (1 - t**2))) == pytest.approx(TANH_SECOND_DERIVATIVE_MAX, rel=1e-8)


def test_quadratic_step_matches_formula(rng):
    plant = PLANTS["quadratic_B"]()
    x, u = rng.standard_normal(5), rng.standard_normal(3)
    k = 2
    expected = plant.A[k] @ x + 0.5 * np.array([x @ plant.H[k, j] @ x for j in range(5)]) + plant.B[k] @ u
    np.testing.assert_allclose(plant.step(k, x, u), expected, rtol=1e-12)
    # H is symmetrised on construction
    np.testing.assert_allclose(plant.H, np.swapaxes(plant.H, -1, -2))


def test_mlp_step_matches_formula(rng):
    plant = PLANTS["mlp"]()
    x, u = rng.standard_normal(5), rng.standard_normal(5)
    k = 1
    expected = x + plant.W2[k] @ np.tanh(plant.W1[k] @ x + plant.b1[k]) + u
    np.testing.assert_allclose(plant.step(k, x, u), expected, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(PLANTS))
def test_jacobian_matches_central_differences(name, rng):
    plant = PLANTS[name]()
    n, h = plant.n_states, 1e-6
    for k in range(plant.horizon):
        x = rng.standard_normal(n)
        J = plant.jacobian(k, x)
        fd = np.stack([(plant.step(k, x + h * e) - plant.step(k, x - h * e)) / (2 * h) for e in np.eye(n)], axis=1)
        np.testing.assert_allclose(J, fd, rtol=1e-6, atol=1e-8)
    # batched Jacobians
    X = rng.standard_normal((3, n))
    np.testing.assert_allclose(plant.jacobian(0, X)[1], plant.jacobian(0, X[1]), rtol=1e-14)


def test_quadratic_taylor_expansion_is_exact(rng):
    plant = PLANTS["quadratic"]()
    for k in range(plant.horizon):
        x, d = rng.standard_normal(5), rng.standard_normal(5)
        r = plant.step(k, x + d) - plant.step(k, x) - plant.jacobian(k, x) @ d
        np.testing.assert_allclose(r, 0.5 * np.einsum("jab,a,b->j", plant.H[k], d, d), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PLANTS))
def test_linearize_gives_first_order_model(name, rng):
    plant = PLANTS[name]()
    T, n, m = plant.horizon, plant.n_states, plant.n_inputs
    xbar = plant.rollout(rng.standard_normal(n), 0.1 * rng.standard_normal((T, m)))
    system = plant.linearize(xbar)
    assert isinstance(system, lc.LTVSystem)
    assert system.horizon == T and system.n_states == n and system.n_inputs == m
    for k in range(T):
        np.testing.assert_allclose(system.A[k], plant.jacobian(k, xbar[k]), rtol=1e-14)
        # A x̄ + c = f(x̄): the affine model is exact on the nominal states
        np.testing.assert_allclose(system.A[k] @ xbar[k] + system.c[k], plant.step(k, xbar[k]), rtol=1e-12, atol=1e-12)
        # first order: error of the model shrinks quadratically
        d = rng.standard_normal(n)
        errs = [np.linalg.norm(plant.step(k, xbar[k] + e * d) - system.A[k] @ (xbar[k] + e * d) - system.c[k])
                for e in (1e-2, 1e-3)]
        assert errs[1] < errs[0] / 50
    if plant.B is None:
        assert system.B is None
    else:
        np.testing.assert_allclose(system.B, plant.B)
    assert plant.linearize(xbar, affine=False).c is None
    assert plant.linearize(xbar[:-1]).horizon == T  # (T, n) accepted too


@pytest.mark.parametrize("name", sorted(PLANTS))
def test_remainder_constants_are_valid_in_random_weights(name, rng):
    plant = PLANTS[name]()
    T, n = plant.horizon, plant.n_states
    P = np.stack([_random_spd(rng, n, cond=50.0) * rng.uniform(0.5, 3) for _ in range(T + 1)])
    L = plant.remainder_constants(P)
    L_euclid = plant.remainder_constants()
    np.testing.assert_allclose(L_euclid, plant.remainder_constants(np.broadcast_to(np.eye(n), (T + 1, n, n))), rtol=1e-12)
    for k in range(T):
        xs = 2.0 * rng.standard_normal((4000, n))
        ds = rng.standard_normal((4000, n)) * np.exp(rng.uniform(-3, 1, (4000, 1)))
        r = plant.step(k, xs + ds) - plant.step(k, xs) - np.einsum("rij,rj->ri", plant.jacobian(k, xs), ds)
        ratio = 2 * _pnorm(r, P[k + 1]) / _pnorm(ds, P[k]) ** 2
        ratio_e = 2 * np.linalg.norm(r, axis=1) / np.linalg.norm(ds, axis=1) ** 2
        assert ratio.max() <= L[k] * (1 + 1e-6)
        assert ratio_e.max() <= L_euclid[k] * (1 + 1e-6)
        # the conversion route of the docs is also valid, and never tighter than the direct one
        lam_to = np.linalg.eigvalsh(P[k + 1])[-1]
        lam_from = np.linalg.eigvalsh(P[k])[0]
        assert L[k] <= L_euclid[k] * np.sqrt(lam_to) / lam_from * (1 + 1e-9)
        if name.startswith("quadratic"):
            assert ratio_e.max() > 0.3 * L_euclid[k]  # the certificate is not wildly loose


def test_mlp_constant_formula(rng):
    plant = PLANTS["mlp"]()
    L = plant.remainder_constants()
    for k in range(plant.horizon):
        W1, W2 = plant.W1[k], plant.W2[k]
        expected = TANH_SECOND_DERIVATIVE_MAX * np.linalg.norm(W2, 2) * np.linalg.norm(W1, 2) * np.linalg.norm(W1, axis=1).max()
        assert L[k] == pytest.approx(expected, rel=1e-12)


def test_rollout_open_and_closed_loop_match_manual_loop(rng):
    plant = PLANTS["mlp_B"]()
    T, n, m = plant.horizon, plant.n_states, plant.n_inputs
    x0 = rng.standard_normal((3, n))
    u = rng.standard_normal((T, m))
    K = 0.1 * rng.standard_normal((T, m, n))
    xr = rng.standard_normal((T + 1, n))
    X = plant.rollout(x0, u, K=K, x_ref=xr)
    assert X.shape == (3, T + 1, n)
    for s in range(3):
        x = x0[s]
        for k in range(T):
            x = plant.step(k, x, u[k] - K[k] @ (x - xr[k]))
            np.testing.assert_allclose(X[s, k + 1], x, rtol=1e-12)
    np.testing.assert_allclose(plant.rollout(x0[0])[1], plant.step(0, x0[0]))
    # u_ref adds to u
    np.testing.assert_allclose(plant.rollout(x0, u, u_ref=u), plant.rollout(x0, 2 * u))


def test_random_constructors_are_seeded():
    a = QuadraticResidualPlant.random(4, 3, seed=5)
    b = QuadraticResidualPlant.random(4, 3, seed=5)
    c = QuadraticResidualPlant.random(4, 3, seed=6)
    np.testing.assert_array_equal(a.H, b.H)
    assert not np.allclose(a.A, c.A)
    m1 = ResidualMLPPlant.random(4, 3, seed=5)
    m2 = ResidualMLPPlant.random(4, 3, seed=5)
    np.testing.assert_array_equal(m1.W1, m2.W1)
    assert m1.hidden == 8


def test_closed_loop_deviation_obeys_the_bounds_model(rng):
    """Under u = ū − K(x − x̄) the deviation is δ⁺ = (J − BK)δ + remainder, with LQR gains."""
    plant = QuadraticResidualPlant.random(4, 6, seed=21, m=2)
    T = plant.horizon
    x0 = rng.standard_normal(4)
    ubar = 0.2 * rng.standard_normal((T, 2))
    xbar = plant.rollout(x0, ubar)
    system = plant.linearize(xbar)
    K = lc.finite_horizon_lqr(system, 1.0, 1.0).K
    A_cl = system.closed_loop(K)
    d0 = 0.1 * rng.standard_normal(4)
    D = plant.rollout(x0 + d0, ubar, K=K, x_ref=xbar) - xbar
    for k in range(T):
        expected = A_cl[k] @ D[k] + 0.5 * np.einsum("jab,a,b->j", plant.H[k], D[k], D[k])
        np.testing.assert_allclose(D[k + 1], expected, rtol=1e-9, atol=1e-12)
    P = bounds.lyapunov_weights(A_cl)
    tb = bounds.tracking_error_bound(A_cl, plant.remainder_constants(P), d0)
    assert np.all(bounds.weighted_norms(D, P) <= tb.bound * (1 + 1e-9))


def test_plant_bad_inputs(rng):
    plant = PLANTS["quadratic"]()
    with pytest.raises(lc.DimensionError, match="k"):
        plant.step(4, np.zeros(5))
    with pytest.raises(lc.ArgumentError, match="k"):
        plant.step(1.0, np.zeros(5))
    with pytest.raises(lc.DimensionError, match="x"):
        plant.step(0, np.zeros(4))
    with pytest.raises(lc.DimensionError, match="u"):
        plant.step(0, np.zeros(5), np.zeros(3))
    with pytest.raises(lc.PropertyError, match="x"):
        plant.jacobian(0, np.full(5, np.nan))
    with pytest.raises(lc.DimensionError, match="K"):
        plant.rollout(np.zeros(5), K=np.zeros((4, 5, 4)))
    with pytest.raises(lc.ArgumentError, match="x_ref"):
        plant.rollout(np.zeros(5), x_ref=np.zeros((5, 5)))
    with pytest.raises(lc.DimensionError, match="nominal_trajectory"):
        plant.linearize(np.zeros((7, 5)))
    with pytest.raises(lc.DimensionError, match="P"):
        plant.remainder_constants(np.zeros((3, 5, 5)))
    with pytest.raises(lc.ArgumentError, match="bogus"):
        plant.rollout(np.zeros(5), bogus=True)
    with pytest.raises(lc.DimensionError, match="H"):
        QuadraticResidualPlant(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))
    with pytest.raises(lc.DimensionError, match="W2"):
        ResidualMLPPlant(np.zeros((2, 4, 3)), np.zeros((2, 4, 3)))
    with pytest.raises(lc.ArgumentError, match="seeed"):
        ResidualMLPPlant.random(3, 2, seeed=1)


def test_every_public_parameter_is_documented():
    import inspect

    from ltv_control.bound_plots import plot_tracking_bound

    targets = [plot_tracking_bound]
    for cls in (QuadraticResidualPlant, ResidualMLPPlant):
        targets += [cls, cls.random, cls.step, cls.jacobian, cls.rollout, cls.linearize, cls.remainder_constants]
    for obj in targets:
        doc = inspect.getdoc(obj) or ""
        sig = inspect.signature(obj.__init__ if isinstance(obj, type) else obj)
        for param in sig.parameters:
            if param in ("self", "cls"):
                continue
            assert param in doc, f"{obj.__qualname__}: parameter {param!r} is not documented"
