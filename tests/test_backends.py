"""Array backends: selection, per-member Cholesky flags, numpy/torch parity (incl. hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ltv_control as lc
from ltv_control.backends import backend_by_name, get_backend, is_torch_tensor, numpy_backend

torch = pytest.importorskip("torch")
from ltv_control.backends.torch_backend import torch_backend  # noqa: E402

BACKENDS = [numpy_backend, torch_backend]


def test_get_backend_selects_from_inputs():
    assert get_backend(np.zeros(2), None, 1.0) is numpy_backend
    assert get_backend(np.zeros(2), torch.zeros(2)) is torch_backend
    assert get_backend() is numpy_backend
    assert backend_by_name("torch") is torch_backend and backend_by_name("numpy") is numpy_backend
    assert is_torch_tensor(torch.zeros(1)) and not is_torch_tensor(np.zeros(1))
    with pytest.raises(ValueError, match="unknown backend"):
        backend_by_name("jax")


@pytest.mark.parametrize("be", BACKENDS, ids=lambda b: b.name)
def test_cholesky_flags_each_failing_member(be, rng):
    M = rng.normal(size=(3, 2, 4, 4))
    spd = M @ np.swapaxes(M, -1, -2) + 4 * np.eye(4)
    spd[1, 0] = -np.eye(4)          # indefinite
    spd[2, 1, 0, 0] = np.nan        # not finite
    L, info = be.cholesky(be.asarray(spd))
    expected = np.zeros((3, 2), dtype=bool)
    expected[1, 0] = expected[2, 1] = True
    np.testing.assert_array_equal(np.asarray(info) != 0, expected)
    good = be.to_numpy(L)[0, 0]
    np.testing.assert_allclose(good @ good.T, spd[0, 0], rtol=1e-12)


@pytest.mark.parametrize("be", BACKENDS, ids=lambda b: b.name)
def test_triangular_and_cholesky_solves(be, rng):
    M = rng.normal(size=(2, 5, 5))
    G = M @ np.swapaxes(M, -1, -2) + np.eye(5)
    b = rng.normal(size=(2, 5, 3))
    L, _ = be.cholesky(be.asarray(G))
    x = be.to_numpy(be.cholesky_solve(L, be.asarray(b)))
    np.testing.assert_allclose(x, np.linalg.solve(G, b), rtol=1e-10)
    y = be.to_numpy(be.solve_triangular(L, be.asarray(b), lower=True, trans=True))
    Ln = be.to_numpy(L)
    np.testing.assert_allclose(np.swapaxes(Ln, -1, -2) @ y, b, rtol=1e-10, atol=1e-12)


def test_elementary_ops_agree(rng):
    a = rng.normal(size=(3, 4, 4))
    v = rng.normal(size=(3, 4))
    for name, args in [("matmul", (a, a)), ("mT", (a,)), ("symmetrize", (a,)), ("matvec", (a, v)),
                       ("frobenius", (a,)), ("isfinite", (a,))]:
        ref = getattr(numpy_backend, name)(*args)
        got = getattr(torch_backend, name)(*[torch.as_tensor(x) for x in args])
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-14, err_msg=name)
    sym = a + np.swapaxes(a, -1, -2)
    np.testing.assert_allclose(torch_backend.eigvalsh(torch.as_tensor(sym)).numpy(),
                               numpy_backend.eigvalsh(sym), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(torch_backend.einsum("kij,kj->ki", torch.as_tensor(a), torch.as_tensor(v)).numpy(),
                               numpy_backend.einsum("kij,kj->ki", a, v), rtol=1e-14)


def test_dtype_resolution():
    assert numpy_backend.resolve_dtype(None) == np.float64
    assert numpy_backend.resolve_dtype("float32") == np.float32
    assert numpy_backend.resolve_dtype(torch.float32) == np.float32
    assert torch_backend.resolve_dtype(None) == torch.float64
    assert torch_backend.resolve_dtype("float32") == torch.float32
    assert torch_backend.resolve_dtype(np.float32) == torch.float32
    # devices without float64 (MPS) default to the tensor's own dtype / float32
    assert torch_backend.resolve_dtype(None, "mps") == torch.float32
    assert torch_backend.resolve_dtype(None, torch.zeros(1, dtype=torch.float32)) == torch.float64


def test_torch_keeps_device_and_half_precision_widens():
    t = torch.ones(2, 2, dtype=torch.bfloat16)
    assert numpy_backend.asarray(t).dtype == np.float32
    z = torch_backend.zeros((2, 3), device=t.device)
    assert z.device == t.device and z.dtype == torch.float64
    assert torch_backend.asarray(np.ones(3), device="cpu").device.type == "cpu"


def test_lqr_on_torch_keeps_type_device_and_matches_numpy(rng):
    A = rng.normal(size=(2, 6, 4, 4)) / 2
    B = rng.normal(size=(2, 6, 4, 3))
    sys_np = lc.LTVSystem(A, B)
    sys_t = lc.LTVSystem(torch.as_tensor(A, dtype=torch.float32), torch.as_tensor(B, dtype=torch.float32))
    K, S = lc.finite_horizon_lqr(sys_np, 1.0, 0.5, N=0.01 * np.ones((4, 3)))
    Kt, St = lc.finite_horizon_lqr(sys_t, 1.0, 0.5, N=0.01 * np.ones((4, 3)))
    assert isinstance(Kt, torch.Tensor) and Kt.dtype == torch.float64 and Kt.device == sys_t.A.device
    # the float32 system data are rounded once; the recursion itself runs in float64
    K_ref, S_ref = lc.finite_horizon_lqr(sys_t.numpy(), 1.0, 0.5, N=0.01 * np.ones((4, 3)))
    np.testing.assert_allclose(Kt.numpy(), K_ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(St.numpy(), S_ref, rtol=1e-12, atol=1e-13)
    Kt32, _ = lc.finite_horizon_lqr(sys_t, 1.0, 0.5, dtype=torch.float32)
    assert Kt32.dtype == torch.float32


@st.composite
def _problems(draw):
    T = draw(st.integers(1, 5))
    n = draw(st.integers(1, 5))
    m = draw(st.integers(1, 4))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    identity_input = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return T, n, (n if identity_input else m), batch, identity_input, seed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_problems(), st.sampled_from(["numpy", "torch"]))
def test_property_optimal_cost_and_backend_parity(problem, backend):
    T, n, m, batch, identity_input, seed = problem
    rng = np.random.default_rng(seed)
    A = rng.normal(size=batch + (T, n, n)) / np.sqrt(n)
    B = None if identity_input else rng.normal(size=batch + (T, n, m))
    Qh = rng.normal(size=(T, n, n))
    Q = Qh @ np.swapaxes(Qh, -1, -2) / n
    R = np.eye(m) * rng.uniform(0.1, 2.0)
    x0 = rng.normal(size=batch + (n,))
    system = lc.LTVSystem(A, B)
    if backend == "torch":
        system = system.to(device="cpu")
    K, S = lc.finite_horizon_lqr(system, Q, R)
    assert tuple(K.shape) == batch + (T, m, n) and tuple(S.shape) == batch + (T + 1, n, n)
    Kn = np.asarray(K) if backend == "numpy" else K.numpy()
    Sn = np.asarray(S) if backend == "numpy" else S.numpy()
    np.testing.assert_array_equal(Sn, np.swapaxes(Sn, -1, -2))
    assert np.linalg.eigvalsh(Sn).min() >= -1e-10 * max(1.0, np.abs(Sn).max())
    ref = lc.LTVSystem(A, B)
    x = ref.simulate(x0, K=Kn)
    u = -np.einsum("...kmn,...kn->...km", Kn, x[..., :-1, :])
    cost = lc.lqr_cost(ref, Q, R, x, u)
    predicted = np.einsum("...i,...ij,...j->...", x0, Sn[..., 0, :, :], x0)
    np.testing.assert_allclose(cost, predicted, rtol=1e-9, atol=1e-12)
    if backend == "torch":
        K_np, S_np = lc.finite_horizon_lqr(ref, Q, R)
        np.testing.assert_allclose(Kn, K_np, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(Sn, S_np, rtol=1e-12, atol=1e-13)


def test_torch_backend_accessors_return_the_singleton():
    import ltv_control.backends as backends

    assert backends.get_torch_backend() is torch_backend
    assert backends.backend_by_name("torch") is torch_backend
    assert backends.get_backend(torch.zeros(2)) is torch_backend


@pytest.mark.parametrize("be", BACKENDS, ids=lambda b: b.name)
def test_backends_implement_exactly_the_protocol(be):
    from ltv_control.backends import BACKEND_OPERATIONS, Backend

    assert isinstance(be, Backend)
    public = {name for name in dir(be) if not name.startswith("_")}
    assert public == BACKEND_OPERATIONS, (public ^ BACKEND_OPERATIONS)


def test_identity_shift_riccati_update_and_eps_agree(rng):
    a = rng.normal(size=(2, 4, 4))
    W = rng.normal(size=(2, 3, 4))
    Q = a @ np.swapaxes(a, -1, -2)
    np.testing.assert_allclose(torch_backend.add_identity(torch.as_tensor(a), 0.7).numpy(),
                               a + 0.7 * np.eye(4), rtol=1e-15)
    np.testing.assert_array_equal(numpy_backend.add_identity(a, 0.7), a + 0.7 * np.eye(4))
    expected = Q + a - np.swapaxes(W, -1, -2) @ W
    expected = 0.5 * (expected + np.swapaxes(expected, -1, -2))
    for q_arg, q_mat in ((Q, Q), (0.3, 0.3 * np.eye(4))):
        ref = expected - Q + q_mat
        got_np = numpy_backend.riccati_update(q_arg, a.copy(), W)
        got_t = torch_backend.riccati_update(q_arg if isinstance(q_arg, float) else torch.as_tensor(q_arg),
                                             torch.as_tensor(a), torch.as_tensor(W)).numpy()
        np.testing.assert_allclose(got_np, ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_t, ref, rtol=1e-12, atol=1e-12)
    # single matrices take the BLAS path (syrk, in place on X)
    got = numpy_backend.riccati_update(Q[0], a[0].copy(), W[0])
    np.testing.assert_allclose(got, expected[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got, got.T)
    assert numpy_backend.eps("float32") == torch_backend.eps(torch.float32) == np.finfo(np.float32).eps


def test_overwrite_flags_give_the_same_result(rng):
    M = rng.normal(size=(5, 5))
    G = M @ M.T + np.eye(5)
    b = rng.normal(size=(5, 3))
    L, info = numpy_backend.cholesky(G.copy(), overwrite_a=True)
    assert not np.any(info)
    np.testing.assert_allclose(L @ L.T, G, rtol=1e-12)
    x = numpy_backend.solve_triangular(L, b.copy(), lower=True, trans=True, overwrite_b=True)
    np.testing.assert_allclose(L.T @ x, b, rtol=1e-12, atol=1e-12)
