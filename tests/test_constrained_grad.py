"""Gradients of ConstrainedLQR.solve w.r.t. x0 and x_ref (implicit KKT differentiation).

Oracle: central finite differences of the cvxpy (Clarabel, tolerances 1e-9) solve.  Step
h = 1e-3 and tolerance 1e-4 (max |autograd − FD| / max |FD|) for polyhedral constraints (the
plan is piecewise affine there); h = 1e-2 and 5e-4 when a budget ‖u_k‖ <= ρ is active: Clarabel
leaves ~1e-6 error in u on second-order-cone problems (measured: the FD discrepancy grows from
7e-5 at h = 1e-2 to 2e-3 at h = 1e-4), so smaller steps measure solver noise.  Each problem
asserts which constraint families are active at the solution.
"""

from __future__ import annotations

import numpy as np
import pytest

import ltv_control as lc
from ltv_control import ArgumentError
from ltv_control.constrained import ConstrainedLQR

torch = pytest.importorskip("torch")
pytest.importorskip("cvxpy")

T, N_STATES, M_INPUTS = 5, 3, 2
FD_STEP = {False: 1e-3, True: 1e-2}  # keyed by "a budget is active"
RTOL = {False: 1e-4, True: 5e-4}      # max |autograd - FD| / max |FD|


def _system(rng):
    A = np.eye(N_STATES) + 0.2 * rng.standard_normal((T, N_STATES, N_STATES))
    B = rng.standard_normal((T, N_STATES, M_INPUTS))
    return lc.LTVSystem(A, B, 0.1 * rng.standard_normal((T, N_STATES)))


X0 = np.array([3.0, -2.0, 1.0])

CASES = {
    "u_norm_max": dict(u_norm_max=1.0),
    "u_box": dict(u_box=(-0.5, 0.5)),
    "x_box": dict(x_box=(np.array([-np.inf, -np.inf, -np.inf]), np.array([0.5, np.inf, np.inf]))),
    "feature_constraints": dict(feature_constraints=[(2, np.array([1.0, 1.0, 0.0]), 2.0),
                                                     (4, np.array([0.0, 0.0, 1.0]), 1.5)]),
    "combined": dict(u_norm_max=0.7, u_box=(-0.6, 0.6),
                     x_box=(np.array([-np.inf, -np.inf, -np.inf]), np.array([np.inf, np.inf, 0.3]))),
}


def _reference(rng):
    return 0.5 * rng.standard_normal((T + 1, N_STATES)) + np.array([1.5, 0.0, 0.0])


def _loss_weights(rng):
    return (rng.standard_normal((T, M_INPUTS)), rng.standard_normal((T + 1, N_STATES)))


def _scalar(sol, wu, wx):
    return (sol.u * wu).sum() + (sol.x * wx).sum() + 0.1 * sol.cost


def _fd(mpc, x0, xr, wu, wx, h, directions):
    """Central differences: per coordinate of x0, along the given directions of x_ref."""
    def f(a, b):
        return float(_scalar(mpc.solve(a, b), wu, wx))
    g0 = np.zeros_like(x0)
    for i in range(x0.size):
        e = np.zeros_like(x0)
        e[i] = h
        g0[i] = (f(x0 + e, xr) - f(x0 - e, xr)) / (2 * h)
    gr = np.array([(f(x0, xr + h * v) - f(x0, xr - h * v)) / (2 * h) for v in directions])
    return g0, gr


def _autograd(mpc, x0, xr, wu, wx):
    x0t = torch.tensor(x0, requires_grad=True)
    xrt = torch.tensor(xr, requires_grad=True)
    sol = mpc.solve(x0t, xrt)
    assert all(isinstance(v, torch.Tensor) and v.requires_grad for v in (sol.x, sol.u, sol.cost))
    loss = _scalar(sol, torch.tensor(wu), torch.tensor(wx))
    g0, gr = torch.autograd.grad(loss, (x0t, xrt))
    return sol, g0.numpy(), gr.numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_matches_finite_differences(case):
    rng = np.random.default_rng(7)
    system = _system(rng)
    xr, (wu, wx) = _reference(rng), _loss_weights(rng)
    mpc = ConstrainedLQR(system, 1.0, 0.5, **CASES[case])
    sol, g0, gr = _autograd(mpc, X0, xr, wu, wx)
    active = mpc.last_active[0]
    expected = list(CASES[case])
    for fam in expected:
        assert active.get(fam, 0) >= 1, f"{fam} not active: {active}"
    # the torch plan is the numpy plan
    ref = mpc.solve(X0, xr)
    np.testing.assert_allclose(sol.u.detach().numpy(), ref.u, atol=1e-10)
    np.testing.assert_allclose(sol.x.detach().numpy(), ref.x, atol=1e-9)
    assert abs(float(sol.cost.detach()) - ref.cost) <= 1e-9 * max(1.0, ref.cost)
    soc = "u_norm_max" in active
    directions = rng.standard_normal((3,) + xr.shape)
    f0, fr = _fd(mpc, X0, xr, wu, wx, FD_STEP[soc], directions)
    gr_dir = np.einsum("dij,ij->d", directions, gr)
    assert np.max(np.abs(g0 - f0)) <= RTOL[soc] * np.max(np.abs(f0)), (g0, f0)
    assert np.max(np.abs(gr_dir - fr)) <= RTOL[soc] * np.max(np.abs(fr)), (gr_dir, fr)


def test_unconstrained_gradient_equals_tracking_lqr():
    """No constraint active: d cost/d(x0, x_ref) equals that of V_0(x0) from tracking_lqr."""
    rng = np.random.default_rng(3)
    system = _system(rng)
    xr = _reference(rng)
    mpc = ConstrainedLQR(system, 1.0, 0.5, u_box=(-100.0, 100.0))
    x0t = torch.tensor(X0, requires_grad=True)
    xrt = torch.tensor(xr, requires_grad=True)
    g_c = torch.autograd.grad(mpc.solve(x0t, xrt).cost, (x0t, xrt))
    assert mpc.last_active == [{}]
    tsys = lc.LTVSystem(*(torch.tensor(np.asarray(v)) for v in (system.A, system.B, system.c)))
    x0t2 = torch.tensor(X0, requires_grad=True)
    xrt2 = torch.tensor(xr, requires_grad=True)
    res = lc.tracking_lqr(tsys, 1.0, 0.5, xrt2)
    v0 = x0t2 @ res.S[0] @ x0t2 + 2 * res.s[0] @ x0t2 + res.s0[0]
    g_t = torch.autograd.grad(v0, (x0t2, xrt2))
    for a, b in zip(g_c, g_t):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-8)


def test_admm_gradient_matches_cvxpy_gradient():
    rng = np.random.default_rng(7)
    system = _system(rng)
    xr, (wu, wx) = _reference(rng), _loss_weights(rng)
    grads = {}
    for method in ("cvxpy", "admm"):
        mpc = ConstrainedLQR(system, 1.0, 0.5, method=method, **CASES["combined"])
        _, g0, gr = _autograd(mpc, X0, xr, wu, wx)
        grads[method] = (g0, gr, mpc.last_active[0])
    assert grads["admm"][2] == grads["cvxpy"][2]
    for a, b in zip(grads["admm"][:2], grads["cvxpy"][:2]):
        assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b))


def test_batched_constant_reference_and_numpy_unchanged():
    rng = np.random.default_rng(5)
    system = _system(rng)
    mpc = ConstrainedLQR(system, 1.0, 0.5, u_norm_max=1.0)
    X = np.stack([X0, -X0])
    r = np.array([1.0, 0.0, 0.5])
    Xt = torch.tensor(X, requires_grad=True)
    rt = torch.tensor(r, requires_grad=True)
    sol = mpc.solve(Xt, rt)
    assert sol.x.shape == (2, T + 1, N_STATES) and sol.cost.shape == (2,)
    g_x, g_r = torch.autograd.grad(sol.cost.sum(), (Xt, rt))
    assert g_r.shape == (N_STATES,) and torch.all(torch.isfinite(g_x))
    # each member's gradient equals the unbatched one; the constant reference sums over steps
    for i in range(2):
        x0t = torch.tensor(X[i], requires_grad=True)
        rt1 = torch.tensor(r, requires_grad=True)
        gi = torch.autograd.grad(mpc.solve(x0t, rt1).cost, (x0t, rt1))
        np.testing.assert_allclose(g_x[i].numpy(), gi[0].numpy(), rtol=1e-9, atol=1e-10)
    ref = mpc.solve(X, r)
    assert isinstance(ref.x, np.ndarray) and isinstance(ref.cost, np.ndarray)
    np.testing.assert_allclose(sol.cost.detach().numpy(), ref.cost, rtol=1e-10)


def test_grad_through_x_ref_only_and_no_grad_mode():
    rng = np.random.default_rng(5)
    system = _system(rng)
    mpc = ConstrainedLQR(system, 1.0, 0.5, u_box=(-0.5, 0.5))
    xr = torch.tensor(_reference(rng), requires_grad=True)
    sol = mpc.solve(X0, xr)  # numpy x0, torch x_ref: torch out, gradient w.r.t. x_ref
    (g,) = torch.autograd.grad(sol.cost, (xr,))
    assert g.shape == (T + 1, N_STATES) and float(g.abs().sum()) > 0
    with torch.no_grad():
        plain = mpc.solve(torch.tensor(X0), xr)
    assert not plain.u.requires_grad and isinstance(plain.cost, float)


@pytest.mark.parametrize("field", ["A", "Q", "u_box"])
def test_problem_data_requiring_grad_is_refused(field):
    rng = np.random.default_rng(1)
    system = _system(rng)
    A = torch.tensor(np.asarray(system.A), requires_grad=(field == "A"))
    tsys = lc.LTVSystem(A, torch.tensor(np.asarray(system.B)))
    Q = torch.eye(N_STATES, dtype=torch.float64, requires_grad=(field == "Q"))
    lo = torch.tensor(-1.0, requires_grad=(field == "u_box"))
    with pytest.raises(ArgumentError, match="requires grad"):
        ConstrainedLQR(tsys, Q, 1.0, u_box=(lo, 1.0))


def test_create_graph_through_the_plan_raises():
    rng = np.random.default_rng(5)
    mpc = ConstrainedLQR(_system(rng), 1.0, 0.5, u_box=(-0.5, 0.5))
    x0t = torch.tensor(X0, requires_grad=True)
    with pytest.raises(RuntimeError, match="second derivatives"):
        torch.autograd.grad(mpc.solve(x0t).cost, (x0t,), create_graph=True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # cvxpylayers 1.2 on numpy 2
def test_gradient_agrees_with_cvxpylayers():
    """Second oracle: cvxpylayers (diffcp, SCS at eps 1e-10) on the same compiled DPP problem."""
    pytest.importorskip("cvxpylayers")
    from cvxpylayers.torch import CvxpyLayer

    rng = np.random.default_rng(7)
    system = _system(rng)
    xr, (wu, _) = _reference(rng), _loss_weights(rng)
    mpc = ConstrainedLQR(system, 1.0, 0.5, **CASES["combined"])
    x0t, xrt = torch.tensor(X0, requires_grad=True), torch.tensor(xr, requires_grad=True)
    g0, gr = torch.autograd.grad((mpc.solve(x0t, xrt).u * torch.tensor(wu)).sum(), (x0t, xrt))
    cv = mpc._cvx
    layer = CvxpyLayer(cv["problem"], parameters=[cv["x0"], cv["xref"]], variables=[cv["u"]])
    x0c, xrc = torch.tensor(X0, requires_grad=True), torch.tensor(xr, requires_grad=True)
    weighted = torch.cat([torch.tensor(F) @ xrc[k] for k, F in enumerate(mpc._cost_factors())])
    (u,) = layer(x0c, weighted, solver_args=dict(solve_method="SCS", eps=1e-10,
                                                max_iters=100000))
    c0, cr = torch.autograd.grad((u * torch.tensor(wu)).sum(), (x0c, xrc))
    assert float((c0 - g0).abs().max()) <= 1e-4 * float(g0.abs().max())
    assert float((cr - gr).abs().max()) <= 1e-4 * float(gr.abs().max())


@pytest.mark.parametrize("solver,options", [(None, {"bogus_option": 1}), ("SCS", {"bogus": 1}),
                                            ("OSQP", {"bogus": 1})])
def test_unknown_solver_options_raise_argument_error(solver, options):
    import cvxpy as cp

    if (solver or "CLARABEL") not in cp.installed_solvers():
        pytest.skip(f"{solver} not installed")
    system = lc.LTVSystem.constant(np.array([[1.0, 1.0], [0.0, 1.0]]), np.array([[1.0], [0.5]]), 4)
    with pytest.raises(ArgumentError, match="bogus"):
        mpc = ConstrainedLQR(system, 1.0, 1.0, u_box=(-1, 1), solver=solver, solver_options=options)
        mpc.solve(np.array([4.0, 0.0]))
