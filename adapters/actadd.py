"""ActAdd baseline: add a scaled mean-difference vector at chosen layers.

Fit: ``e_k = mean(desired) - mean(undesired)`` over the last-token block inputs
(the same contrast as the LFS setpoint, unnormalised).  Runtime: block ``k``'s
output gets ``u_k = coeff · e_k`` at the steered positions of the chosen layers,
independently of the state (an open-loop, proportional-only controller).
The default positions are ``"all"`` (every non-pad position), as in activation
addition; ``"last"`` steers only the newest position of each forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ltv_control.adapters.setpoint import measure_setpoint
from ltv_control._exceptions import ArgumentError
from ltv_control._validation import public_api
from ltv_control.adapters._checks import check_layer_indices, check_positions, check_scalar
from ltv_control.adapters.laws import AffineLaw
from ltv_control.adapters.steerer import SteeringHandle, Steerer

__all__ = ["ActAddSteerer"]

_REQUIRED = object()


class ActAddSteerer(Steerer):
    """Activation addition: ``u_k = coeff · e_k`` at the chosen layers.

    Attributes
    ----------
    e : torch.Tensor, shape (T, n), float32
        Mean differences ``e_k = mean(desired) - mean(undesired)`` at every layer.
    coeff : float
        Fitted coefficient (changeable at :meth:`attach`).
    layers : list of int
        The layers that receive the vector.
    """

    kind = "actadd"
    tensor_names = ("e",)
    hyperparameter_names = ("coeff",)
    attach_options = ("coeff",)
    default_positions = "all"

    @classmethod
    @public_api
    def fit(
        cls,
        plant: Any,
        desired: Sequence[str],
        undesired: Sequence[str],
        *,
        layers: Sequence[int] = _REQUIRED,  # type: ignore[assignment]
        coeff: float = 1.0,
        positions: str = "all",
        batch_size: int = 8,
    ) -> ActAddSteerer:
        """Fit the mean-difference vectors on ``plant``.

        Parameters
        ----------
        plant : LLMPlant
        desired, undesired : list of str
        layers : list of int
            Required: the layers whose output receives ``coeff · e_k``.
        coeff : float, default 1.0
            Scale of the added vector (negative values push away from ``desired``).
        positions : {"last", "all"}, default "all"
        batch_size : int, default 8
            Batch size of :meth:`LLMPlant.last_token_states`.
        """
        if layers is _REQUIRED or layers is None:
            raise ArgumentError("ActAddSteerer.fit: layers is required (a list of layer indices)")
        coeff = check_scalar(coeff, "coeff")
        cls.check_hyperparameters(horizon=plant.horizon, state_dim=plant.state_dim, coeff=coeff)
        positions = check_positions(positions)
        layers = check_layer_indices(layers, plant.horizon)
        setpoint = measure_setpoint(plant, desired, undesired, lam=1.0, batch_size=batch_size)
        return cls.from_setpoint(setpoint, layers=layers, coeff=coeff, positions=positions)

    @classmethod
    @public_api
    def from_setpoint(cls, setpoint: Any, *, layers: Sequence[int] = _REQUIRED,  # type: ignore[assignment]
                      coeff: float = 1.0, positions: str = "all") -> ActAddSteerer:
        """The ActAdd steerer ``u_k = coeff · e_k`` of a measured setpoint (its ``e``).

        Parameters
        ----------
        setpoint : Setpoint
            From :meth:`LLMPlant.setpoint` (its ``lam`` is not used).
        layers : list of int
            Required: the layers whose output receives ``coeff · e_k``.
        coeff : float, default 1.0
        positions : {"last", "all"}, default "all"

        Returns
        -------
        ActAddSteerer
        """
        if layers is _REQUIRED or layers is None:
            raise ArgumentError("ActAddSteerer.from_setpoint: layers is required (a list of layer indices)")
        coeff = check_scalar(coeff, "coeff")
        positions = check_positions(positions)
        layers = check_layer_indices(layers, setpoint.horizon)
        return cls.from_setpoint_tensors(setpoint, {"e": np.asarray(setpoint.e, dtype=np.float32)},
                                         hyperparameters={"coeff": coeff}, layers=layers,
                                         positions=positions)

    @public_api
    def attach(
        self,
        model: Any,
        *,
        positions: str | None = None,
        coeff: float | None = None,
        layers: Sequence[int] | None = None,
    ) -> SteeringHandle:
        """Add ``coeff · e_k`` to block ``k``'s output (see :meth:`Steerer.attach`).

        Parameters
        ----------
        model : torch.nn.Module
        positions : {"last", "all"} or None, default None
            ``None``: the fitted default.
        coeff : float or None, default None
            ``None``: the fitted coefficient.
        layers : list of int or None, default None
            Restrict the fitted layers to these.

        Returns
        -------
        SteeringHandle
        """
        if coeff is not None:
            coeff = check_scalar(coeff, "coeff")
        return super().attach(model, positions=positions, layers=layers, coeff=coeff)

    def layer_laws(self, *, coeff: float | None = None) -> dict:
        """``u_k = coeff · e_k`` (:class:`AffineLaw` with ``c = coeff·e_k``) on every layer (the
        fitted ``layers`` restrict it at attach)."""
        coeff = self.coeff if coeff is None else coeff
        return {k: AffineLaw(c=coeff * self.e[k]) for k in range(self.horizon)}
