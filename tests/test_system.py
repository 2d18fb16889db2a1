"""LTVSystem: construction, simulation, closed loop, projection, conversion, interop."""

from __future__ import annotations

import control
import numpy as np
import pytest

import ltv_control as lc


def _system(rng, T=5, n=3, m=2, batch=(), affine=True):
    A = rng.normal(size=batch + (T, n, n)) / np.sqrt(n)
    B = rng.normal(size=batch + (T, n, m))
    c = rng.normal(size=batch + (T, n)) if affine else None
    return lc.LTVSystem(A, B, c)


def test_properties(rng):
    sys = _system(rng, T=6, n=4, m=2)
    assert (sys.horizon, sys.n_states, sys.n_inputs) == (6, 4, 2)
    assert sys.backend == "numpy" and sys.batch_shape == ()
    assert sys.c is not None and sys.c.shape == (6, 4)
    plain = lc.LTVSystem(np.zeros((6, 4, 4)))
    assert plain.B is None and plain.c is None and plain.n_inputs == 4
    batched = _system(rng, batch=(2, 3))
    assert batched.batch_shape == (2, 3)
    assert "T=5" in repr(batched) and "batch=(2, 3)" in repr(batched)


def test_batch_dims_broadcast_between_matrices(rng):
    A = rng.normal(size=(2, 1, 4, 3, 3))
    B = rng.normal(size=(5, 4, 3, 1))
    sys = lc.LTVSystem(A, B)
    assert sys.batch_shape == (2, 5)


def test_dtype_is_kept_and_integers_become_float(rng):
    A32 = rng.normal(size=(3, 2, 2)).astype(np.float32)
    assert lc.LTVSystem(A32).dtype == np.float32
    assert lc.LTVSystem(np.ones((3, 2, 2), dtype=np.int64)).dtype == np.float64
    assert lc.LTVSystem([[[1, 0], [0, 1]]]).horizon == 1


def test_open_loop_simulation_matches_manual_loop(rng):
    sys = _system(rng)
    x0 = rng.normal(size=3)
    u = rng.normal(size=(5, 2))
    x = sys.simulate(x0, u)
    expected = [x0]
    for k in range(5):
        expected.append(sys.A[k] @ expected[-1] + sys.B[k] @ u[k] + sys.c[k])
    np.testing.assert_allclose(x, np.stack(expected), rtol=1e-14)
    free = sys.simulate(x0)
    np.testing.assert_allclose(free[1], sys.A[0] @ x0 + sys.c[0])


def test_closed_loop_simulation_and_closed_loop_matrices(rng):
    sys = _system(rng, affine=False)
    K = rng.normal(size=(5, 2, 3))
    kff = rng.normal(size=(5, 2))
    x0 = rng.normal(size=3)
    x = sys.simulate(x0, K=K, k=kff)
    xs = [x0]
    for j in range(5):
        u = -K[j] @ xs[-1] + kff[j]
        xs.append(sys.A[j] @ xs[-1] + sys.B[j] @ u)
    np.testing.assert_allclose(x, np.stack(xs), rtol=1e-13)
    A_cl = sys.closed_loop(K)
    np.testing.assert_allclose(A_cl, sys.A - sys.B @ K)
    np.testing.assert_allclose(lc.LTVSystem(A_cl).simulate(x0), sys.simulate(x0, K=K), rtol=1e-13)


def test_identity_input_closed_loop_and_simulation(rng):
    A = rng.normal(size=(4, 3, 3))
    sys = lc.LTVSystem(A)
    K = rng.normal(size=(4, 3, 3))
    np.testing.assert_allclose(sys.closed_loop(K), A - K)
    u = rng.normal(size=(4, 3))
    x = sys.simulate(np.ones(3), u)
    np.testing.assert_allclose(x[1], A[0] @ np.ones(3) + u[0])


def test_batched_simulation_broadcasts_initial_state(rng):
    sys = _system(rng, batch=(2,))
    x0 = rng.normal(size=3)
    x = sys.simulate(x0)
    assert x.shape == (2, 6, 3)
    for b in range(2):
        member = lc.LTVSystem(sys.A[b], sys.B[b], sys.c[b])
        np.testing.assert_allclose(x[b], member.simulate(x0), rtol=1e-14)
    # a batch of initial states for an unbatched system
    single = lc.LTVSystem(sys.A[0], sys.B[0], sys.c[0])
    X0 = rng.normal(size=(4, 3))
    np.testing.assert_allclose(single.simulate(X0)[2], single.simulate(X0[2]), rtol=1e-14)


def test_project_formula(rng):
    T, n, r = 4, 6, 3
    sys = _system(rng, T=T, n=n, m=2)
    U = np.stack([np.linalg.qr(rng.normal(size=(n, r)))[0] for _ in range(T + 1)])
    red = sys.project(U)
    assert (red.n_states, red.n_inputs, red.horizon) == (r, 2, T)
    for k in range(T):
        np.testing.assert_allclose(red.A[k], U[k + 1].T @ sys.A[k] @ U[k], atol=1e-14)
        np.testing.assert_allclose(red.B[k], U[k + 1].T @ sys.B[k], atol=1e-14)
        np.testing.assert_allclose(red.c[k], U[k + 1].T @ sys.c[k], atol=1e-14)


def test_project_identity_input_keeps_m_equal_n(rng):
    T, n, r = 3, 5, 2
    sys = lc.LTVSystem(rng.normal(size=(T, n, n)))
    U = np.stack([np.linalg.qr(rng.normal(size=(n, r)))[0] for _ in range(T + 1)])
    red = sys.project(U)
    assert red.n_inputs == n and red.B.shape == (T, r, n)
    np.testing.assert_allclose(red.B[1], U[2].T)


def test_project_full_basis_is_a_change_of_coordinates(rng):
    # With square orthogonal bases the projected LQR cost of U_0ᵀx0 equals the original one.
    T, n = 4, 3
    sys = _system(rng, T=T, n=n, affine=False)
    U = np.stack([np.linalg.qr(rng.normal(size=(n, n)))[0] for _ in range(T + 1)])
    red = sys.project(U)
    x0 = rng.normal(size=n)
    _, S = lc.finite_horizon_lqr(sys, 1.0, 1.0)
    _, Sr = lc.finite_horizon_lqr(red, 1.0, 1.0)
    assert (U[0].T @ x0) @ Sr[0] @ (U[0].T @ x0) == pytest.approx(x0 @ S[0] @ x0, rel=1e-12)


def test_project_rejects_bad_bases(rng):
    sys = _system(rng, T=3, n=4)
    with pytest.raises(lc.PropertyError, match="bases: expected orthonormal columns"):
        sys.project(rng.normal(size=(4, 4, 2)))
    with pytest.raises(lc.DimensionError, match=r"bases: expected \(T\+1=4, n=4, r\)"):
        sys.project(np.zeros((3, 4, 2)))


def test_constant_broadcasts_and_reads_t_equal_n(rng):
    n = 3
    A = rng.normal(size=(n, n))
    B = rng.normal(size=(n, 1))
    sys = lc.LTVSystem.constant(A, B, n)  # T == n
    assert sys.horizon == n and sys.A.shape == (n, n, n) and sys.B.shape == (n, n, 1)
    for k in range(n):
        np.testing.assert_array_equal(sys.A[k], A)
    drift = lc.LTVSystem.constant(A, None, 4, c=np.ones(n))
    assert drift.B is None and drift.c.shape == (4, n)
    batched = lc.LTVSystem.constant(np.stack([A, 2 * A]), B, 5)
    assert batched.batch_shape == (2,) and batched.A.shape == (2, 5, n, n)


def test_constant_rejects_bad_horizon():
    with pytest.raises(lc.ArgumentError, match="horizon"):
        lc.LTVSystem.constant(np.eye(2), None)
    with pytest.raises(lc.ArgumentError, match="horizon: expected a positive int"):
        lc.LTVSystem.constant(np.eye(2), None, 2.5)
    with pytest.raises(lc.DimensionError, match="horizon: expected T >= 1"):
        lc.LTVSystem.constant(np.eye(2), None, 0)


def test_getitem_returns_statespace(rng):
    sys = _system(rng, T=4, n=3, m=2)
    ss = sys[2]
    assert isinstance(ss, control.StateSpace) and ss.isdtime(strict=True)
    np.testing.assert_array_equal(ss.A, sys.A[2])
    np.testing.assert_array_equal(ss.B, sys.B[2])
    np.testing.assert_array_equal(ss.C, np.eye(3))
    np.testing.assert_array_equal(ss.D, np.zeros((3, 2)))
    np.testing.assert_array_equal(sys[-1].A, sys.A[3])
    assert sys[2] is ss  # cached
    ident = lc.LTVSystem(sys.A)[0]
    np.testing.assert_array_equal(ident.B, np.eye(3))
    batched = _system(rng, batch=(2,))
    np.testing.assert_array_equal(batched[1, 3].A, batched.A[1, 3])
    with pytest.raises(lc.ArgumentError, match="integer index"):
        batched[3]
    with pytest.raises(IndexError, match="step 9 out of range"):
        sys[9]


def test_statespace_is_built_lazily(rng, monkeypatch):
    calls = []
    original = control.StateSpace.__init__

    def counting(self, *args, **kwargs):
        calls.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(control.StateSpace, "__init__", counting)
    sys = _system(rng)
    lc.finite_horizon_lqr(sys, 1.0, 1.0)
    sys.simulate(np.zeros(3))
    assert calls == []
    sys[0]
    assert len(calls) >= 1


def test_from_statespace_round_trip(rng):
    sys = _system(rng, T=3, n=2, m=1, affine=False)
    models = [sys[k] for k in range(3)]
    back = lc.LTVSystem.from_statespace(models)
    np.testing.assert_array_equal(back.A, sys.A)
    np.testing.assert_array_equal(back.B, sys.B)
    with pytest.raises(lc.PropertyError, match="discrete-time"):
        lc.LTVSystem.from_statespace([control.ss(np.eye(2), np.ones((2, 1)), np.eye(2), 0)])
    with pytest.raises(lc.DimensionError, match="empty"):
        lc.LTVSystem.from_statespace([])
    with pytest.raises(lc.DimensionError, match=r"systems\[1\]"):
        lc.LTVSystem.from_statespace([models[0], control.ss(np.eye(3), np.ones((3, 1)), np.eye(3), 0, dt=True)])
    with pytest.raises(lc.ArgumentError, match="list of control.StateSpace"):
        lc.LTVSystem.from_statespace(models[0])


def test_to_and_numpy_conversions(rng):
    torch = pytest.importorskip("torch")
    sys = _system(rng)
    s32 = sys.to(dtype="float32")
    assert s32.backend == "numpy" and s32.dtype == np.float32
    st = sys.to(device="cpu")
    assert st.backend == "torch" and isinstance(st.A, torch.Tensor) and st.A.dtype == torch.float64
    st32 = st.to(dtype=torch.float32)
    assert st32.A.dtype == torch.float32 and st32.c.dtype == torch.float32
    back = st.numpy()
    assert back.backend == "numpy"
    np.testing.assert_array_equal(back.A, sys.A)
    np.testing.assert_array_equal(back.c, sys.c)
    half = lc.LTVSystem(torch.ones(2, 3, 3, dtype=torch.bfloat16)).numpy()
    assert half.dtype == np.float32


def test_torch_simulation_keeps_type_and_matches_numpy(rng):
    torch = pytest.importorskip("torch")
    sys = _system(rng, batch=(2,))
    st = sys.to(device="cpu")
    x0 = rng.normal(size=(2, 3))
    u = rng.normal(size=(2, 5, 2))
    xt = st.simulate(torch.as_tensor(x0), torch.as_tensor(u))
    assert isinstance(xt, torch.Tensor)
    np.testing.assert_allclose(xt.numpy(), sys.simulate(x0, u), rtol=1e-14)


def test_mixed_numpy_and_torch_inputs_become_torch(rng):
    torch = pytest.importorskip("torch")
    A = torch.as_tensor(rng.normal(size=(3, 2, 2)))
    sys = lc.LTVSystem(A, rng.normal(size=(3, 2, 1)))
    assert sys.backend == "torch" and isinstance(sys.B, torch.Tensor)


def test_simulate_argument_errors(rng):
    sys = _system(rng)
    K = np.zeros((5, 2, 3))
    with pytest.raises(lc.ArgumentError, match="either an open-loop input u or a feedback K"):
        sys.simulate(np.zeros(3), np.zeros((5, 2)), K=K)
    with pytest.raises(lc.ArgumentError, match="requires K"):
        sys.simulate(np.zeros(3), k=np.zeros((5, 2)))
    with pytest.raises(lc.DimensionError, match=r"x0: expected \(3,\) or \(\*batch, 3\); found shape \(4,\)"):
        sys.simulate(np.zeros(4))
    with pytest.raises(lc.DimensionError, match=r"u: expected .*found shape \(4, 2\)"):
        sys.simulate(np.zeros(3), np.zeros((4, 2)))
    with pytest.raises(lc.DimensionError, match=r"K: expected \(T=5, m=2, n=3\)"):
        sys.simulate(np.zeros(3), K=np.zeros((5, 3, 2)))
    with pytest.raises(lc.ArgumentError, match="unknown keyword"):
        sys.simulate(np.zeros(3), gains=K)
