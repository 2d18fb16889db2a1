"""Autograd through the torch backend: gradcheck (float64, central FD) of finite_horizon_lqr,
tracking_lqr, lqr_cost and LTVSystem.simulate, with batch dimensions and B=None; refusals
where a gradient would silently be lost."""

from __future__ import annotations

import numpy as np
import pytest

import ltv_control as lc

torch = pytest.importorskip("torch")
from torch.autograd import gradcheck as _gradcheck  # noqa: E402


def gradcheck(fn, inputs):
    """torch gradcheck in fast mode: FD vs autograd along random input/output projections
    (float64, eps 1e-6, atol 1e-5, rtol 1e-3), keeping each check well under a second."""
    return _gradcheck(fn, inputs, fast_mode=True)

T, N, M = 3, 2, 2
F64 = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _rand(*shape, scale=1.0, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=F64)).to(device).requires_grad_()


def _spd(M0):
    """A symmetric positive definite matrix from an unconstrained one (keeps gradcheck symmetric)."""
    return M0 @ M0.mT + 0.5 * torch.eye(M0.shape[-1], dtype=F64, device=M0.device)


def _A(batch=(), seed=1, device="cpu"):
    eye = torch.eye(N, dtype=F64, device=device)
    return (eye + 0.4 * torch.randn(*batch, T, N, N, generator=torch.Generator().manual_seed(seed),
                                    dtype=F64).to(device)).requires_grad_()


@pytest.mark.parametrize("device", DEVICES)
def test_finite_horizon_lqr_gradcheck_A_B_Q_R(device):
    """Batched system (2,), per-step Q stack, constant R, explicit Qf."""
    batch = (2,)
    A, B = _A(batch, device=device), _rand(*batch, T, N, M, seed=2, device=device)
    Q0, R0 = _rand(T, N, N, seed=3, device=device), _rand(M, M, seed=4, device=device)
    Qf0 = _rand(N, N, seed=5, device=device)

    def f(A, B, Q0, R0, Qf0):
        K, S = lc.finite_horizon_lqr(lc.LTVSystem(A, B), _spd(Q0), _spd(R0), Qf=_spd(Qf0))
        return K, S

    assert gradcheck(f, (A, B, Q0, R0, Qf0))


def test_finite_horizon_lqr_gradcheck_identity_input():
    """Unbatched, B=None (the batched B=None path is checked through tracking_lqr below)."""
    A, R0 = _A(), _rand(N, N, seed=4)
    assert gradcheck(lambda A, R0: lc.finite_horizon_lqr(lc.LTVSystem(A), 1.0, _spd(R0)), (A, R0))


@pytest.mark.parametrize("identity_input", [False, True])
def test_tracking_lqr_gradcheck_value_and_policy(identity_input):
    """Through V_0(x0) = x0ᵀS_0x0 + 2s_0ᵀx0 + s0_0 and through (K, k), w.r.t. A, B, x_ref,
    u_ref, drift c and x0."""
    m = N if identity_input else M
    A, B = _A(batch=(2,)), _rand(T, N, m, seed=2)
    x_ref, u_ref = _rand(T + 1, N, seed=6), _rand(T, m, seed=7)
    c, x0 = _rand(T, N, seed=8), _rand(2, N, seed=9)

    def f(A, B, x_ref, u_ref, c, x0):
        system = lc.LTVSystem(A, None if identity_input else B, c)
        r = lc.tracking_lqr(system, 1.5, 0.5, x_ref, u_ref=u_ref)
        V0 = torch.einsum("bi,bij,bj->b", x0, r.S[:, 0], x0) + 2 * (r.s[:, 0] * x0).sum(-1) \
            + r.s0[:, 0]
        return V0, r.K, r.k

    assert gradcheck(f, (A, B, x_ref, u_ref, c, x0))


def test_tracking_value_is_the_rollout_cost_gradient():
    """dV_0/dx_ref equals d/dx_ref of the cost of the closed-loop rollout (envelope check)."""
    A, B, c = _A(), _rand(T, N, M, seed=2), _rand(T, N, seed=8)
    x_ref, x0 = _rand(T + 1, N, seed=6), _rand(N, seed=9)
    system = lc.LTVSystem(A, B, c)
    r = lc.tracking_lqr(system, 1.0, 1.0, x_ref)
    V0 = x0 @ r.S[0] @ x0 + 2 * r.s[0] @ x0 + r.s0[0]
    x = system.simulate(x0, K=r.K, k=r.k)
    u = -torch.einsum("kij,kj->ki", r.K, x[:-1]) + r.k
    J = lc.lqr_cost(lc.LTVSystem(A, B), 1.0, 1.0, x - x_ref, u)
    torch.testing.assert_close(J, V0, rtol=1e-10, atol=1e-10)
    g_v = torch.autograd.grad(V0, (x_ref, x0, c), retain_graph=True)
    g_j = torch.autograd.grad(J, (x_ref, x0, c))
    for a, b in zip(g_v, g_j):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("batch", [(), (2,)])
def test_simulate_and_lqr_cost_gradcheck(batch):
    A, B, c = _A(batch), _rand(T, N, M, seed=2), _rand(T, N, seed=8)
    x0, u = _rand(*batch, N, seed=9), _rand(T, M, seed=10)
    K, k = _rand(T, M, N, seed=11, scale=0.3), _rand(T, M, seed=12)
    Q0, R0 = _rand(N, N, seed=3), _rand(T, M, M, seed=4)

    def open_loop(A, B, c, x0, u, Q0, R0):
        system = lc.LTVSystem(A, B, c)
        x = system.simulate(x0, u)
        return x, lc.lqr_cost(system, _spd(Q0), _spd(R0), x, u, Qf=2.0)

    def closed_loop(A, B, x0, K, k):
        return lc.LTVSystem(A, B).simulate(x0, K=K, k=k)

    assert gradcheck(open_loop, (A, B, c, x0, u, Q0, R0))
    assert gradcheck(closed_loop, (A, B, x0, K, k))


def test_optimal_cost_gradient_matches_closed_form():
    """d(x0ᵀS_0x0)/dx0 = 2 S_0 x0 and the LQR cost of the optimal rollout equals x0ᵀS_0x0."""
    A, B, x0 = _A(), _rand(T, N, M, seed=2), _rand(N, seed=9)
    system = lc.LTVSystem(A, B)
    K, S = lc.finite_horizon_lqr(system, 1.0, 1.0)
    V = x0 @ S[0] @ x0
    (g,) = torch.autograd.grad(V, (x0,), retain_graph=True)
    torch.testing.assert_close(g, 2 * S[0] @ x0)
    x = system.simulate(x0, K=K)
    u = -torch.einsum("kij,kj->ki", K, x[:-1])
    torch.testing.assert_close(lc.lqr_cost(system, 1.0, 1.0, x, u), V)


def test_overflow_raises_numerical_error_not_nan_gradient():
    A = (1e200 * torch.eye(N, dtype=F64)).expand(T, N, N).clone().requires_grad_()
    with pytest.raises(lc.NumericalError):
        lc.finite_horizon_lqr(lc.LTVSystem(A), 1.0, 1.0)


# A numpy system given torch tensors that require grad must refuse them (ArgumentError naming
# the argument) instead of returning numpy with the gradient silently lost.
def _np_system():
    return lc.LTVSystem(np.broadcast_to(np.eye(N), (T, N, N)).copy())


@pytest.mark.parametrize("call", ["lqr_Q", "tracking_x_ref", "cost_x", "simulate_x0"])
def test_numpy_system_with_grad_tensor_is_refused(call):
    g = torch.ones(N, dtype=F64, requires_grad=True)
    calls = {
        "lqr_Q": lambda: lc.finite_horizon_lqr(_np_system(), torch.diag(g), 1.0),
        "tracking_x_ref": lambda: lc.tracking_lqr(_np_system(), 1.0, 1.0, g),
        "cost_x": lambda: lc.lqr_cost(_np_system(), 1.0, 1.0, g.expand(T + 1, N), np.ones((T, N))),
        "simulate_x0": lambda: _np_system().simulate(g, np.ones((T, N))),
    }
    with pytest.raises(lc.ArgumentError, match="requires"):
        calls[call]()
