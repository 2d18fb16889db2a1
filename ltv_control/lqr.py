"""Finite-horizon LQR for discrete LTV systems."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from ltv_control._validation import (
    as_terminal_weight,
    as_weight,
    public_api,
    require_system,
    resolve_dtype,
)
from ltv_control.riccati import DeferredChecks, Stage, backward_recursion

__all__ = ["LQRResult", "finite_horizon_lqr", "prepare_problem", "problem_stages"]


class LQRResult(NamedTuple):
    """Result of :func:`finite_horizon_lqr`.

    Attributes
    ----------
    K : array (*batch, T, m, n)
        Feedback gains; the optimal policy is ``u_k = −K_k x_k``.
    S : array (*batch, T+1, n, n)
        Cost-to-go matrices, ``V_k(x) = xᵀS_k x``; ``S[..., T, :, :] = Qf``.
    """

    K: Any
    S: Any


class _Problem(NamedTuple):
    be: Any
    dtype: Any
    device: Any
    A: Any
    B: Any
    c: Any
    Q: Any
    R: Any
    N: Any
    Qf: Any
    batch: tuple


def prepare_problem(system: Any, Q: Any, R: Any, Qf: Any = None, N: Any = None,
                    dtype: Any = None) -> _Problem:
    """Validate ``system`` and the weights, convert everything to the compute dtype.

    Shared by :func:`finite_horizon_lqr`, :func:`~ltv_control.tracking_lqr` and
    :func:`~ltv_control.lqr_cost` (and usable by other solvers).

    Returns
    -------
    problem : NamedTuple
        Fields ``be`` (backend), ``dtype``, ``device``, ``A``, ``B`` (None for
        identity), ``c``, ``Q``, ``R``, ``N`` (:class:`~ltv_control._validation.Weight`
        or None), ``Qf`` (array ``(*batch, n, n)``) and ``batch`` (the broadcast
        batch shape of system and weights).
    """
    system = require_system(system)
    be = system._backend
    dtype = resolve_dtype(dtype, be, system.A)
    device = None if be.name == "numpy" else system.A.device
    T, n, m = system.horizon, system.n_states, system.n_inputs
    bs = system.batch_shape
    A = be.astype(system.A, dtype)
    B = None if system.B is None else be.astype(system.B, dtype)
    c = None if system.c is None else be.astype(system.c, dtype)
    Qw = as_weight(Q, "Q", rows=n, horizon=T, backend=be, dtype=dtype, device=device,
                   definiteness="psd", batch_shape=bs)
    Rw = as_weight(R, "R", rows=m, horizon=T, backend=be, dtype=dtype, device=device,
                   definiteness="pd", batch_shape=bs)
    Nw = None
    if N is not None:
        Nw = as_weight(N, "N", rows=n, cols=m, horizon=T, backend=be, dtype=dtype, device=device,
                       definiteness=None, batch_shape=bs)
    if Qf is None:
        Qf_arr = Qw.last()
    else:
        Qf_arr = as_terminal_weight(Qf, "Qf", n=n, backend=be, dtype=dtype, device=device,
                                    batch_shape=bs)
    batch = be.broadcast_shapes(bs, Qw.batch_shape, Rw.batch_shape,
                                () if Nw is None else Nw.batch_shape, tuple(Qf_arr.shape[:-2]))
    return _Problem(be, dtype, device, A, B, c, Qw, Rw, Nw, Qf_arr, tuple(batch))


@public_api
def finite_horizon_lqr(system: Any, Q: Any, R: Any, *, Qf: Any = None, N: Any = None,
                       dtype: Any = None) -> LQRResult:
    """Finite-horizon discrete LQR gains of an LTV system.

    Minimises ``Σ_{k<T} x_kᵀQ_k x_k + u_kᵀR_k u_k + 2 x_kᵀN_k u_k + x_TᵀQ_f x_T``
    subject to ``x_{k+1} = A_k x_k + B_k u_k`` (the drift ``c`` is ignored here; use
    :func:`~ltv_control.tracking_lqr` for affine systems), by the backward recursion
    ``S_T = Q_f``,

    ``K_k = (R_k + B_kᵀS_{k+1}B_k)^{-1}(B_kᵀS_{k+1}A_k + N_kᵀ)``,
    ``S_k = Q_k + A_kᵀS_{k+1}A_k − (B_kᵀS_{k+1}A_k + N_kᵀ)ᵀK_k``,

    with Cholesky solves and symmetrised ``S_k``. The optimal policy is
    ``u_k = −K_k x_k`` and the optimal cost from ``x_0`` is ``x_0ᵀS_0x_0``.

    Parameters
    ----------
    system : LTVSystem
        The plant (numpy or torch; ``B=None`` means ``B = I`` and is exploited).
    Q : float or array (n, n), (T, n, n) or (*batch, T, n, n)
        State weight, symmetric positive semidefinite; a scalar ``q`` means ``q·I``.
    R : float or array (m, m), (T, m, m) or (*batch, T, m, m)
        Input weight, symmetric positive definite; a scalar ``r`` means ``r·I``.
    Qf : float or array (n, n) or (*batch, n, n), optional
        Terminal weight (PSD). Default ``None``: ``Q`` of the last stage, ``Q_{T−1}``.
    N : float or array (n, m), (T, n, m) or (*batch, T, n, m), optional
        Cross weight of ``2 xᵀN u``. Default ``None``: no cross term.
    dtype : dtype, optional
        Compute (and result) dtype: float32 or float64 (float16/bfloat16 are refused with
        ArgumentError). Default ``None``: float64 (torch tensors on devices without float64,
        such as MPS, use their own dtype).

    Returns
    -------
    LQRResult
        ``K`` (*batch, T, m, n) and ``S`` (*batch, T+1, n, n), in the system's
        array type and device, in the compute dtype.

    Notes
    -----
    Differentiability: with torch tensors, autograd runs through every step (``gradcheck``-tested
    in ``tests/test_gradients.py`` with respect to A, B, Q, R and Qf, batched and with ``B=None``).
    A failed factorisation raises :class:`NumericalError` instead of returning NaN gradients;
    numpy problems given tensors that require grad are refused with :class:`ArgumentError`.

    Raises
    ------
    DimensionError
        A weight has the wrong shape (the message names it, expected and found).
    PropertyError
        A weight is non-finite, asymmetric, not PSD (Q, Qf) or not PD (R).
    NumericalError
        ``R + BᵀS B`` fails to factor at some step (names the step and batch member).
    ArgumentError
        ``system`` is not an LTVSystem, an unknown keyword, or a bad dtype.

    Examples
    --------
    >>> import numpy as np, ltv_control as lc
    >>> sys = lc.LTVSystem.constant(np.array([[1.0]]), np.array([[1.0]]), 3)
    >>> K, S = lc.finite_horizon_lqr(sys, 1.0, 1.0)
    >>> round(float(S[0, 0, 0]), 6)  # Fibonacci ratio F(8)/F(7) = 21/13
    1.615385
    """
    p = prepare_problem(system, Q, R, Qf=Qf, N=N, dtype=dtype)
    be = p.be
    T, n, m = system.horizon, system.n_states, system.n_inputs
    S_T = be.broadcast_to(p.Qf, p.batch + (n, n)) if p.batch else p.Qf
    K = be.zeros(p.batch + (T, m, n), dtype=p.dtype, device=p.device)
    S = be.zeros(p.batch + (T + 1, n, n), dtype=p.dtype, device=p.device)
    S[..., T, :, :] = S_T
    # written into preallocated outputs: fresh per-step arrays kept alive until a final stack
    # cost ~25 % more time at n = 576 (page faults and a second copy)
    steps = backward_recursion(problem_stages(p, T), S_T, backend=be,
                               deferred=DeferredChecks.for_backend(be))
    for k, step in steps:
        K[..., k, :, :] = step.K
        S[..., k, :, :] = step.S
    return LQRResult(K, S)


def problem_stages(p: _Problem, T: int, x_ref: Any = None, u_ref: Any = None, *,
                   drift: bool = False) -> Iterator[Stage]:
    """The stages ``k = T−1, …, 0`` of a prepared problem, for :func:`backward_recursion`.

    ``x_ref`` (*batch, T+1, n) and ``u_ref`` (*batch, T, m) are references; ``drift`` includes
    the system's affine drift ``c`` (tracking), which :func:`finite_horizon_lqr` ignores.
    """
    for k in range(T - 1, -1, -1):
        yield Stage(k, p.A[..., k, :, :], None if p.B is None else p.B[..., k, :, :],
                    p.Q.at(k), p.R.at(k), None if p.N is None else p.N.at(k),
                    p.c[..., k, :] if drift and p.c is not None else None,
                    None if x_ref is None else x_ref[..., k, :],
                    None if u_ref is None else u_ref[..., k, :])
