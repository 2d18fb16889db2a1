"""finite_horizon_lqr and riccati_step against closed forms, scipy, python-control and properties."""

from __future__ import annotations

import control
import numpy as np
import pytest
import scipy.linalg

import ltv_control as lc
from ltv_control.riccati import riccati_step


def _random_system(rng, T, n, m, batch=(), scale=0.5):
    A = scale * rng.normal(size=batch + (T, n, n)) / np.sqrt(n)
    B = rng.normal(size=batch + (T, n, m))
    return lc.LTVSystem(A, B)


def _random_spd(rng, d, shift=0.5):
    M = rng.normal(size=(d, d))
    return M @ M.T / d + shift * np.eye(d)


def _reference_recursion(A, B, Q, R, Qf, N=None):
    """Textbook recursion with explicit inverses (an oracle independent of the library)."""
    T = A.shape[0]
    S = Qf
    Ks, Ss = [None] * T, [None] * (T + 1)
    Ss[T] = Qf
    for k in range(T - 1, -1, -1):
        Nk = np.zeros((A.shape[1], B.shape[2])) if N is None else N[k]
        H = B[k].T @ S @ A[k] + Nk.T
        K = np.linalg.inv(R[k] + B[k].T @ S @ B[k]) @ H
        S = Q[k] + A[k].T @ S @ A[k] - H.T @ K
        Ks[k], Ss[k] = K, S
    return np.stack(Ks), np.stack(Ss)


# --------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("T", [1, 4, 12])
def test_scalar_riccati_gives_fibonacci_ratios(T):
    # a = b = q = r = Qf = 1: S_{T-j} = F(2j+2)/F(2j+1), K = S_{k+1}/(1 + S_{k+1}).
    fib = [0, 1]
    while len(fib) < 2 * T + 4:
        fib.append(fib[-1] + fib[-2])
    one = np.ones((1, 1))
    K, S = lc.finite_horizon_lqr(lc.LTVSystem.constant(one, one, T), 1.0, 1.0, Qf=1.0)
    for j in range(T + 1):
        assert S[T - j, 0, 0] == pytest.approx(fib[2 * j + 2] / fib[2 * j + 1], rel=1e-14)
    for k in range(T):
        assert K[k, 0, 0] == pytest.approx(S[k + 1, 0, 0] / (1 + S[k + 1, 0, 0]), rel=1e-14)


def test_isotropic_ltv_closed_form_at_large_n(rng):
    # A_k = c_k U_k (U_k orthogonal), B = I, Q = qI, R = rI, Qf = p_T I  =>  S_k = p_k I with
    # p_k = q + c_k² p_{k+1} r / (r + p_{k+1}) and K_k = c_k p_{k+1}/(r + p_{k+1}) U_k.
    n, T, q, r, pT = 320, 4, 0.3, 2.0, 1.5
    coeffs = rng.uniform(0.5, 1.5, size=T)
    U = np.stack([np.linalg.qr(rng.normal(size=(n, n)))[0] for _ in range(T)])
    system = lc.LTVSystem(coeffs[:, None, None] * U)
    K, S = lc.finite_horizon_lqr(system, q, r, Qf=pT)
    p = pT
    eye = np.eye(n)
    np.testing.assert_allclose(S[T], pT * eye, atol=1e-14)
    for k in range(T - 1, -1, -1):
        gain = coeffs[k] * p / (r + p)
        np.testing.assert_allclose(K[k], gain * U[k], atol=1e-12 * gain)
        p = q + coeffs[k] ** 2 * p * r / (r + p)
        np.testing.assert_allclose(S[k], p * eye, atol=1e-12 * p)


def test_minimum_energy_closed_form(rng):
    # Q = 0, R = I, Qf = W > 0:  S_0 = Φᵀ (W⁻¹ + G)⁻¹ Φ, with Φ = A_{T-1}…A_0 and the
    # reachability Gramian G = Σ_k Φ(T, k+1) B_k B_kᵀ Φ(T, k+1)ᵀ.
    T, n, m = 6, 4, 2
    system = _random_system(rng, T, n, m, scale=1.0)
    A, B = system.A, system.B
    W = _random_spd(rng, n)
    _, S = lc.finite_horizon_lqr(system, 0.0, 1.0, Qf=W)
    Phi = np.eye(n)
    G = np.zeros((n, n))
    for k in range(T):
        Phi_from = np.eye(n)
        for j in range(k + 1, T):
            Phi_from = A[j] @ Phi_from
        G += Phi_from @ B[k] @ B[k].T @ Phi_from.T
        Phi = A[k] @ Phi
    expected = Phi.T @ np.linalg.solve(np.linalg.inv(W) + G, Phi)
    np.testing.assert_allclose(S[0], expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())


# --------------------------------------------------------------------------- DARE limits
def test_long_horizon_converges_to_dare_and_dlqr(rng):
    n, m = 4, 2
    A = rng.normal(size=(n, n)) * 0.6
    B = rng.normal(size=(n, m))
    Q, R = _random_spd(rng, n, 0.1), _random_spd(rng, m, 0.5)
    K, S = lc.finite_horizon_lqr(lc.LTVSystem.constant(A, B, 300), Q, R, Qf=0.0)
    X = scipy.linalg.solve_discrete_are(A, B, Q, R)
    K_dlqr, S_dlqr, _ = control.dlqr(A, B, Q, R)
    np.testing.assert_allclose(S[0], X, rtol=1e-9)
    np.testing.assert_allclose(S[0], S_dlqr, rtol=1e-9)
    np.testing.assert_allclose(K[0], K_dlqr, rtol=1e-9, atol=1e-12)


def test_long_horizon_with_cross_term_matches_dlqr(rng):
    n, m = 3, 2
    A = rng.normal(size=(n, n)) * 0.6
    B = rng.normal(size=(n, m))
    Q, R = _random_spd(rng, n, 1.0), _random_spd(rng, m, 1.0)
    N = 0.1 * rng.normal(size=(n, m))
    K, S = lc.finite_horizon_lqr(lc.LTVSystem.constant(A, B, 300), Q, R, Qf=0.0, N=N)
    K_dlqr, S_dlqr, _ = control.dlqr(A, B, Q, R, N)
    np.testing.assert_allclose(S[0], S_dlqr, rtol=1e-9)
    np.testing.assert_allclose(K[0], K_dlqr, rtol=1e-9, atol=1e-12)
    X = scipy.linalg.solve_discrete_are(A, B, Q, R, s=N)
    np.testing.assert_allclose(S[0], X, rtol=1e-9)


def test_dare_solution_is_a_fixed_point(rng):
    n, m, T = 5, 3, 20
    A = rng.normal(size=(n, n))
    B = rng.normal(size=(n, m))
    Q, R = _random_spd(rng, n), _random_spd(rng, m)
    X = scipy.linalg.solve_discrete_are(A, B, Q, R)
    K_inf = np.linalg.solve(R + B.T @ X @ B, B.T @ X @ A)
    K, S = lc.finite_horizon_lqr(lc.LTVSystem.constant(A, B, T), Q, R, Qf=X)
    scale = np.abs(X).max()
    for k in range(T + 1):
        np.testing.assert_allclose(S[k], X, atol=1e-9 * scale)
    for k in range(T):
        np.testing.assert_allclose(K[k], K_inf, atol=1e-9 * max(1.0, np.abs(K_inf).max()))


# DAREX: P. Benner, A. J. Laub, V. Mehrmann, "A collection of benchmark examples for the
# numerical solution of algebraic Riccati equations II: discrete-time case", Tech. Report
# SPC 95_23, TU Chemnitz-Zwickau, 1995 (examples 1-2 and 5-7 with default parameters; the same
# data appear in SciPy's solve_discrete_are tests). Horizons are long enough for the slowly
# converging examples 6 and 7 (eigenvalues of A near the unit circle).
DAREX = {
    "darex1": (np.array([[4.0, 3.0], [-4.5, -3.5]]), np.array([[1.0], [-1.0]]),
               np.array([[9.0, 6.0], [6.0, 4.0]]), np.array([[1.0]]), 400),
    "darex2": (np.array([[0.9512, 0.0], [0.0, 0.9048]]),
               np.array([[4.877, 4.877], [-1.1895, 3.569]]),
               np.array([[0.005, 0.0], [0.0, 0.02]]), np.array([[1 / 3, 0.0], [0.0, 3.0]]), 400),
    "darex5": (np.array([[0.0, 1.0], [0.0, 0.0]]), np.array([[0.0], [1.0]]),
               np.array([[1.0, 2.0], [2.0, 4.0]]), np.array([[1.0]]), 50),
    "darex6": (np.array([[0.998, 0.067, 0.0, 0.0], [-0.067, 0.998, 0.0, 0.0],
                         [0.0, 0.0, 0.998, 0.153], [0.0, 0.0, -0.153, 0.998]]),
               np.array([[0.0033, 0.0200], [0.1000, -0.0007], [0.0400, 0.0073], [-0.0028, 0.1000]]),
               np.array([[1.87, 0.0, 0.0, -0.244], [0.0, 0.744, 0.205, 0.0],
                         [0.0, 0.205, 0.589, 0.0], [-0.244, 0.0, 0.0, 1.048]]), np.eye(2), 1500),
    "darex7": (np.array([[0.984750, -0.079903, 0.0009054, -0.0010765],
                         [0.041588, 0.998990, -0.0358550, 0.0126840],
                         [-0.546620, 0.044916, -0.3299100, 0.1931800],
                         [2.662400, -0.100450, -0.9245500, -0.2632500]]),
               np.array([[0.0037112, 0.0007361], [-0.0870510, 9.3411e-6],
                         [-1.198440, -4.1378e-4], [-3.192700, 9.2535e-4]]),
               np.eye(4) * 1e-2, np.eye(2), 3000),
}


@pytest.mark.parametrize("case", sorted(DAREX))
def test_darex_examples_converge_to_the_dare(case):
    A, B, Q, R, T = DAREX[case]
    K, S = lc.finite_horizon_lqr(lc.LTVSystem.constant(A, B, T), Q, R, Qf=0.0)
    X = scipy.linalg.solve_discrete_are(A, B, Q, R)
    # Per-case tolerance: relative to ‖X‖, loosened to 1e-7 for the slowly converging 6 and 7.
    rtol = 1e-7 if case in ("darex6", "darex7") else 1e-9
    np.testing.assert_allclose(S[0], X, atol=rtol * np.abs(X).max())


def test_darex_examples_outside_lqr_assumptions_are_refused():
    # DAREX example 3 has R = 0 (singular) and example 4 an indefinite Q: both are refused.
    A3, B3 = np.array([[2.0, -1.0], [1.0, 0.0]]), np.array([[1.0], [0.0]])
    with pytest.raises(lc.PropertyError, match="R: expected a positive definite"):
        lc.finite_horizon_lqr(lc.LTVSystem.constant(A3, B3, 5), np.diag([0.0, 1.0]), np.zeros((1, 1)))
    A4, B4 = np.array([[0.0, 1.0], [0.0, -1.0]]), np.array([[1.0, 0.0], [2.0, 1.0]])
    Q4 = np.array([[-4.0, -4.0], [-4.0, 7.0]]) / 11
    with pytest.raises(lc.PropertyError, match="Q: expected a positive semidefinite"):
        lc.finite_horizon_lqr(lc.LTVSystem.constant(A4, B4, 5), Q4, np.array([[9.0, 3.0], [3.0, 2.0]]))


# --------------------------------------------------------------------------- recursion oracle
def test_matches_textbook_recursion_with_per_step_weights_and_cross_term(rng):
    T, n, m = 7, 4, 3
    system = _random_system(rng, T, n, m)
    Q = np.stack([_random_spd(rng, n, 0.0) for _ in range(T)])
    R = np.stack([_random_spd(rng, m) for _ in range(T)])
    N = 0.05 * rng.normal(size=(T, n, m))
    Qf = _random_spd(rng, n)
    K, S = lc.finite_horizon_lqr(system, Q, R, Qf=Qf, N=N)
    K_ref, S_ref = _reference_recursion(system.A, system.B, Q, R, Qf, N)
    np.testing.assert_allclose(K, K_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(S, S_ref, rtol=1e-10, atol=1e-12)


def test_default_terminal_weight_is_last_stage_q(rng):
    T, n, m = 5, 3, 2
    system = _random_system(rng, T, n, m)
    Q = np.stack([_random_spd(rng, n) for _ in range(T)])
    _, S = lc.finite_horizon_lqr(system, Q, 1.0)
    np.testing.assert_allclose(S[T], Q[T - 1])
    K2, S2 = lc.finite_horizon_lqr(system, Q, 1.0, Qf=Q[T - 1])
    np.testing.assert_array_equal(S, S2)


def test_identity_input_matrix_equals_explicit_identity(rng):
    T, n = 6, 5
    A = rng.normal(size=(T, n, n)) / np.sqrt(n)
    K1, S1 = lc.finite_horizon_lqr(lc.LTVSystem(A), 0.7, 1.3)
    K2, S2 = lc.finite_horizon_lqr(lc.LTVSystem(A, np.broadcast_to(np.eye(n), (T, n, n))), 0.7, 1.3)
    np.testing.assert_allclose(K1, K2, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(S1, S2, rtol=1e-12, atol=1e-14)


def test_time_length_equal_to_state_size_is_not_misread(rng):
    # T == n == m: a (n, n) Q is a constant matrix, a (T, n, n) Q a per-step stack.
    T = n = 3
    A = rng.normal(size=(T, n, n)) / 2
    B = rng.normal(size=(T, n, n))
    system = lc.LTVSystem(A, B)
    Qc = _random_spd(rng, n)
    Qstack = np.stack([(k + 1.0) * np.eye(n) for k in range(T)])
    Rc = np.eye(n)
    K_c, S_c = lc.finite_horizon_lqr(system, Qc, Rc, Qf=Qc)
    K_ref, S_ref = _reference_recursion(A, B, np.stack([Qc] * T), np.stack([Rc] * T), Qc)
    np.testing.assert_allclose(S_c, S_ref, rtol=1e-12)
    K_s, S_s = lc.finite_horizon_lqr(system, Qstack, Rc, Qf=Qc)
    K_ref, S_ref = _reference_recursion(A, B, Qstack, np.stack([Rc] * T), Qc)
    np.testing.assert_allclose(S_s, S_ref, rtol=1e-12)
    with pytest.raises(lc.DimensionError, match="LTVSystem.constant"):
        lc.LTVSystem(A[0], B[0])


# --------------------------------------------------------------------------- cost identity
def test_optimal_cost_equals_rolled_out_cost(rng):
    T, n, m = 9, 4, 2
    system = _random_system(rng, T, n, m, scale=1.2)
    Q, R, Qf = _random_spd(rng, n, 0.0), _random_spd(rng, m), _random_spd(rng, n)
    N = 0.05 * rng.normal(size=(n, m))
    K, S = lc.finite_horizon_lqr(system, Q, R, Qf=Qf, N=N)
    x0 = rng.normal(size=n)
    x = system.simulate(x0, K=K)
    u = -np.einsum("kmn,kn->km", K, x[:-1])
    cost = lc.lqr_cost(system, Q, R, x, u, Qf=Qf, N=N)
    assert cost == pytest.approx(x0 @ S[0] @ x0, rel=1e-11)
    # any other input sequence costs more
    for _ in range(3):
        u_pert = u + 0.1 * rng.normal(size=u.shape)
        x_pert = system.simulate(x0, u_pert)
        assert lc.lqr_cost(system, Q, R, x_pert, u_pert, Qf=Qf, N=N) > cost


# --------------------------------------------------------------------------- metamorphic
def test_scaling_weights_scales_s_and_keeps_k(rng):
    T, n, m = 6, 4, 2
    system = _random_system(rng, T, n, m)
    Q, R, Qf = _random_spd(rng, n), _random_spd(rng, m), _random_spd(rng, n)
    K1, S1 = lc.finite_horizon_lqr(system, Q, R, Qf=Qf)
    alpha = 37.5
    K2, S2 = lc.finite_horizon_lqr(system, alpha * Q, alpha * R, Qf=alpha * Qf)
    np.testing.assert_allclose(K2, K1, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(S2, alpha * S1, rtol=1e-11)


def test_similarity_transform_covariance(rng):
    # x' = M x:  A' = M A M⁻¹, B' = M B, Q' = M⁻ᵀ Q M⁻¹  =>  S' = M⁻ᵀ S M⁻¹, K' = K M⁻¹.
    T, n, m = 5, 3, 2
    system = _random_system(rng, T, n, m)
    M = rng.normal(size=(n, n)) + 2 * np.eye(n)
    Mi = np.linalg.inv(M)
    Q, R, Qf = _random_spd(rng, n), _random_spd(rng, m), _random_spd(rng, n)
    K, S = lc.finite_horizon_lqr(system, Q, R, Qf=Qf)
    sys2 = lc.LTVSystem(M @ system.A @ Mi, M @ system.B)
    K2, S2 = lc.finite_horizon_lqr(sys2, Mi.T @ Q @ Mi, R, Qf=Mi.T @ Qf @ Mi)
    np.testing.assert_allclose(K2, K @ Mi, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(S2, Mi.T @ S @ Mi, rtol=1e-9, atol=1e-11)


def test_s0_is_monotone_in_horizon_with_zero_terminal_weight(rng):
    n, m = 4, 2
    A = rng.normal(size=(n, n)) * 0.7
    B = rng.normal(size=(n, m))
    Q, R = _random_spd(rng, n, 0.1), _random_spd(rng, m)
    previous = np.zeros((n, n))
    for T in range(1, 12):
        _, S = lc.finite_horizon_lqr(lc.LTVSystem.constant(A, B, T), Q, R, Qf=0.0)
        gap = np.linalg.eigvalsh(S[0] - previous).min()
        assert gap >= -1e-12 * np.abs(S[0]).max()
        previous = S[0]


# --------------------------------------------------------------------------- batch, dtype
def test_batched_system_equals_member_by_member(rng):
    T, n, m = 4, 3, 2
    system = _random_system(rng, T, n, m, batch=(2, 3))
    Q = np.stack([_random_spd(rng, n) for _ in range(T)])
    K, S = lc.finite_horizon_lqr(system, Q, 0.5)
    assert K.shape == (2, 3, T, m, n) and S.shape == (2, 3, T + 1, n, n)
    for i in range(2):
        for j in range(3):
            member = lc.LTVSystem(system.A[i, j], system.B[i, j])
            Kij, Sij = lc.finite_horizon_lqr(member, Q, 0.5)
            np.testing.assert_allclose(K[i, j], Kij, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(S[i, j], Sij, rtol=1e-12, atol=1e-14)


def test_batched_weights_broadcast_against_system_batch(rng):
    T, n, m = 3, 2, 2
    system = _random_system(rng, T, n, m)
    Qb = np.stack([np.broadcast_to(q * np.eye(n), (T, n, n)) for q in (0.5, 2.0)])  # (2, T, n, n)
    K, S = lc.finite_horizon_lqr(system, Qb, 1.0)
    assert S.shape == (2, T + 1, n, n)
    for i, q in enumerate((0.5, 2.0)):
        np.testing.assert_allclose(S[i], lc.finite_horizon_lqr(system, q, 1.0).S, rtol=1e-12)


def test_dtype_argument_selects_compute_dtype(rng):
    system = _random_system(rng, 5, 3, 2)
    K32, S32 = lc.finite_horizon_lqr(system, 1.0, 1.0, dtype=np.float32)
    K64, S64 = lc.finite_horizon_lqr(system.to(dtype="float32"), 1.0, 1.0)
    assert K32.dtype == np.float32 and S32.dtype == np.float32
    assert K64.dtype == np.float64  # float64 by default, whatever the system's dtype
    np.testing.assert_allclose(K32, K64, rtol=2e-4, atol=2e-5)


# --------------------------------------------------------------------------- riccati_step
def test_riccati_step_matches_formula_and_broadcasts(rng):
    n, m = 4, 3
    S_next = np.stack([_random_spd(rng, n) for _ in range(2)])  # batch (2,)
    A = rng.normal(size=(n, n))
    B = rng.normal(size=(n, m))
    Q, R = _random_spd(rng, n), _random_spd(rng, m)
    N = 0.1 * rng.normal(size=(n, m))
    K, S = riccati_step(S_next, A, B, Q, R, N)
    assert K.shape == (2, m, n) and S.shape == (2, n, n)
    for b in range(2):
        H = B.T @ S_next[b] @ A + N.T
        K_ref = np.linalg.solve(R + B.T @ S_next[b] @ B, H)
        np.testing.assert_allclose(K[b], K_ref, rtol=1e-12)
        np.testing.assert_allclose(S[b], Q + A.T @ S_next[b] @ A - H.T @ K_ref, rtol=1e-11)
        np.testing.assert_array_equal(S[b], S[b].T)


def test_riccati_step_identity_input(rng):
    n = 5
    S_next, Q, R = _random_spd(rng, n), _random_spd(rng, n), _random_spd(rng, n)
    A = rng.normal(size=(n, n))
    K1, S1 = riccati_step(S_next, A, None, Q, R)
    K2, S2 = riccati_step(S_next, A, np.eye(n), Q, R)
    np.testing.assert_allclose(K1, K2, rtol=1e-12)
    np.testing.assert_allclose(S1, S2, rtol=1e-12)
    # scalars mean c·I
    K3, S3 = riccati_step(S_next, A, None, 0.5, 2.0)
    K4, S4 = riccati_step(S_next, A, None, 0.5 * np.eye(n), 2.0 * np.eye(n))
    np.testing.assert_array_equal(K3, K4)
    np.testing.assert_array_equal(S3, S4)


def test_riccati_step_on_torch_keeps_type(rng):
    torch = pytest.importorskip("torch")
    n, m = 4, 2
    S_next, Q, R = _random_spd(rng, n), _random_spd(rng, n), _random_spd(rng, m)
    A, B = rng.normal(size=(3, n, n)), rng.normal(size=(n, m))
    K, S = riccati_step(S_next, A, B, Q, R)
    Kt, St = riccati_step(*(torch.as_tensor(v) for v in (S_next, A, B, Q, R)))
    assert isinstance(Kt, torch.Tensor) and Kt.shape == (3, m, n)
    np.testing.assert_allclose(Kt.numpy(), K, rtol=1e-12)
    np.testing.assert_allclose(St.numpy(), S, rtol=1e-12)


def test_riccati_step_reports_step_and_batch_member(rng):
    n = 3
    R = np.stack([np.eye(n), -np.eye(n), np.eye(n)])  # member 1 makes R + BᵀSB indefinite
    with pytest.raises(lc.NumericalError, match=r"step 7.*batch member 1"):
        riccati_step(np.zeros((n, n)), np.eye(n), None, np.eye(n), R, step=7)
    with pytest.raises(np.linalg.LinAlgError):  # NumericalError is a LinAlgError
        riccati_step(np.zeros((n, n)), np.eye(n), None, np.eye(n), -np.eye(n))
    with pytest.raises(lc.DimensionError, match=r"R: expected \(\*batch, 3, 3\)"):
        riccati_step(np.zeros((n, n)), np.eye(n), None, np.eye(n), np.eye(2))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_recursion_failure_names_step_and_member(backend):
    # Member 1 overflows float32 at the last step (S_{T-1} ~ 1e40): the error says where
    # (never a silent fallback).
    T, n = 5, 2
    A = np.stack([np.broadcast_to(np.eye(n), (T, n, n)), np.broadcast_to(1e20 * np.eye(n), (T, n, n))])
    system = lc.LTVSystem(A, np.broadcast_to(np.eye(n), (2, T, n, n)))
    if backend == "torch":
        pytest.importorskip("torch")
        system = system.to(device="cpu")  # torch checks the flags once, after the loop
    with pytest.raises(lc.NumericalError, match=rf"step {T - 1}.*batch member 1"):
        lc.finite_horizon_lqr(system, 1.0, 1.0, dtype="float32")
    with pytest.raises(lc.NumericalError, match=rf"step {T - 1}.*batch member 1"):
        lc.tracking_lqr(system, 1.0, 1.0, np.zeros(n), dtype="float32")


def test_riccati_benchmark_smoke():
    # The benchmark module runs and reports ratios measured in the same run (tiny sizes here).
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "riccati.py"
    spec = importlib.util.spec_from_file_location("ltv_bench_riccati", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.run(ns=(8,), dtypes=("float64",), repeats=1, T=3)
    (row,) = result["results"]
    assert row["lqr_over_gemm_bound"] == pytest.approx(row["lqr_s"] / row["gemm_bound_s"])
    assert "lqr/GEMM" in module.format_table(result)
