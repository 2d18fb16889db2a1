"""S-PID baseline: a PID controller over the layer index on the LFS error.

Details: the Notes of :class:`PIDSteerer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ltv_control.adapters.setpoint import measure_setpoint
from ltv_control._exceptions import PropertyError
from ltv_control._validation import public_api
from ltv_control.adapters._checks import check_layer_indices, check_positions, check_scalar
from ltv_control.adapters.laws import PIDLaw
from ltv_control.adapters.steerer import SteeringHandle, Steerer

__all__ = ["PIDSteerer"]


class PIDSteerer(Steerer):
    """S-PID steerer on the LFS error ``ε_k = β*_k - v_kᵀ z_k`` (see the Notes).

    Attributes
    ----------
    v : torch.Tensor, shape (T, n), float32
    e_norm : torch.Tensor, shape (T,), float32
    beta_star : torch.Tensor, shape (T,), float32
    kp, ki, kd, lam : float
    reset_every : int

    Notes
    -----
    With the linear-feature setpoint ``(v_k, β*_k)`` (:mod:`ltv_control.setpoint`),
    the scalar error at block ``k``'s input is ``ε_k = β*_k - v_kᵀ z_k``.  Treating the
    layer index as time, S-PID applies along ``v_k``

    .. math::

        u_k = \\bigl(k_p\\,ε_k + k_i\\,I_k + k_d\\,(ε_k - ε_{k^-})\\bigr)\\, v_k, \\qquad
        I_k = \\sum_{j \\in S(k),\\, j \\le k} ε_j ,

    where ``S(k)`` are the controlled layers of ``k``'s reset window
    ``[⌊k/R⌋·R, ⌊k/R⌋·R + R)`` with ``R = reset_every`` (the integral is reset every
    ``R`` layers; the default ``R = 10`` follows the A-LQR paper, arXiv 2604.19018), and ``k⁻`` is the previous
    controlled layer in the same window (the derivative term is zero at the first
    controlled layer of a window).  Errors are computed independently for every
    steered position and batch row, within one forward pass (the integrator never
    carries over from one forward pass or token to the next).  ``u_k`` is added to
    block ``k``'s output.

    This is ltv-control's definition of S-PID (the paper's own formula was not
    available when this was written; PID steering in the sense of Nguyen et al.,
    arXiv 2510.04309, feeds a PID of the mean-difference error back over the layer
    index, and S-PID here applies the same idea to the scalar LFS error): the error,
    integral and derivative are scalars along the setpoint direction, so the input
    stays in ``span(v_k)``; with ``ki = kd = 0`` it is the proportional controller
    ``u_k = k_p ε_k v_k``, i.e. A-LQR with ``w_k = k_p v_k``.
    """

    kind = "pid"
    tensor_names = ("v", "e_norm", "beta_star")
    hyperparameter_names = ("kp", "ki", "kd", "lam", "reset_every")
    attach_options = ("lam",)
    default_positions = "last"

    @classmethod
    @public_api
    def fit(
        cls,
        plant: Any,
        desired: Sequence[str],
        undesired: Sequence[str],
        *,
        kp: float = 0.5,
        ki: float = 0.5,
        kd: float = 0.0,
        lam: float = 1.0,
        reset_every: int = 10,
        positions: str = "last",
        layers: Sequence[int] | None = None,
        batch_size: int = 8,
    ) -> PIDSteerer:
        """Fit the LFS setpoint used by the PID law.

        Parameters
        ----------
        plant : LLMPlant
        desired, undesired : list of str
        kp, ki, kd : float, defaults 0.5, 0.5, 0.0
            Proportional, integral and derivative gains.
        lam : float, default 1.0
            ``β*_k = lam·‖e_k‖`` (changeable at :meth:`attach`).
        reset_every : int, default 10
            The integral restarts at every layer ``k`` with ``k % reset_every == 0``.
        positions : {"last", "all"}, default "last"
        layers : list of int or None, default None
            Controlled layers (``None``: all with a direction).
        batch_size : int, default 8
        """
        hyper = _check_gains(kp, ki, kd, reset_every)
        cls.check_hyperparameters(horizon=plant.horizon, state_dim=plant.state_dim, lam=lam, **hyper)
        positions = check_positions(positions)
        check_layer_indices(layers, plant.horizon)
        setpoint = measure_setpoint(plant, desired, undesired, lam=lam, batch_size=batch_size)
        return cls.from_setpoint(setpoint, **hyper, positions=positions, layers=layers)

    @classmethod
    @public_api
    def from_setpoint(cls, setpoint: Any, *, kp: float = 0.5, ki: float = 0.5, kd: float = 0.0,
                      reset_every: int = 10, positions: str = "last",
                      layers: Sequence[int] | None = None) -> PIDSteerer:
        """The S-PID steerer of a measured setpoint (its ``v``, ``e_norm``, ``β*`` and ``lam``).

        Parameters
        ----------
        setpoint : Setpoint
            From :meth:`LLMPlant.setpoint` (its ``lam`` becomes the fitted ``lam``).
        kp, ki, kd : float, defaults 0.5, 0.5, 0.0
            Proportional, integral and derivative gains.
        reset_every : int, default 10
            The integral restarts at every layer ``k`` with ``k % reset_every == 0``.
        positions : {"last", "all"}, default "last"
        layers : list of int or None, default None
            Controlled layers (``None``: all with a direction).

        Returns
        -------
        PIDSteerer
        """
        hyper = _check_gains(kp, ki, kd, reset_every)
        hyper["lam"] = check_scalar(setpoint.lam, "lam")
        positions = check_positions(positions)
        layers = check_layer_indices(layers, setpoint.horizon)
        tensors = {"v": setpoint.v, "e_norm": setpoint.e_norm, "beta_star": setpoint.beta_star}
        return cls.from_setpoint_tensors(setpoint, tensors, hyperparameters=hyper, layers=layers,
                                         positions=positions)

    @public_api
    def attach(
        self,
        model: Any,
        *,
        positions: str | None = None,
        lam: float | None = None,
        layers: Sequence[int] | None = None,
    ) -> SteeringHandle:
        """Steer ``model`` with the S-PID law (see :meth:`Steerer.attach`).

        Parameters
        ----------
        model : torch.nn.Module
        positions : {"last", "all"} or None, default None
            ``None``: the fitted default.
        lam : float or None, default None
            ``β*_k = lam·e_norm_k``; ``None``: the fitted ``lam``.
        layers : list of int or None, default None
            Restrict control to these layers.

        Returns
        -------
        SteeringHandle
        """
        if lam is not None:
            lam = check_scalar(lam, "lam")
        return super().attach(model, positions=positions, layers=layers, lam=lam)

    def layer_laws(self, *, lam: float | None = None) -> dict:
        """One :class:`PIDLaw` per layer with a direction (``β = lam·e_norm``; ``None``: fitted ``β*``)."""
        beta = self.beta_star if lam is None else lam * self.e_norm
        gains = {"kp": self.kp, "ki": self.ki, "kd": self.kd, "reset_every": int(self.reset_every)}
        return {k: PIDLaw(k, self.v[k], beta[k], **gains)
                for k in range(self.horizon) if float(self.e_norm[k]) > 0.0}


def _check_gains(kp: Any, ki: Any, kd: Any, reset_every: Any) -> dict:
    """Validated PID gains and reset window, as a hyper-parameter dict."""
    if isinstance(reset_every, bool) or not isinstance(reset_every, int | np.integer) or reset_every < 1:
        raise PropertyError(f"reset_every: expected a positive integer, found {reset_every!r}")
    return {"kp": check_scalar(kp, "kp"), "ki": check_scalar(ki, "ki"), "kd": check_scalar(kd, "kd"),
            "reset_every": int(reset_every)}
