"""The API contract (shared/design/API.md), statement by statement, against independent oracles.

Sections covered: Conventions, Core, Bounds, Constrained variant. Each test names the contract
statement it checks; oracles are brute-force numpy (condensed least squares), scipy and
python-control.  Statements already tested elsewhere in depth are checked here across every
function they apply to (e.g. the symmetry tolerance for Q, Qf and R in each entry point).
"""

from __future__ import annotations

import control
import numpy as np
import pytest
import scipy.linalg as sla

import ltv_control as lc
from ltv_control import bounds

torch = pytest.importorskip("torch")
cp = pytest.importorskip("cvxpy")
from ltv_control.constrained import ConstrainedLQR, ConstrainedSolution


# --------------------------------------------------------------------------- helpers
def _spd(rng, d, shift=0.5):
    G = rng.standard_normal((d, d))
    return G @ G.T / d + shift * np.eye(d)


def _spd_stack(rng, T, d, shift=0.5):
    return np.stack([_spd(rng, d, shift) for _ in range(T)])


def _plant(rng, T=5, n=3, m=2, *, affine=True, batch=()):
    A = rng.standard_normal(batch + (T, n, n)) * 0.5
    B = rng.standard_normal(batch + (T, n, m))
    c = rng.standard_normal(batch + (T, n)) * 0.3 if affine else None
    return lc.LTVSystem(A, B, c)


def _dense(sys):
    """A, B (identity filled in), c (zeros filled in) of an unbatched numpy system."""
    T, n = sys.horizon, sys.n_states
    A = np.asarray(sys.A, dtype=np.float64)
    B = np.broadcast_to(np.eye(n), (T, n, n)) if sys.B is None else np.asarray(sys.B, dtype=np.float64)
    c = np.zeros((T, n)) if sys.c is None else np.asarray(sys.c, dtype=np.float64)
    return A, B, c


def _condensed(sys, x0):
    """x = x_free + M u for the stacked input u (T·m,), by independent rollout (oracle)."""
    A, B, c = _dense(sys)
    T, n, m = sys.horizon, sys.n_states, sys.n_inputs
    x_free = np.empty((T + 1, n))
    x_free[0] = x0
    for k in range(T):
        x_free[k + 1] = A[k] @ x_free[k] + c[k]
    M = np.zeros((T + 1, n, T * m))
    for j in range(T):
        M[j + 1, :, j * m:(j + 1) * m] = B[j]
        for k in range(j + 1, T):
            M[k + 1] = A[k] @ M[k]
    return x_free, M


def _tracking_oracle(sys, Q, R, Qf, x0, x_ref, u_ref=None):
    """Brute-force optimum of the tracking cost by condensed normal equations."""
    T, n, m = sys.horizon, sys.n_states, sys.n_inputs
    x_free, M = _condensed(sys, x0)
    Wx = sla.block_diag(*list(Q), Qf)
    Wu = sla.block_diag(*list(R))
    Mf = M.reshape((T + 1) * n, T * m)
    e0 = (x_free - x_ref).reshape(-1)
    ub = np.zeros(T * m) if u_ref is None else u_ref.reshape(-1)
    H = Mf.T @ Wx @ Mf + Wu
    u = np.linalg.solve(H, -Mf.T @ Wx @ e0 + Wu @ ub)
    e = e0 + Mf @ u
    cost = e @ Wx @ e + (u - ub) @ Wu @ (u - ub)
    return u.reshape(T, m), (x_free.reshape(-1) + Mf @ u).reshape(T + 1, n), cost


def _asym(M, rel, rng):
    E = rng.standard_normal(M.shape)
    E = E - E.T
    return M + rel * np.linalg.norm(M) * E / np.linalg.norm(E)


# =========================================================================== Conventions
def test_exception_hierarchy():
    # Contract: every exception under ControlError, each also the built-in named in parentheses.
    pairs = [(lc.DimensionError, ValueError), (lc.PropertyError, ValueError),
             (lc.ArgumentError, TypeError), (lc.NumericalError, np.linalg.LinAlgError),
             (lc.InfeasibleError, RuntimeError), (lc.ControllerFileError, ValueError)]
    for exc, builtin in pairs:
        assert issubclass(exc, lc.ControlError) and issubclass(exc, builtin)
        assert issubclass(lc.ControlError, Exception)
    assert not issubclass(lc.DimensionError, lc.PropertyError)


def _entry_points(sys, which):
    """Callables taking (Q, R, Qf) for each public entry point that validates weights."""
    T, n, m = sys.horizon, sys.n_states, sys.n_inputs
    calls = {
        "finite_horizon_lqr": lambda Q, R, Qf: lc.finite_horizon_lqr(sys, Q, R, Qf=Qf),
        "tracking_lqr": lambda Q, R, Qf: lc.tracking_lqr(sys, Q, R, np.zeros(n), Qf=Qf),
        "lqr_cost": lambda Q, R, Qf: lc.lqr_cost(sys, Q, R, np.ones((T + 1, n)), np.ones((T, m)), Qf=Qf),
        "ConstrainedLQR": lambda Q, R, Qf: ConstrainedLQR(sys, Q, R, Qf=Qf),
    }
    return calls[which]


ENTRY_POINTS = ["finite_horizon_lqr", "tracking_lqr", "lqr_cost", "ConstrainedLQR"]


@pytest.mark.parametrize("which", ENTRY_POINTS)
@pytest.mark.parametrize("arg", ["Q", "Qf", "R", "Q_stack"])
def test_symmetry_tolerance_is_relative(rng, which, arg):
    # Contract: ‖M − Mᵀ‖_F ≤ 1e-8‖M‖_F; 1e-9 relative asymmetry passes, 1e-2 is refused,
    # whatever the scale of M (checked at 1e6).
    sys = _plant(rng, T=3, n=3, m=2)
    call = _entry_points(sys, which)
    for scale in (1.0, 1e6):
        Q, R = scale * _spd(rng, 3), scale * _spd(rng, 2)
        for rel, ok in ((1e-9, True), (1e-2, False)):
            args = {"Q": Q, "R": R, "Qf": Q}
            if arg == "Q_stack":
                stack = np.stack([Q, Q, Q])
                stack[1] = _asym(Q, rel, rng)
                args["Q"] = stack
            else:
                args[arg] = _asym(args[arg], rel, rng)
            if ok:
                call(args["Q"], args["R"], args["Qf"])
            else:
                with pytest.raises(lc.PropertyError, match=("R" if arg == "R" else "Q")):
                    call(args["Q"], args["R"], args["Qf"])


@pytest.mark.parametrize("dtype", [np.float32, torch.float32])
def test_symmetry_tolerance_with_float32_compute_or_input(rng, dtype):
    # 1e-9 relative asymmetry passes also when the compute dtype (or the input) is float32:
    # the test must not see the rounding of the cast; 1e-2 is still refused.
    T, n = 3, 6
    sys = _plant(rng, T=T, n=n, m=2)
    tsys = _torch_sys(sys, torch.float32)
    for _ in range(20):
        Q = _spd(rng, n)
        Qa, Qb = _asym(Q, 1e-9, rng), _asym(Q, 1e-2, rng)
        R = _asym(_spd(rng, 2), 1e-9, rng)
        lc.finite_horizon_lqr(sys, Qa, R, Qf=Qa, dtype=dtype)
        lc.tracking_lqr(sys, Qa, R, np.zeros(n), Qf=Qa, dtype=dtype)
        lc.finite_horizon_lqr(tsys, torch.as_tensor(Qa, dtype=torch.float32), R,
                              Qf=torch.as_tensor(Qa, dtype=torch.float32), dtype=dtype)
        for kw in ({"Q": Qb}, {"Qf": Qb}, {"Q": torch.as_tensor(Qb, dtype=torch.float32)}):
            with pytest.raises(lc.PropertyError, match="symmetric"):
                lc.finite_horizon_lqr(tsys, kw.get("Q", Qa), R, Qf=kw.get("Qf"), dtype=dtype)


@pytest.mark.parametrize("which", ENTRY_POINTS)
def test_definiteness_errors_name_the_argument(rng, which):
    # Contract: Q/Qf not PSD, R not PD -> PropertyError; non-finite -> PropertyError.
    sys = _plant(rng, T=3, n=3, m=2)
    call = _entry_points(sys, which)
    Q, R = _spd(rng, 3), _spd(rng, 2)
    neg = -np.eye(3)
    with pytest.raises(lc.PropertyError, match="Q"):
        call(neg, R, None)
    with pytest.raises(lc.PropertyError, match="Qf"):
        call(Q, R, neg)
    with pytest.raises(lc.PropertyError, match="R"):
        call(Q, np.diag([1.0, 0.0]), None)
    with pytest.raises(lc.PropertyError, match="R"):
        call(Q, 0.0, None)
    bad = Q.copy()
    bad[0, 0] = np.nan
    with pytest.raises(lc.PropertyError, match="Q"):
        call(bad, R, None)
    with pytest.raises(lc.DimensionError, match=r"Q.*\(2, 2\)"):
        call(np.eye(2), R, None)
    with pytest.raises(lc.ArgumentError):
        call("identity", R, None)


def test_unknown_keywords_refused_everywhere(rng):
    sys = _plant(rng, T=3)
    n, m = 3, 2
    calls = [lambda: lc.finite_horizon_lqr(sys, 1.0, 1.0, q_f=1.0),
             lambda: lc.tracking_lqr(sys, 1.0, 1.0, np.zeros(n), uref=np.zeros(m)),
             lambda: lc.lqr_cost(sys, 1.0, 1.0, np.zeros((4, n)), np.zeros((3, m)), dtype=None),
             lambda: sys.simulate(np.zeros(n), K_gain=None),
             lambda: sys.to(dtpye="float32"),
             lambda: lc.LTVSystem(sys.A, sys.B, drift=sys.c),
             lambda: bounds.lyapunov_weights(np.zeros((3, n, n)), Q=1.0),
             lambda: bounds.tracking_error_bound(np.zeros((3, n, n)), 1.0, np.ones(n), mode="x"),
             lambda: ConstrainedLQR(sys, 1.0, 1.0, u_max=1.0),
             lambda: ConstrainedLQR(sys, 1.0, 1.0).solve(np.zeros(n), warm=True)]
    for call in calls:
        with pytest.raises(lc.ArgumentError):
            call()


def _Qf_default_cases(rng, T=4, n=3, m=2):
    sys = _plant(rng, T=T, n=n, m=m)
    Qs = _spd_stack(rng, T, n)
    R = _spd(rng, m)
    return sys, Qs, R


def test_qf_none_is_last_stage_q_in_lqr_tracking_and_cost(rng):
    # Contract: Qf=None means Q at the last stage, everywhere.
    sys, Qs, R = _Qf_default_cases(rng)
    T, n, m = sys.horizon, sys.n_states, sys.n_inputs
    a = lc.finite_horizon_lqr(sys, Qs, R)
    b = lc.finite_horizon_lqr(sys, Qs, R, Qf=Qs[-1])
    np.testing.assert_allclose(a.S, b.S, rtol=1e-13)
    np.testing.assert_allclose(a.S[T], Qs[-1], rtol=1e-14)
    x_ref = rng.standard_normal((T + 1, n))
    ta = lc.tracking_lqr(sys, Qs, R, x_ref)
    tb = lc.tracking_lqr(sys, Qs, R, x_ref, Qf=Qs[-1])
    for f in ("K", "k", "S", "s", "s0"):
        np.testing.assert_allclose(getattr(ta, f), getattr(tb, f), rtol=1e-12, atol=1e-14)
    x, u = rng.standard_normal((T + 1, n)), rng.standard_normal((T, m))
    assert lc.lqr_cost(sys, Qs, R, x, u) == pytest.approx(
        float(lc.lqr_cost(sys, Qs, R, x, u, Qf=Qs[-1])), rel=1e-14)
    # a scalar Q: Qf = q·I
    np.testing.assert_allclose(lc.finite_horizon_lqr(sys, 2.5, R).S[T], 2.5 * np.eye(n))


def test_qf_none_is_last_stage_q_in_constrained_lqr(rng):
    sys, Qs, R = _Qf_default_cases(rng)
    x0 = rng.standard_normal(sys.n_states)
    a = ConstrainedLQR(sys, Qs, R).solve(x0)
    b = ConstrainedLQR(sys, Qs, R, Qf=Qs[-1]).solve(x0)
    c = ConstrainedLQR(sys, Qs, R, Qf=10 * np.eye(3)).solve(x0)
    np.testing.assert_allclose(a.u, b.u, atol=1e-6)
    assert a.cost == pytest.approx(b.cost, rel=1e-7)
    assert abs(a.cost - c.cost) > 1e-3  # the terminal weight matters here


def test_results_are_namedtuples_that_unpack(rng):
    sys = _plant(rng, T=3)
    res = lc.finite_horizon_lqr(sys, 1.0, 1.0)
    K, S = res
    assert isinstance(res, tuple) and res._fields == ("K", "S")
    assert K is res.K and S is res.S
    tr = lc.tracking_lqr(sys, 1.0, 1.0, np.zeros(3))
    K2, k2, S2, s2, s02 = tr
    assert tr._fields == ("K", "k", "S", "s", "s0")
    assert (K2, k2, S2, s2, s02) == tuple(getattr(tr, f) for f in tr._fields)
    sol = ConstrainedLQR(sys, 1.0, 1.0).solve(np.ones(3))
    x, u, cost, status, solve_time = sol
    assert sol._fields == ("x", "u", "cost", "status", "solve_time")
    assert (x is sol.x, u is sol.u, cost == sol.cost, status == sol.status) == (True,) * 4
    assert solve_time == sol.solve_time
    tb = bounds.tracking_error_bound(sys.closed_loop(K), 0.1, np.ones(3))
    bound, euclid, P, G, mode = tb
    assert tb._fields == ("bound", "euclidean", "P", "G", "mode")
    assert bound is tb.bound and euclid is tb.euclidean and P is tb.P and G is tb.G
    assert mode == "a_priori"


# --------------------------------------------------------------------------- array types
def _torch_sys(sys, dtype=None):
    dtype = dtype or torch.float64
    to = lambda a: None if a is None else torch.as_tensor(np.asarray(a), dtype=dtype)
    return lc.LTVSystem(to(sys.A), to(sys.B), to(sys.c))


def test_array_type_in_equals_array_type_out_core(rng):
    # Contract: numpy in -> numpy out; torch in -> torch out on the same device; recursion in
    # float64 unless dtype= says otherwise.
    sys = _plant(rng, T=4, n=3, m=2)
    T, n, m = 4, 3, 2
    tsys = _torch_sys(sys, torch.float32)
    x_ref = rng.standard_normal((T + 1, n))
    K = lc.finite_horizon_lqr(sys, 1.0, 1.0).K
    U = np.linalg.qr(rng.standard_normal((T + 1, n, 2)))[0]
    x, u = rng.standard_normal((T + 1, n)), rng.standard_normal((T, m))
    outs_np = {
        "lqr": lc.finite_horizon_lqr(sys, 1.0, 1.0),
        "tracking": lc.tracking_lqr(sys, 1.0, 1.0, x_ref),
        "cost": (lc.lqr_cost(sys, 1.0, 1.0, x, u),),
        "simulate": (sys.simulate(np.ones(n), K=K),),
        "closed_loop": (sys.closed_loop(K),),
        "project": (sys.project(U).A, sys.project(U).B, sys.project(U).c),
    }
    tK = torch.as_tensor(K, dtype=torch.float32)
    outs_t = {
        "lqr": lc.finite_horizon_lqr(tsys, 1.0, 1.0),
        "tracking": lc.tracking_lqr(tsys, 1.0, 1.0, torch.as_tensor(x_ref)),
        "cost": (lc.lqr_cost(tsys, 1.0, 1.0, torch.as_tensor(x), torch.as_tensor(u)),),
        "simulate": (tsys.simulate(torch.ones(n), K=tK),),
        "closed_loop": (tsys.closed_loop(tK),),
        "project": (tsys.project(torch.as_tensor(U)).A, tsys.project(torch.as_tensor(U)).B,
                    tsys.project(torch.as_tensor(U)).c),
    }
    for name, vals in outs_np.items():
        for v in vals:
            assert isinstance(v, (np.ndarray, np.floating)) and not isinstance(v, torch.Tensor), name
    for name, vals in outs_t.items():
        for v, ref in zip(vals, outs_np[name]):
            assert isinstance(v, torch.Tensor) and v.device == tsys.A.device, name
            np.testing.assert_allclose(v.double().numpy(), np.asarray(ref), rtol=2e-5, atol=2e-5,
                                       err_msg=name)
    # Riccati-based results default to float64 even for a float32 torch system
    assert outs_t["lqr"].K.dtype == torch.float64 and outs_t["tracking"].s0.dtype == torch.float64
    assert outs_np["lqr"].K.dtype == np.float64
    assert lc.LTVSystem(sys.A, sys.B).backend == "numpy" and tsys.backend == "torch"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_results_stay_on_the_input_device(rng):
    # Contract: torch in -> torch out on the same device (checked where an accelerator exists).
    dev = torch.device("cuda")
    T, n, m = 3, 3, 2
    sys = _plant(rng, T=T, n=n, m=m).to(device=dev)
    K, S = lc.finite_horizon_lqr(sys, 1.0, 1.0)
    tr = lc.tracking_lqr(sys, 1.0, 1.0, torch.zeros(n, device=dev))
    x = sys.simulate(torch.ones(n, device=dev), K=tr.K, k=tr.k)
    u = -torch.einsum("kij,kj->ki", tr.K, x[:-1]) + tr.k
    cost = lc.lqr_cost(sys, 1.0, 1.0, x, u)
    A_cl = sys.closed_loop(K)
    U = torch.linalg.qr(torch.randn(T + 1, n, 2, dtype=torch.float64, device=dev))[0]
    tb = bounds.tracking_error_bound(A_cl, 0.1, torch.ones(n, device=dev))
    for v in (K, S, *tr, x, cost, A_cl, sys.project(U).A, bounds.lyapunov_weights(A_cl), tb.bound):
        assert isinstance(v, torch.Tensor) and v.device.type == dev.type


def test_array_type_in_equals_array_type_out_bounds(rng):
    T, n = 4, 3
    sys = _plant(rng, T=T, n=n, affine=False)
    A_cl = sys.closed_loop(lc.finite_horizon_lqr(sys, 1.0, 1.0).K)
    D = rng.standard_normal((2, T + 1, n)) * 0.1
    tA, tD = torch.as_tensor(A_cl), torch.as_tensor(D)
    P = bounds.lyapunov_weights(A_cl)
    tP = bounds.lyapunov_weights(tA)
    results = [(P, tP), (bounds.transition_norms(A_cl, P), bounds.transition_norms(tA, tP)),
               (bounds.remainder_constants(A_cl, P, D), bounds.remainder_constants(tA, tP, tD))]
    tb_np = bounds.tracking_error_bound(A_cl, 0.5, None, deviations=D)
    tb_t = bounds.tracking_error_bound(tA, 0.5, None, deviations=tD)
    results += [(tb_np.bound, tb_t.bound), (tb_np.euclidean, tb_t.euclidean)]
    for a, b in results:
        assert isinstance(a, np.ndarray)
        assert isinstance(b, torch.Tensor) and b.device == tA.device
        np.testing.assert_allclose(b.numpy(), a, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, "float32", torch.float32])
def test_dtype_keyword_is_honoured(rng, dtype):
    sys = _plant(rng, T=3)
    ref = lc.finite_horizon_lqr(sys, 1.0, 1.0)
    res = lc.finite_horizon_lqr(sys, 1.0, 1.0, dtype=dtype)
    tr = lc.tracking_lqr(sys, 1.0, 1.0, np.ones(3), dtype=dtype)
    for v in (res.K, res.S, tr.K, tr.k, tr.s, tr.s0):
        assert isinstance(v, np.ndarray) and v.dtype == np.float32
    np.testing.assert_allclose(res.K, ref.K, rtol=1e-4, atol=1e-5)
    tres = lc.finite_horizon_lqr(_torch_sys(sys), 1.0, 1.0, dtype=dtype)
    assert tres.K.dtype == torch.float32
    with pytest.raises(lc.ArgumentError, match="dtype"):
        lc.finite_horizon_lqr(sys, 1.0, 1.0, dtype=np.int64)


# --------------------------------------------------------------------------- batch dims
def test_batch_dims_for_every_core_function(rng):
    # Contract: (*batch, T, n, n) stacks; every core function handles batch dims, member by member.
    batch, T, n, m = (2, 3), 3, 3, 2
    sys = _plant(rng, T=T, n=n, m=m, batch=batch)
    assert sys.batch_shape == batch
    Q = _spd_stack(rng, T, n)
    x_ref = rng.standard_normal((T + 1, n))
    x0 = rng.standard_normal(batch + (n,))
    K, S = lc.finite_horizon_lqr(sys, Q, 1.0)
    tr = lc.tracking_lqr(sys, Q, 1.0, x_ref)
    assert K.shape == batch + (T, m, n) and S.shape == batch + (T + 1, n, n)
    assert tr.s0.shape == batch + (T + 1,) and tr.k.shape == batch + (T, m)
    X = sys.simulate(x0, K=tr.K, k=tr.k)
    assert X.shape == batch + (T + 1, n)
    U = np.linalg.qr(rng.standard_normal((T + 1, n, 2)))[0]
    proj = sys.project(U)
    for idx in np.ndindex(*batch):
        member = lc.LTVSystem(sys.A[idx], sys.B[idx], sys.c[idx])
        Km, Sm = lc.finite_horizon_lqr(member, Q, 1.0)
        np.testing.assert_allclose(K[idx], Km, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(S[idx], Sm, rtol=1e-12, atol=1e-13)
        trm = lc.tracking_lqr(member, Q, 1.0, x_ref)
        np.testing.assert_allclose(tr.s0[idx], trm.s0, rtol=1e-12)
        np.testing.assert_allclose(X[idx], member.simulate(x0[idx], K=trm.K, k=trm.k), rtol=1e-12)
        np.testing.assert_allclose(sys.closed_loop(K)[idx], member.closed_loop(Km), rtol=1e-12)
        np.testing.assert_allclose(proj.A[idx], member.project(U).A, rtol=1e-12)
        np.testing.assert_array_equal(sys[idx + (1,)].A, sys.A[idx + (1,)])


def test_lqr_cost_is_per_batch_member(rng):
    # Contract: lqr_cost -> scalar (per batch member), also when only the system is batched.
    batch, T, n, m = (2, 3), 3, 3, 2
    sys = _plant(rng, T=T, n=n, m=m, batch=batch)
    Qb = np.stack([_spd_stack(rng, T, n) for _ in range(3)])  # (3, T, n, n) broadcasts with (2, 3)
    x = rng.standard_normal(batch + (T + 1, n))
    u = rng.standard_normal(batch + (T, m))
    cost = lc.lqr_cost(sys, Qb, 2.0, x, u)
    assert cost.shape == batch
    for i, j in np.ndindex(*batch):
        member = lc.LTVSystem(sys.A[i, j], sys.B[i, j])
        q = Qb[j]
        oracle = sum(x[i, j, k] @ q[k] @ x[i, j, k] + 2.0 * u[i, j, k] @ u[i, j, k] for k in range(T))
        oracle += x[i, j, T] @ q[-1] @ x[i, j, T]
        assert cost[i, j] == pytest.approx(oracle, rel=1e-12)
        assert float(lc.lqr_cost(member, q, 2.0, x[i, j], u[i, j])) == pytest.approx(oracle, rel=1e-12)
    # an unbatched trajectory on a batched system: one cost per member (all equal here)
    shared = lc.lqr_cost(sys, 1.0, 1.0, x[0, 0], u[0, 0])
    assert np.shape(shared) == batch
    np.testing.assert_allclose(shared, float(lc.lqr_cost(lc.LTVSystem(sys.A[0, 0], sys.B[0, 0]),
                                                         1.0, 1.0, x[0, 0], u[0, 0])))
    tshared = lc.lqr_cost(_torch_sys(sys), 1.0, 1.0, torch.as_tensor(x[0, 0]), torch.as_tensor(u[0, 0]))
    assert isinstance(tshared, torch.Tensor) and tuple(tshared.shape) == batch


# --------------------------------------------------------------------------- T == n
def test_t_equal_n_is_never_ambiguous(rng):
    n = T = 3
    A = rng.standard_normal((n, n)) * 0.5
    B = rng.standard_normal((n, 2))
    with pytest.raises(lc.DimensionError, match="LTVSystem.constant"):
        lc.LTVSystem(A)
    with pytest.raises(lc.DimensionError):
        lc.LTVSystem(np.stack([A] * T), B)  # a constant B is not guessed either
    sys = lc.LTVSystem.constant(A, B, T)
    np.testing.assert_array_equal(sys.A, np.stack([A] * T))
    # a (T, n, n) weight with T == n is per step, a (n, n) weight is constant
    Qs = _spd_stack(rng, T, n)
    K_stack = lc.finite_horizon_lqr(sys, Qs, 1.0).K
    K_first = lc.finite_horizon_lqr(sys, np.stack([Qs[0]] * T), 1.0).K
    K_const = lc.finite_horizon_lqr(sys, Qs[0], 1.0).K
    np.testing.assert_allclose(K_first, K_const, rtol=1e-13)
    assert not np.allclose(K_stack, K_const)
    # x_ref: (n,) constant, (T+1, n) per step even when T + 1 == n
    sys4 = lc.LTVSystem.constant(np.eye(4) * 0.9, np.ones((4, 1)), 3)
    r = rng.standard_normal(4)
    np.testing.assert_allclose(lc.tracking_lqr(sys4, 1.0, 1.0, r).s0,
                               lc.tracking_lqr(sys4, 1.0, 1.0, np.stack([r] * 4)).s0, rtol=1e-13)
    R4 = rng.standard_normal((4, 4))
    np.testing.assert_allclose(lc.tracking_lqr(sys4, 1.0, 1.0, R4).s[:, 0],
                               lc.tracking_lqr(sys4, 1.0, 1.0, R4).s[:, 0])
    assert not np.allclose(lc.tracking_lqr(sys4, 1.0, 1.0, R4).s0,
                           lc.tracking_lqr(sys4, 1.0, 1.0, R4[0]).s0)


# --------------------------------------------------------------------------- weight forms
def test_scalar_matrix_and_stack_weights_agree(rng):
    T, n = 4, 2
    sys = lc.LTVSystem(rng.standard_normal((T, n, n)) * 0.5, rng.standard_normal((T, n, n)))
    I = np.eye(n)
    ref = lc.finite_horizon_lqr(sys, 2.0 * I, 3.0 * I, Qf=4.0 * I, N=0.1 * I)
    for Q in (2.0, 2, np.float64(2.0), 2.0 * I, np.stack([2.0 * I] * T), torch.tensor(2.0)):
        for R in (3.0, 3.0 * I, np.stack([3.0 * I] * T)):
            for N in (0.1, 0.1 * I, np.stack([0.1 * I] * T)):
                for Qf in (4.0, 4.0 * I):
                    K, S = lc.finite_horizon_lqr(sys, Q, R, Qf=Qf, N=N)
                    np.testing.assert_allclose(K, ref.K, rtol=1e-13)
                    np.testing.assert_allclose(S, ref.S, rtol=1e-13)
    x, u = rng.standard_normal((T + 1, n)), rng.standard_normal((T, n))
    c1 = lc.lqr_cost(sys, 2.0, 3.0, x, u, Qf=4.0, N=0.1)
    c2 = lc.lqr_cost(sys, np.stack([2.0 * I] * T), 3.0 * I, x, u, Qf=4.0 * I, N=np.stack([0.1 * I] * T))
    assert float(c1) == pytest.approx(float(c2), rel=1e-13)


def test_optimal_cost_with_cross_term_against_brute_force(rng):
    # Contract cost: Σ xᵀQx + uᵀRu + 2xᵀNu + x_TᵀQf x_T (no 1/2); optimum x0ᵀS0x0; u = −Kx.
    T, n, m = 4, 3, 2
    sys = _plant(rng, T=T, n=n, m=m, affine=False)
    Q, R, Qf = _spd_stack(rng, T, n, 1.0), _spd_stack(rng, T, m, 1.0), _spd(rng, n)
    N = 0.1 * rng.standard_normal((T, n, m))
    x0 = rng.standard_normal(n)
    K, S = lc.finite_horizon_lqr(sys, Q, R, Qf=Qf, N=N)
    x_free, M = _condensed(sys, x0)
    Mf = M.reshape(-1, T * m)

    def J(uflat):
        x = (x_free.reshape(-1) + Mf @ uflat).reshape(T + 1, n)
        return float(lc.lqr_cost(sys, Q, R, x, uflat.reshape(T, m), Qf=Qf, N=N))

    # J is quadratic in u: recover its Hessian and gradient exactly, minimise
    dim = T * m
    J0 = J(np.zeros(dim))
    E = np.eye(dim)
    H = np.empty((dim, dim))
    g = np.empty(dim)
    for i in range(dim):
        g[i] = (J(E[i]) - J(-E[i])) / 2
        for j in range(dim):
            H[i, j] = (J(E[i] + E[j]) - J(E[i]) - J(E[j]) + J0)
    u_star = np.linalg.solve(H, -g)
    J_star = J(u_star)
    assert float(x0 @ S[0] @ x0) == pytest.approx(J_star, rel=1e-9)
    x = sys.simulate(x0, K=K)
    u_pol = -np.einsum("kij,kj->ki", K, x[:-1])
    np.testing.assert_allclose(u_pol.reshape(-1), u_star, rtol=1e-7, atol=1e-9)


# =========================================================================== Core: LTVSystem
def test_ltvsystem_properties(rng):
    T, n, m = 4, 3, 2
    A, B, c = rng.standard_normal((T, n, n)), rng.standard_normal((T, n, m)), rng.standard_normal((T, n))
    s = lc.LTVSystem(A, B, c)
    assert (s.horizon, s.n_states, s.n_inputs, s.backend, s.batch_shape) == (T, n, m, "numpy", ())
    np.testing.assert_array_equal(s.A, A)
    np.testing.assert_array_equal(s.B, B)
    np.testing.assert_array_equal(s.c, c)
    bare = lc.LTVSystem(A)
    assert bare.B is None and bare.c is None and bare.n_inputs == n
    ts = lc.LTVSystem(torch.as_tensor(A))
    assert ts.backend == "torch" and ts.B is None and isinstance(ts.A, torch.Tensor)
    assert lc.LTVSystem(np.zeros((5, 2, T, n, n))).batch_shape == (5, 2)


def test_simulate_open_loop_and_affine_feedback(rng):
    # x_{k+1} = A x + B u + c; open loop u, or u_k = −K_k x_k + k_k; no input means u = 0.
    T, n, m = 5, 3, 2
    sys = _plant(rng, T=T, n=n, m=m)
    A, B, c = _dense(sys)
    x0 = rng.standard_normal(n)
    u = rng.standard_normal((T, m))
    K = rng.standard_normal((T, m, n)) * 0.3
    kff = rng.standard_normal((T, m))
    xo, xc, xz = [x0], [x0], [x0]
    for j in range(T):
        xo.append(A[j] @ xo[-1] + B[j] @ u[j] + c[j])
        xc.append(A[j] @ xc[-1] + B[j] @ (-K[j] @ xc[-1] + kff[j]) + c[j])
        xz.append(A[j] @ xz[-1] + c[j])
    np.testing.assert_allclose(sys.simulate(x0, u), np.array(xo), rtol=1e-13)
    np.testing.assert_allclose(sys.simulate(x0, K=K, k=kff), np.array(xc), rtol=1e-13)
    np.testing.assert_allclose(sys.simulate(x0), np.array(xz), rtol=1e-13)
    assert sys.simulate(x0, K=K).shape == (T + 1, n)
    np.testing.assert_allclose(sys.simulate(x0, K=K), sys.simulate(x0, K=K, k=np.zeros((T, m))))
    # B=None: input added to the state
    ident = lc.LTVSystem(sys.A)
    np.testing.assert_allclose(ident.simulate(x0, u=np.ones((T, n)))[1], A[0] @ x0 + 1.0)


def test_closed_loop_formula(rng):
    T, n, m = 4, 3, 2
    sys = _plant(rng, T=T, n=n, m=m)
    K = rng.standard_normal((T, m, n))
    np.testing.assert_allclose(sys.closed_loop(K), sys.A - sys.B @ K, rtol=1e-14)
    Kn = rng.standard_normal((T, n, n))
    np.testing.assert_allclose(lc.LTVSystem(sys.A).closed_loop(Kn), sys.A - Kn, rtol=1e-14)


def test_project_formulas(rng):
    T, n, m, r = 4, 5, 2, 3
    sys = _plant(rng, T=T, n=n, m=m)
    U = np.linalg.qr(rng.standard_normal((T + 1, n, r)))[0]
    red = sys.project(U)
    assert (red.n_states, red.n_inputs, red.horizon) == (r, m, T)
    for k in range(T):
        np.testing.assert_allclose(red.A[k], U[k + 1].T @ sys.A[k] @ U[k], atol=1e-13)
        np.testing.assert_allclose(red.B[k], U[k + 1].T @ sys.B[k], atol=1e-13)
        np.testing.assert_allclose(red.c[k], U[k + 1].T @ sys.c[k], atol=1e-13)
    ident = lc.LTVSystem(sys.A, None, sys.c).project(U)
    assert ident.n_inputs == n and ident.B.shape == (T, r, n)
    for k in range(T):
        np.testing.assert_allclose(ident.B[k], U[k + 1].T, atol=1e-14)
    assert lc.LTVSystem(sys.A).project(U).c is None
    with pytest.raises(lc.PropertyError, match="orthonormal"):
        sys.project(2.0 * U)


def test_to_and_numpy(rng):
    sys = _plant(rng, T=3)
    t = sys.to(device="cpu")
    assert t.backend == "torch" and t.A.device.type == "cpu" and t.c is not None
    t32 = t.to(dtype=torch.float32)
    assert t32.A.dtype == torch.float32 and t32.B.dtype == torch.float32
    back = t32.numpy()
    assert back.backend == "numpy" and isinstance(back.A, np.ndarray)
    np.testing.assert_allclose(back.A, sys.A, rtol=1e-6)
    assert sys.to(dtype=np.float32).A.dtype == np.float32
    assert lc.LTVSystem(sys.A).to(device="cpu").B is None


def test_getitem_is_python_control_statespace(rng):
    sys = _plant(rng, T=3, n=3, m=2)
    ss = sys[1]
    assert isinstance(ss, control.StateSpace) and ss.dt is True
    np.testing.assert_array_equal(ss.A, sys.A[1])
    np.testing.assert_array_equal(ss.B, sys.B[1])
    np.testing.assert_array_equal(ss.C, np.eye(3))
    np.testing.assert_array_equal(ss.D, np.zeros((3, 2)))
    # python-control's own step agrees with simulate (drift-free system)
    free = lc.LTVSystem(sys.A, sys.B)
    x0, u = rng.standard_normal(3), rng.standard_normal((3, 2))
    x = free.simulate(x0, u)
    for k in range(3):
        np.testing.assert_allclose(free[k].dynamics(0, x[k], u[k]), x[k + 1], rtol=1e-13)
    back = lc.LTVSystem.from_statespace([free[k] for k in range(3)])
    np.testing.assert_array_equal(back.A, free.A)
    np.testing.assert_array_equal(back.B, free.B)
    assert back.backend == "numpy" and back.A.dtype == np.float64


def test_constant_with_identity_input_and_drift(rng):
    A = rng.standard_normal((3, 3))
    sys = lc.LTVSystem.constant(A, None, 4)
    assert sys.B is None and sys.horizon == 4
    sysc = lc.LTVSystem.constant(A, np.ones((3, 1)), 2, c=np.ones(3))
    np.testing.assert_array_equal(sysc.c, np.ones((2, 3)))


# =========================================================================== Core: tracking
@pytest.mark.parametrize("ref_form", ["constant", "trajectory"])
@pytest.mark.parametrize("uref_form", [None, "constant", "trajectory"])
def test_tracking_value_function_is_the_brute_force_optimum(rng, ref_form, uref_form):
    # V_0(x_0) = x0ᵀS0x0 + 2s0ᵀx0 + s0_0 equals the optimal cost, with drift, x_ref, u_ref.
    T, n, m = 5, 3, 2
    sys = _plant(rng, T=T, n=n, m=m)
    Q, R, Qf = _spd_stack(rng, T, n), _spd_stack(rng, T, m), _spd(rng, n)
    x_ref = rng.standard_normal(n) if ref_form == "constant" else rng.standard_normal((T + 1, n))
    u_ref = {None: None, "constant": rng.standard_normal(m),
             "trajectory": rng.standard_normal((T, m))}[uref_form]
    res = lc.tracking_lqr(sys, Q, R, x_ref, Qf=Qf, u_ref=u_ref)
    assert res.s0.shape == (T + 1,) and res.s.shape == (T + 1, n) and res.k.shape == (T, m)
    x0 = rng.standard_normal(n)
    full_ref = np.broadcast_to(x_ref, (T + 1, n))
    full_uref = None if u_ref is None else np.broadcast_to(u_ref, (T, m))
    u_opt, x_opt, J = _tracking_oracle(sys, Q, R, Qf, x0, full_ref, full_uref)
    V0 = x0 @ res.S[0] @ x0 + 2 * res.s[0] @ x0 + res.s0[0]
    assert V0 == pytest.approx(J, rel=1e-9, abs=1e-9)
    x = sys.simulate(x0, K=res.K, k=res.k)
    np.testing.assert_allclose(x, x_opt, rtol=1e-8, atol=1e-9)
    u = -np.einsum("kij,kj->ki", res.K, x[:-1]) + res.k
    np.testing.assert_allclose(u, u_opt, rtol=1e-8, atol=1e-9)
    # terminal value function V_T(x) = (x − r_T)ᵀQf(x − r_T)
    z = rng.standard_normal(n)
    VT = z @ res.S[T] @ z + 2 * res.s[T] @ z + res.s0[T]
    assert VT == pytest.approx((z - full_ref[T]) @ Qf @ (z - full_ref[T]), rel=1e-12)


def test_tracking_on_torch_matches_numpy(rng):
    T, n, m = 3, 3, 2
    sys = _plant(rng, T=T, n=n, m=m)
    x_ref, u_ref = rng.standard_normal((T + 1, n)), rng.standard_normal(m)
    a = lc.tracking_lqr(sys, 1.0, 2.0, x_ref, u_ref=u_ref)
    b = lc.tracking_lqr(_torch_sys(sys), 1.0, 2.0, torch.as_tensor(x_ref), u_ref=torch.as_tensor(u_ref))
    for f in a._fields:
        assert isinstance(getattr(b, f), torch.Tensor)
        np.testing.assert_allclose(getattr(b, f).numpy(), getattr(a, f), rtol=1e-11, atol=1e-12)


def test_tracking_reference_shape_errors(rng):
    sys = _plant(rng, T=3, n=3, m=2)
    with pytest.raises(lc.DimensionError, match="x_ref"):
        lc.tracking_lqr(sys, 1.0, 1.0, np.zeros((3, 3)))  # T rows instead of T+1
    with pytest.raises(lc.DimensionError, match="u_ref"):
        lc.tracking_lqr(sys, 1.0, 1.0, np.zeros(3), u_ref=np.zeros((4, 2)))
    with pytest.raises(lc.DimensionError, match="x_ref"):
        lc.tracking_lqr(sys, 1.0, 1.0, np.zeros(2))


# =========================================================================== Bounds
def _closed_loop(rng, T=5, n=3):
    sys = _plant(rng, T=T, n=n, affine=False)
    return sys.closed_loop(lc.finite_horizon_lqr(sys, 1.0, 1.0).K)


def test_lyapunov_weight_defaults_are_identity(rng):
    A = _closed_loop(rng)
    T, n = A.shape[0], A.shape[1]
    P = bounds.lyapunov_weights(A)
    assert P.shape == (T + 1, n, n)
    np.testing.assert_allclose(P, bounds.lyapunov_weights(A, W=np.eye(n), P_terminal=np.eye(n)), rtol=1e-15)
    np.testing.assert_array_equal(P[T], np.eye(n))
    expect = np.eye(n)
    for k in range(T - 1, -1, -1):
        expect = A[k].T @ expect @ A[k] + np.eye(n)
        np.testing.assert_allclose(P[k], expect, rtol=1e-12)
    W, Pt = _spd(rng, n), _spd(rng, n)
    P2 = bounds.lyapunov_weights(A, W=W, P_terminal=Pt)
    np.testing.assert_allclose(P2[T], Pt, rtol=1e-15)
    np.testing.assert_allclose(P2[T - 1], A[T - 1].T @ Pt @ A[T - 1] + W, rtol=1e-12)


def test_transition_norms_structure_and_generalized_eigen_oracle(rng):
    A = _closed_loop(rng, T=4, n=3)
    T, n = A.shape[0], A.shape[1]
    P = bounds.lyapunov_weights(A, W=_spd(rng, n))
    G = bounds.transition_norms(A, P)
    assert G.shape == (T + 1, T + 1)
    np.testing.assert_allclose(np.diag(G), 1.0, rtol=1e-12)  # Φ(k,k) = I in P_k→P_k
    assert np.all(G[np.triu_indices(T + 1, 1)] == 0)
    for i in range(T + 1):
        Phi = np.eye(n)
        for k in range(i, T + 1):
            if k > i:
                Phi = A[k - 1] @ Phi
            # sup ‖Φx‖²_{P_k}/‖x‖²_{P_i} = λ_max of the pencil (ΦᵀP_kΦ, P_i)
            lam = sla.eigh(Phi.T @ P[k] @ Phi, P[i], eigvals_only=True)[-1]
            assert G[k, i] == pytest.approx(np.sqrt(lam), rel=1e-9)
            assert bounds.induced_norm(Phi, P[i], P[k]) == pytest.approx(np.sqrt(lam), rel=1e-9)


def test_remainder_constants_shape_and_formula(rng):
    A = _closed_loop(rng, T=4, n=3)
    T, n = A.shape[0], A.shape[1]
    P = bounds.lyapunov_weights(A)
    D = rng.standard_normal((6, T + 1, n))
    L = bounds.remainder_constants(A, P, D)
    assert L.shape == (6, T)
    for r in range(6):
        for i in range(T):
            res = D[r, i + 1] - A[i] @ D[r, i]
            expect = 2 * np.sqrt(res @ P[i + 1] @ res) / (D[r, i] @ P[i] @ D[r, i])
            assert L[r, i] == pytest.approx(expect, rel=1e-12)


def test_tracking_error_bound_modes_shapes_and_formulas(rng):
    A = _closed_loop(rng, T=4, n=3)
    T, n = A.shape[0], A.shape[1]
    L = rng.uniform(0.1, 0.5, T)
    D = rng.standard_normal((3, T + 1, n)) * 0.2
    one = bounds.tracking_error_bound(A, L, D[0, 0], deviations=D[0])
    many = bounds.tracking_error_bound(A, L, D[:, 0], deviations=D)
    prior = bounds.tracking_error_bound(A, L, D[0, 0])
    assert one.mode == many.mode == "a_posteriori" and prior.mode == "a_priori"
    assert one.bound.shape == one.euclidean.shape == (T + 1,)
    assert many.bound.shape == many.euclidean.shape == (3, T + 1)
    assert prior.bound.shape == (T + 1,)
    np.testing.assert_allclose(many.bound[0], one.bound, rtol=1e-14)
    P = bounds.lyapunov_weights(A)  # default P
    np.testing.assert_allclose(one.P, P, rtol=1e-15)
    G = bounds.transition_norms(A, P)
    np.testing.assert_allclose(one.G, G, rtol=1e-14)
    norm = lambda k, v: np.sqrt(v @ P[k] @ v)
    for r in range(3):
        for k in range(T + 1):
            b = G[k, 0] * norm(0, D[r, 0]) + sum(G[k, i + 1] * L[i] / 2 * norm(i, D[r, i]) ** 2
                                                 for i in range(k))
            assert many.bound[r, k] == pytest.approx(b, rel=1e-12)
    b = [norm(0, D[0, 0])]
    for k in range(1, T + 1):
        b.append(G[k, 0] * b[0] + sum(G[k, i + 1] * L[i] / 2 * b[i] ** 2 for i in range(k)))
    np.testing.assert_allclose(prior.bound, b, rtol=1e-12)
    lam_min = np.array([np.linalg.eigvalsh(P[k])[0] for k in range(T + 1)])
    np.testing.assert_allclose(many.euclidean, many.bound / np.sqrt(lam_min), rtol=1e-12)
    np.testing.assert_allclose(prior.euclidean, prior.bound / np.sqrt(lam_min), rtol=1e-12)


def test_tracking_error_bound_with_given_weights_holds_on_a_linear_rollout(rng):
    # With L = 0 (no remainder) the bound b_k = G[k,0]‖δz_0‖ dominates the realised deviation.
    A = _closed_loop(rng, T=5, n=3)
    T, n = A.shape[0], A.shape[1]
    P = bounds.lyapunov_weights(A, W=2.0, P_terminal=3.0)
    d = [rng.standard_normal(n)]
    for k in range(T):
        d.append(A[k] @ d[-1])
    D = np.array(d)
    tb = bounds.tracking_error_bound(A, 0.0, D[0], P=P)
    real = np.sqrt(np.einsum("ki,kij,kj->k", D, P, D))
    assert np.all(real <= tb.bound * (1 + 1e-12))
    assert np.all(np.linalg.norm(D, axis=1) <= tb.euclidean * (1 + 1e-12))
    np.testing.assert_allclose(tb.P, P)


# =========================================================================== Constrained variant
def _cplant(rng, T=5, n=3, m=2):
    return _plant(rng, T=T, n=n, m=m)


def test_unconstrained_equals_tracking_and_finite_horizon_lqr(rng):
    T, n, m = 5, 3, 2
    sys = _cplant(rng, T, n, m)
    Q, R, Qf = _spd_stack(rng, T, n), _spd_stack(rng, T, m), _spd(rng, n)
    x0, x_ref = rng.standard_normal(n), rng.standard_normal((T + 1, n))
    mpc = ConstrainedLQR(sys, Q, R, Qf=Qf)
    sol = mpc.solve(x0, x_ref)
    assert isinstance(sol, ConstrainedSolution) and sol.status in ("optimal", "optimal_inaccurate")
    assert sol.x.shape == (T + 1, n) and sol.u.shape == (T, m) and sol.solve_time >= 0
    tr = lc.tracking_lqr(sys, Q, R, x_ref, Qf=Qf)
    x = sys.simulate(x0, K=tr.K, k=tr.k)
    u = -np.einsum("kij,kj->ki", tr.K, x[:-1]) + tr.k
    np.testing.assert_allclose(sol.u, u, atol=1e-6)
    np.testing.assert_allclose(sol.x, x, atol=1e-6)
    V0 = x0 @ tr.S[0] @ x0 + 2 * tr.s[0] @ x0 + tr.s0[0]
    assert sol.cost == pytest.approx(V0, rel=1e-6)
    # constant reference (n,) and regulation (x_ref=None) against finite_horizon_lqr
    sol_c = mpc.solve(x0, x_ref[0])
    tr_c = lc.tracking_lqr(sys, Q, R, x_ref[0], Qf=Qf)
    assert sol_c.cost == pytest.approx(x0 @ tr_c.S[0] @ x0 + 2 * tr_c.s[0] @ x0 + tr_c.s0[0], rel=1e-6)
    free = lc.LTVSystem(sys.A, sys.B)
    K, S = lc.finite_horizon_lqr(free, Q, R, Qf=Qf)
    sol_r = ConstrainedLQR(free, Q, R, Qf=Qf).solve(x0)
    assert sol_r.cost == pytest.approx(x0 @ S[0] @ x0, rel=1e-6)
    np.testing.assert_allclose(sol_r.u, -np.einsum("kij,kj->ki", K, free.simulate(x0, K=K)[:-1]),
                               atol=1e-6)


def test_u_norm_max_scalar_and_per_step(rng):
    T, n, m = 5, 3, 2
    sys = _cplant(rng, T, n, m)
    x0 = 3 * rng.standard_normal(n)
    free = ConstrainedLQR(sys, 1.0, 0.1).solve(x0)
    budget = 0.5 * np.linalg.norm(free.u, axis=1).max()
    a = ConstrainedLQR(sys, 1.0, 0.1, u_norm_max=budget).solve(x0)
    b = ConstrainedLQR(sys, 1.0, 0.1, u_norm_max=np.full(T, budget)).solve(x0)
    np.testing.assert_allclose(a.u, b.u, atol=1e-6)
    assert np.all(np.linalg.norm(a.u, axis=1) <= budget * (1 + 1e-6))
    assert np.isclose(np.linalg.norm(a.u, axis=1).max(), budget, rtol=1e-5)  # active
    per = np.linspace(0.1, 1.0, T) * budget
    c = ConstrainedLQR(sys, 1.0, 0.1, u_norm_max=per).solve(x0)
    assert np.all(np.linalg.norm(c.u, axis=1) <= per * (1 + 1e-6))
    assert c.cost >= a.cost - 1e-9 >= free.cost - 2e-9


def test_boxes_accept_scalars_and_vectors_and_x_box_skips_x0(rng):
    T, n = 4, 3
    sys = lc.LTVSystem(0.5 * np.eye(n) + 0.05 * rng.standard_normal((T, n, n)))  # B = I
    x0 = np.array([3.0, -3.0, 2.0])  # outside the state box: allowed, x_0 is given
    lo_u, hi_u = np.array([-1.5, -1.5, -0.3]), 1.5
    lo_x, hi_x = -0.5, np.array([0.5, 2.0, 1.5])
    free = ConstrainedLQR(sys, 1.0, 1.0).solve(x0)
    assert np.any(free.u < lo_u - 1e-3) or np.any(free.u > hi_u + 1e-3)  # the input box binds
    assert np.any(free.x[1:] < lo_x - 1e-3) or np.any(free.x[1:] > hi_x + 1e-3)  # so does the state box
    sol = ConstrainedLQR(sys, 1.0, 1.0, u_box=(lo_u, hi_u), x_box=(lo_x, hi_x)).solve(x0)
    np.testing.assert_array_equal(sol.x[0], x0)
    assert np.all(sol.u >= lo_u - 1e-7) and np.all(sol.u <= hi_u + 1e-7)
    assert np.all(sol.x[1:] >= lo_x - 1e-7) and np.all(sol.x[1:] <= hi_x + 1e-7)
    # an independent cvxpy QP as oracle for the optimum
    x = cp.Variable((T + 1, n))
    u = cp.Variable((T, n))
    cons = [x[0] == x0] + [x[k + 1] == sys.A[k] @ x[k] + u[k] for k in range(T)]
    cons += [u >= np.broadcast_to(lo_u, (T, n)), u <= hi_u, x[1:] >= lo_x,
             x[1:] <= np.broadcast_to(hi_x, (T, n))]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x) + cp.sum_squares(u)), cons)
    prob.solve(solver="CLARABEL")
    assert sol.cost == pytest.approx(prob.value, rel=1e-6)


def test_feature_constraint_means_a_transpose_x_at_least_b(rng):
    T, n, m = 5, 3, 2
    sys = _cplant(rng, T, n, m)
    Q, R = _spd_stack(rng, T, n), _spd_stack(rng, T, m)
    x0 = rng.standard_normal(n)
    free = ConstrainedLQR(sys, Q, R).solve(x0)
    a, k = rng.standard_normal(n), 3
    b = float(a @ free.x[k]) + 1.0  # violated by the unconstrained plan: active at the optimum
    sol = ConstrainedLQR(sys, Q, R, feature_constraints=[(k, a, b)]).solve(x0)
    assert a @ sol.x[k] == pytest.approx(b, rel=1e-6, abs=1e-6)
    # oracle: the QP with the single active equality aᵀx_k = b, by its KKT system
    x_free, M = _condensed(sys, x0)
    Wx = sla.block_diag(*list(Q), Q[-1])
    Wu = sla.block_diag(*list(R))
    Mf = M.reshape(-1, T * m)
    H = Mf.T @ Wx @ Mf + Wu
    g = Mf.T @ Wx @ x_free.reshape(-1)
    arow = a @ M[k]
    KKT = np.block([[2 * H, arow[:, None]], [arow[None, :], np.zeros((1, 1))]])
    rhs = np.concatenate([-2 * g, [b - a @ x_free[k]]])
    u_star = np.linalg.solve(KKT, rhs)[:-1]
    np.testing.assert_allclose(sol.u.reshape(-1), u_star, atol=1e-6)
    # a satisfied constraint (≥ with slack) changes nothing
    loose = ConstrainedLQR(sys, Q, R, feature_constraints=[(k, a, b - 10.0)]).solve(x0)
    np.testing.assert_allclose(loose.u, free.u, atol=1e-6)


def test_infeasible_raises_infeasible_error_with_status(rng):
    T, n = 3, 2
    sys = lc.LTVSystem.constant(np.eye(n), np.ones((n, 1)), T)
    mpc = ConstrainedLQR(sys, 1.0, 1.0, u_box=(-0.1, 0.1), x_box=(-1.0, 1.0))
    with pytest.raises(lc.InfeasibleError, match="infeasible") as info:
        mpc.solve(np.array([5.0, 5.0]))
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, lc.ControlError)
    assert "status" in str(info.value)
    # the same compiled problem still solves a feasible x0 afterwards
    assert mpc.solve(np.array([0.5, 0.5])).status in ("optimal", "optimal_inaccurate")


def test_constrained_solution_cost_is_the_contract_cost(rng):
    T, n, m = 4, 3, 2
    sys = _cplant(rng, T, n, m)
    Q, R, Qf = _spd(rng, n), _spd(rng, m), _spd(rng, n)
    x0, x_ref = rng.standard_normal(n), rng.standard_normal(n)
    sol = ConstrainedLQR(sys, Q, R, Qf=Qf, u_box=(-0.2, 0.2)).solve(x0, x_ref)
    e = sol.x - x_ref
    J = sum(e[k] @ Q @ e[k] + sol.u[k] @ R @ sol.u[k] for k in range(T)) + e[T] @ Qf @ e[T]
    assert sol.cost == pytest.approx(J, rel=1e-10)
    np.testing.assert_allclose(sol.x, sys.simulate(x0, sol.u), atol=1e-9)  # dynamics with drift
