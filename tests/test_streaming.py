"""Streamed O(n²) Riccati synthesis (ltv_control.streaming) against the dense path and closed forms."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import ltv_control as lc
from ltv_control.streaming import (
    dense_memory_bytes,
    iter_lqr_gains,
    streamed_feedback,
    streamed_memory_bytes,
)


def _random_plant(rng, T, n, scale=0.3):
    return np.eye(n) + scale * rng.standard_normal((T, n, n)) / np.sqrt(n)


def _spd(rng, n, shift=0.5):
    M = rng.standard_normal((n, n))
    return M @ M.T / n + shift * np.eye(n)


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(np.asarray(b)), 1e-300))


def test_streamed_matches_dense_lqr_general_weights(rng):
    T, n, m = 7, 6, 3
    A = rng.standard_normal((T, n, n)) * 0.6
    B = rng.standard_normal((n, m))
    Q = np.stack([_spd(rng, n) for _ in range(T)])
    R = _spd(rng, m, shift=1.0)
    Qf = _spd(rng, n)
    V = rng.standard_normal((T, n))
    dense = lc.finite_horizon_lqr(lc.LTVSystem(A, np.broadcast_to(B, (T, n, m)).copy()), Q, R, Qf=Qf)
    w_dense = np.einsum("tmn,tn->tm", dense.K, V)
    out = streamed_feedback(((k, A[k]) for k in reversed(range(T))), V, Q, R, Qf=Qf, B=B)
    assert out.w.shape == (T, m)
    assert _rel(out.w, w_dense) < 1e-10
    assert _rel(out.S0, dense.S[0]) < 1e-10
    gains = list(iter_lqr_gains(A, Q, R, Qf=Qf, B=B))
    assert [g.k for g in gains] == list(range(T - 1, -1, -1))
    for k, K in gains:
        assert _rel(K, dense.K[k]) < 1e-10


def test_streamed_matches_dense_identity_input_qf_default(rng):
    T, n = 9, 8
    A = _random_plant(rng, T, n)
    V = rng.standard_normal((T, n))
    dense = lc.finite_horizon_lqr(lc.LTVSystem(A), 0.1, 1.0)  # Qf=None -> Q at T-1
    out = streamed_feedback(lambda k: A[k], V, 0.1, 1.0, horizon=T)
    assert _rel(out.w, np.einsum("tmn,tn->tm", dense.K, V)) < 1e-10
    assert _rel(out.S0, dense.S[0]) < 1e-10


def test_isotropic_closed_form(rng):
    """A_k = c_k U_k (U_k orthogonal), Q = qI, R = rI, B = I  =>  S_k = p_k I, K_k = p/(p+r) A_k."""
    T, n, q, r, qf = 12, 40, 0.3, 2.0, 0.7
    c = rng.uniform(0.5, 1.5, T)
    U = np.stack([np.linalg.qr(rng.standard_normal((n, n)))[0] for _ in range(T)])
    A = c[:, None, None] * U
    V = rng.standard_normal((T, n))
    p = qf
    w_expected = np.zeros((T, n))
    for k in reversed(range(T)):
        w_expected[k] = p / (p + r) * A[k] @ V[k]
        p = q + c[k] ** 2 * p * r / (p + r)
    out = streamed_feedback(A, V, q, r, Qf=qf)
    assert _rel(out.w, w_expected) < 1e-12
    assert _rel(out.S0, p * np.eye(n)) < 1e-12


def test_providers_agree_and_torch_backend(rng):
    torch = pytest.importorskip("torch")
    T, n = 5, 7
    A = _random_plant(rng, T, n)
    V = rng.standard_normal((T, n))
    ref = streamed_feedback(A, V, 0.2, 1.5, Qf=0.4)
    via_iter = streamed_feedback(((k, A[k]) for k in range(T - 1, -1, -1)), V, 0.2, 1.5, Qf=0.4, horizon=T)
    via_call = streamed_feedback(lambda k: A[k], V, 0.2, 1.5, Qf=0.4, horizon=T)
    np.testing.assert_array_equal(via_iter.w, ref.w)
    np.testing.assert_array_equal(via_call.w, ref.w)
    At = torch.as_tensor(A)
    out_t = streamed_feedback(((k, At[k]) for k in range(T - 1, -1, -1)), torch.as_tensor(V), 0.2, 1.5, Qf=0.4)
    assert isinstance(out_t.w, torch.Tensor) and out_t.w.dtype == torch.float64
    assert _rel(out_t.w.numpy(), ref.w) < 1e-12
    out32 = streamed_feedback(At.float(), V, 0.2, 1.5, Qf=0.4, dtype="float32")
    assert out32.w.dtype == torch.float32
    assert 0 < _rel(out32.w.double().numpy(), ref.w) < 1e-4  # float32 rounding, not exact
    out64 = streamed_feedback(At.float(), V, 0.2, 1.5, Qf=0.4, dtype=torch.float64)
    assert out64.w.dtype == torch.float64
    on_device = streamed_feedback(A, V, 0.2, 1.5, Qf=0.4, device="cpu")  # numpy in, torch recursion
    assert isinstance(on_device.w, torch.Tensor) and on_device.w.device.type == "cpu"
    assert _rel(on_device.w.numpy(), ref.w) < 1e-12


def test_callable_input_matrix_zero_on_some_layers(rng):
    T, n = 6, 5
    A = _random_plant(rng, T, n)
    V = rng.standard_normal((T, n))
    controlled = {1, 4}
    Bstack = np.stack([np.eye(n) if k in controlled else np.zeros((n, n)) for k in range(T)])
    dense = lc.finite_horizon_lqr(lc.LTVSystem(A, Bstack), 0.1, 1.0, Qf=0.1)
    out = streamed_feedback(A, V, 0.1, 1.0, Qf=0.1, B=lambda k: None if k in controlled else np.zeros((n, n)))
    assert _rel(out.w, np.einsum("tmn,tn->tm", dense.K, V)) < 1e-10
    assert np.all(out.w[[0, 2, 3, 5]] == 0)


def test_peak_memory_does_not_grow_with_horizon(rng):
    n = 96
    base = rng.standard_normal((n, n)) * 0.3 / np.sqrt(n)

    def provider(k):
        return np.eye(n) + np.roll(base, k, axis=0)

    def peak(T):
        V = np.ones((T, n))
        tracemalloc.start()
        streamed_feedback(provider, V, 0.1, 1.0, horizon=T)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    short, long = peak(4), peak(48)
    matrix = n * n * 8
    assert long < short + 4 * 48 * n * 8 + matrix  # only w (T, n) grows
    assert long < dense_memory_bytes(48, n) / 8
    assert streamed_memory_bytes(48, n) < dense_memory_bytes(48, n) / 20


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda A, V: streamed_feedback(((k, A[k]) for k in (4, 2, 1, 0)), V, 0.1, 1.0), lc.DimensionError, "stage 3"),
        (lambda A, V: streamed_feedback(((k, A[k]) for k in (4, 3, 2)), V, 0.1, 1.0), lc.DimensionError, "before stage 0"),
        (lambda A, V: list(iter_lqr_gains(lambda k: A[k], 0.1, 1.0)), lc.ArgumentError, "horizon"),
        (lambda A, V: streamed_feedback(A, V[:, :3], 0.1, 1.0), lc.DimensionError, "directions"),
        (lambda A, V: streamed_feedback(A, V[:3], 0.1, 1.0), lc.DimensionError, "horizon"),
        (lambda A, V: streamed_feedback(A, V, 0.1, 1.0, dtype="int32"), lc.ArgumentError, "dtype"),
        (lambda A, V: streamed_feedback(A, V, 0.1, 1.0, bogus=1), lc.ArgumentError, "bogus"),
        (lambda A, V: streamed_feedback(A, V, 0.1, 0.0), lc.PropertyError, "R"),
        (lambda A, V: streamed_feedback(A, V, 0.1, 1.0, Qf=np.ones((3, 3))), lc.DimensionError, "Qf"),
        (lambda A, V: streamed_feedback(np.where(np.arange(5)[:, None, None] == 2, np.nan, A), V, 0.1, 1.0),
         lc.PropertyError, r"A\[2\]"),
        (lambda A, V: streamed_feedback(A[:, :, :3], V, 0.1, 1.0), lc.DimensionError, "provider"),
    ],
)
def test_bad_input(rng, call, exc, match):
    A = _random_plant(rng, 5, 4)
    V = rng.standard_normal((5, 4))
    with pytest.raises(exc, match=match):
        call(A, V)


def test_import_without_torch():
    import subprocess
    import sys

    code = "import sys, ltv_control.streaming; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_scaled_identity_step_equals_generic_step(rng, backend):
    from ltv_control.riccati import riccati_step
    from ltv_control.streaming import scaled_identity_step

    n, q, r = 30, 0.3, 1.7
    S = _spd(rng, n)
    A = _random_plant(rng, 1, n)[0]
    if backend == "torch":
        torch = pytest.importorskip("torch")
        S, A = torch.as_tensor(S), torch.as_tensor(A)
        eye = torch.eye(n, dtype=torch.float64)
    else:
        eye = np.eye(n)
    K, S_new = scaled_identity_step(S, A, q, r, step=3)
    K_ref, S_ref = riccati_step(S, A, None, q * eye, r * eye)
    assert type(K) is type(K_ref)
    assert _rel(np.asarray(K), np.asarray(K_ref)) < 1e-12
    assert _rel(np.asarray(S_new), np.asarray(S_ref)) < 1e-12
    assert np.array_equal(np.asarray(S_new), np.asarray(S_new).T)
    with pytest.raises(lc.NumericalError, match="step 3"):
        scaled_identity_step(-10 * S, A, q, r, step=3)


def test_lean_step_peak_memory_in_matrices(rng):
    """The A-LQR case (B = I, scalar Q, R) holds at most ~9 n×n arrays at its peak."""
    n, T = 200, 3
    A = _random_plant(rng, T, n)
    V = rng.standard_normal((T, n))
    tracemalloc.start()
    streamed_feedback(lambda k: A[k], V, 0.1, 1.0, horizon=T)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 9 * n * n * 8


def _documented(doc):
    import re

    section = re.split(r"\n\s*Parameters\n\s*-+\n", doc, maxsplit=1)
    assert len(section) == 2, "no Parameters section"
    body = re.split(r"\n\s*(Returns|Raises|Notes|Examples|Yields)\n\s*-+\n", section[1])[0]
    names = set()
    for match in re.finditer(r"^\s*([\w*, ]+?) :", body, re.M):
        names.update(n.strip().lstrip("*") for n in match.group(1).split(","))
    return names


def test_every_parameter_documented_and_unknown_keywords_refused(rng):
    import inspect

    from ltv_control.streaming import scaled_identity_step

    funcs = [streamed_feedback, iter_lqr_gains, scaled_identity_step]
    try:
        from ltv_control.adapters import distributed, streamed_fit

        funcs += [distributed.iter_distributed_jacobians, distributed.distributed_jacobians,
                  distributed.init_distributed, distributed.distributed_context, streamed_fit.fit_alqr_streamed]
    except ImportError:  # torch extra absent
        pass
    for func in funcs:
        params = [p for p, v in inspect.signature(func).parameters.items() if v.kind is not v.VAR_KEYWORD]
        missing = set(params) - _documented(inspect.getdoc(func))
        assert not missing, f"{func.__name__}: {missing} undocumented"
    A = _random_plant(rng, 2, 3)
    with pytest.raises(lc.ArgumentError, match="nope"):
        list(iter_lqr_gains(A, 0.1, 1.0, nope=1))
