"""The one affine Riccati step (riccati.lqr_step) and its backward loop, against closed forms.

Oracle: the Q-function of one stage, ``stage(x, u) + V_{k+1}(Ax + Bu + c)``, minimised over ``u``
by a dense ``numpy.linalg.solve`` of its stationarity condition, evaluated at random states.
"""

from __future__ import annotations

import numpy as np
import pytest

import ltv_control as lc
from ltv_control._constrained_admm import ADMMSettings
from ltv_control.constrained import ConstrainedLQR
from ltv_control.riccati import Stage, backward_recursion, lqr_step, riccati_step


def _spd(rng, d, shift=0.5):
    M = rng.normal(size=(d, d))
    return M @ M.T / d + shift * np.eye(d)


def _q_function_minimum(x, S, s, s0, A, B, Q, R, N, c, r, ub):
    """min over u of the stage cost plus V_{k+1}, by a dense solve (the oracle)."""
    n, m = A.shape[0], B.shape[1]
    # cost(u) = uᵀ M u + 2 bᵀu + const; M, b, const from expanding the definitions
    M = R + B.T @ S @ B
    dx = x - r
    y0 = A @ x + c
    b = -R @ ub + N.T @ dx + B.T @ (S @ y0 + s)
    const = dx @ Q @ dx + ub @ R @ ub - 2 * dx @ N @ ub + y0 @ S @ y0 + 2 * s @ y0 + s0
    u = np.linalg.solve(M, -b)
    return u, u @ M @ u + 2 * b @ u + const


def _random_stage(rng, n, m):
    return dict(S=_spd(rng, n), s=rng.normal(size=n), s0=float(rng.normal()),
                A=rng.normal(size=(n, n)) / np.sqrt(n), B=rng.normal(size=(n, m)), Q=_spd(rng, n),
                R=_spd(rng, m, 1.0), N=0.1 * rng.normal(size=(n, m)), c=rng.normal(size=n),
                r=rng.normal(size=n), ub=rng.normal(size=m))


def test_affine_step_equals_minimised_q_function(rng):
    n, m = 4, 3
    d = _random_stage(rng, n, m)
    res = lqr_step(d["S"], d["A"], d["B"], d["Q"], d["R"], d["N"], s_next=d["s"],
                   s0_next=d["s0"], c=d["c"], x_ref=d["r"], u_ref=d["ub"], step=2)
    np.testing.assert_array_equal(res.S, res.S.T)
    for _ in range(3):
        x = rng.normal(size=n)
        u_star, v_star = _q_function_minimum(x, **d)
        np.testing.assert_allclose(-res.K @ x + res.k, u_star, rtol=1e-10, atol=1e-12)
        value = x @ res.S @ x + 2 * res.s @ x + res.s0
        assert value == pytest.approx(v_star, rel=1e-10, abs=1e-10)
    L = res.L
    np.testing.assert_allclose(L @ L.T, d["R"] + d["B"].T @ d["S"] @ d["B"], rtol=1e-12)


def test_identity_input_and_scalar_weights_match_matrices(rng):
    n = 5
    S, A = _spd(rng, n), rng.normal(size=(n, n)) / np.sqrt(n)
    s, c, r = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    kw = dict(s_next=s, s0_next=0.3, c=c, x_ref=r, u_ref=r)
    a = lqr_step(S, A, None, 0.4, 2.0, **kw)
    b = lqr_step(S, A, np.eye(n), 0.4 * np.eye(n), 2.0 * np.eye(n), **kw)
    for name in ("K", "k", "S", "s", "s0"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-12,
                                   err_msg=name)


def test_without_affine_data_only_the_quadratic_part(rng):
    n, m = 3, 2
    S, A, B = _spd(rng, n), rng.normal(size=(n, n)), rng.normal(size=(n, m))
    res = lqr_step(S, A, B, np.eye(n), np.eye(m))
    assert res.k is None and res.s is None and res.s0 is None
    K, S1 = riccati_step(S, A, B, np.eye(n), np.eye(m))
    np.testing.assert_array_equal(res.K, K)
    np.testing.assert_array_equal(res.S, S1)


def test_backward_recursion_is_repeated_steps_and_takes_a_lazy_provider(rng):
    T, n, m = 4, 3, 2
    A, B = rng.normal(size=(T, n, n)) / 2, rng.normal(size=(T, n, m))
    Qf = _spd(rng, n)
    stages = (Stage(k, A[k], B[k], np.eye(n), np.eye(m)) for k in range(T - 1, -1, -1))
    got = {k: res for k, res in backward_recursion(stages, Qf)}
    assert sorted(got) == list(range(T))
    K, S = lc.finite_horizon_lqr(lc.LTVSystem(A, B), np.eye(n), np.eye(m), Qf=Qf)
    for k in range(T):
        np.testing.assert_allclose(got[k].K, K[k], rtol=1e-12)
        np.testing.assert_allclose(got[k].S, S[k], rtol=1e-12)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_overflow_of_value_terms_names_the_step(backend):
    """Issue 13: s and s0 overflowing (S finite) is a NumericalError naming the step."""
    T, n = 5, 2
    system = lc.LTVSystem(np.stack([np.eye(n)] * T), np.stack([np.eye(n)] * T))
    if backend == "torch":
        pytest.importorskip("torch")
        system = system.to(device="cpu")
    r = np.zeros((T + 1, n))
    r[3] = 1e300                                  # Q r_3 = 1e310 overflows s at step 3
    with pytest.raises(lc.NumericalError, match=r"step 3: s is not finite"):
        lc.tracking_lqr(system, 1e10, 1.0, r)
    r = np.zeros((T + 1, n))
    r[2] = 1e160                                  # r_2ᵀ Q r_2 = 1e320 overflows s0 at step 2
    with pytest.raises(lc.NumericalError, match=r"step 2: s0 is not finite"):
        lc.tracking_lqr(system, 1.0, 1.0, r)
    with pytest.raises(lc.NumericalError, match=rf"step {T}: s0 is not finite"):
        lc.tracking_lqr(system, 1.0, 1.0, np.full(n, 1e160))


def test_step_is_differentiable_with_torch(rng):
    torch = pytest.importorskip("torch")
    n, m = 3, 2
    d = _random_stage(rng, n, m)
    S, A, B, Q, R = (torch.as_tensor(d[k]) for k in ("S", "A", "B", "Q", "R"))
    s, c, r = (torch.as_tensor(d[k]) for k in ("s", "c", "r"))

    def f(A, r):
        res = lqr_step(S, A, B, Q, R, s_next=s, s0_next=torch.tensor(0.2, dtype=torch.float64),
                       c=c, x_ref=r)
        return res.K.sum() + res.k.sum() + res.S.sum() + res.s.sum() + res.s0

    assert torch.autograd.gradcheck(f, (A.clone().requires_grad_(), r.clone().requires_grad_()))


def test_torch_and_numpy_steps_agree_batched(rng):
    torch = pytest.importorskip("torch")
    n, m = 4, 2
    S = np.stack([_spd(rng, n) for _ in range(3)])
    A, B = rng.normal(size=(3, n, n)), rng.normal(size=(n, m))
    c, r = rng.normal(size=(3, n)), rng.normal(size=n)
    ref = lqr_step(S, A, B, 0.5, 1.5, c=c, x_ref=r)
    got = lqr_step(*(torch.as_tensor(v) for v in (S, A, B)), 0.5, 1.5, c=torch.as_tensor(c),
                   x_ref=torch.as_tensor(r))
    for name in ("K", "k", "S", "s", "s0"):
        np.testing.assert_allclose(getattr(got, name).numpy(), getattr(ref, name), rtol=1e-11,
                                   atol=1e-12, err_msg=name)


# ------------------------------------------------------------------ ADMM options (issue 13)
@pytest.mark.parametrize("options, exc, match", [
    ({"rho": -1}, lc.PropertyError, "'rho'"),
    ({"rho": float("nan")}, lc.PropertyError, "'rho'"),
    ({"check_every": 0}, lc.PropertyError, "'check_every'"),
    ({"max_iter": "x"}, lc.ArgumentError, "'max_iter'"),
    ({"max_iter": 0}, lc.PropertyError, "'max_iter'"),
    ({"max_iter": 10.5}, lc.ArgumentError, "'max_iter'"),
    ({"alpha": 2.0}, lc.PropertyError, "'alpha'"),
    ({"eps_abs": -1e-9}, lc.PropertyError, "'eps_abs'"),
    ({"adapt_every": True}, lc.ArgumentError, "'adapt_every'"),
    ({"adapt_ratio": 1.0}, lc.PropertyError, "'adapt_ratio'"),
])
def test_admm_options_are_typed_errors(options, exc, match):
    T, n = 3, 2
    system = lc.LTVSystem(np.stack([np.eye(n)] * T))
    with pytest.raises(exc, match=match):
        ConstrainedLQR(system, 1.0, 1.0, u_norm_max=1.0, method="admm", admm_options=options)


def test_admm_options_valid_values_are_kept():
    settings = ADMMSettings(rho=0.5, max_iter=np.int64(10), check_every=2)
    assert settings.rho == 0.5 and settings.max_iter == 10 and type(settings.max_iter) is int
    settings.rho = None
    assert settings.rho is None
