"""The quadratic cost of a trajectory."""

from __future__ import annotations

from typing import Any

import numpy as np

from ltv_control._exceptions import DimensionError
from ltv_control._validation import as_vector_stack, format_shape, public_api, refuse_nonfinite_result
from ltv_control.lqr import prepare_problem

__all__ = ["lqr_cost"]


@public_api
def lqr_cost(system: Any, Q: Any, R: Any, x: Any, u: Any, *, Qf: Any = None, N: Any = None) -> Any:
    """The LQR cost of a state/input trajectory.

    ``J = Σ_{k<T} x_kᵀQ_k x_k + u_kᵀR_k u_k + 2 x_kᵀN_k u_k + x_TᵀQ_f x_T``
    (no factor 1/2, the python-control / MATLAB / Drake convention). The
    trajectory is not checked against the dynamics.

    Parameters
    ----------
    system : LTVSystem
        Gives ``T``, ``n``, ``m``, the array type and the batch shape.
    Q : float or array (n, n), (T, n, n) or (*batch, T, n, n)
        State weight (symmetric PSD).
    R : float or array (m, m), (T, m, m) or (*batch, T, m, m)
        Input weight (symmetric PD).
    x : array (T+1, n) or (*batch, T+1, n)
        States ``x_0 … x_T``.
    u : array (T, m) or (*batch, T, m)
        Inputs ``u_0 … u_{T−1}``.
    Qf : float or array (n, n) or (*batch, n, n), optional
        Terminal weight. Default ``None``: ``Q_{T−1}``.
    N : float or array (n, m), (T, n, m) or (*batch, T, n, m), optional
        Cross weight. Default ``None``: no cross term.

    Returns
    -------
    cost : scalar or array (*batch,)
        float64 (numpy scalar / 0-d torch tensor when unbatched); one entry per member
        of the broadcast batch of ``system``, the weights, ``x`` and ``u``.

    Notes
    -----
    Differentiability: with torch inputs the cost is differentiable in x, u, the system and the
    weights (``gradcheck``-tested in ``tests/test_gradients.py``).

    Raises
    ------
    NumericalError
        The cost overflows the compute dtype (inf/NaN from finite input); the message
        names the batch member.
    """
    p = prepare_problem(system, Q, R, Qf=Qf, N=N)
    be = p.be
    T, n, m = system.horizon, system.n_states, system.n_inputs
    x = as_vector_stack(x, "x", length=T + 1, dim=n, backend=be, dtype=p.dtype, device=p.device,
                        allow_constant=False, length_name="T+1")
    u = as_vector_stack(u, "u", length=T, dim=m, backend=be, dtype=p.dtype, device=p.device,
                        allow_constant=False)
    try:
        batch = tuple(be.broadcast_shapes(tuple(x.shape[:-2]), tuple(u.shape[:-2]), p.batch))
    except (ValueError, RuntimeError):
        raise DimensionError(f"x, u: batch dimensions {format_shape(x.shape[:-2])} and "
                             f"{format_shape(u.shape[:-2])} do not broadcast with "
                             f"{format_shape(p.batch)}") from None

    def stack(w: Any) -> Any:
        return w.value if w.per_step else w.value[..., None, :, :]

    xs = x[..., :T, :]
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below
        cost = be.sum(xs * be.matvec(stack(p.Q), xs), axis=(-1, -2))
        cost = cost + be.sum(u * be.matvec(stack(p.R), u), axis=(-1, -2))
        if p.N is not None:
            cost = cost + 2.0 * be.sum(xs * be.matvec(stack(p.N), u), axis=(-1, -2))
        xT = x[..., T, :]
        cost = cost + be.sum(xT * be.matvec(p.Qf, xT), axis=-1)
    if tuple(cost.shape) != batch:
        # one cost per batch member, also when only the system (or a weight) is batched
        cost = cost + be.zeros(batch, dtype=p.dtype, device=p.device)
    refuse_nonfinite_result(cost, "lqr_cost(): the cost", be, item_ndim=0, per_step=False,
                            hint=f"; the trajectory or the weights are too large for {p.dtype}")
    return cost
