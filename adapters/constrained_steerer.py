r"""Constrained steering: one budgeted QP over the remaining layers, re-planned every forward pass.

Details: the Notes of :class:`ConstrainedSteerer`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ltv_control.adapters.setpoint import measure_setpoint
from ltv_control._exceptions import ArgumentError, DimensionError, PropertyError
from ltv_control.adapters._checks import (
    check_layer_indices,
    check_positions,
    check_prompts,
    check_scalar,
    reject_unknown,
    to_numpy64,
)
from ltv_control.adapters.constrained_plan import ConstrainedLaw, ConstrainedPlanner, build_bases
from ltv_control.adapters.steerer import SteeringHandle, Steerer

__all__ = ["ConstrainedSteerer", "build_bases"]

_EXTRA_TENSORS = ("bases", "A_r", "z_mean", "v_all", "e_norm_all", "act_norm")
_METHODS = ("admm", "cvxpy")
_ON_INFEASIBLE = ("relax", "raise")


# --------------------------------------------------------------------------- steerer
class ConstrainedSteerer(Steerer):
    r"""Budgeted, model-predictive steering: :class:`~ltv_control.constrained.ConstrainedLQR`
    on the projected plant, re-solved at every forward pass (see the Notes).

    Build it with :meth:`fit` (or :meth:`load`); apply it with :meth:`attach`.

    Attributes
    ----------
    bases : torch.Tensor (T+1, n, d), float32 (``d = rank``)
        Orthonormal bases ``U_k``.
    A_r : torch.Tensor (T, d, d), float32
        Projected plant ``U_{k+1}ᵀA_kU_k``.
    z_mean : torch.Tensor (T+1, n)
        Nominal trajectory ``z̄_k`` (mean last-token state of the fit prompts).
    v_all, e_norm_all : torch.Tensor (T+1, n), (T+1,)
        Feature directions and ``‖e_k‖`` at every step including the last block's output.
    act_norm : torch.Tensor (T+1,)
        Typical activation norm ``a_k`` (median ``‖z_k‖`` over the fit prompts).
    w : torch.Tensor (T, n)
        LFS feedback directions ``U_{k+1}K_{r,k}ṽ_k`` (used with ``feedback=True``).
    rank, budget, q, r, qf, lam, first_layer, terminal_feature, feedback, method,
    on_infeasible : hyper-parameters (see :meth:`fit`).

    Notes
    -----
    Fit (:meth:`ConstrainedSteerer.fit`)
        1. Last-token states ``z_0..z_T`` of the desired and undesired prompts; LFS setpoint at
           every step *including the last block's output*: ``e_k = mean(desired) - mean(undesired)``,
           ``v_k = e_k/‖e_k‖``, ``β*_k = λ‖e_k‖``; the nominal trajectory ``z̄_k`` (mean over all fit
           prompts) and the typical activation norm ``a_k`` (median ``‖z_k‖``).
        2. ``A_k`` from :meth:`LLMPlant.linearize` (``B = I``).
        3. Per-step orthonormal bases ``U_k`` (n × d with ``d = rank``; ``r`` is the input weight):
           ``v_k``, the adjoint direction
           ``ψ_k ∝ A_kᵀ⋯A_{T-1}ᵀ v_T`` (how the state at ``k`` moves the terminal feature), then the
           leading left singular vectors of ``A_{k-1}`` and right singular vectors of ``A_k``,
           alternately, Gram–Schmidt with drop tolerance, until ``d`` columns.
        4. The projected plant ``A_r,k = U_{k+1}ᵀA_kU_k`` (:meth:`LTVSystem.project`).

    Plan (every forward pass, at the first controlled layer ``k₀``)
        Deviation coordinates ``x_k = U_kᵀ(z_k - z̄_k)``, inputs ``u_k = U_{k+1} ν_k``:

        .. math::

            \min_{ν} \sum_{k=k_0}^{T-1} q(\tilde v_k^\top x_k - \tilde β_k)^2 + r‖ν_k‖^2
                      + q_f(\tilde v_T^\top x_T - \tilde β_T)^2
            \quad\text{s.t.}\quad x_{k+1} = A_{r,k} x_k + ν_k,\ ‖ν_k‖_2 \le ρ_k,\
            [\tilde v_T^\top x_T \ge \tilde β_T]

        with ``ṽ_k = U_kᵀv_k`` and ``β̃_k = β*_k - v_kᵀz̄_k`` (so ``ṽ_kᵀx_k - β̃_k`` is the linearised
        feature error ``v_kᵀz_k - β*_k``), per-layer budgets ``ρ_k = budget · a_{k+1}`` (relative
        to the typical norm of the state the input is added to; ``ρ_k = 0`` on layers that are
        not controlled) and the optional terminal constraint ``v_Tᵀz_T ≥ β*_T``.

        Why the input may live in ``span(U_{k+1})``: with ``R = r·I`` and Euclidean budgets,
        the component of ``u_k`` orthogonal to ``U_{k+1}`` costs energy and budget and moves no
        modelled state, so the optimum of the contract's projected plant (``B_r,k = U_{k+1}ᵀ``,
        ``m = n``) has ``u_k = U_{k+1}ν_k`` with ``‖u_k‖ = ‖ν_k‖``; solving in ``ν`` (``B = I_d``)
        is the same problem with ``d`` instead of ``n`` inputs.

        The QP is :class:`ltv_control.constrained.ConstrainedLQR` (``method="admm"`` by default:
        the Riccati-factored fast path; ``"cvxpy"`` for the reference).  The plan is applied open
        loop over the remaining layers of the same forward pass; with ``feedback=True`` an LFS
        correction ``(f̂_k - v_kᵀz_k) w_k`` on the deviation from the *planned* feature
        ``f̂_k = v_kᵀ(z̄_k + U_k x̂_k)`` is added (``w_k = U_{k+1}K_{r,k}ṽ_k`` from the projected
        LQR gains), and the sum is scaled back into the ball ``ρ_k`` so budgets always hold.

    Positions: ``"last"`` (default) plans once per forward pass for the newest token of every
    row; ``"all"`` plans for every position (one QP per position: slow on long prompts).
    """

    kind = "constrained"
    tensor_names = ("w",)
    hyperparameter_names = ("rank", "budget", "q", "r", "qf", "lam", "first_layer",
                            "terminal_feature", "feedback", "method", "on_infeasible")
    # The base class forwards only this internal option (the planner of the attachment);
    # the public options are validated by :meth:`attach` itself.
    attach_options = ("planner",)
    default_positions = "last"

    def __init__(self, tensors: Any, **kwargs: Any) -> None:
        import torch

        base = {k: v for k, v in tensors.items() if k in self.tensor_names}
        extra = {k: v for k, v in tensors.items() if k not in self.tensor_names}
        missing = [k for k in _EXTRA_TENSORS if k not in extra]
        unexpected = [k for k in extra if k not in _EXTRA_TENSORS]
        if missing or unexpected:
            raise ArgumentError(f"tensors: missing {missing}, unexpected {unexpected} "
                                f"(expected {list(self.tensor_names) + list(_EXTRA_TENSORS)})")
        super().__init__(base, **kwargs)
        T, n = self.horizon, self.state_dim
        converted = {}
        for name in _EXTRA_TENSORS:
            value = extra[name]
            t = (value.detach().to("cpu", torch.float32).clone() if isinstance(value, torch.Tensor)
                 else torch.as_tensor(np.asarray(value, dtype=np.float32)).clone())
            if not torch.isfinite(t).all():
                raise PropertyError(f"{name}: expected finite values, found NaN or inf")
            converted[name] = t
        rank = converted["bases"].shape[-1] if converted["bases"].ndim == 3 else -1
        expected = {"bases": (T + 1, n, rank), "A_r": (T, rank, rank), "z_mean": (T + 1, n),
                    "v_all": (T + 1, n), "e_norm_all": (T + 1,), "act_norm": (T + 1,)}
        for name, shape in expected.items():
            if tuple(converted[name].shape) != shape or rank < 1:
                raise DimensionError(f"{name}: expected shape {shape} (T={T}, n={n}, rank={rank}), "
                                     f"found {tuple(converted[name].shape)}")
            setattr(self, name, converted[name])
        self._planners: dict[int, ConstrainedPlanner] = {}  # the attached handles' planners

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, plant: Any, desired: Sequence[str], undesired: Sequence[str], *, rank: int = 32,
            budget: float = 0.1, q: float = 0.1, r: float = 1.0, qf: float = 0.1, lam: float = 1.0,
            first_layer: int = 0, terminal_feature: bool = False, feedback: bool = False,
            method: str = "admm", on_infeasible: str = "relax",
            jacobian_prompts: Sequence[str] | None = None, layers: Sequence[int] | None = None,
            positions: str = "last", max_tokens: int = 24, batch_size: int = 8,
            progress: bool = True, system: Any = None, **unknown: Any) -> "ConstrainedSteerer":
        """Fit a constrained steerer on ``plant`` from contrastive prompts.

        Parameters
        ----------
        plant : LLMPlant
        desired, undesired : list of str
        rank : int, default 32
            ``d``, the number of columns of every per-layer basis (``1 <= d <= min(64, n)``).
        budget : float, default 0.1
            Per-layer input budget relative to the typical activation norm:
            ``‖u_k‖₂ <= budget · a_{k+1}`` (``inf`` for none; changeable at attach).
        q, r, qf : float, defaults 0.1, 1.0, 0.1
            Weights on the feature error along the way (``q``), on the input energy (``r``,
            > 0) and on the terminal feature error (``qf``), as in A-LQR.
        lam : float, default 1.0
            Setpoint scale ``β*_k = lam·‖e_k‖`` (changeable at attach).
        first_layer : int, default 0
            ``k₀``: the layer whose input is read and from which the plan starts.
        terminal_feature : bool, default False
            Add the hard constraint ``v_Tᵀz_T >= β*_T`` (on the last block's output).
        feedback : bool, default False
            Add the LFS correction around the planned feature (budget-clipped).
        method : {"admm", "cvxpy"}, default "admm"
            QP method of :class:`~ltv_control.constrained.ConstrainedLQR`.
        on_infeasible : {"relax", "raise"}, default "relax"
            When the terminal constraint cannot be met within the budgets for a row:
            ``"relax"`` drops it for that row (counted in ``stats["relaxed"]`` of the handle's
            planner), ``"raise"`` raises :class:`~ltv_control.InfeasibleError`.
        jacobian_prompts : list of str or None
            Prompts whose Jacobians are averaged into ``A_k``; ``None``: first 50 desired.
        layers : list of int or None
            Controlled layers (``None``: ``first_layer .. T-1``); others get ``ρ_k = 0``.
        positions, max_tokens, batch_size, progress
            As in :meth:`ALQRSteerer.fit`.
        system : LTVSystem or None, default None
            A plant already linearised on this model (``A`` of shape ``(T, n, n)``, e.g. shared
            with an A-LQR fit); ``None`` calls :meth:`LLMPlant.linearize`.

        Returns
        -------
        ConstrainedSteerer
        """
        reject_unknown(unknown, "ConstrainedSteerer.fit")
        options = dict(rank=rank, budget=budget, q=q, r=r, qf=qf, first_layer=first_layer,
                       terminal_feature=terminal_feature, feedback=feedback, method=method,
                       on_infeasible=on_infeasible, layers=layers, positions=positions)
        cls._check_options(plant.horizon, plant.state_dim, **options)  # fail before any forward pass
        check_scalar(lam, "lam")
        cls.check_hyperparameters(horizon=plant.horizon, state_dim=plant.state_dim, rank=rank,
                                  budget=budget, q=q, r=r, qf=qf, lam=lam)
        setpoint = measure_setpoint(plant, desired, undesired, lam=lam, batch_size=batch_size)
        if system is None:
            desired = check_prompts(desired, "desired")
            prompts = desired[:50] if jacobian_prompts is None else \
                check_prompts(jacobian_prompts, "jacobian_prompts")
            system = plant.linearize(prompts, max_tokens=max_tokens, batch_size=batch_size,
                                     progress=progress)
        return cls.from_system(system, setpoint, **options)

    @classmethod
    def from_system(cls, system: Any, setpoint: Any, *, rank: int = 32, budget: float = 0.1,
                    q: float = 0.1, r: float = 1.0, qf: float = 0.1, first_layer: int = 0,
                    terminal_feature: bool = False, feedback: bool = False, method: str = "admm",
                    on_infeasible: str = "relax", layers: Sequence[int] | None = None,
                    positions: str = "last") -> "ConstrainedSteerer":
        """The constrained steerer of a linearized plant and a setpoint (see :meth:`fit`).

        Bases ``U_k`` (``rank`` columns, :func:`build_bases`), the projected plant
        ``A_r,k = U_{k+1}ᵀ A_k U_k`` and the LFS feedback directions
        ``w_k = U_{k+1} K_r,k ṽ_k`` of the projected LQR (``B = I_d``,
        ``Q_k = q ṽ_k ṽ_kᵀ``, ``Q_f = qf ṽ_T ṽ_Tᵀ``, ``ṽ_k = U_kᵀ v_k``).

        Parameters
        ----------
        system : LTVSystem
            ``A (T, n, n)`` from :meth:`LLMPlant.linearize`.
        setpoint : Setpoint
            From :meth:`LLMPlant.setpoint` (its ``lam`` becomes the fitted ``lam``).
        rank : int, default 32
            ``d``, the number of columns of every basis ``U_k``.
        budget, q, r, qf, first_layer, terminal_feature, feedback, method, on_infeasible, layers, positions
            As in :meth:`fit`.

        Returns
        -------
        ConstrainedSteerer
        """
        from ltv_control import LTVSystem, finite_horizon_lqr

        T, n = setpoint.horizon, setpoint.state_dim
        hyper, layers, positions = cls._check_options(
            T, n, rank=rank, budget=budget, q=q, r=r, qf=qf, first_layer=first_layer,
            terminal_feature=terminal_feature, feedback=feedback, method=method,
            on_infeasible=on_infeasible, layers=layers, positions=positions)
        hyper["lam"] = check_scalar(setpoint.lam, "lam")
        A = to_numpy64(system.A)
        if A.shape != (T, n, n):
            raise DimensionError(f"system: expected A of shape ({T}, {n}, {n}) for this plant, "
                                 f"found {A.shape}")
        v_all = np.asarray(setpoint.v_all, dtype=np.float64)
        U = build_bases(A, v_all, hyper["rank"])
        A_r = to_numpy64(LTVSystem(A).project(U).A)
        del A
        # LFS feedback directions from the projected LQR (B = I_d): w_k = U_{k+1} K_r,k ṽ_k.
        vt = np.einsum("kni,kn->ki", U, v_all)
        Qr = hyper["q"] * np.einsum("ki,kj->kij", vt[:T], vt[:T])
        K, _ = finite_horizon_lqr(LTVSystem(A_r), Qr, hyper["r"], Qf=hyper["qf"] * np.outer(vt[T], vt[T]))
        w = np.einsum("kni,kij,kj->kn", U[1:], np.asarray(K), vt[:T])
        tensors = {"w": w, "bases": U, "A_r": A_r, "z_mean": setpoint.z_mean, "v_all": v_all,
                   "e_norm_all": setpoint.e_norm_all, "act_norm": setpoint.act_norm}
        return cls.from_setpoint_tensors(setpoint, tensors, hyperparameters=hyper, layers=layers,
                                         positions=positions)

    @classmethod
    def _check_options(cls, T: int, n: int, *, rank: Any, budget: Any, q: Any, r: Any, qf: Any,
                       first_layer: Any, terminal_feature: Any, feedback: Any, method: Any,
                       on_infeasible: Any, layers: Any, positions: Any) -> tuple[dict, Any, str]:
        """Validated hyper-parameters (without ``lam``), controlled layers and positions."""
        if isinstance(rank, bool) or not isinstance(rank, int | np.integer):
            raise ArgumentError(f"rank: expected an int, found {type(rank).__name__}")
        if not 1 <= int(rank) <= min(64, n):
            raise PropertyError(f"rank: expected 1 <= rank <= min(64, n={n}), found {rank}")
        hyper = {"rank": int(rank), "budget": cls._check_budget(budget),
                 "q": check_scalar(q, "q", nonnegative=True), "r": check_scalar(r, "r", positive=True),
                 "qf": check_scalar(qf, "qf", nonnegative=True),
                 "first_layer": check_layer_indices(first_layer, T, "first_layer")[0],
                 "terminal_feature": cls._check_flag(terminal_feature, "terminal_feature"),
                 "feedback": cls._check_flag(feedback, "feedback"),
                 "method": cls._check_choice(method, "method", _METHODS),
                 "on_infeasible": cls._check_choice(on_infeasible, "on_infeasible", _ON_INFEASIBLE)}
        return hyper, check_layer_indices(layers, T), check_positions(positions)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _check_budget(budget: Any) -> float:
        if isinstance(budget, bool) or not isinstance(budget, int | float | np.integer | np.floating):
            raise ArgumentError(f"budget: expected a real scalar, found {type(budget).__name__}")
        budget = float(budget)
        if math.isnan(budget) or budget < 0:
            raise PropertyError(f"budget: expected a non-negative value (inf = none), found {budget}")
        return budget

    @staticmethod
    def _check_flag(value: Any, name: str) -> bool:
        if not isinstance(value, bool | np.bool_):
            raise ArgumentError(f"{name}: expected a bool, found {type(value).__name__}")
        return bool(value)

    @staticmethod
    def _check_choice(value: Any, name: str, choices: tuple) -> str:
        if value not in choices:
            raise ArgumentError(f"{name}: expected one of {choices}, found {value!r}")
        return value

    # ------------------------------------------------------------------ runtime
    def controlled_layers(self, layers: Sequence[int] | None = None) -> list[int]:
        """Layers that may receive input: ``first_layer..T-1`` ∩ fitted ``layers`` ∩ ``layers``."""
        active = set(range(self.first_layer, self.horizon))
        if self.layers is not None:
            active &= set(self.layers)
        requested = check_layer_indices(layers, self.horizon)
        if requested is not None:
            active &= set(requested)
        return sorted(active)

    def budgets(self, budget: float | None = None, layers: Sequence[int] | None = None) -> np.ndarray:
        """Per-layer budgets ``ρ_k = budget · a_{k+1}`` (0 on uncontrolled layers), shape (T,)."""
        budget = self.budget if budget is None else self._check_budget(budget)
        rho = np.zeros(self.horizon)
        a = to_numpy64(self.act_norm)
        for k in self.controlled_layers(layers):
            rho[k] = budget * a[k + 1]
        return rho

    def planner(self, *, lam: float | None = None, budget: float | None = None,
                terminal_feature: bool | None = None, feedback: bool | None = None,
                method: str | None = None, on_infeasible: str | None = None,
                layers: Sequence[int] | None = None) -> ConstrainedPlanner:
        """The planner (QP built once) for these options; :meth:`attach` uses the same."""
        lam = self.lam if lam is None else check_scalar(lam, "lam")
        budget = self.budget if budget is None else self._check_budget(budget)
        terminal_feature = self.terminal_feature if terminal_feature is None else \
            self._check_flag(terminal_feature, "terminal_feature")
        feedback = self.feedback if feedback is None else self._check_flag(feedback, "feedback")
        method = self.method if method is None else self._check_choice(method, "method", _METHODS)
        on_infeasible = self.on_infeasible if on_infeasible is None else \
            self._check_choice(on_infeasible, "on_infeasible", _ON_INFEASIBLE)
        return ConstrainedPlanner(self, self.controlled_layers(layers), lam, budget, terminal_feature,
                        feedback, method, on_infeasible)

    def attach(self, model: Any, *, positions: str | None = None, lam: float | None = None,
               budget: float | None = None, terminal_feature: bool | None = None,
               feedback: bool | None = None, method: str | None = None,
               on_infeasible: str | None = None, layers: Sequence[int] | None = None,
               **unknown: Any) -> SteeringHandle:
        """Steer ``model``: plan at the first controlled layer of every forward pass, apply the plan.

        Parameters
        ----------
        model : torch.nn.Module
        positions : {"last", "all"} or None
        lam, budget, terminal_feature, feedback, method, on_infeasible : optional
            Override the fitted values (``None``: fitted).
        layers : list of int or None
            Restrict control to these layers (the others get a zero budget in the plan).

        Returns
        -------
        SteeringHandle
            Also carries ``planner`` (its ``stats`` count plans and relaxed rows).
        """
        reject_unknown(unknown, "ConstrainedSteerer.attach")
        self.check_model(model)
        planner = self.planner(lam=lam, budget=budget, terminal_feature=terminal_feature,
                               feedback=feedback, method=method, on_infeasible=on_infeasible,
                               layers=layers)
        handle = super().attach(model, positions=positions, layers=layers, planner=planner)
        token = id(handle)
        self._planners[token] = planner
        handle._on_remove.append(lambda: self._planners.pop(token, None))
        handle.planner = planner
        return handle

    def layer_laws(self, *, planner: ConstrainedPlanner | None = None) -> dict:
        """One :class:`ConstrainedLaw` per controlled layer of ``planner`` (default: fitted options)."""
        import torch

        planner = self.planner() if planner is None else planner
        if planner.qp is None:
            return {}
        rho = torch.zeros(self.horizon, dtype=torch.float32)
        rho[planner.start:] = torch.as_tensor(planner.rho, dtype=torch.float32)
        return {k: ConstrainedLaw(planner, k, self.w[k], self.v_all[k], rho[k]) for k in planner.controlled}

    # ------------------------------------------------------------------ files
    def _record(self) -> Any:
        """The controller-file record: the bases, projected plant and setpoint tensors too."""
        record = super()._record()
        tensors = {name: getattr(self, name) for name in self.tensor_names + _EXTRA_TENSORS}
        return record._replace(tensors=tensors, metadata={"rank": str(int(self.bases.shape[-1]))})
