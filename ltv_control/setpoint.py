"""Linear-feature setpoint (LFS) of activation steering and the A-LQR law it defines.

From desired / undesired last-token states: ``e_k`` (mean difference), ``v_k = e_k/‖e_k‖``,
``β*_k = λ‖e_k‖`` (:func:`linear_feature_setpoint`); with LQR gains, ``w_k = K_k v_k``
(:func:`feedback_directions`) and ``u_k = (β*_k − v_kᵀz_k) w_k`` (:func:`steering_input`, the
float64 reference the adapters' hooks are tested against).  numpy in, numpy out; torch in,
torch out on the same device, through :mod:`ltv_control.backends`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ltv_control._exceptions import DimensionError, PropertyError
from ltv_control.backends import get_backend, is_torch_tensor

__all__ = [
    "DEFAULT_REL_TOL",
    "LinearFeatureSetpoint",
    "linear_feature_setpoint",
    "setpoint_from_difference",
    "feedback_directions",
    "feature_error",
    "steering_input",
]

DEFAULT_REL_TOL = 1e-6
"""Relative threshold below which a step's mean difference counts as zero."""


class LinearFeatureSetpoint(NamedTuple):
    """Result of :func:`linear_feature_setpoint`.

    Attributes
    ----------
    v : array, shape (T, n)
        Unit feature directions ``v_k = e_k/‖e_k‖`` (zero rows at uncontrolled steps).
    beta_star : array, shape (T,)
        Targets ``β*_k = lam·‖e_k‖`` (zero at uncontrolled steps).
    e_norm : array, shape (T,)
        ``‖e_k‖`` (zero at uncontrolled steps, so ``β*_k = lam·e_norm_k`` always holds).
    e : array, shape (T, n)
        Mean differences ``e_k`` (as computed, not zeroed).
    """

    v: Any
    beta_star: Any
    e_norm: Any
    e: Any


# --------------------------------------------------------------------------- helpers


def _to_numpy64(x: Any, name: str) -> np.ndarray:
    """``x`` as a float64 numpy array (torch tensors are detached and moved to the CPU)."""
    if is_torch_tensor(x):
        x = get_backend(x).to_numpy(x)
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DimensionError(f"{name}: expected a real numeric array, found {type(x).__name__}") from exc
    return arr


def _like(result: np.ndarray, reference: Any) -> Any:
    """``result`` converted to the array type of ``reference`` (torch: same device, float dtype)."""
    if not is_torch_tensor(reference):
        return result
    be = get_backend(reference)
    dtype = be.dtype_of(reference) if be.is_floating(reference) else "float64"
    return be.asarray(result, dtype=dtype, device=be.device_of(reference))


def _check_finite(arr: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(arr)):
        raise PropertyError(f"{name}: expected finite values, found NaN or inf")


def _check_lam(lam: float) -> float:
    try:
        lam = float(lam)
    except (TypeError, ValueError) as exc:
        raise PropertyError(f"lam: expected a real scalar, found {type(lam).__name__}") from exc
    if not np.isfinite(lam):
        raise PropertyError(f"lam: expected a finite scalar, found {lam}")
    return lam


# --------------------------------------------------------------------------- setpoint


def setpoint_from_difference(
    e: Any, *, lam: float = 1.0, rel_tol: float = DEFAULT_REL_TOL
) -> LinearFeatureSetpoint:
    """Linear-feature setpoint from per-step mean differences.

    Implements ``v_k = e_k/‖e_k‖``, ``β*_k = lam·‖e_k‖``, with ``v_k = 0``,
    ``β*_k = 0``, ``‖e_k‖ := 0`` wherever ``‖e_k‖ <= rel_tol · max_j ‖e_j‖``
    (all steps when every ``e_k`` is zero).

    Parameters
    ----------
    e : array, shape (T, n)
        Mean differences ``e_k = mean(desired_k) - mean(undesired_k)``.
    lam : float, default 1.0
        Setpoint scale ``λ``; negative values push towards the undesired side.
    rel_tol : float, default 1e-6
        Relative threshold for a step to count as having no direction.

    Returns
    -------
    LinearFeatureSetpoint
        ``(v (T, n), beta_star (T,), e_norm (T,), e (T, n))``, same array type as ``e``.

    Raises
    ------
    DimensionError
        ``e`` is not two-dimensional.
    PropertyError
        ``e`` or ``lam`` is not finite, or ``rel_tol`` is negative.
    """
    arr = _to_numpy64(e, "e")
    if arr.ndim != 2:
        raise DimensionError(f"e: expected shape (T, n), found {arr.shape}")
    _check_finite(arr, "e")
    lam = _check_lam(lam)
    if not (rel_tol >= 0 and np.isfinite(rel_tol)):
        raise PropertyError(f"rel_tol: expected a finite non-negative scalar, found {rel_tol}")

    norms = np.linalg.norm(arr, axis=1)
    top = norms.max(initial=0.0)
    active = norms > rel_tol * top if top > 0 else np.zeros_like(norms, dtype=bool)
    safe = np.where(active, norms, 1.0)
    v = np.where(active[:, None], arr / safe[:, None], 0.0)
    e_norm = np.where(active, norms, 0.0)
    beta_star = lam * e_norm
    return LinearFeatureSetpoint(
        v=_like(v, e), beta_star=_like(beta_star, e), e_norm=_like(e_norm, e), e=_like(arr, e)
    )


def linear_feature_setpoint(
    desired_states: Any,
    undesired_states: Any,
    *,
    lam: float = 1.0,
    rel_tol: float = DEFAULT_REL_TOL,
) -> LinearFeatureSetpoint:
    """Linear-feature setpoint from desired and undesired last-token states.

    ``e_k = mean_p desired_states[p, k] - mean_p undesired_states[p, k]`` (means in
    float64), then :func:`setpoint_from_difference`.

    Parameters
    ----------
    desired_states : array, shape (P_d, T, n)
        States (block inputs ``z_k`` at the last token) of the desired prompts.
    undesired_states : array, shape (P_u, T, n)
        Same for the undesired prompts; ``T`` and ``n`` must match.
    lam : float, default 1.0
        Setpoint scale ``λ`` (``β*_k = λ‖e_k‖``).
    rel_tol : float, default 1e-6
        Steps with ``‖e_k‖ <= rel_tol·max_j‖e_j‖`` get ``v_k = 0``, ``β*_k = 0``.

    Returns
    -------
    LinearFeatureSetpoint
        ``v (T, n)``, ``beta_star (T,)``, ``e_norm (T,)``, ``e (T, n)``; same array type as
        ``desired_states``.

    Raises
    ------
    DimensionError
        Not three-dimensional, no prompts, or mismatched ``(T, n)``.
    PropertyError
        Non-finite states or ``lam``.
    """
    d = _to_numpy64(desired_states, "desired_states")
    u = _to_numpy64(undesired_states, "undesired_states")
    for name, arr in (("desired_states", d), ("undesired_states", u)):
        if arr.ndim != 3:
            raise DimensionError(f"{name}: expected shape (P, T, n), found {arr.shape}")
        if arr.shape[0] == 0:
            raise DimensionError(f"{name}: expected at least one prompt, found shape {arr.shape}")
        _check_finite(arr, name)
    if d.shape[1:] != u.shape[1:]:
        raise DimensionError(
            f"undesired_states: expected shape (P_u, {d.shape[1]}, {d.shape[2]}) to match "
            f"desired_states, found {u.shape}"
        )
    e = d.mean(axis=0) - u.mean(axis=0)
    result = setpoint_from_difference(e, lam=lam, rel_tol=rel_tol)
    if is_torch_tensor(desired_states):
        return LinearFeatureSetpoint(*(_like(np.asarray(x), desired_states) for x in result))
    return result


# --------------------------------------------------------------------------- law


def feedback_directions(K: Any, v: Any) -> Any:
    """Feedback directions ``w_k = K_k v_k``.

    Parameters
    ----------
    K : array, shape (T, m, n)
        LQR gains (``u_k = -K_k x_k``).
    v : array, shape (T, n)
        Feature directions.

    Returns
    -------
    w : array, shape (T, m)
        Same array type as ``K`` (torch: computed in ``K``'s dtype on its device).

    Raises
    ------
    DimensionError
        ``K`` is not ``(T, m, n)`` or ``v`` is not ``(T, n)`` with matching ``T`` and ``n``.
    """
    k_shape = tuple(K.shape) if hasattr(K, "shape") else np.shape(K)
    v_shape = tuple(v.shape) if hasattr(v, "shape") else np.shape(v)
    if len(k_shape) != 3:
        raise DimensionError(f"K: expected shape (T, m, n), found {k_shape}")
    if len(v_shape) != 2 or v_shape[0] != k_shape[0] or v_shape[1] != k_shape[2]:
        raise DimensionError(
            f"v: expected shape ({k_shape[0]}, {k_shape[2]}) to match K {k_shape}, found {v_shape}"
        )
    if is_torch_tensor(K):
        be = get_backend(K)
        return be.einsum("tmn,tn->tm", K, be.asarray(v, dtype=be.dtype_of(K), device=be.device_of(K)))
    K_np = np.asarray(K, dtype=np.result_type(K, np.float64))
    return np.einsum("tmn,tn->tm", K_np, _to_numpy64(v, "v"))


def feature_error(z: Any, v: Any, beta_star: Any) -> Any:
    """Scalar setpoint error ``α_k = β*_k - v_kᵀ z_k`` (reference implementation, float64).

    Parameters
    ----------
    z : array, shape (..., T, n)
        States (block inputs); leading dimensions are batch dimensions.
    v : array, shape (T, n)
    beta_star : array, shape (T,)

    Returns
    -------
    alpha : array, shape (..., T)
        Same array type as ``z``.
    """
    z64, v64, b64 = _to_numpy64(z, "z"), _to_numpy64(v, "v"), _to_numpy64(beta_star, "beta_star")
    if z64.ndim < 2 or v64.shape != z64.shape[-2:] or b64.shape != z64.shape[-2:-1]:
        raise DimensionError(
            f"z, v, beta_star: expected shapes (..., T, n), (T, n), (T,); found "
            f"{z64.shape}, {v64.shape}, {b64.shape}"
        )
    return _like(b64 - np.einsum("...tn,tn->...t", z64, v64), z)


def steering_input(z: Any, v: Any, beta_star: Any, w: Any) -> Any:
    """A-LQR steering input ``u_k = (β*_k - v_kᵀ z_k) w_k`` (reference implementation, float64).

    This is the LQR feedback ``u_k = −K_k x_k`` applied to the state error along the feature,
    ``x_k = (v_kᵀz_k − β*_k) v_k``: ``−K_k x_k = (β*_k − v_kᵀz_k) K_k v_k``.  The adapters'
    hooks implement the same law and are tested against this function.

    Parameters
    ----------
    z : array, shape (..., T, n)
        States (block inputs).
    v : array, shape (T, n)
    beta_star : array, shape (T,)
    w : array, shape (T, n)
        Feedback directions from :func:`feedback_directions`.

    Returns
    -------
    u : array, shape (..., T, n)
        Same array type as ``z``.
    """
    alpha = _to_numpy64(feature_error(z, v, beta_star), "alpha")
    w64 = _to_numpy64(w, "w")
    if w64.shape != _to_numpy64(v, "v").shape:
        raise DimensionError(f"w: expected shape {np.shape(v)} (same as v), found {w64.shape}")
    return _like(alpha[..., None] * w64, z)
