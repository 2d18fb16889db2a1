"""Tests of ltv_control.bounds: weighted-norm identities, transition norms, the tracking bound.

Oracles: generalized symmetric eigenproblems (scipy.linalg.eigh on a pencil), explicit matrix
products, closed forms for scalar closed loops, and plants whose remainder constant is certified
(ltv_control.plants), closed with finite_horizon_lqr gains.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla

import ltv_control as lc
from ltv_control import bounds
from ltv_control.plants import QuadraticResidualPlant, ResidualMLPPlant


def _random_spd(rng, n, cond=10.0):
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eig = np.geomspace(1.0, cond, n)
    return (Q * eig) @ Q.T


def _random_closed_loop(rng, T, n, scale=1.2):
    return scale * rng.standard_normal((T, n, n)) / np.sqrt(n)


def _pnorm(x, P):
    return float(np.sqrt(x @ P @ x))


# --------------------------------------------------------------------------- Lyapunov weights


def test_lyapunov_weights_satisfy_the_recursion(rng):
    T, n = 7, 5
    A = _random_closed_loop(rng, T, n)
    W = _random_spd(rng, n, cond=5.0)
    Pt = _random_spd(rng, n, cond=3.0)
    P = bounds.lyapunov_weights(A, W=W, P_terminal=Pt)
    assert P.shape == (T + 1, n, n)
    np.testing.assert_allclose(P[T], Pt, rtol=1e-14)
    for k in range(T):
        lhs = P[k] - A[k].T @ P[k + 1] @ A[k]
        np.testing.assert_allclose(lhs, W, rtol=1e-9, atol=1e-9 * np.linalg.norm(P[k]))
        np.testing.assert_array_equal(P[k], P[k].T)
        assert np.linalg.eigvalsh(P[k])[0] >= np.linalg.eigvalsh(W)[0] * (1 - 1e-12)
    # defaults: W = I, P_T = I; scalar W means c·I
    P0 = bounds.lyapunov_weights(A)
    np.testing.assert_allclose(P0[T], np.eye(n))
    P2 = bounds.lyapunov_weights(A, W=2.0)
    np.testing.assert_allclose(P2[T - 1], A[T - 1].T @ A[T - 1] + 2 * np.eye(n), rtol=1e-12)


def test_each_closed_loop_step_is_a_strict_contraction_in_lyapunov_weights(rng):
    """‖Â_k‖²_{P_k→P_{k+1}} = 1 − λ_min(P_k^{-1} W): a generalized symmetric eigen oracle."""
    T, n = 6, 6
    A = _random_closed_loop(rng, T, n, scale=2.0)
    W = _random_spd(rng, n, cond=4.0)
    P = bounds.lyapunov_weights(A, W=W)
    G = bounds.transition_norms(A, P)
    for k in range(T):
        lam_min = sla.eigh(W, P[k], eigvals_only=True)[0]
        assert G[k + 1, k] == pytest.approx(np.sqrt(1 - lam_min), rel=1e-10)
        assert G[k + 1, k] < 1
    assert np.all(G[np.tril_indices(T + 1, -1)] < 1)


# --------------------------------------------------------------------------- induced norms


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (6, 2)])
def test_induced_norm_equals_generalized_eigenvalue_oracle(rng, shape):
    n_to, n_from = shape
    M = rng.standard_normal(shape)
    Pf = _random_spd(rng, n_from, cond=1e6)
    Pt = _random_spd(rng, n_to, cond=1e4)
    value = bounds.induced_norm(M, Pf, Pt)
    # sup ‖Mx‖²_{Pt} / ‖x‖²_{Pf} is the top eigenvalue of the symmetric-definite pencil (MᵀPtM, Pf)
    oracle = np.sqrt(sla.eigh(M.T @ Pt @ M, Pf, eigvals_only=True)[-1])
    assert value == pytest.approx(oracle, rel=1e-8)
    # no direction exceeds it
    X = rng.standard_normal((2000, n_from))
    ratios = np.sqrt(np.einsum("ri,ij,rj->r", X @ M.T, Pt, X @ M.T) / np.einsum("ri,ij,rj->r", X, Pf, X))
    assert ratios.max() <= value * (1 + 1e-12)


def test_induced_norm_is_accurate_for_ill_conditioned_weights(rng):
    """Diagonal weights have a closed form: ‖M‖ = σ_max(diag(√t) M diag(1/√f))."""
    n = 8
    f = np.geomspace(1e-6, 1e6, n)
    t = np.geomspace(1e5, 1e-5, n)
    M = rng.standard_normal((n, n))
    oracle = np.linalg.norm(np.sqrt(t)[:, None] * M / np.sqrt(f)[None, :], 2)
    assert bounds.induced_norm(M, np.diag(f), np.diag(t)) == pytest.approx(oracle, rel=1e-10)


def test_induced_norm_with_identity_weights_is_spectral_norm(rng):
    M = rng.standard_normal((5, 5))
    assert bounds.induced_norm(M, np.eye(5), np.eye(5)) == pytest.approx(np.linalg.norm(M, 2), rel=1e-12)


# --------------------------------------------------------------------------- transition norms


def test_transition_norms_match_explicit_products(rng):
    T, n = 6, 4
    A = _random_closed_loop(rng, T, n, scale=1.5)
    P = bounds.lyapunov_weights(A, W=_random_spd(rng, n))
    G = bounds.transition_norms(A, P)
    assert G.shape == (T + 1, T + 1)
    for k in range(T + 1):
        assert G[k, k] == 1.0
        for i in range(k + 1, T + 1):
            assert G[k, i] == 0.0
        for i in range(k):
            Phi = np.eye(n)
            for j in range(i, k):  # Φ(k,i) = Â_{k−1} ⋯ Â_i : exactly k − i factors
                Phi = A[j] @ Phi
            assert G[k, i] == pytest.approx(bounds.induced_norm(Phi, P[i], P[k]), rel=1e-9)


def test_transition_has_exactly_k_minus_i_factors():
    """Scalar closed loop Â_j = c_j·I with P = I: G[k, i] = |c_i ⋯ c_{k−1}|; off by one is caught."""
    c = np.array([2.0, 3.0, 5.0, 7.0, 11.0])
    T, n = len(c), 3
    A = c[:, None, None] * np.eye(n)
    P = np.broadcast_to(np.eye(n), (T + 1, n, n)).copy()
    G = bounds.transition_norms(A, P)
    for k in range(T + 1):
        for i in range(k + 1):
            assert G[k, i] == pytest.approx(np.prod(c[i:k]), rel=1e-12)


# --------------------------------------------------------------------------- remainder constants


def test_remainder_is_measured_in_the_next_steps_weights(rng):
    """Build δz_{i+1} = Â_i δz_i + r_i with known r_i and weights that differ a lot between steps."""
    T, n, R = 5, 4, 3
    A = _random_closed_loop(rng, T, n)
    P = np.stack([_random_spd(rng, n, cond=10.0 ** (k + 1)) * (k + 1) for k in range(T + 1)])
    D = np.empty((R, T + 1, n))
    D[:, 0] = rng.standard_normal((R, n))
    r = rng.standard_normal((R, T, n))
    for i in range(T):
        D[:, i + 1] = D[:, i] @ A[i].T + r[:, i]
    L_hat = bounds.remainder_constants(A, P, D)
    assert L_hat.shape == (R, T)
    for s in range(R):
        for i in range(T):
            expected = 2 * _pnorm(r[s, i], P[i + 1]) / _pnorm(D[s, i], P[i]) ** 2
            wrong = 2 * _pnorm(r[s, i], P[i]) / _pnorm(D[s, i], P[i]) ** 2
            assert L_hat[s, i] == pytest.approx(expected, rel=1e-10)
            assert not np.isclose(L_hat[s, i], wrong, rtol=1e-3)
    # one rollout gives (T,)
    assert bounds.remainder_constants(A, P, D[0]).shape == (T,)


def test_remainder_constants_of_zero_deviation():
    T, n = 3, 2
    A = np.zeros((T, n, n))
    P = np.broadcast_to(np.eye(n), (T + 1, n, n)).copy()
    D = np.zeros((T + 1, n))
    D[2] = [1.0, 0.0]  # δz_1 = 0 but δz_2 ≠ 0: an infinite ratio at i = 1
    L_hat = bounds.remainder_constants(A, P, D)
    assert L_hat[0] == 0.0 and np.isinf(L_hat[1])


# --------------------------------------------------------------------------- the bound, linear plant


def test_linear_plant_bound_is_transition_norm_and_attained(rng):
    T, n = 8, 5
    A = _random_closed_loop(rng, T, n, scale=1.3)
    P = bounds.lyapunov_weights(A)
    d0 = rng.standard_normal(n)
    tb = bounds.tracking_error_bound(A, np.zeros(T), d0)
    assert tb.mode == "a_priori"
    np.testing.assert_allclose(tb.bound, tb.G[:, 0] * _pnorm(d0, P[0]), rtol=1e-12)
    for k in range(1, T + 1):
        x0 = 0.3 * bounds.worst_case_initial_deviation(A, k)
        assert _pnorm(x0, P[0]) == pytest.approx(0.3, rel=1e-10)
        x = x0.copy()
        for j in range(k):
            x = A[j] @ x
        b = bounds.tracking_error_bound(A, 0.0, x0).bound
        assert _pnorm(x, P[k]) == pytest.approx(b[k], rel=1e-9)  # attained
    # a posteriori with L = 0 coincides with a priori
    X = np.empty((T + 1, n))
    X[0] = d0
    for j in range(T):
        X[j + 1] = A[j] @ X[j]
    post = bounds.tracking_error_bound(A, 0.0, d0, deviations=X)
    assert post.mode == "a_posteriori"
    np.testing.assert_allclose(post.bound, tb.bound, rtol=1e-12)
    assert np.all(np.linalg.norm(np.einsum("kab,ka->kb", np.linalg.cholesky(P), X), axis=-1) <= tb.bound * (1 + 1e-12))


def test_euclidean_conversion_uses_smallest_eigenvalue(rng):
    T, n = 4, 3
    A = _random_closed_loop(rng, T, n)
    tb = bounds.tracking_error_bound(A, 0.5, rng.standard_normal(n))
    lam = np.array([np.linalg.eigvalsh(P)[0] for P in tb.P])
    np.testing.assert_allclose(tb.euclidean, tb.bound / np.sqrt(lam), rtol=1e-12)


def test_a_posteriori_formula_against_direct_sum(rng):
    T, n, R = 5, 3, 4
    A = _random_closed_loop(rng, T, n)
    P = bounds.lyapunov_weights(A)
    D = rng.standard_normal((R, T + 1, n))
    L = rng.uniform(0, 2, T)
    tb = bounds.tracking_error_bound(A, L, D[:, 0], deviations=D)
    assert tb.bound.shape == (R, T + 1)
    G = tb.G
    for s in range(R):
        nz = [_pnorm(D[s, i], P[i]) for i in range(T + 1)]
        for k in range(T + 1):
            expected = G[k, 0] * nz[0] + sum(G[k, i + 1] * L[i] / 2 * nz[i] ** 2 for i in range(k))
            assert tb.bound[s, k] == pytest.approx(expected, rel=1e-12)
    # precomputed transition norms give the same bound
    np.testing.assert_array_equal(bounds.tracking_error_bound(A, L, D[:, 0], deviations=D, G=G).bound, tb.bound)
    with pytest.raises(lc.DimensionError, match="G"):
        bounds.tracking_error_bound(A, L, D[:, 0], deviations=D, G=G[:-1])
    with pytest.raises(lc.PropertyError, match="G"):
        bounds.tracking_error_bound(A, L, D[:, 0], deviations=D, G=G.T)
    # delta0 may be omitted when deviations are given
    np.testing.assert_allclose(bounds.tracking_error_bound(A, L, None, deviations=D).bound, tb.bound)


def test_a_priori_recursion_against_direct_sum(rng):
    T, n = 6, 3
    A = _random_closed_loop(rng, T, n)
    L = rng.uniform(0, 1, T)
    d0 = 0.3 * rng.standard_normal(n)
    tb = bounds.tracking_error_bound(A, L, d0)
    G, b = tb.G, [np.sqrt(d0 @ tb.P[0] @ d0)]
    for k in range(1, T + 1):
        b.append(G[k, 0] * b[0] + sum(G[k, i + 1] * L[i] / 2 * b[i] ** 2 for i in range(k)))
    np.testing.assert_allclose(tb.bound, b, rtol=1e-12)


# --------------------------------------------------------------------------- nonlinear plants, many rollouts


def _closed_loop_rollouts(plant, R, rng, scale_range, q=1.0, r=0.5):
    """Nominal trajectory, LQR gains on the linearization, R perturbed closed-loop rollouts."""
    T, n = plant.horizon, plant.n_states
    x0 = 0.5 * rng.standard_normal(n)
    u_nom = 0.1 * rng.standard_normal((T, plant.n_inputs))
    xbar = plant.rollout(x0, u_nom)
    system = plant.linearize(xbar)
    K = lc.finite_horizon_lqr(system, q, r).K
    A_cl = system.closed_loop(K)
    direction = rng.standard_normal((R, n))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    mags = np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]), R))
    X = plant.rollout(x0 + mags[:, None] * direction, u_nom, K=K, x_ref=xbar)
    return np.asarray(A_cl), X - xbar, float(np.abs(X).max())


CASES = [
    ("quadratic", dict(n=4, T=12, seed=0), 2500),
    ("quadratic", dict(n=9, T=20, seed=1, m=5), 2000),
    ("quadratic", dict(n=3, T=40, seed=2), 1500),
    ("mlp", dict(n=6, T=15, seed=3), 2500),
    ("mlp", dict(n=12, T=8, seed=4, m=12), 2000),
]


@pytest.mark.parametrize("kind,params,R", CASES)
def test_zero_violations_on_plants_with_certified_constants(kind, params, R):
    rng = np.random.default_rng(1000 + params["seed"])
    if kind == "quadratic":
        plant = QuadraticResidualPlant.random(params["n"], params["T"], seed=params["seed"],
                                              quadratic_scale=0.5, m=params.get("m"))
    else:
        plant = ResidualMLPPlant.random(params["n"], params["T"], seed=params["seed"], gain=0.8,
                                        input_scale=1.5, m=params.get("m"))
    A_cl, D, x_max = _closed_loop_rollouts(plant, R, rng, scale_range=(1e-3, 1.0))
    P = bounds.lyapunov_weights(A_cl)
    L = plant.remainder_constants(P)
    realised = bounds.weighted_norms(D, P)

    # the certified constants dominate every realised remainder ratio.  Deviations are differences
    # of absolute states (rounding ~ eps·‖x̄‖), so ratios are only meaningful where ‖δ‖² ≫ eps·‖x̄‖.
    L_hat = bounds.remainder_constants(A_cl, P, D)
    meaningful = np.linalg.norm(D[:, :-1], axis=-1) > 1e-4
    assert meaningful.sum() > R
    assert np.all(L_hat[meaningful] <= np.broadcast_to(L, L_hat.shape)[meaningful] * (1 + 1e-6))
    assert L_hat[meaningful].max() > 0.05 * L.max()  # the rollouts do exercise the nonlinearity

    post = bounds.tracking_error_bound(A_cl, L, None, P=P, deviations=D)
    prior = bounds.tracking_error_bound(A_cl, L, D[:, 0], P=P)
    # The theorem is exact; the simulation is not: δ = x − x̄ of absolute states carries a rounding
    # floor of a few eps·‖x‖ per step, below which the (exponentially decaying) bound can fall.
    tol = 1e-9
    floor = 1e3 * np.finfo(float).eps * x_max
    atol = floor * np.sqrt(np.array([np.linalg.eigvalsh(Pk)[-1] for Pk in P]))
    assert np.count_nonzero(realised > post.bound * (1 + tol) + atol) == 0
    assert np.count_nonzero(realised > prior.bound * (1 + tol) + atol) == 0
    # a priori >= a posteriori (where the a priori is finite it dominates the realised norms it replaces)
    assert np.all(prior.bound >= post.bound * (1 - tol) - atol)
    assert np.mean(np.isfinite(prior.bound[:, -1])) > 0.3  # not vacuous on most rollouts
    # Euclidean form
    assert np.all(np.linalg.norm(D, axis=-1) <= post.euclidean * (1 + tol) + floor)
    # the bound is informative: on small deviations it is nearly tight somewhere
    ratio = realised[:, 1:] / post.bound[:, 1:]
    assert ratio.max() > 0.2


def test_total_rollouts_at_least_ten_thousand():
    assert sum(R for _, _, R in CASES) >= 10_000


# --------------------------------------------------------------------------- coverage


def test_bound_coverage_counts_and_certified_safety(rng):
    plant = QuadraticResidualPlant.random(5, 10, seed=7, quadratic_scale=0.5)
    A_cl, D, _ = _closed_loop_rollouts(plant, 400, rng, scale_range=(1e-2, 0.5))
    P = bounds.lyapunov_weights(A_cl)
    calib, held = D[:200], D[200:]
    res = bounds.bound_coverage(A_cl, calib, held, P=P, min_norm=1e-4)
    assert res.n_steps == 200 * 10
    assert 0.0 <= res.coverage <= 1.0
    assert res.violations == round((1 - res.coverage) * res.n_steps)
    recount = np.count_nonzero(res.realised[:, 1:] > res.bound[:, 1:] * (1 + 1e-9))
    assert recount == res.violations
    L_true = plant.remainder_constants(P)
    assert np.all(res.L <= L_true * (1 + 1e-9))  # a sampled max never exceeds the certificate
    # with the estimate inflated up to the certificate, nothing is violated
    safe = bounds.bound_coverage(A_cl, calib, held, P=P, min_norm=1e-4, safety=float(np.max(L_true / res.L)))
    assert safe.coverage == 1.0 and safe.violations == 0
    # a low quantile on two calibration rollouts under-covers
    weak = bounds.bound_coverage(A_cl, calib[:2], held, P=P, min_norm=1e-4, quantile=0.5, mode="a_priori")
    assert weak.coverage <= res.coverage
    assert weak.per_step_coverage.shape == (10,)


# --------------------------------------------------------------------------- types and errors


def test_torch_in_torch_out(rng):
    torch = pytest.importorskip("torch")
    T, n = 4, 3
    A = _random_closed_loop(rng, T, n)
    d0 = rng.standard_normal(n)
    tb_np = bounds.tracking_error_bound(A, 0.3, d0)
    tb_t = bounds.tracking_error_bound(torch.tensor(A, dtype=torch.float64), 0.3, torch.tensor(d0))
    assert isinstance(tb_t.bound, torch.Tensor) and tb_t.bound.dtype == torch.float64
    np.testing.assert_allclose(tb_t.bound.numpy(), tb_np.bound, rtol=1e-12)
    assert isinstance(bounds.lyapunov_weights(torch.tensor(A)), torch.Tensor)


def test_bad_inputs_raise_typed_errors(rng):
    T, n = 3, 2
    A = _random_closed_loop(rng, T, n)
    P = bounds.lyapunov_weights(A)
    with pytest.raises(lc.DimensionError, match="A_cl"):
        bounds.lyapunov_weights(A[0])
    with pytest.raises(lc.PropertyError, match="A_cl"):
        bounds.lyapunov_weights(np.full((T, n, n), np.nan))
    with pytest.raises(lc.PropertyError, match="W"):
        bounds.lyapunov_weights(A, W=-np.eye(n))
    with pytest.raises(lc.DimensionError, match="W"):
        bounds.lyapunov_weights(A, W=np.eye(n + 1))
    with pytest.raises(lc.ArgumentError, match="bogus"):
        bounds.lyapunov_weights(A, bogus=1)
    with pytest.raises(lc.DimensionError, match="P"):
        bounds.transition_norms(A, P[:-1])
    asym = P.copy()
    asym[1, 0, 1] += 1e-2 * np.linalg.norm(P[1])
    with pytest.raises(lc.PropertyError, match="symmetric"):
        bounds.transition_norms(A, asym)
    slightly = P.copy()
    slightly[1, 0, 1] += 1e-10 * np.linalg.norm(P[1])
    bounds.transition_norms(A, slightly)  # relative asymmetry 1e-10 passes
    indefinite = P.copy()
    indefinite[2] = -np.eye(n)
    with pytest.raises(lc.NumericalError, match=r"P\[2\]"):
        bounds.transition_norms(A, indefinite)
    with pytest.raises(lc.DimensionError, match="L"):
        bounds.tracking_error_bound(A, np.ones(T + 1), np.ones(n))
    with pytest.raises(lc.PropertyError, match="L"):
        bounds.tracking_error_bound(A, -1.0, np.ones(n))
    with pytest.raises(lc.DimensionError, match="delta0"):
        bounds.tracking_error_bound(A, 1.0, np.ones(n + 1))
    with pytest.raises(lc.DimensionError, match="deviations"):
        bounds.tracking_error_bound(A, 1.0, np.ones(n), deviations=np.ones((T, n)))
    D = rng.standard_normal((T + 1, n))
    with pytest.raises(lc.PropertyError, match="delta0"):
        bounds.tracking_error_bound(A, 1.0, D[0] + 1.0, deviations=D)
    with pytest.raises(lc.ArgumentError):
        bounds.tracking_error_bound(A, 1.0, None)
    with pytest.raises(lc.DimensionError, match="M"):
        bounds.induced_norm(np.ones(3), np.eye(3), np.eye(3))
    with pytest.raises(lc.DimensionError, match="P_from"):
        bounds.induced_norm(np.ones((2, 3)), np.eye(2), np.eye(2))
    with pytest.raises(lc.ArgumentError, match="mode"):
        bounds.bound_coverage(A, D[None], D[None], mode="sometimes")
    with pytest.raises(lc.DimensionError, match="k"):
        bounds.worst_case_initial_deviation(A, T + 1)
    with pytest.raises(lc.ArgumentError, match="A_cl"):
        bounds.lyapunov_weights("not an array")


def test_every_public_parameter_is_documented():
    import inspect

    for name in bounds.__all__:
        obj = getattr(bounds, name)
        if not callable(obj) or isinstance(obj, type):
            continue
        doc = inspect.getdoc(obj) or ""
        for param in inspect.signature(obj).parameters:
            assert param in doc, f"{name}: parameter {param!r} is not documented"


@pytest.mark.parametrize("n,T", [(40, 6)])
def test_transition_norms_scale_with_recurrence(rng, n, T):
    """The recurrence agrees with independent dense products at a moderate size."""
    A = np.eye(n) + 0.3 * rng.standard_normal((T, n, n)) / np.sqrt(n)
    P = bounds.lyapunov_weights(A)
    G = bounds.transition_norms(A, P)
    Phi = A[1] @ A[0]
    Cf, Ct = np.linalg.cholesky(P[0]), np.linalg.cholesky(P[2])
    oracle = np.linalg.svd(Ct.T @ Phi @ np.linalg.inv(Cf).T, compute_uv=False)[0]  # test-only oracle
    assert G[2, 0] == pytest.approx(oracle, rel=1e-10)


# --------------------------------------------------------------------------- figure


def test_plot_tracking_bound_writes_png_atomically(tmp_path, rng):
    pytest.importorskip("matplotlib")
    from ltv_control.bound_plots import plot_tracking_bound

    plant = QuadraticResidualPlant.random(4, 8, seed=3, quadratic_scale=0.5)
    A_cl, D, _ = _closed_loop_rollouts(plant, 30, rng, scale_range=(1e-2, 0.3))
    P = bounds.lyapunov_weights(A_cl)
    tb = bounds.tracking_error_bound(A_cl, plant.remainder_constants(P), None, P=P, deviations=D)
    out = plot_tracking_bound(tmp_path / "bound.png", D, tb, title="t", annotation="coverage 1.0")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out2 = plot_tracking_bound(str(tmp_path / "bound_p.png"), D, tb.bound[0], P=P, norm="P")
    assert out2.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bound.png", "bound_p.png"]  # no temp files left
    with pytest.raises(lc.ArgumentError, match="norm"):
        plot_tracking_bound(tmp_path / "x.png", D, tb, norm="l1")
    with pytest.raises(lc.ArgumentError, match="P"):
        plot_tracking_bound(tmp_path / "x.png", D, tb.bound, norm="P")
    with pytest.raises(lc.DimensionError, match="bound"):
        plot_tracking_bound(tmp_path / "x.png", D, tb.bound[:, :-1])
    with pytest.raises(FileNotFoundError):
        plot_tracking_bound(tmp_path / "missing" / "x.png", D, tb)
    assert not (tmp_path / "x.png").exists()
