"""Every bad input raises the documented exception with a message naming argument and shapes."""

from __future__ import annotations

import numpy as np
import pytest

import ltv_control as lc
from ltv_control import _validation as V
from ltv_control.backends import numpy_backend


@pytest.fixture
def system(rng):
    return lc.LTVSystem(rng.normal(size=(4, 3, 3)) / 3, rng.normal(size=(4, 3, 2)))


def test_unknown_keyword_is_argument_error(system):
    with pytest.raises(lc.ArgumentError, match=r"finite_horizon_lqr\(\) got unknown keyword argument\(s\) 'Qff'"):
        lc.finite_horizon_lqr(system, 1.0, 1.0, Qff=1.0)
    with pytest.raises(TypeError):  # ArgumentError is a TypeError
        lc.tracking_lqr(system, 1.0, 1.0, np.zeros(3), xref=1)


def test_missing_argument_is_argument_error(system):
    with pytest.raises(lc.ArgumentError, match="finite_horizon_lqr"):
        lc.finite_horizon_lqr(system, 1.0)


def test_system_must_be_ltvsystem():
    with pytest.raises(lc.ArgumentError, match="system: expected an ltv_control.LTVSystem, found ndarray"):
        lc.finite_horizon_lqr(np.zeros((4, 3, 3)), 1.0, 1.0)


def test_weight_shapes_name_argument_expected_and_found(system):
    with pytest.raises(lc.DimensionError, match=r"Q: expected .*\(3, 3\).*\(4, 3, 3\).*found shape \(2, 2\)"):
        lc.finite_horizon_lqr(system, np.eye(2), 1.0)
    with pytest.raises(lc.DimensionError, match=r"R: expected .*\(2, 2\).*found shape \(3, 3\)"):
        lc.finite_horizon_lqr(system, 1.0, np.eye(3))
    with pytest.raises(lc.DimensionError, match=r"Q: .*per-step stack, and its length 3 != T = 4"):
        lc.finite_horizon_lqr(system, np.stack([np.eye(3)] * 3), 1.0)
    with pytest.raises(lc.DimensionError, match="terminal weight is passed separately as Qf"):
        lc.finite_horizon_lqr(system, np.stack([np.eye(3)] * 5), 1.0)
    with pytest.raises(lc.DimensionError, match=r"N: .*found shape \(2, 3\)"):
        lc.finite_horizon_lqr(system, 1.0, 1.0, N=np.zeros((2, 3)))
    with pytest.raises(lc.DimensionError, match=r"N: a scalar means c·I and needs a square \(3, 2\)"):
        lc.finite_horizon_lqr(system, 1.0, 1.0, N=0.1)
    with pytest.raises(lc.DimensionError, match=r"Qf: expected .*found shape \(3, 2\)"):
        lc.finite_horizon_lqr(system, 1.0, 1.0, Qf=np.zeros((3, 2)))
    with pytest.raises(lc.DimensionError, match=r"Q: expected .*found shape \(3,\)"):
        lc.finite_horizon_lqr(system, np.ones(3), 1.0)


def test_weight_batch_must_broadcast(rng):
    sys2 = lc.LTVSystem(rng.normal(size=(2, 4, 3, 3)) / 3)
    Qb = np.broadcast_to(np.eye(3), (3, 4, 3, 3))
    with pytest.raises(lc.DimensionError, match=r"Q: batch dimensions \(3,\) do not broadcast .*\(2,\)"):
        lc.finite_horizon_lqr(sys2, Qb, 1.0)


def test_symmetry_is_relative(system):
    Q = np.diag([1.0, 2.0, 3.0]) * 1e6
    tiny = Q.copy()
    tiny[0, 1] += 1e-9 * np.linalg.norm(Q)  # relative asymmetry ~1e-9: accepted
    lc.finite_horizon_lqr(system, tiny, 1.0)
    big = Q.copy()
    big[0, 1] += 1e-2 * np.linalg.norm(Q)
    with pytest.raises(lc.PropertyError, match=r"Q: expected a symmetric matrix .*found relative asymmetry 0.0"):
        lc.finite_horizon_lqr(system, big, 1.0)
    stack = np.stack([np.eye(3)] * 4)
    stack[2, 0, 1] = 0.5
    with pytest.raises(lc.PropertyError, match="at step 2"):
        lc.finite_horizon_lqr(system, stack, 1.0)


def test_definiteness(system):
    with pytest.raises(lc.PropertyError, match=r"Q: expected a positive semidefinite matrix, found smallest eigenvalue -1"):
        lc.finite_horizon_lqr(system, np.diag([1.0, -1.0, 1.0]), 1.0)
    with pytest.raises(lc.PropertyError, match="R: expected a positive definite matrix"):
        lc.finite_horizon_lqr(system, 1.0, np.diag([1.0, 0.0]))
    with pytest.raises(lc.PropertyError, match=r"R: expected a positive definite weight, found scalar 0"):
        lc.finite_horizon_lqr(system, 1.0, 0.0)
    with pytest.raises(lc.PropertyError, match=r"Q: expected a positive semidefinite weight, found scalar -1"):
        lc.finite_horizon_lqr(system, -1.0, 1.0)
    with pytest.raises(lc.PropertyError, match="Qf: expected a positive semidefinite"):
        lc.finite_horizon_lqr(system, 1.0, 1.0, Qf=-np.eye(3))
    # PSD but singular Q and Q = 0 are fine
    lc.finite_horizon_lqr(system, np.diag([1.0, 0.0, 0.0]), 1.0)
    lc.finite_horizon_lqr(system, 0.0, 1.0, Qf=0.0)


def test_psd_tolerance_is_scale_aware(system, rng):
    X = rng.normal(size=(3, 2))
    Q = 1e8 * X @ X.T  # PSD, rank 2: rounding gives eigenvalues ~ -1e-8
    lc.finite_horizon_lqr(system, Q, 1.0)


def test_non_finite_values_are_refused(system, rng):
    Q = np.eye(3)
    Q[1, 1] = np.nan
    with pytest.raises(lc.PropertyError, match="Q: contains NaN or inf"):
        lc.finite_horizon_lqr(system, Q, 1.0)
    with pytest.raises(lc.PropertyError, match="R: contains NaN or inf"):
        lc.finite_horizon_lqr(system, 1.0, float("inf"))
    A = rng.normal(size=(4, 3, 3))
    A[1, 0, 0] = np.inf
    with pytest.raises(lc.PropertyError, match="A: contains NaN or inf"):
        lc.LTVSystem(A)
    with pytest.raises(lc.PropertyError, match="x0: contains NaN"):
        system.simulate(np.array([0.0, np.nan, 0.0]))


def test_bad_types_are_argument_errors(system):
    with pytest.raises(lc.ArgumentError, match="Q: expected an array or a real number, found str"):
        lc.finite_horizon_lqr(system, "identity", 1.0)
    with pytest.raises(lc.ArgumentError, match="R: expected an array or a real number, found bool"):
        lc.finite_horizon_lqr(system, 1.0, True)
    with pytest.raises(lc.ArgumentError, match="dtype"):
        lc.finite_horizon_lqr(system, 1.0, 1.0, dtype="int32")
    with pytest.raises(lc.ArgumentError, match="dtype"):
        lc.finite_horizon_lqr(system, 1.0, 1.0, dtype="banana")
    with pytest.raises(lc.ArgumentError, match="complex"):
        lc.LTVSystem(np.ones((2, 2, 2), dtype=complex))
    with pytest.raises(lc.ArgumentError, match="A: cannot be converted"):
        lc.LTVSystem([[[1.0, 2.0], [3.0]]])


def test_system_shapes(rng):
    with pytest.raises(lc.DimensionError, match=r"A: expected a per-step stack \(\*batch, T, n, n\); found shape \(3, 3\).*LTVSystem.constant"):
        lc.LTVSystem(np.eye(3))
    with pytest.raises(lc.DimensionError, match=r"A: expected square matrices .*found shape \(4, 3, 2\)"):
        lc.LTVSystem(np.zeros((4, 3, 2)))
    with pytest.raises(lc.DimensionError, match=r"B: expected a per-step stack \(\*batch, T=4, n=3, m\); found shape \(3, 2\).*constant"):
        lc.LTVSystem(np.zeros((4, 3, 3)), np.zeros((3, 2)))
    with pytest.raises(lc.DimensionError, match=r"B: .*found shape \(5, 3, 2\)"):
        lc.LTVSystem(np.zeros((4, 3, 3)), np.zeros((5, 3, 2)))
    with pytest.raises(lc.DimensionError, match=r"c: expected a per-step drift \(\*batch, T=4, n=3\); found shape \(3,\)"):
        lc.LTVSystem(np.zeros((4, 3, 3)), None, np.zeros(3))
    with pytest.raises(lc.DimensionError, match=r"B: batch dimensions \(3,\) do not broadcast"):
        lc.LTVSystem(np.zeros((2, 4, 3, 3)), np.zeros((3, 4, 3, 1)))


def test_tracking_reference_shapes(system):
    with pytest.raises(lc.DimensionError, match=r"x_ref: expected a constant \(3,\), \(T\+1=5, 3\)"):
        lc.tracking_lqr(system, 1.0, 1.0, np.zeros((4, 3)))
    with pytest.raises(lc.DimensionError, match=r"u_ref: expected a constant \(2,\), \(T=4, 2\).*found shape \(3,\)"):
        lc.tracking_lqr(system, 1.0, 1.0, np.zeros(3), u_ref=np.zeros(3))


def test_lqr_cost_shapes(system):
    with pytest.raises(lc.DimensionError, match=r"x: expected \(T\+1=5, 3\)"):
        lc.lqr_cost(system, 1.0, 1.0, np.zeros(3), np.zeros((4, 2)))
    with pytest.raises(lc.DimensionError, match=r"u: expected \(T=4, 2\).*found shape \(4, 3\)"):
        lc.lqr_cost(system, 1.0, 1.0, np.zeros((5, 3)), np.zeros((4, 3)))


def test_gatekeeper_helpers_directly():
    w = V.as_weight(2.0, "Q", rows=3, horizon=4, backend=numpy_backend, dtype=np.float64)
    assert not w.per_step and np.array_equal(w.value, 2.0 * np.eye(3))
    stack = V.as_weight(np.stack([np.eye(3)] * 3), "Q", rows=3, horizon=3,
                        backend=numpy_backend, dtype=np.float64)
    assert stack.per_step and stack.at(1).shape == (3, 3)
    with pytest.raises(lc.ArgumentError, match=r"f\(\) got unknown keyword argument\(s\) 'b'; accepted: a"):
        V.reject_unknown_kwargs("f", {"a": 1, "b": 2}, ("a",))
    with pytest.raises(lc.ArgumentError, match="system: expected an ltv_control.LTVSystem"):
        V.require_system(3)
    assert V.format_shape((3,)) == "(3,)" and V.format_shape(("*batch", 2)) == "(*batch, 2)"

    @V.public_api
    def f(a, *, b=1):
        """Doc."""
        return a + b

    assert f(1, b=2) == 3 and f.__doc__ == "Doc."
    with pytest.raises(lc.ArgumentError, match="unknown keyword argument"):
        f(1, c=2)
    with pytest.raises(lc.ArgumentError):
        f(1, 2)
