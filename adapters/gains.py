"""Feedback directions ``w_k = K_k v_k`` of a linearized plant: dense or streamed Riccati.

A-LQR keeps only ``w_k`` of the LQR gains ``K_k`` (``Q = q·I``, ``R = r·I``, ``Q_f = qf·I``,
``B_k = I`` on the controlled layers, ``B_k = 0`` elsewhere).  An :class:`~ltv_control.LTVSystem`
goes through :func:`ltv_control.finite_horizon_lqr`; a :class:`StreamedSystem` (the ``A_k`` in
backward order, e.g. from :meth:`LLMPlant.iter_jacobians`) through
:func:`ltv_control.streaming.streamed_feedback`, holding O(n²) memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ltv_control._exceptions import ArgumentError, DimensionError
from ltv_control.adapters._checks import to_numpy64

__all__ = ["StreamedSystem", "feedback_gains"]


class StreamedSystem:
    """A plant ``z_{k+1} = A_k z_k + u_k`` given as a stream of ``(k, A_k)``, ``k = T-1, ..., 0``.

    Parameters
    ----------
    jacobians : iterable of (int, array (n, n))
        Consumed once, in backward order.
    horizon, state_dim : int
        ``T`` and ``n``.
    dtype, device : optional
        Precision and device of the Riccati recursion (``None``: float64 on ``device``, default
        CPU); see :func:`ltv_control.streaming.streamed_feedback`.
    """

    def __init__(self, jacobians: Iterable[tuple[int, Any]], *, horizon: int, state_dim: int,
                 dtype: Any = None, device: Any = None) -> None:
        self.jacobians = jacobians
        self.horizon = int(horizon)
        self.state_dim = int(state_dim)
        self.dtype = dtype
        self.device = device


def _check_system(system: Any, T: int, n: int) -> None:
    """Refuse a linearization that is not ``A (T, n, n)`` with ``B = None``."""
    from ltv_control import LTVSystem

    if isinstance(system, StreamedSystem):
        if (system.horizon, system.state_dim) != (T, n):
            raise DimensionError(f"system: expected horizon {T} and state_dim {n} (the setpoint's), "
                                 f"found {system.horizon} and {system.state_dim}")
        return
    if not isinstance(system, LTVSystem):
        raise ArgumentError(f"system: expected an LTVSystem or a StreamedSystem, found {type(system).__name__}")
    if tuple(system.A.shape) != (T, n, n) or system.B is not None:
        found_b = "None" if system.B is None else str(tuple(system.B.shape))
        raise DimensionError(f"system: expected A of shape ({T}, {n}, {n}) and B=None for this "
                             f"plant; found A {tuple(system.A.shape)}, B {found_b}")


def _restrict_inputs(system: Any, layers: list[int]) -> Any:
    """Same plant with ``B_k = I`` on ``layers`` and ``B_k = 0`` elsewhere."""
    from ltv_control import LTVSystem

    A = system.A
    n = A.shape[-1]
    if type(A).__module__.split(".")[0] == "torch":
        import torch

        B = torch.zeros_like(A)
        idx = torch.arange(n, device=A.device)
        for k in layers:
            B[..., k, idx, idx] = 1.0
    else:
        B = np.zeros_like(A)
        for k in layers:
            B[..., k, :, :] = np.eye(n, dtype=A.dtype)
    return LTVSystem(A, B, getattr(system, "c", None))


def _streamed(system: StreamedSystem, v: np.ndarray, q: float, r: float, qf: float,
              layers: list[int] | None) -> np.ndarray:
    from ltv_control.streaming import streamed_feedback

    T, n = system.horizon, system.state_dim
    controlled = set(range(T)) if layers is None else set(layers)
    zero = np.zeros((n, n))

    def input_matrix(k: int) -> Any:
        return None if k in controlled else zero  # None: B_k = I

    result = streamed_feedback(system.jacobians, v, q, r, Qf=qf, B=input_matrix, horizon=T,
                               dtype=system.dtype, device=system.device or "cpu")
    return to_numpy64(result.w)


def feedback_gains(system: Any, v: Any, *, q: float, r: float, qf: float,
                   layers: list[int] | None = None) -> np.ndarray:
    """``w_k = K_k v_k`` for the LQR gains of ``system`` (see the module docstring).

    Parameters
    ----------
    system : LTVSystem or StreamedSystem
        ``A (T, n, n)``, ``B = None``.
    v : array, shape (T, n)
        Unit feature directions.
    q, r, qf : float
        Already validated weights.
    layers : list of int or None
        Controlled layers (``None``: all).

    Returns
    -------
    numpy.ndarray, shape (T, n), float64
    """
    from ltv_control import finite_horizon_lqr
    from ltv_control.setpoint import feedback_directions

    v = to_numpy64(v)
    T, n = v.shape
    _check_system(system, T, n)
    if isinstance(system, StreamedSystem):
        return _streamed(system, v, q, r, qf, layers)
    if layers is not None:
        system = _restrict_inputs(system, layers)
    K, _ = finite_horizon_lqr(system, q, r, Qf=qf)
    if type(K).__module__.split(".")[0] == "torch":
        import torch

        v_like = torch.as_tensor(v, dtype=K.dtype, device=K.device)
    else:
        v_like = v
    return to_numpy64(feedback_directions(K, v_like))
