"""Multi-concept A-LQR: several LFS setpoints steered at once, each with its own λ.

Fit (:meth:`MultiConceptSteerer.fit` / :meth:`MultiConceptSteerer.from_system`)
    1. One LFS setpoint per concept ``j`` (:meth:`LLMPlant.setpoint`):
       ``e_{j,k} = mean(desired_j) − mean(undesired_j)``, ``v_{j,k} = e_{j,k}/‖e_{j,k}‖``.
    2. One linearization ``z_{k+1} = A_k z_k + u_k`` (B = I) shared by every concept.
    3. One set of gains ``K_k`` from :func:`ltv_control.finite_horizon_lqr` with ``Q = q·I``,
       ``R = r·I``, ``Q_f = qf·I``; only ``w_{j,k} = K_k v_{j,k}`` is kept
       (:func:`ltv_control.setpoint.feedback_directions`).

Runtime law (the upstream multi-concept law)

.. math::

    u_k = \\sum_j (\\beta^*_{j,k} - v_{j,k}^\\top z_k)\\, K_k v_{j,k}
        = W_k^\\top (b_k - V_k z_k),

with ``V_k, W_k`` the ``(J, n)`` stacks of ``v_{j,k}``, ``w_{j,k}`` and ``b_k`` the ``(J,)``
targets ``β*_{j,k} = λ_j ‖e_{j,k}‖``.  Because the gains are linear, this is the sum of the
single-concept A-LQR laws: with one concept it equals :class:`ALQRSteerer`'s law exactly.

Controller files hold, per concept ``j``, the float32 tensors ``v_j``, ``w_j`` (``(T, n)``) and
``e_norm_j`` (``(T,)``); the concept names and the fitted λ's are JSON hyper-parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ltv_control._exceptions import ArgumentError, DimensionError
from ltv_control.adapters._checks import (
    check_layer_indices,
    check_positions,
    check_prompts,
    check_scalar,
)
from ltv_control.adapters.laws import AffineLaw
from ltv_control.adapters.steerer import SteeringHandle, Steerer

__all__ = ["MultiConceptSteerer"]


def _tensor_names(n_concepts: int) -> tuple[str, ...]:
    return tuple(f"{base}_{j}" for j in range(n_concepts) for base in ("v", "w", "e_norm"))


class MultiConceptSteerer(Steerer):
    """A-LQR on several setpoints at once: ``u_k = Σ_j (β*_{j,k} − v_{j,k}ᵀ z_k) K_k v_{j,k}``.

    Build it with :meth:`fit`, :meth:`from_system` or :meth:`load`.

    Attributes
    ----------
    concepts : list of str
        Concept names, in the order of the per-concept tensors.
    lams : list of float
        Fitted scales ``λ_j`` (``β*_{j,k} = λ_j ‖e_{j,k}‖``).
    v_j, w_j : torch.Tensor, shape (T, n), float32
        Unit feature directions and feedback directions ``K_k v_{j,k}`` of concept ``j``.
    e_norm_j : torch.Tensor, shape (T,), float32
        ``‖e_{j,k}‖`` (zero where concept ``j`` has no direction).
    q, r, qf : float
        LQR weights.
    """

    kind = "alqr_multi"
    hyperparameter_names = ("q", "r", "qf", "lams", "concepts")
    attach_options = ("lam", "lams")
    default_positions = "last"

    def __init__(self, tensors: Mapping[str, Any], **kwargs: Any) -> None:
        concepts = (kwargs.get("hyperparameters") or {}).get("concepts")
        if not isinstance(concepts, (list, tuple)) or not concepts or \
                not all(isinstance(c, str) for c in concepts):
            raise ArgumentError(f"hyperparameters['concepts'] must be a non-empty list of str, "
                                f"found {concepts!r}")
        self.tensor_names = _tensor_names(len(concepts))  # instance-level: J depends on the fit
        super().__init__(tensors, **kwargs)
        if not isinstance(self.lams, (list, tuple)) or len(self.lams) != len(self.concepts):
            raise DimensionError(f"lams: expected one λ per concept ({len(self.concepts)}), "
                                 f"found {self.lams!r}")

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, plant: Any, concepts: Mapping[str, tuple[Sequence[str], Sequence[str]]], *,
            lams: Sequence[float] | float = 1.0, q: float = 0.1, r: float = 1.0, qf: float = 0.1,
            jacobian_prompts: Sequence[str] | None = None, positions: str = "last",
            max_tokens: int = 24, batch_size: int = 8, progress: bool = True,
            system: Any = None) -> MultiConceptSteerer:
        """Fit on several concepts: one setpoint each, one linearization, one set of gains.

        Parameters
        ----------
        plant : LLMPlant
        concepts : mapping of str to (desired, undesired)
            Contrastive prompt lists per concept name (in steering order).
        lams : float or sequence of float, default 1.0
            ``λ_j`` per concept (a float: the same for all).
        q, r, qf : float, defaults 0.1, 1.0, 0.1
            LQR weights ``Q = q·I``, ``R = r·I``, ``Q_f = qf·I``.
        jacobian_prompts : list of str or None
            Linearization prompts; ``None``: the first 50 desired prompts of the first concept.
        positions : {"last", "all"}
        max_tokens, batch_size, progress
            Passed to :meth:`LLMPlant.linearize`.
        system : LTVSystem, optional
            A linearization already computed (then ``jacobian_prompts`` is ignored).

        Returns
        -------
        MultiConceptSteerer
        """
        if not isinstance(concepts, Mapping) or not concepts:
            raise ArgumentError("concepts must be a non-empty mapping name -> (desired, undesired), "
                                f"found {type(concepts).__name__}")
        lams = cls._check_lams(lams, len(concepts))
        setpoints = {}
        for (name, pair), lam in zip(concepts.items(), lams):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ArgumentError(f"concepts[{name!r}] must be a (desired, undesired) pair")
            setpoints[name] = plant.setpoint(pair[0], pair[1], lam=lam, batch_size=batch_size)
        if system is None:
            first = check_prompts(next(iter(concepts.values()))[0], "desired")
            prompts = first[:50] if jacobian_prompts is None else check_prompts(
                jacobian_prompts, "jacobian_prompts")
            system = plant.linearize(prompts, max_tokens=max_tokens, batch_size=batch_size,
                                     progress=progress)
        return cls.from_system(system, setpoints, q=q, r=r, qf=qf, positions=positions)

    @classmethod
    def from_system(cls, system: Any, setpoints: Mapping[str, Any], *, q: float = 0.1,
                    r: float = 1.0, qf: float = 0.1, positions: str = "last"
                    ) -> MultiConceptSteerer:
        """The multi-concept steerer of a linearized plant and one setpoint per concept.

        Parameters
        ----------
        system : LTVSystem
            ``A (T, n, n)`` with ``B = None`` (from :meth:`LLMPlant.linearize`).
        setpoints : mapping of str to Setpoint
            From :meth:`LLMPlant.setpoint`, one per concept (their ``lam`` become ``lams``);
            all of the same plant.
        q, r, qf : float
        positions : {"last", "all"}

        Returns
        -------
        MultiConceptSteerer
        """
        from ltv_control import finite_horizon_lqr
        from ltv_control.setpoint import feedback_directions

        q = check_scalar(q, "q", nonnegative=True)
        r = check_scalar(r, "r", positive=True)
        qf = check_scalar(qf, "qf", nonnegative=True)
        positions = check_positions(positions)
        if not isinstance(setpoints, Mapping) or not setpoints:
            raise ArgumentError("setpoints must be a non-empty mapping name -> Setpoint")
        first = next(iter(setpoints.values()))
        T, n = int(first.horizon), int(first.state_dim)
        for name, sp in setpoints.items():
            if (int(sp.horizon), int(sp.state_dim)) != (T, n):
                raise DimensionError(f"setpoints[{name!r}]: expected (T, n) = ({T}, {n}), found "
                                     f"({sp.horizon}, {sp.state_dim})")
        A = getattr(system, "A", None)
        if A is None or tuple(A.shape) != (T, n, n) or getattr(system, "B", None) is not None:
            raise DimensionError(f"system: expected A of shape ({T}, {n}, {n}) and B = None, found "
                                 f"A {None if A is None else tuple(A.shape)}")
        K, _ = finite_horizon_lqr(system, q, r, Qf=qf)
        K = np.asarray(K.detach().cpu().double().numpy() if hasattr(K, "detach") else K,
                       dtype=np.float64)
        tensors: dict[str, Any] = {}
        for j, sp in enumerate(setpoints.values()):
            v = np.asarray(sp.v, dtype=np.float64)
            tensors[f"v_{j}"] = v
            tensors[f"w_{j}"] = feedback_directions(K, v)
            tensors[f"e_norm_{j}"] = np.asarray(sp.e_norm, dtype=np.float64)
        hyper = {"q": q, "r": r, "qf": qf, "lams": [float(sp.lam) for sp in setpoints.values()],
                 "concepts": list(setpoints)}
        return cls.from_setpoint_tensors(first, tensors, hyperparameters=hyper, layers=None,
                                         positions=positions)

    @staticmethod
    def _check_lams(lams: Any, count: int) -> list[float]:
        if isinstance(lams, (int, float)) and not isinstance(lams, bool):
            return [check_scalar(lams, "lams")] * count
        if isinstance(lams, Mapping) or not isinstance(lams, Sequence) or len(lams) != count:
            raise DimensionError(f"lams: expected a float or {count} floats (one per concept), "
                                 f"found {lams!r}")
        return [check_scalar(x, f"lams[{i}]") for i, x in enumerate(lams)]

    # ------------------------------------------------------------------ runtime

    def attach(self, model: Any, *, positions: str | None = None, lam: float | None = None,
               lams: Sequence[float] | None = None, layers: Sequence[int] | None = None
               ) -> SteeringHandle:
        """Steer ``model`` with ``u_k = Σ_j (λ_j‖e_{j,k}‖ − v_{j,k}ᵀz_k) w_{j,k}``.

        Parameters
        ----------
        model : torch.nn.Module
        positions : {"last", "all"} or None
        lam : float or None
            The same ``λ`` for every concept (for a λ sweep); exclusive with ``lams``.
        lams : sequence of float or None
            One ``λ_j`` per concept; ``None`` (and ``lam=None``): the fitted ``lams``.
        layers : list of int or None

        Returns
        -------
        SteeringHandle
        """
        if lam is not None and lams is not None:
            raise ArgumentError("give lam (one λ for all concepts) or lams (one per concept), "
                                "not both")
        if lam is not None:
            lams = self._check_lams(lam, len(self.concepts))
        elif lams is not None:
            lams = self._check_lams(lams, len(self.concepts))
        check_layer_indices(layers, self.horizon)
        return super().attach(model, positions=positions, layers=layers, lams=lams)

    def stacked(self, lams: Sequence[float] | None = None) -> dict[str, Any]:
        """``V (T, J, n)``, ``W (T, J, n)`` and targets ``beta (T, J) = λ_j ‖e_{j,k}‖``."""
        import torch

        lams = list(self.lams) if lams is None else list(lams)
        J = len(self.concepts)
        V = torch.stack([getattr(self, f"v_{j}") for j in range(J)], dim=1)
        W = torch.stack([getattr(self, f"w_{j}") for j in range(J)], dim=1)
        beta = torch.stack([float(lams[j]) * getattr(self, f"e_norm_{j}") for j in range(J)], dim=1)
        return {"V": V.contiguous(), "W": W.contiguous(), "beta": beta.contiguous()}

    def layer_laws(self, *, lams: Sequence[float] | None = None) -> dict:
        """``u_k = W_kᵀ(b_k − V_k z)`` as an :class:`AffineLaw` of rank ``J`` (``U = W_kᵀ``,
        ``V = V_kᵀ``, ``b = b_k``) on the layers where some concept has a direction."""
        p = self.stacked(lams)
        norms = [getattr(self, f"e_norm_{j}") for j in range(len(self.concepts))]
        return {k: AffineLaw(U=p["W"][k].T.contiguous(), V=p["V"][k].T.contiguous(),
                             b=p["beta"][k].contiguous())
                for k in range(self.horizon) if any(float(e[k]) > 0.0 for e in norms)}
