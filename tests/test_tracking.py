"""tracking_lqr against an independent cvxpy QP, rolled-out costs and value functions."""

from __future__ import annotations

import numpy as np
import pytest

import ltv_control as lc


def _spd(rng, d, shift=0.5):
    M = rng.normal(size=(d, d))
    return M @ M.T / d + shift * np.eye(d)


def _problem(rng, T=6, n=3, m=2, batch=()):
    A = rng.normal(size=batch + (T, n, n)) / np.sqrt(n)
    B = rng.normal(size=batch + (T, n, m))
    c = 0.3 * rng.normal(size=batch + (T, n))
    return lc.LTVSystem(A, B, c)


def _rollout(system, res, x0):
    x = system.simulate(x0, K=res.K, k=res.k)
    u = -np.einsum("...kmn,...kn->...km", res.K, x[..., :-1, :]) + res.k
    return x, u


def _value(res, k, x):
    return x @ res.S[k] @ x + 2 * res.s[k] @ x + res.s0[k]


def test_tracking_equals_independent_cvxpy_qp(rng):
    cp = pytest.importorskip("cvxpy")
    T, n, m = 6, 3, 2
    system = _problem(rng, T, n, m)
    Q = np.stack([_spd(rng, n, 0.1) for _ in range(T)])
    R = np.stack([_spd(rng, m) for _ in range(T)])
    Qf = _spd(rng, n)
    x_ref = rng.normal(size=(T + 1, n))
    u_ref = rng.normal(size=(T, m))
    x0 = rng.normal(size=n)
    res = lc.tracking_lqr(system, Q, R, x_ref, Qf=Qf, u_ref=u_ref)
    x_lqr, u_lqr = _rollout(system, res, x0)

    x = cp.Variable((T + 1, n))
    u = cp.Variable((T, m))
    cost = cp.quad_form(x[T] - x_ref[T], Qf)
    cons = [x[0] == x0]
    for k in range(T):
        cost += cp.quad_form(x[k] - x_ref[k], Q[k]) + cp.quad_form(u[k] - u_ref[k], R[k])
        cons.append(x[k + 1] == system.A[k] @ x[k] + system.B[k] @ u[k] + system.c[k])
    prob = cp.Problem(cp.Minimize(cost), cons)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    # Tolerances: an interior-point solution at ~1e-9 accuracy versus the exact Riccati solution.
    np.testing.assert_allclose(u_lqr, u.value, atol=1e-5)
    np.testing.assert_allclose(x_lqr, x.value, atol=1e-5)
    assert _value(res, 0, x0) == pytest.approx(prob.value, rel=1e-6)


def test_value_function_equals_rolled_out_cost_at_every_step(rng):
    T, n, m = 7, 4, 2
    system = _problem(rng, T, n, m)
    Q, R, Qf = _spd(rng, n, 0.0), _spd(rng, m), _spd(rng, n)
    x_ref = rng.normal(size=(T + 1, n))
    u_ref = rng.normal(size=m)
    res = lc.tracking_lqr(system, Q, R, x_ref, Qf=Qf, u_ref=u_ref)
    for k in (0, 3, T - 1):
        sub = lc.LTVSystem(system.A[k:], system.B[k:], system.c[k:])
        sub_res = res._replace(K=res.K[k:], k=res.k[k:])
        xk = rng.normal(size=n)
        x, u = _rollout(sub, sub_res, xk)
        cost = lc.lqr_cost(sub, Q, R, x - x_ref[k:], u - u_ref, Qf=Qf)
        assert _value(res, k, xk) == pytest.approx(cost, rel=1e-11)
    xT = rng.normal(size=n)
    assert _value(res, T, xT) == pytest.approx((xT - x_ref[T]) @ Qf @ (xT - x_ref[T]), rel=1e-12)


def test_zero_reference_without_drift_reduces_to_lqr(rng):
    T, n, m = 5, 3, 2
    system = lc.LTVSystem(rng.normal(size=(T, n, n)), rng.normal(size=(T, n, m)))
    res = lc.tracking_lqr(system, 1.0, 2.0, np.zeros(n))
    K, S = lc.finite_horizon_lqr(system, 1.0, 2.0)
    np.testing.assert_allclose(res.K, K, rtol=1e-13)
    np.testing.assert_allclose(res.S, S, rtol=1e-13)
    assert np.all(res.k == 0) and np.all(res.s == 0) and np.all(res.s0 == 0)


def test_reachable_constant_setpoint_is_held(rng):
    # With B = I and the reference a fixed point (r = A r + c - u_ref... here u_ref holds it), the
    # optimal policy keeps x at r with u = u_ref and zero cost.
    T, n = 6, 3
    A = rng.normal(size=(T, n, n)) / 2
    r = rng.normal(size=n)
    c = rng.normal(size=(T, n))
    u_ref = r - np.einsum("kij,j->ki", A, r) - c  # u_ref_k makes r a fixed point
    system = lc.LTVSystem(A, None, c)
    res = lc.tracking_lqr(system, 1.0, 1.0, r, u_ref=u_ref)
    x, u = _rollout(system, res, r)
    np.testing.assert_allclose(x, np.broadcast_to(r, (T + 1, n)), atol=1e-12)
    np.testing.assert_allclose(u, u_ref, atol=1e-12)
    assert abs(_value(res, 0, r)) < 1e-10


def test_constant_reference_equals_broadcast_reference(rng):
    system = _problem(rng)
    r = rng.normal(size=3)
    a = lc.tracking_lqr(system, 1.0, 1.0, r, u_ref=np.ones(2))
    b = lc.tracking_lqr(system, 1.0, 1.0, np.broadcast_to(r, (7, 3)), u_ref=np.ones((6, 2)))
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(fa, fb)


def test_batched_tracking_matches_members_and_torch(rng):
    torch = pytest.importorskip("torch")
    T, n, m = 4, 3, 2
    system = _problem(rng, T, n, m, batch=(2,))
    x_ref = rng.normal(size=(2, T + 1, n))
    res = lc.tracking_lqr(system, 1.0, 0.5, x_ref, Qf=2.0)
    assert res.k.shape == (2, T, m) and res.s.shape == (2, T + 1, n) and res.s0.shape == (2, T + 1)
    for b in range(2):
        member = lc.LTVSystem(system.A[b], system.B[b], system.c[b])
        rb = lc.tracking_lqr(member, 1.0, 0.5, x_ref[b], Qf=2.0)
        for fa, fb in zip(res, rb):
            np.testing.assert_allclose(fa[b], fb, rtol=1e-12, atol=1e-14)
    rt = lc.tracking_lqr(system.to(device="cpu"), 1.0, 0.5, torch.as_tensor(x_ref), Qf=2.0)
    for fa, ft in zip(res, rt):
        assert isinstance(ft, torch.Tensor)
        np.testing.assert_allclose(ft.numpy(), fa, rtol=1e-12, atol=1e-13)
