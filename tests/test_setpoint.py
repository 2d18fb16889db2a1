"""Linear-feature setpoint and the A-LQR law (ltv_control.setpoint), against closed forms."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ltv_control import DimensionError, PropertyError
from ltv_control.setpoint import (
    feature_error,
    feedback_directions,
    linear_feature_setpoint,
    setpoint_from_difference,
    steering_input,
)


def _states(rng, p, T, n, shift=0.0):
    return rng.standard_normal((p, T, n)) + shift


def test_setpoint_matches_closed_form(rng):
    d, u = _states(rng, 5, 4, 6, 0.3), _states(rng, 7, 4, 6)
    lam = 2.5
    sp = linear_feature_setpoint(d, u, lam=lam)
    for k in range(4):
        e = d[:, k].mean(axis=0) - u[:, k].mean(axis=0)
        np.testing.assert_allclose(sp.e[k], e, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(sp.e_norm[k], np.sqrt(e @ e), rtol=1e-13)
        np.testing.assert_allclose(sp.v[k], e / np.sqrt(e @ e), rtol=1e-12)
        np.testing.assert_allclose(sp.beta_star[k], lam * np.sqrt(e @ e), rtol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(sp.v, axis=1), 1.0, rtol=1e-13)


def test_sign_is_desired_minus_undesired(rng):
    u = _states(rng, 4, 3, 5)
    d = u + 1.0  # every desired state is shifted by +1 along the all-ones direction
    sp = linear_feature_setpoint(d, u)
    np.testing.assert_allclose(sp.v, np.full((3, 5), 1 / np.sqrt(5)), rtol=1e-12)
    # feature of the desired mean sits above that of the undesired mean
    assert np.all(np.einsum("tn,tn->t", sp.v, d.mean(0)) > np.einsum("tn,tn->t", sp.v, u.mean(0)))


def test_zero_difference_layers_get_no_control(rng):
    e = rng.standard_normal((5, 4))
    e[1] = 0.0
    e[3] *= 1e-7 / np.linalg.norm(e[3]) * np.linalg.norm(e, axis=1).max()  # below 1e-6 relative
    e[4] *= 1e-5 / np.linalg.norm(e[4]) * np.linalg.norm(e, axis=1).max()  # above it
    sp = setpoint_from_difference(e, lam=3.0)
    assert np.all(np.isfinite(sp.v)) and np.all(np.isfinite(sp.beta_star))
    for k in (1, 3):
        assert np.all(sp.v[k] == 0.0) and sp.beta_star[k] == 0.0 and sp.e_norm[k] == 0.0
    for k in (0, 2, 4):
        assert sp.e_norm[k] > 0 and abs(np.linalg.norm(sp.v[k]) - 1) < 1e-12
    np.testing.assert_allclose(sp.beta_star, 3.0 * sp.e_norm, rtol=0, atol=0)


def test_all_zero_difference_is_not_nan():
    sp = setpoint_from_difference(np.zeros((3, 4)))
    assert np.all(sp.v == 0) and np.all(sp.beta_star == 0) and np.all(sp.e_norm == 0)


def test_identical_prompt_sets_give_no_control(rng):
    d = _states(rng, 3, 4, 5)
    sp = linear_feature_setpoint(d, d.copy())
    assert np.all(sp.v == 0) and np.all(sp.beta_star == 0)


def test_feedback_directions_and_law_equal_lqr_feedback(rng):
    T, n = 4, 5
    K = rng.standard_normal((T, n, n))
    v = rng.standard_normal((T, n))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    beta = rng.standard_normal(T)
    w = feedback_directions(K, v)
    np.testing.assert_allclose(w, np.stack([K[k] @ v[k] for k in range(T)]), rtol=1e-13)
    z = rng.standard_normal((3, T, n))
    u = steering_input(z, v, beta, w)
    # the law is the LQR feedback -K_k x_k on the error x_k = (v_kᵀz_k - β*_k) v_k
    for b in range(3):
        for k in range(T):
            x = (v[k] @ z[b, k] - beta[k]) * v[k]
            np.testing.assert_allclose(u[b, k], -K[k] @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(feature_error(z, v, beta), beta - np.einsum("btn,tn->bt", z, v), rtol=1e-13)


def test_non_square_gains(rng):
    K = rng.standard_normal((3, 2, 5))
    v = rng.standard_normal((3, 5))
    assert feedback_directions(K, v).shape == (3, 2)


def test_torch_in_torch_out(rng):
    torch = pytest.importorskip("torch")
    d = torch.as_tensor(_states(rng, 3, 2, 4, 0.5), dtype=torch.float32)
    u = torch.as_tensor(_states(rng, 3, 2, 4), dtype=torch.float32)
    sp = linear_feature_setpoint(d, u, lam=0.5)
    assert all(isinstance(x, torch.Tensor) and x.dtype == torch.float32 for x in sp)
    ref = linear_feature_setpoint(d.double().numpy(), u.double().numpy(), lam=0.5)
    np.testing.assert_allclose(sp.v.numpy(), ref.v, rtol=1e-6)
    K = torch.randn(2, 4, 4, dtype=torch.float64)
    w = feedback_directions(K, sp.v)
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float64


@pytest.mark.parametrize(
    ("d_shape", "u_shape"),
    [((3, 4), (3, 4)), ((2, 3, 4), (2, 3, 5)), ((2, 3, 4), (2, 2, 4)), ((0, 3, 4), (2, 3, 4))],
)
def test_shape_errors_name_the_argument(d_shape, u_shape):
    with pytest.raises(DimensionError, match="states"):
        linear_feature_setpoint(np.ones(d_shape), np.ones(u_shape))


def test_bad_values_rejected(rng):
    d = _states(rng, 2, 3, 4)
    bad = d.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(PropertyError, match="desired_states"):
        linear_feature_setpoint(bad, d)
    with pytest.raises(PropertyError, match="lam"):
        linear_feature_setpoint(d, d, lam=np.inf)
    with pytest.raises(DimensionError, match="v"):
        feedback_directions(np.ones((3, 4, 4)), np.ones((2, 4)))
    with pytest.raises(DimensionError, match="K"):
        feedback_directions(np.ones((4, 4)), np.ones((2, 4)))


def test_imports_without_torch():
    code = "import sys, ltv_control.setpoint; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
