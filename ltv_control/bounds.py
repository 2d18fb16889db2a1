r"""Tracking-error bounds for a closed-loop LTV system with a quadratic remainder.

Setting (discrete time, horizon ``T``, state dimension ``n``)::

    Â_k = A_k - B_k K_k                        closed loop, k = 0 … T-1
    δz_{k+1} = Â_k δz_k + r_k                  true deviation from the nominal trajectory
    ‖r_k‖_{P_{k+1}} <= (L_k / 2) ‖δz_k‖²_{P_k}   remainder assumption
    ‖x‖_P = sqrt(xᵀ P x)                       every norm is P-weighted

Lyapunov weights ``P_T = I``, ``P_k = Âₖᵀ P_{k+1} Âₖ + W`` make every closed-loop step a strict
contraction, ``‖Â_k‖_{P_k→P_{k+1}}² = 1 − λ_min(P_k^{-1} W) < 1``, so the transition norms
``G[k, i] = ‖Φ(k, i)‖_{P_i→P_k}`` with ``Φ(k, i) = Â_{k−1} ⋯ Â_i`` (exactly ``k − i`` factors,
``Φ(k, k) = I``) never exceed one.  Variation of constants,
``δz_k = Φ(k,0) δz_0 + Σ_{i<k} Φ(k,i+1) r_i``, gives

* a posteriori (realised deviations on the right-hand side, the paper's form)::

      ‖δz_k‖_{P_k} <= b_k = G[k,0] ‖δz_0‖_{P_0} + Σ_{i<k} G[k,i+1] (L_i/2) ‖δz_i‖²_{P_i}

* a priori (the bound itself propagated; needs only ‖δz_0‖ and L; valid by induction)::

      b_0 = ‖δz_0‖_{P_0},   b_k = G[k,0] b_0 + Σ_{i<k} G[k,i+1] (L_i/2) b_i²

and the Euclidean bound ``‖δz_k‖₂ <= b_k / sqrt(λ_min(P_k))``.

Numerics.  Every induced norm is computed in symmetric form: with Cholesky factors
``P = C Cᵀ`` (one factorization per step), ``‖M‖_{P_from→P_to} = σ_max(C_toᵀ M C_from^{-T})``, with
``C_from^{-T}`` applied by a triangular solve, and ``σ_max`` taken as the square root of the largest
eigenvalue of a symmetric positive semidefinite Gram matrix — never an eigenvalue of a non-symmetric
product.  Transition norms use the whitened factors ``Ã_k = C_{k+1}ᵀ Â_k C_k^{-T}`` (contractions),
so ``Φ̃(k,i) = Ã_{k−1}⋯Ã_i`` is propagated by the stable recurrence ``Φ̃(k+1,i) = Ã_k Φ̃(k,i)``.
Cost: ``T+1`` Cholesky factorizations, ``T`` triangular solves, and for each of the ``T(T+1)/2``
pairs ``i < k`` one n×n×n product, one Gram product and one partial symmetric eigensolve
(largest eigenvalue only) — about ten seconds single-threaded at ``n = 576, T = 30``, the
eigensolves dominating (``benchmarks/bounds.py`` times it against forming every product from
scratch).

All functions take numpy arrays (or torch tensors, converted to float64 numpy); they compute in
float64 and return numpy arrays, or float64 torch tensors on the input's device when the closed
loop ``A_cl`` was a torch tensor.

Input checks.  Complex input is refused (:class:`~ltv_control.ArgumentError`), never truncated to
its real part; so are strings, ``None`` and bools where a number or an array is expected.  Empty
dimensions are refused with :class:`~ltv_control.DimensionError` (``T >= 1``, ``n >= 1``, at least
one rollout where a statistic over rollouts is reported): a norm or a coverage of nothing is not a
meaningful number.  A float64 overflow inside a computation raises
:class:`~ltv_control.NumericalError` naming the step, never a silent NaN.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, NamedTuple

import numpy as np
import scipy.linalg as sla

from ltv_control._validation import (
    as_host_float64,
    as_real,
    check_symmetric,
    format_shape,
    public_api,
)
from ltv_control.backends import get_torch_backend, numpy_backend
from ltv_control._exceptions import (
    ArgumentError,
    DimensionError,
    NumericalError,
    PropertyError,
)

__all__ = [
    "TrackingBound",
    "CoverageResult",
    "lyapunov_weights",
    "induced_norm",
    "transition_norms",
    "remainder_constants",
    "tracking_error_bound",
    "bound_coverage",
    "weighted_norms",
    "worst_case_initial_deviation",
]

_MODES = ("a_posteriori", "a_priori")


class TrackingBound(NamedTuple):
    """Result of :func:`tracking_error_bound`.

    Attributes
    ----------
    bound : array (T+1,) or (*R, T+1)
        ``b_k``, the bound on ``‖δz_k‖_{P_k}``.
    euclidean : array, same shape as ``bound``
        ``b_k / sqrt(λ_min(P_k))``, a bound on ``‖δz_k‖₂``.
    P : array (T+1, n, n)
        The weights the norms are measured in.
    G : array (T+1, T+1)
        Transition norms ``G[k, i] = ‖Φ(k,i)‖_{P_i→P_k}`` (zero above the diagonal).
    mode : str
        ``"a_posteriori"`` or ``"a_priori"``.
    """

    bound: Any
    euclidean: Any
    P: Any
    G: Any
    mode: str


class CoverageResult(NamedTuple):
    """Result of :func:`bound_coverage`.

    Attributes
    ----------
    coverage : float
        Fraction of held-out steps ``k = 1 … T`` (over all held-out rollouts) where
        ``‖δz_k‖_{P_k} <= b_k``.
    violations : int
        Number of held-out steps where the bound fails.
    n_steps : int
        Number of held-out steps checked (``R_heldout · T``).
    L : ndarray (T,)
        Remainder constants estimated on the calibration rollouts (times ``safety``).
    bound : ndarray (R_heldout, T+1)
        The bound for each held-out rollout (P-norm).
    realised : ndarray (R_heldout, T+1)
        ``‖δz_k‖_{P_k}`` of each held-out rollout.
    per_step_coverage : ndarray (T,)
        Coverage of each step ``k = 1 … T`` over the held-out rollouts.
    tracking : TrackingBound
        The full bound object for the held-out rollouts.
    """

    coverage: float
    violations: int
    n_steps: int
    L: np.ndarray
    bound: np.ndarray
    realised: np.ndarray
    per_step_coverage: np.ndarray
    tracking: TrackingBound


# --------------------------------------------------------------------------- input handling


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _as_float64(x: Any, name: str) -> np.ndarray:
    """Convert numpy / torch / nested sequences to a finite float64 array.

    Complex input (which a float cast would truncate to its real part), strings, bools and
    ``None`` raise :class:`ArgumentError`; NaN/inf raise :class:`PropertyError`.
    """
    return as_host_float64(x, name)


def _closed_loop(A_cl: Any) -> np.ndarray:
    A = _as_float64(A_cl, "A_cl")
    if A.ndim != 3 or A.shape[1] != A.shape[2] or A.shape[0] < 1 or A.shape[1] < 1:
        raise DimensionError(f"A_cl must have shape (T, n, n) with T >= 1 and n >= 1, found {A.shape}")
    return A


def _check_weights(P: Any, T: int, n: int, name: str = "P") -> np.ndarray:
    P = _as_float64(P, name)
    if P.shape != (T + 1, n, n):
        raise DimensionError(f"{name} must have shape (T+1, n, n) = {(T + 1, n, n)}, found {P.shape}")
    _check_symmetric(P, name)
    return P


def _check_symmetric(M: np.ndarray, name: str) -> None:
    """Relative symmetry test of the gatekeeper (``‖M − Mᵀ‖_F <= 1e-8·‖M‖_F``)."""
    check_symmetric(M, name, numpy_backend, per_step=M.ndim == 3)


def _matrix_or_identity(M: Any, n: int, name: str) -> np.ndarray:
    """``None`` → I, scalar c → c·I, else an (n, n) symmetric positive definite matrix."""
    if M is None:
        return np.eye(n)
    if isinstance(M, (numbers.Number, np.generic, str, bytes)):  # a scalar c means c·I, c > 0
        arr = as_real(M, name, low=0.0, low_open=True) * np.eye(n)
    else:
        arr = _as_float64(M, name)
    if arr.ndim == 0:
        arr = float(arr) * np.eye(n)
    if arr.shape != (n, n):
        raise DimensionError(f"{name} must be a scalar or have shape (n, n) = {(n, n)}, found {arr.shape}")
    _check_symmetric(arr, name)
    try:
        np.linalg.cholesky(arr)
    except np.linalg.LinAlgError as exc:
        raise PropertyError(f"{name} must be positive definite") from exc
    return arr


def _cholesky_stack(P: np.ndarray, name: str = "P") -> np.ndarray:
    """Lower Cholesky factor of every ``P[k]``; a failure names the step."""
    C = np.empty_like(P)
    for k in range(P.shape[0]):
        try:
            C[k] = np.linalg.cholesky(P[k])
        except np.linalg.LinAlgError as exc:
            raise NumericalError(f"{name}[{k}] is not positive definite (Cholesky failed at step {k})") from exc
    return C


def _wrap_like(ref: Any, *arrays: np.ndarray):
    """Return ``arrays`` as float64 torch tensors on ``ref``'s device when ``ref`` is a tensor."""
    if not _is_torch(ref):
        return arrays if len(arrays) > 1 else arrays[0]
    be = get_torch_backend()  # torch only through the backends layer
    out = tuple(be.asarray(np.ascontiguousarray(a), dtype="float64", device=ref.device) for a in arrays)
    return out if len(out) > 1 else out[0]


def _largest_singular_value(M: np.ndarray) -> float:
    """σ_max(M) as sqrt(λ_max(MᵀM)) (or MMᵀ, whichever is smaller), a symmetric eigenproblem.

    ``M`` is scaled by its largest entry first (``σ(M) = s·σ(M/s)``), so the Gram matrix never
    overflows (or underflows) for entries beyond ``1e154``.
    """
    scale = float(np.max(np.abs(M), initial=0.0))
    if scale == 0.0:
        return 0.0
    if not np.isfinite(scale):
        raise NumericalError("a transition matrix overflowed float64 (inf/NaN entries)")
    if 1e-150 < scale < 1e150:
        scale = 1.0
    return scale * _gram_sigma_max(M / scale)


def _gram_sigma_max(M: np.ndarray) -> float:
    gram = M.T @ M if M.shape[1] <= M.shape[0] else M @ M.T
    gram = 0.5 * (gram + gram.T)
    m = gram.shape[0]
    if m <= 32:
        lam = np.linalg.eigvalsh(gram)[-1]
    else:
        lam = sla.eigh(gram, eigvals_only=True, subset_by_index=[m - 1, m - 1], driver="evr")[0]
    return float(np.sqrt(max(lam, 0.0)))


def _smallest_eigenvalues(P: np.ndarray) -> np.ndarray:
    n = P.shape[-1]
    out = np.empty(P.shape[0])
    for k in range(P.shape[0]):
        if n <= 32:
            out[k] = np.linalg.eigvalsh(P[k])[0]
        else:
            out[k] = sla.eigh(P[k], eigvals_only=True, subset_by_index=[0, 0], driver="evr")[0]
    return out


def _whitened_factors(A: np.ndarray, C: np.ndarray) -> np.ndarray:
    """``Ã_k = C_{k+1}ᵀ Â_k C_k^{-T}`` for every step (one triangular solve per step)."""
    T = A.shape[0]
    out = np.empty_like(A)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(T):
            X = C[k + 1].T @ A[k]
            # Ã = X C_k^{-T}  <=>  Ãᵀ = C_k^{-1} Xᵀ
            out[k] = sla.solve_triangular(C[k], X.T, lower=True, check_finite=False).T
            if not np.all(np.isfinite(out[k])):
                raise NumericalError(f"the whitened closed loop C_{k + 1}ᵀ Â_{k} C_{k}^{{-T}} overflowed "
                                     f"float64 at step {k} (P[{k}] is nearly singular or Â_{k} is huge)")
    return out


# --------------------------------------------------------------------------- public functions


@public_api
def lyapunov_weights(A_cl: Any, *, W: Any = None, P_terminal: Any = None):
    r"""Time-varying Lyapunov weights of a closed loop.

    Implements the backward recursion ``P_T = P_terminal``, ``P_k = Â_kᵀ P_{k+1} Â_k + W``
    (symmetrized every step).  With ``W ≻ 0`` every closed-loop step is a strict contraction in
    these weights: ``‖Â_k‖²_{P_k→P_{k+1}} = 1 − λ_min(P_k^{-1} W) < 1``.

    Parameters
    ----------
    A_cl : array (T, n, n)
        Closed-loop matrices ``Â_k = A_k − B_k K_k`` (numpy or torch).
    W : None, scalar or array (n, n), optional
        Positive definite increment; ``None`` means ``I``, a scalar ``c`` means ``c·I``.
    P_terminal : None, scalar or array (n, n), optional
        Positive definite terminal weight ``P_T``; ``None`` means ``I``.

    Returns
    -------
    P : array (T+1, n, n)
        Symmetric positive definite weights (float64; torch when ``A_cl`` is torch).

    Raises
    ------
    DimensionError
        ``A_cl``, ``W`` or ``P_terminal`` has the wrong shape.
    PropertyError
        Non-finite input, or ``W`` / ``P_terminal`` not symmetric positive definite.
    ArgumentError
        Unknown keyword.
    """
    A = _closed_loop(A_cl)
    T, n, _ = A.shape
    Wm = _matrix_or_identity(W, n, "W")
    Pt = _matrix_or_identity(P_terminal, n, "P_terminal")
    P = np.empty((T + 1, n, n))
    P[T] = Pt
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(T - 1, -1, -1):
            Pk = A[k].T @ P[k + 1] @ A[k] + Wm
            P[k] = 0.5 * (Pk + Pk.T)
            if not np.all(np.isfinite(P[k])):
                raise NumericalError(f"lyapunov_weights overflowed at step {k} (P_{k} is not finite): "
                                     "the closed loop grows too fast for float64")
    return _wrap_like(A_cl, P)


@public_api
def induced_norm(M: Any, P_from: Any, P_to: Any) -> float:
    r"""Induced weighted norm ``sup_x ‖M x‖_{P_to} / ‖x‖_{P_from}``.

    Symmetric form: with Cholesky factors ``P_from = C_f C_fᵀ`` and ``P_to = C_t C_tᵀ``,
    ``‖M‖_{P_from→P_to} = σ_max(C_tᵀ M C_f^{-T})``, where ``C_f^{-T}`` is applied by a triangular
    solve and ``σ_max² `` is the largest eigenvalue of a symmetric Gram matrix.

    Parameters
    ----------
    M : array (n_to, n_from)
    P_from : array (n_from, n_from), symmetric positive definite
    P_to : array (n_to, n_to), symmetric positive definite

    Returns
    -------
    float

    Raises
    ------
    DimensionError
        Wrong shapes, or an empty dimension (``n_to`` or ``n_from`` = 0: refused, not 0).
    PropertyError, NumericalError (a weight is not positive definite, or an overflow), ArgumentError
    """
    Mm = _as_float64(M, "M")
    if Mm.ndim != 2 or 0 in Mm.shape:
        raise DimensionError(f"M must have shape (n_to, n_from) with n_to, n_from >= 1, found {Mm.shape}")
    n_to, n_from = Mm.shape
    Pf = _as_float64(P_from, "P_from")
    Pt = _as_float64(P_to, "P_to")
    if Pf.shape != (n_from, n_from):
        raise DimensionError(f"P_from must have shape {(n_from, n_from)}, found {Pf.shape}")
    if Pt.shape != (n_to, n_to):
        raise DimensionError(f"P_to must have shape {(n_to, n_to)}, found {Pt.shape}")
    _check_symmetric(Pf, "P_from")
    _check_symmetric(Pt, "P_to")
    Cf = _cholesky_stack(Pf[None], "P_from")[0]
    Ct = _cholesky_stack(Pt[None], "P_to")[0]
    with np.errstate(over="ignore", invalid="ignore"):
        X = Ct.T @ Mm
        Y = sla.solve_triangular(Cf, X.T, lower=True, check_finite=False).T
    if not np.all(np.isfinite(Y)):
        raise NumericalError("induced_norm: C_toᵀ M C_from^{-T} overflowed float64 (P_from nearly "
                             "singular or M huge)")
    return _largest_singular_value(Y)


def _transition_norms_from_factors(At: np.ndarray) -> np.ndarray:
    T, n, _ = At.shape
    G = np.zeros((T + 1, T + 1))
    np.fill_diagonal(G, 1.0)
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(T):
            Phi = At[i]
            G[i + 1, i] = _largest_singular_value(Phi)
            for k in range(i + 2, T + 1):
                Phi = At[k - 1] @ Phi
                if not np.all(np.isfinite(Phi)):
                    raise NumericalError(f"transition_norms: Φ({k},{i}) overflowed float64 (the "
                                         "weights P do not contract the closed loop; use "
                                         "lyapunov_weights)")
                G[k, i] = _largest_singular_value(Phi)
    return G


@public_api
def transition_norms(A_cl: Any, P: Any):
    r"""Weighted norms of every closed-loop transition matrix.

    ``G[k, i] = ‖Φ(k,i)‖_{P_i→P_k}`` with ``Φ(k,i) = Â_{k−1} ⋯ Â_i`` (exactly ``k − i`` factors),
    ``G[k, k] = 1`` and ``G[k, i] = 0`` for ``i > k``.  Computed from the whitened factors
    ``Ã_k = C_{k+1}ᵀ Â_k C_k^{-T}`` (``P_k = C_k C_kᵀ``): ``G[k,i] = σ_max(Ã_{k−1}⋯Ã_i)`` with the
    products propagated by ``Φ̃(k+1,i) = Ã_k Φ̃(k,i)``.  With Lyapunov weights the factors are
    contractions, so the recurrence neither overflows nor underflows harmfully.

    Parameters
    ----------
    A_cl : array (T, n, n)
    P : array (T+1, n, n), symmetric positive definite (any weights, e.g. :func:`lyapunov_weights`)

    Returns
    -------
    G : array (T+1, T+1)

    Raises
    ------
    DimensionError
        Wrong shapes, or ``T = 0`` / ``n = 0`` (refused: there is no transition to measure).
    NumericalError
        A weight is not positive definite, or a transition ``Φ(k,i)`` overflows float64 in the
        given weights (Lyapunov weights make every factor a contraction, so it cannot).

    Notes
    -----
    Cost: ``T+1`` Cholesky factorizations and, per pair ``i < k``, one n×n×n product, one Gram
    product and one largest-eigenvalue solve (about ten seconds single-threaded at n = 576, T = 30).
    """
    A = _closed_loop(A_cl)
    T, n, _ = A.shape
    Pm = _check_weights(P, T, n)
    C = _cholesky_stack(Pm)
    G = _transition_norms_from_factors(_whitened_factors(A, C))
    return _wrap_like(A_cl, G)


def _check_deviations(dev: Any, T: int, n: int, name: str = "deviations") -> np.ndarray:
    D = _as_float64(dev, name)
    if D.ndim < 2 or D.shape[-2:] != (T + 1, n):
        raise DimensionError(f"{name} must have shape (*R, T+1, n) = (*R, {T + 1}, {n}), found {D.shape}")
    return D


def _check_rollouts(dev: Any, T: int, n: int, name: str) -> np.ndarray:
    """Deviations ``(*R, T+1, n)`` flattened to ``(R, T+1, n)`` with at least one rollout."""
    D = _check_deviations(dev, T, n, name)
    if D.ndim == 2:
        D = D[None]
    D = D.reshape(-1, T + 1, n)
    if D.shape[0] == 0:
        raise DimensionError(f"{name} must hold at least one rollout (*R, T+1, n) = "
                             f"(*R, {T + 1}, {n}), found an empty set {format_shape(np.shape(dev))}")
    return D


def _weighted_norms(D: np.ndarray, C: np.ndarray, name: str = "deviations") -> np.ndarray:
    """‖D[..., k, :]‖_{P_k} = ‖C_kᵀ D_k‖ for every step; D: (*R, K, n), C: (K, n, n).

    Vectors with entries beyond ``1e150`` (or below ``1e-150``) are scaled by a power of two
    before squaring, so the norm neither overflows nor underflows; a product ``C_kᵀ D_k``
    that overflows float64 raises :class:`NumericalError` naming the step and rollout.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        Y = np.einsum("kab,...ka->...kb", C, D)
    big = np.max(np.abs(Y), axis=-1, keepdims=True) if Y.shape[-1] else np.zeros(Y.shape[:-1] + (1,))
    if not np.all(np.isfinite(big)):
        bad = np.argwhere(~np.isfinite(big[..., 0]))[0]
        where = f"step {bad[-1]}" + (f", rollout {tuple(int(i) for i in bad[:-1])}" if bad.size > 1 else "")
        raise NumericalError(f"{name}: the weighted norm ‖C_kᵀ δz_k‖ overflowed float64 at {where}")
    normal = (big == 0) | ((big > 1e-150) & (big < 1e150))
    scale = np.where(normal, 1.0, np.exp2(np.floor(np.log2(np.where(normal, 1.0, big)))))
    return np.linalg.norm(Y / scale, axis=-1) * scale[..., 0]


@public_api
def weighted_norms(deviations: Any, P: Any):
    r"""Per-step weighted norms ``‖δz_k‖_{P_k} = sqrt(δz_kᵀ P_k δz_k)``.

    Parameters
    ----------
    deviations : array (*R, T+1, n)
    P : array (T+1, n, n)

    Returns
    -------
    array (*R, T+1)
    """
    Pm = _as_float64(P, "P")
    if Pm.ndim != 3 or Pm.shape[1] != Pm.shape[2] or 0 in Pm.shape:
        raise DimensionError(f"P must have shape (T+1, n, n) with T+1 >= 1 and n >= 1, found {Pm.shape}")
    D = _check_deviations(deviations, Pm.shape[0] - 1, Pm.shape[1])
    _check_symmetric(Pm, "P")
    return _wrap_like(deviations, _weighted_norms(D, _cholesky_stack(Pm)))


@public_api
def remainder_constants(A_cl: Any, P: Any, deviations: Any):
    r"""Empirical remainder constants of realised rollouts.

    ``L_hat[r, i] = 2 ‖δz_{i+1} − Â_i δz_i‖_{P_{i+1}} / ‖δz_i‖²_{P_i}`` — the remainder
    ``r_i = δz_{i+1} − Â_i δz_i`` measured in ``P_{i+1}``, the deviation in ``P_i``.
    Where ``δz_i = 0`` the ratio is ``0`` if the remainder vanishes too and ``inf`` otherwise.

    Parameters
    ----------
    A_cl : array (T, n, n)
    P : array (T+1, n, n)
    deviations : array (*R, T+1, n)
        Realised deviations ``δz_k = z_k − z̄_k`` from the nominal trajectory.

    Returns
    -------
    L_hat : array (*R, T)

    Notes
    -----
    A maximum over sampled rollouts is an estimate, not a certificate: use
    :func:`bound_coverage` to check it on held-out rollouts.
    """
    A = _closed_loop(A_cl)
    T, n, _ = A.shape
    Pm = _check_weights(P, T, n)
    D = _check_deviations(deviations, T, n)
    C = _cholesky_stack(Pm)
    with np.errstate(over="ignore", invalid="ignore"):
        resid = D[..., 1:, :] - np.einsum("kab,...kb->...ka", A, D[..., :-1, :])
    num = 2.0 * _weighted_norms(resid, C[1:], "the remainder δz_{i+1} − Â_i δz_i")
    den = _weighted_norms(D[..., :-1, :], C[:-1])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        den2 = den * den
        # 2 ‖r‖ / ‖δz‖²; the ratio form where ‖δz‖² over- or underflows
        L_hat = np.where(np.isfinite(den2) & (den2 > 0), num / den2, (num / den) / den)
    L_hat = np.where(den > 0, L_hat, np.where(num > 0, np.inf, 0.0))
    return _wrap_like(deviations if _is_torch(deviations) else A_cl, L_hat)


def _check_L(L: Any, T: int) -> np.ndarray:
    if isinstance(L, (numbers.Number, np.generic, str, bytes)):
        Lm = np.array(as_real(L, "L", low=0.0, allow_inf=True))
    else:
        Lm = as_host_float64(L, "L", finite=False)
    if Lm.ndim == 0:
        Lm = np.full(T, float(Lm))
    if Lm.shape != (T,):
        raise DimensionError(f"L must be a scalar or have shape (T,) = ({T},), found {Lm.shape}")
    if np.any(np.isnan(Lm)) or np.any(Lm < 0):
        raise PropertyError("L must be nonnegative (inf is allowed and gives an infinite bound)")
    return Lm


@public_api
def tracking_error_bound(
    A_cl: Any,
    L: Any,
    delta0: Any,
    *,
    P: Any = None,
    deviations: Any = None,
    G: Any = None,
) -> TrackingBound:
    r"""Tracking-error bound of a closed loop with a quadratic remainder.

    a posteriori (``deviations`` given; the paper's form, realised deviations on the right)::

        b_k = G[k,0] ‖δz_0‖_{P_0} + Σ_{i<k} G[k,i+1] (L_i/2) ‖δz_i‖²_{P_i}

    a priori (``deviations=None``; a certificate from ``δz_0`` and ``L`` alone)::

        b_0 = ‖δz_0‖_{P_0},   b_k = G[k,0] b_0 + Σ_{i<k} G[k,i+1] (L_i/2) b_i²

    Both hold whenever ``‖r_k‖_{P_{k+1}} <= (L_k/2)‖δz_k‖²_{P_k}`` for every step, for any
    positive definite weights ``P`` (the Lyapunov weights make ``G <= 1``).  The a priori bound
    can grow without limit (to ``inf``) when ``L·‖δz_0‖`` is too large: it is then vacuous,
    not wrong.  Euclidean: ``‖δz_k‖₂ <= b_k / sqrt(λ_min(P_k))``.

    Parameters
    ----------
    A_cl : array (T, n, n)
        Closed loop ``Â_k = A_k − B_k K_k`` (e.g. ``LTVSystem.closed_loop(K)``).
    L : scalar or array (T,)
        Remainder constants ``L_k >= 0`` in the weights ``P``.
    delta0 : array (n,) or (*R, n), or None
        Initial deviation ``δz_0``.  May be ``None`` when ``deviations`` is given (then
        ``deviations[..., 0, :]`` is used); when both are given they must agree.
    P : array (T+1, n, n), optional
        Weights; default :func:`lyapunov_weights` ``(A_cl)``.
    deviations : array (T+1, n) or (*R, T+1, n), optional
        Realised deviations; selects the a posteriori form.
    G : array (T+1, T+1), optional
        Precomputed :func:`transition_norms` ``(A_cl, P)`` of the same ``A_cl`` and ``P`` (an
        extension of the contract: the transition norms dominate the cost at large ``n``, so the
        a posteriori and a priori forms can share them).  Not checked against ``A_cl``.

    Returns
    -------
    TrackingBound
        ``bound`` and ``euclidean`` of shape ``(*R, T+1)`` (``(T+1,)`` for one rollout / one δz_0),
        ``P``, ``G``, ``mode``.

    Raises
    ------
    DimensionError, PropertyError, NumericalError, ArgumentError
    """
    A = _closed_loop(A_cl)
    T, n, _ = A.shape
    Lm = _check_L(L, T)
    Pm = lyapunov_weights(A) if P is None else _check_weights(P, T, n)
    C = _cholesky_stack(Pm)
    G = _transition_norms_from_factors(_whitened_factors(A, C)) if G is None else _given_G(G, T)
    D = None if deviations is None else _check_deviations(deviations, T, n)
    d0 = _initial_deviation(delta0, D, n)
    with np.errstate(over="ignore", invalid="ignore"):
        n0 = np.linalg.norm(d0 @ C[0], axis=-1)  # ‖δz_0‖_{P_0} = ‖C_0ᵀ δz_0‖
    if not np.all(np.isfinite(n0)):
        n0 = _weighted_norms(d0[..., None, :], C[:1], "delta0")[..., 0]  # scaled, or NumericalError
    half_L = 0.5 * Lm
    with np.errstate(over="ignore", invalid="ignore"):
        if D is not None:
            mode = "a_posteriori"
            norms = _weighted_norms(D, C)
            n0 = np.broadcast_to(n0, norms.shape[:-1])
            # c_i = (L_i/2) ‖δz_i‖²_{P_i}; an exact zero L_i contributes nothing even if ‖δz_i‖ = inf
            c = np.where(half_L == 0, 0.0, half_L * norms[..., :-1] ** 2)
        else:
            mode = "a_priori"
            c = np.zeros(n0.shape + (T,))
        bound = np.empty(n0.shape + (T + 1,))
        bound[..., 0] = n0
        for k in range(1, T + 1):
            if mode == "a_priori":
                bk = bound[..., k - 1]
                c[..., k - 1] = np.where(half_L[k - 1] == 0, 0.0, half_L[k - 1] * bk * bk)
            # only i < k enters: Σ_{i<k} G[k, i+1] c_i
            bound[..., k] = G[k, 0] * n0 + c[..., :k] @ G[k, 1 : k + 1]
        bound = np.where(np.isnan(bound), np.inf, bound)
    bound[..., 0] = n0
    b, e, Pw, Gw = _wrap_like(A_cl, bound, _euclidean(bound, Pm), Pm, G)
    return TrackingBound(b, e, Pw, Gw, mode)


def _given_G(G: Any, T: int) -> np.ndarray:
    """Validate precomputed transition norms: ``(T+1, T+1)``, nonnegative, lower triangular."""
    G = _as_float64(G, "G")
    if G.shape != (T + 1, T + 1):
        raise DimensionError(f"G must have shape (T+1, T+1) = {(T + 1, T + 1)}, found {G.shape}")
    if np.any(G < 0) or np.any(np.triu(G, 1) != 0):
        raise PropertyError("G must be nonnegative and zero above the diagonal (transition norms)")
    return G


def _initial_deviation(delta0: Any, D: np.ndarray | None, n: int) -> np.ndarray:
    """``δz_0``: ``delta0`` (checked against ``D[..., 0, :]`` when both are given) or ``D[..., 0, :]``."""
    if delta0 is None:
        if D is None:
            raise ArgumentError("tracking_error_bound needs delta0 or deviations")
        return D[..., 0, :]
    d0 = _as_float64(delta0, "delta0")
    if d0.ndim < 1 or d0.shape[-1] != n:
        raise DimensionError(f"delta0 must have shape (*R, n) with n = {n}, found {d0.shape}")
    if D is not None:
        first = D[..., 0, :]
        try:
            d0 = np.broadcast_to(d0, np.broadcast_shapes(d0.shape, first.shape))
        except ValueError as exc:
            raise DimensionError(
                f"delta0 {d0.shape} does not match deviations[..., 0, :] {first.shape}"
            ) from exc
        scale = max(float(np.max(np.abs(first), initial=0.0)), float(np.max(np.abs(d0), initial=0.0)), 1e-300)
        if np.max(np.abs(d0 - first), initial=0.0) > 1e-8 * scale:
            raise PropertyError("delta0 must equal deviations[..., 0, :] (the first realised deviation)")
    return d0


def _euclidean(bound: np.ndarray, Pm: np.ndarray) -> np.ndarray:
    """``b_k / sqrt(λ_min(P_k))``; a ``P_k`` whose λ_min rounds to <= 0 raises NumericalError."""
    lam_min = _smallest_eigenvalues(Pm)
    if np.any(lam_min <= 0):
        k = int(np.argmax(lam_min <= 0))
        raise NumericalError(f"P[{k}] has smallest eigenvalue {lam_min[k]:.3g} <= 0 in floating "
                             "point (too ill-conditioned for a Euclidean bound)")
    return bound / np.sqrt(lam_min)


@public_api
def worst_case_initial_deviation(A_cl: Any, k: int, *, P: Any = None):
    r"""Unit initial deviation that maximises the linear part of the error at step ``k``.

    Returns ``x`` with ``‖x‖_{P_0} = 1`` and ``‖Φ(k,0) x‖_{P_k} = G[k,0]``: ``x = C_0^{-T} v``
    with ``v`` the top right singular vector of the whitened ``Φ̃(k,0)``.  For a linear plant
    (``L = 0``) started at ``ε·x`` the bound is attained at step ``k``.

    Parameters
    ----------
    A_cl : array (T, n, n)
    k : int, 0 <= k <= T
    P : array (T+1, n, n), optional (default :func:`lyapunov_weights`)

    Returns
    -------
    array (n,)
    """
    A = _closed_loop(A_cl)
    T, n, _ = A.shape
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise ArgumentError(f"k must be an int, found {type(k).__name__}")
    if not 0 <= k <= T:
        raise DimensionError(f"k must lie in [0, T] = [0, {T}], found {k}")
    Pm = lyapunov_weights(A) if P is None else _check_weights(P, T, n)
    C = _cholesky_stack(Pm)
    At = _whitened_factors(A, C)
    Phi = np.eye(n)
    with np.errstate(over="ignore", invalid="ignore"):
        for j in range(k):
            Phi = At[j] @ Phi
    scale = float(np.max(np.abs(Phi)))
    if not np.isfinite(scale):
        raise NumericalError(f"worst_case_initial_deviation: Φ({k},0) overflowed float64 (the weights "
                             "P do not contract the closed loop; use lyapunov_weights)")
    if scale > 0 and not 1e-150 < scale < 1e150:
        Phi = Phi / scale  # the top singular vector is scale-free; the Gram matrix must not overflow
    gram = Phi.T @ Phi
    _, vecs = np.linalg.eigh(0.5 * (gram + gram.T))
    v = vecs[:, -1]
    x = sla.solve_triangular(C[0], v, lower=True, trans="T", check_finite=False)
    return _wrap_like(A_cl, x)


@public_api
def bound_coverage(
    A_cl: Any,
    deviations_calib: Any,
    deviations_heldout: Any,
    *,
    P: Any = None,
    safety: float = 1.0,
    quantile: float = 1.0,
    mode: str = "a_posteriori",
    min_norm: float = 0.0,
    rtol: float = 1e-9,
    G: Any = None,
) -> CoverageResult:
    r"""Calibrate the remainder constants on some rollouts and measure coverage on others.

    ``L_k = safety · quantile_r L_hat[r, k]`` over the calibration rollouts (``quantile=1`` is the
    maximum; the quantile is taken with ``method="higher"``, an observed ratio), with ``L_hat`` from :func:`remainder_constants`; then the bound
    (:func:`tracking_error_bound`, a posteriori or a priori from each held-out ``δz_0``) is
    evaluated on every held-out rollout and the fraction of steps ``k = 1 … T`` with
    ``‖δz_k‖_{P_k} <= b_k (1 + rtol)`` is reported.  A sampled maximum is an estimate, not a
    certificate: this coverage is the honest statement of what it buys on unseen rollouts.

    Parameters
    ----------
    A_cl : array (T, n, n)
    deviations_calib : array (R_c, T+1, n)
        Calibration rollouts' deviations from the nominal trajectory.
    deviations_heldout : array (R_h, T+1, n)
        Held-out rollouts' deviations.
    P : array (T+1, n, n), optional
        Weights (default :func:`lyapunov_weights`).
    safety : float, default 1.0
        Factor ``> 0`` (normally ``>= 1``) applied to the estimated constants.
    quantile : float in (0, 1], default 1.0
        Quantile of the calibration ratios taken per step (1.0 = max).
    mode : {"a_posteriori", "a_priori"}, default "a_posteriori"
        Bound evaluated on the held-out rollouts.
    min_norm : float, default 0.0
        Calibration ratios at steps with ``‖δz_i‖_{P_i} <= min_norm`` are ignored.  Deviations are
        differences of absolute states, so below about ``sqrt(eps·‖z̄‖)`` the ratio measures
        rounding, not the remainder; a step left without any ratio gets the largest estimate of
        the other steps.
    rtol : float, default 1e-9
        Relative slack ``>= 0`` for rounding when counting violations.
    G : array (T+1, T+1), optional
        Precomputed :func:`transition_norms` of ``A_cl`` and ``P``.

    Returns
    -------
    CoverageResult

    Raises
    ------
    ArgumentError
        ``mode`` unknown, or ``safety``/``quantile``/``min_norm``/``rtol`` not a real number
        (a bool or a string is refused).
    PropertyError
        ``safety <= 0``, ``quantile`` outside ``(0, 1]``, ``min_norm < 0``, ``rtol < 0`` or any
        of them NaN/inf; no calibration step above ``min_norm``.
    DimensionError
        Wrong shapes, or an empty calibration or held-out set (a coverage of nothing is not 0).
    """
    if not isinstance(mode, str) or mode not in _MODES:
        raise ArgumentError(f"mode must be one of {_MODES}, found {mode!r}")
    safety = as_real(safety, "safety", low=0.0, low_open=True)
    quantile = as_real(quantile, "quantile", low=0.0, high=1.0, low_open=True)
    min_norm = as_real(min_norm, "min_norm", low=0.0)
    rtol = as_real(rtol, "rtol", low=0.0)
    A = _closed_loop(A_cl)
    T, n, _ = A.shape
    Pm = lyapunov_weights(A) if P is None else _check_weights(P, T, n)
    Dc = _check_rollouts(deviations_calib, T, n, "deviations_calib")
    Dh = _check_rollouts(deviations_heldout, T, n, "deviations_heldout")
    L_hat = remainder_constants(A, Pm, Dc)
    calib_norms = _weighted_norms(Dc[:, :-1], _cholesky_stack(Pm)[:-1])
    L_hat = np.where(calib_norms > min_norm, L_hat, np.nan)
    if np.all(np.isnan(L_hat)):
        raise PropertyError(f"no calibration step has a deviation above min_norm = {min_norm}")
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps are filled below
        L_est = np.nanquantile(L_hat, quantile, axis=0, method="higher")
    L_est = np.where(np.isnan(L_est), np.nanmax(L_est), L_est)
    L_est = safety * L_est
    if mode == "a_posteriori":
        tb = tracking_error_bound(A, L_est, None, P=Pm, deviations=Dh, G=G)
    else:
        tb = tracking_error_bound(A, L_est, Dh[:, 0, :], P=Pm, G=G)
    realised = _weighted_norms(Dh, _cholesky_stack(Pm))
    ok = realised[:, 1:] <= tb.bound[:, 1:] * (1.0 + rtol) + 1e-300
    violations = int(np.size(ok) - np.count_nonzero(ok))
    n_steps = int(np.size(ok))
    return CoverageResult(
        coverage=float(np.count_nonzero(ok) / max(n_steps, 1)),
        violations=violations,
        n_steps=n_steps,
        L=L_est,
        bound=tb.bound,
        realised=realised,
        per_step_coverage=ok.mean(axis=0),
        tracking=tb,
    )
