"""Finite-horizon tracking LQR with affine drift (Drake-style value-function terms)."""

from __future__ import annotations

from typing import Any, NamedTuple

from ltv_control._validation import as_vector_stack, public_api
from ltv_control.lqr import prepare_problem, problem_stages
from ltv_control.riccati import DeferredChecks, backward_recursion, terminal_value

__all__ = ["TrackingLQRResult", "tracking_lqr"]


class TrackingLQRResult(NamedTuple):
    """Result of :func:`tracking_lqr`.

    The optimal policy is ``u_k = −K_k x_k + k_k`` and the optimal cost-to-go is
    ``V_k(x) = xᵀS_k x + 2 s_kᵀx + s0_k``; ``V_0(x_0)`` is the optimal cost.

    Attributes
    ----------
    K : array (*batch, T, m, n)
        Feedback gains.
    k : array (*batch, T, m)
        Feedforward terms.
    S : array (*batch, T+1, n, n)
        Quadratic value-function terms (the same as :func:`finite_horizon_lqr`'s).
    s : array (*batch, T+1, n)
        Linear value-function terms.
    s0 : array (*batch, T+1)
        Constant value-function terms (every constant of the cost included).
    """

    K: Any
    k: Any
    S: Any
    s: Any
    s0: Any


@public_api
def tracking_lqr(system: Any, Q: Any, R: Any, x_ref: Any, *, Qf: Any = None, u_ref: Any = None,
                 dtype: Any = None) -> TrackingLQRResult:
    """Finite-horizon LQR tracking of a reference, for an affine LTV system.

    Minimises

    ``Σ_{k<T} (x_k − r_k)ᵀQ_k(x_k − r_k) + (u_k − ū_k)ᵀR_k(u_k − ū_k) + (x_T − r_T)ᵀQ_f(x_T − r_T)``

    subject to ``x_{k+1} = A_k x_k + B_k u_k + c_k``. With ``V_T(x) = (x − r_T)ᵀQ_f(x − r_T)``
    and ``V_{k+1}(x) = xᵀSx + 2sᵀx + s0``, each backward step computes
    ``G = R_k + B_kᵀSB_k = LLᵀ``, ``g = B_kᵀ(S c_k + s) − R_k ū_k`` and

    ``K_k = G⁻¹B_kᵀSA_k``, ``k_k = −G⁻¹g``,
    ``S_k = Q_k + A_kᵀSA_k − K_kᵀGK_k``,
    ``s_k = −Q_k r_k + A_kᵀ(S c_k + s) − K_kᵀg``,
    ``s0_k = r_kᵀQ_k r_k + ū_kᵀR_kū_k + c_kᵀ(S c_k + 2s) + s0 − gᵀG⁻¹g``,

    with Cholesky solves and symmetrised ``S_k``.

    Parameters
    ----------
    system : LTVSystem
        The plant, including its affine drift ``c`` (``B=None`` means ``B = I``).
    Q : float or array (n, n), (T, n, n) or (*batch, T, n, n)
        State weight (symmetric PSD); a scalar ``q`` means ``q·I``.
    R : float or array (m, m), (T, m, m) or (*batch, T, m, m)
        Input weight (symmetric PD); a scalar ``r`` means ``r·I``.
    x_ref : array (n,), (T+1, n) or (*batch, T+1, n)
        State reference ``r_k``; a 1-D array is a constant reference.
    Qf : float or array (n, n) or (*batch, n, n), optional
        Terminal weight. Default ``None``: ``Q`` of the last stage, ``Q_{T−1}``.
    u_ref : array (m,), (T, m) or (*batch, T, m), optional
        Input reference ``ū_k``. Default ``None``: zero.
    dtype : dtype, optional
        Compute dtype: float32 or float64 (float16/bfloat16 are refused with ArgumentError).
        Default ``None``: float64 (MPS tensors: their own dtype).

    Returns
    -------
    TrackingLQRResult
        ``(K, k, S, s, s0)`` in the system's array type and device.

    Notes
    -----
    Differentiability: with torch tensors, autograd runs through every step (``gradcheck``-tested
    in ``tests/test_gradients.py`` with respect to A, B, c, x_ref, u_ref and x0, batched and with ``B=None``).
    A failed factorisation raises :class:`NumericalError` instead of returning NaN gradients;
    numpy problems given tensors that require grad are refused with :class:`ArgumentError`.

    Raises
    ------
    DimensionError, PropertyError, NumericalError, ArgumentError
        As for :func:`~ltv_control.finite_horizon_lqr`; also for a wrong ``x_ref``/``u_ref`` shape.
    """
    p = prepare_problem(system, Q, R, Qf=Qf, dtype=dtype)
    be = p.be
    T, n, m = system.horizon, system.n_states, system.n_inputs
    r = as_vector_stack(x_ref, "x_ref", length=T + 1, dim=n, backend=be, dtype=p.dtype,
                        device=p.device, batch_shape=system.batch_shape, length_name="T+1")
    ubar = None
    if u_ref is not None:
        ubar = as_vector_stack(u_ref, "u_ref", length=T, dim=m, backend=be, dtype=p.dtype,
                               device=p.device, batch_shape=system.batch_shape)
    batch = be.broadcast_shapes(p.batch, tuple(r.shape[:-2]),
                                () if ubar is None else tuple(ubar.shape[:-2]))
    S, s, s0 = terminal_value(p.Qf, r[..., T, :], step=T, backend=be)
    out: list[list[Any]] = [[], [], [S], [s], [s0]]
    steps = backward_recursion(problem_stages(p, T, r, ubar, drift=True), S, s, s0, backend=be,
                               deferred=DeferredChecks.for_backend(be))
    for _, step in steps:
        for acc, value in zip(out, step[:5]):
            acc.append(value)
    K, k, S, s, s0 = (be.stack([be.broadcast_to(v, batch + tuple(v.shape[len(v.shape) - nd:]))
                                for v in acc[::-1]], axis=-nd - 1)
                      for acc, nd in zip(out, (2, 1, 2, 1, 0)))
    return TrackingLQRResult(K, k, S, s, s0)
