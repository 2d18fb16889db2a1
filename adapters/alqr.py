"""A-LQR steering: finite-horizon LQR over the layers of a language model.

Details: the Notes of :class:`ALQRSteerer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ltv_control.adapters.setpoint import measure_setpoint
from ltv_control._exceptions import ArgumentError
from ltv_control._validation import public_api
from ltv_control.adapters._checks import check_layer_indices, check_positions, check_prompts, check_scalar
from ltv_control.adapters.form_choice import AUTO_TOLERANCE, FORM_OPTIONS, check_tolerance, choose_form
from ltv_control.adapters.laws import AffineLaw
from ltv_control.adapters.relative_law import OneSidedLaw
from ltv_control.adapters.scaling import FORMS, default_r, relative_form
from ltv_control.adapters.steerer import SteeringHandle, Steerer

__all__ = ["ALQRSteerer", "check_form"]

_check_prompt_list = check_prompts  # from_system's argument ``check_prompts`` shadows the checker

_PAPER_TENSORS = ("w", "v", "e_norm", "beta_star")
_PAPER_HYPER = ("q", "r", "qf", "lam")


def check_form(form: Any, *, auto: bool = False) -> str:
    """``form`` if it is one of :data:`~ltv_control.adapters.scaling.FORMS` (``"paper"``,
    ``"relative"``), or ``"auto"`` where that is allowed.

    Parameters
    ----------
    form : str
    auto : bool, default False
        Also accept ``"auto"`` (chosen from the plant, :func:`~ltv_control.adapters.form_choice.choose_form`).

    Returns
    -------
    str

    Raises
    ------
    ArgumentError
        Not one of the forms.
    """
    allowed = FORM_OPTIONS if auto else FORMS
    if not isinstance(form, str) or form not in allowed:
        raise ArgumentError(f"form: expected one of {allowed}, found {form!r}")
    return form


class ALQRSteerer(Steerer):
    """A-LQR steerer: ``u_k = (β*_k - v_kᵀ z_k) w_k`` with ``w_k = K_k v_k``.

    Build it with :meth:`fit` (or :meth:`load`).  Two forms (``form``): ``"paper"`` (the
    library default, arXiv 2604.19018 as published) and ``"relative"`` (the form that transfers
    across model families; see the Notes).  ``form="auto"`` at fit time (the CLI's default)
    keeps the paper form where the model's blocks answer its input linearly and takes the
    relative form otherwise (:mod:`ltv_control.adapters.form_choice`).

    Parameters
    ----------
    tensors : mapping of str to array
        ``w``, ``v`` (T, n), ``e_norm``, ``beta_star`` (T,), and for the relative form
        ``beta_offset`` (T,) (absent: zeros).  A paper-form steerer may be given
        ``beta_offset`` only as zeros.
    hyperparameters : mapping, optional
        ``q``, ``r``, ``qf``, ``lam`` and ``form`` (absent: ``"paper"``).
    **kwargs
        ``state_dim``/``hidden_size``, ``horizon``/``num_layers``, ``layers``, ``positions``,
        ``layer_path``, ``model_id`` (see :class:`Steerer`).

    Attributes
    ----------
    w : torch.Tensor, shape (T, n), float32
        Feedback directions ``w_k = K_k v_k``.
    v : torch.Tensor, shape (T, n), float32
        Unit feature directions (zero rows where ``‖e_k‖ ≈ 0``).
    e_norm : torch.Tensor, shape (T,), float32
        ``‖e_k‖`` (zero where no direction).
    beta_star : torch.Tensor, shape (T,), float32
        Targets ``β*_k = beta_offset_k + lam·e_norm_k`` at the fitted ``lam``.
    beta_offset : torch.Tensor, shape (T,), float32
        Target offsets ``c_k``: zeros for the paper form and for a relative form fitted with
        :meth:`from_system`; a relative steerer built from
        ``relative_form(..., anchor="midpoint")`` tensors holds ``v_kᵀ m_k``.
    q, r, qf, lam : float
        Fit hyper-parameters.
    form_choice : FormChoice or None
        What ``form="auto"`` measured and chose (:func:`~ltv_control.adapters.form_choice.choose_form`);
        None for a steerer built with an explicit form or loaded from a file.
    form : {"paper", "relative"}
        The A-LQR form.  :attr:`hyperparameters` and a saved file list ``form`` (and the tensor
        ``beta_offset``) only for the relative form, so a paper-form steerer and its file are
        exactly as before the option existed; a file without ``form`` loads as ``"paper"``.
    layers : list of int or None
        Controlled layers (``None``: all with a direction).
    positions : {"last", "all"}
        Default positions of :meth:`attach`.

    Notes
    -----
    Fit (:meth:`ALQRSteerer.fit`)
        1. LFS setpoint from the last-token block inputs of desired/undesired prompts:
           ``e_k = mean(desired) - mean(undesired)``, ``v_k = e_k/‖e_k‖``,
           ``β*_k = λ‖e_k‖`` (:func:`ltv_control.setpoint.linear_feature_setpoint`).
        2. The plant ``z_{k+1} = A_k z_k + u_k`` from :meth:`LLMPlant.linearize` (B = I).
        3. Gains ``K_k`` from :func:`ltv_control.finite_horizon_lqr` with ``Q = q·I``,
           ``R = r·I``, ``Q_f = qf·I``; only ``w_k = K_k v_k`` is kept
           (:func:`ltv_control.setpoint.feedback_directions`).

    Runtime law (one dot product and one axpy per steered position and layer)

    .. math::

        u_k = (\\beta^*_k - v_k^\\top z_k)\\, w_k ,

    added to block ``k``'s output, ``z_k`` being block ``k``'s input.  This is the LQR
    feedback ``u_k = -K_k x_k`` on the error ``x_k = (v_kᵀz_k - β*_k) v_k``.  Positive
    ``λ`` pushes ``v_kᵀz`` towards the desired side.  Memory at run time is ``T·n``
    floats per tensor (no ``n × n`` array is kept).

    A-LQR+ is the same steerer attached with ``positions="all"``.

    Relative form (``form="relative"``, :func:`ltv_control.adapters.scaling.relative_form`;
    why and measurements in ``docs/transfer.md``)

    .. math::

        v_k = \\frac{P_k e_k}{\\lVert P_k e_k \\rVert}, \\quad
        w_k = \\frac{\\sigma_{k+1}}{\\sigma_k} \\tilde K_k v_k, \\quad
        \\beta^*_k = \\lambda \\lVert P_k e_k \\rVert, \\quad
        u_k = \\max\\left(0,\\ \\beta^*_k - v_k^\\top z_k\\right) w_k ,

    ``P_k`` zeroing the massive coordinates, ``K̃_k`` the LQR gains of the plant in per-layer
    normalised coordinates ``z̃_k = z_k/σ_k`` (``Q = qI``, ``R = rI``, ``Q_f = q_f I`` there),
    and the one-sided law (:class:`~ltv_control.adapters.relative_law.OneSidedLaw`) that never
    pushes a prompt back from beyond the target.  The paper form is ``P_k = I``, ``σ_k = 1``
    and the two-sided law.

    Restricting ``layers`` at fit time solves the LQR with ``B_k = I`` on the
    controlled layers and ``B_k = 0`` elsewhere, so the gains account for the
    layers that cannot act; restricting ``layers`` at attach time only masks the
    fitted gains.
    """

    kind = "alqr"
    tensor_names = _PAPER_TENSORS
    hyperparameter_names = _PAPER_HYPER
    attach_options = ("lam",)
    default_positions = "last"

    def __init__(self, tensors: Mapping[str, Any], *, hyperparameters: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        import torch

        hyper = dict(hyperparameters or {})
        self.form = check_form(hyper.pop("form", "paper"))
        self.form_choice = None
        tensors = dict(tensors)
        if self.form == "relative":  # instance-level, like MultiConceptSteerer's
            self.tensor_names = _PAPER_TENSORS + ("beta_offset",)
            self.hyperparameter_names = _PAPER_HYPER + ("form",)
            hyper["form"] = self.form
            if "beta_offset" not in tensors and "beta_star" in tensors:  # no offset: zeros
                tensors["beta_offset"] = np.zeros(np.shape(tensors["beta_star"])[:1])
            offset = None
        else:
            offset = tensors.pop("beta_offset", None)
        super().__init__(tensors, hyperparameters=hyper, **kwargs)
        if self.form == "paper":
            if offset is not None and bool((torch.as_tensor(offset).detach().cpu() != 0).any()):
                raise ArgumentError("tensors: 'beta_offset' must be zero for form 'paper' "
                                    "(β*_k = lam·e_norm_k); use form 'relative' for offsets")
            self.beta_offset = torch.zeros_like(self.beta_star)

    @classmethod
    @public_api
    def fit(
        cls,
        plant: Any,
        desired: Sequence[str],
        undesired: Sequence[str],
        *,
        q: float = 0.1,
        r: float | None = None,
        qf: float = 0.1,
        lam: float = 1.0,
        jacobian_prompts: Sequence[str] | None = None,
        layers: Sequence[int] | None = None,
        positions: str = "last",
        max_tokens: int = 24,
        batch_size: int = 8,
        progress: bool = True,
        system: Any = None,
        form: str = "paper",
        tolerance: float = AUTO_TOLERANCE,
    ) -> ALQRSteerer:
        """Fit an A-LQR steerer on ``plant`` from contrastive prompts.

        Parameters
        ----------
        plant : LLMPlant
            The language model as an LTV plant.
        desired, undesired : list of str
            Prompts showing / not showing the behaviour to steer towards.
        q, r, qf : float, defaults 0.1, None, 0.1
            LQR weights ``Q = q·I`` (q >= 0), ``R = r·I`` (r > 0), ``Q_f = qf·I`` (qf >= 0);
            ``r = None`` is the form's default
            (:data:`~ltv_control.adapters.scaling.DEFAULT_R`: 1.0 for the paper form, 0.1
            for the relative form).
        lam : float, default 1.0
            Setpoint scale ``β*_k = lam·‖e_k‖`` (changeable at :meth:`attach`).
        jacobian_prompts : list of str or None, default None
            Prompts whose Jacobians are averaged into ``A_k``; ``None``: the first 50
            desired prompts.
        layers : list of int or None, default None
            Controlled layers (``None``: every layer with ``‖e_k‖`` above the threshold).
        positions : {"last", "all"}, default "last"
            Default positions of :meth:`attach` (``"all"`` is A-LQR+).
        max_tokens, batch_size, progress : int, int, bool; defaults 24, 8, True
            Passed to :meth:`LLMPlant.linearize` (``batch_size`` also to
            :meth:`LLMPlant.last_token_states`).
        system : LTVSystem or None, default None
            A linearization of this plant already computed (``A`` of shape ``(T, n, n)``,
            ``B = None``), e.g. by :meth:`LLMPlant.linearize` for another steerer; it is used
            instead of linearizing again and ``jacobian_prompts``/``max_tokens`` serve only
            the ``form="auto"`` check.
        form : {"paper", "relative", "auto"}, default "paper"
            ``"paper"``: arXiv 2604.19018 as published; ``"relative"``: normalised gains,
            massive coordinates out of ``v_k``, target ``λ‖P_k e_k‖``, one-sided law (see
            :meth:`from_system` and the class Notes); ``"auto"``: the paper form if the
            blocks' median nonlinearity at its input, probed on the Jacobian prompts, is at
            most ``tolerance``, else the relative form (:meth:`from_system`).
        tolerance : float, default 0.1
            ``τ`` of ``form="auto"``
            (:data:`~ltv_control.adapters.form_choice.AUTO_TOLERANCE`); unused otherwise.

        Returns
        -------
        ALQRSteerer

        Raises
        ------
        ArgumentError
            Unknown keyword, bad types, ``positions`` or ``form``.
        DimensionError
            ``system`` does not match the plant (horizon, state size) or has an input matrix.
        PropertyError
            Non-finite or out-of-range weights.
        """
        form = check_form(form, auto=True)
        if form == "auto":
            check_tolerance(tolerance)  # fail before any forward pass
        r_checked = default_r("paper" if form == "auto" else form, r)
        for value, name, kw in ((q, "q", "nonnegative"), (r_checked, "r", "positive"),
                                (qf, "qf", "nonnegative")):
            check_scalar(value, name, **{kw: True})  # fail before any forward pass
        positions = check_positions(positions)
        cls.check_hyperparameters(horizon=plant.horizon, state_dim=plant.state_dim,
                                  q=q, r=r_checked, qf=qf, lam=lam)
        check_layer_indices(layers, plant.horizon)
        setpoint = measure_setpoint(plant, desired, undesired, lam=lam, batch_size=batch_size)
        desired = check_prompts(desired, "desired")
        prompts = desired[:50] if jacobian_prompts is None else check_prompts(jacobian_prompts,
                                                                              "jacobian_prompts")
        if system is None:
            system = plant.linearize(prompts, max_tokens=max_tokens, batch_size=batch_size,
                                     progress=progress)
        auto = {"plant": plant, "check_prompts": prompts, "tolerance": tolerance,
                "max_tokens": max_tokens} if form == "auto" else {}
        return cls.from_system(system, setpoint, q=q, r=r, qf=qf, layers=layers, positions=positions,
                               form=form, **auto)

    @classmethod
    @public_api
    def from_system(
        cls,
        system: Any,
        setpoint: Any,
        *,
        q: float = 0.1,
        r: float | None = None,
        qf: float = 0.1,
        layers: Sequence[int] | None = None,
        positions: str = "last",
        form: str = "paper",
        plant: Any = None,
        check_prompts: Sequence[str] | None = None,
        tolerance: float = AUTO_TOLERANCE,
        max_tokens: int = 24,
    ) -> ALQRSteerer:
        """The A-LQR steerer of a linearized plant and a setpoint: ``w_k = K_k v_k``.

        ``K_k`` are the finite-horizon LQR gains of ``z_{k+1} = A_k z_k + B_k u_k`` with
        ``Q = q·I``, ``R = r·I``, ``Q_f = qf·I``, ``B_k = I`` on the controlled layers and
        ``B_k = 0`` elsewhere (:func:`ltv_control.finite_horizon_lqr`, or the streamed
        recursion :func:`ltv_control.streaming.streamed_feedback` for a
        :class:`~ltv_control.adapters.StreamedSystem`, which never holds the ``(T, n, n)`` stack).

        ``form="relative"`` computes instead (:func:`ltv_control.adapters.scaling.relative_form`)

        .. math::

            v_k = \\frac{P_k e_k}{\\lVert P_k e_k \\rVert}, \\quad
            w_k = \\frac{\\sigma_{k+1}}{\\sigma_k} \\tilde K_k v_k, \\quad
            \\beta^*_k = \\lambda \\lVert P_k e_k \\rVert ,

        with ``K̃`` the gains of ``Ã_k = (σ_k/σ_{k+1}) A_k`` (same ``Q``, ``R``, ``Q_f`` on the
        normalised states), ``σ_k`` the RMS state size and ``P_k`` zeroing the massive
        coordinates (found from the setpoint's ``z_mid``, else its ``z_mean``); ``w_k`` is
        zeroed off ``layers`` as for the paper form, and ``beta_offset`` is zero.

        ``form="auto"`` builds the paper form, feeds its input at the unsteered states of
        ``check_prompts`` to each block of ``plant`` in both signs and keeps it if the median
        nonlinearity ``η_k`` is at most ``tolerance``; otherwise it returns the relative form
        (:func:`ltv_control.adapters.form_choice.choose_form`).  The measurement is in the
        returned steerer's :attr:`form_choice`; the steerer (and its file) is that of the
        chosen form.

        Parameters
        ----------
        system : LTVSystem or StreamedSystem
            ``A (T, n, n)`` with ``B = None`` (from :meth:`LLMPlant.linearize`), or a stream of
            ``A_k`` in backward order.
        setpoint : Setpoint
            From :meth:`LLMPlant.setpoint` (its ``lam`` becomes the fitted ``lam``); the
            relative form also needs its ``act_norm`` and ``z_mid`` or ``z_mean``.
        q, r, qf : float, defaults 0.1, None, 0.1
            ``r = None`` is the form's default (1.0 paper, 0.1 relative;
            :data:`~ltv_control.adapters.scaling.DEFAULT_R`).
        layers : list of int or None, default None
            Controlled layers (``None``: every layer with a direction).
        positions : {"last", "all"}, default "last"
        form : {"paper", "relative", "auto"}, default "paper"
            The A-LQR form (see above).
        plant : LLMPlant or None, default None
            The plant the system linearizes; needed by ``form="auto"`` only.
        check_prompts : list of str or None, default None
            Prompts whose states ``form="auto"`` probes (e.g. the Jacobian prompts); needed by
            it only.
        tolerance : float, default 0.1
            ``τ`` of ``form="auto"``.
        max_tokens : int, default 24
            ``check_prompts`` keep their first ``max_tokens`` tokens (``form="auto"``).

        Returns
        -------
        ALQRSteerer

        Raises
        ------
        ArgumentError
            Unknown ``form`` or ``positions``; ``form="auto"`` without ``plant`` or
            ``check_prompts``.
        DimensionError
            ``system`` does not match the setpoint (horizon, state size) or has an input matrix.
        PropertyError
            Non-finite or out-of-range weights; a relative form from a setpoint without
            ``act_norm``/``z_mean``.
        """
        from ltv_control.adapters.gains import feedback_gains

        form = check_form(form, auto=True)
        if form == "auto":
            if plant is None or check_prompts is None:
                raise ArgumentError("form='auto': expected plant and check_prompts (the blocks "
                                    "are probed at the paper law's input); use ALQRSteerer.fit "
                                    "or pass them")
            check_prompts = _check_prompt_list(check_prompts, "check_prompts")
            check_tolerance(tolerance)
            options = {"q": q, "r": r, "qf": qf, "layers": layers, "positions": positions}
            paper = cls.from_system(system, setpoint, form="paper", **options)
            choice = choose_form(plant, check_prompts, paper.layer_laws(), tolerance=tolerance,
                                 max_tokens=max_tokens)
            steerer = paper if choice.form == "paper" else \
                cls.from_system(system, setpoint, form="relative", **options)
            steerer.form_choice = choice
            return steerer
        q = check_scalar(q, "q", nonnegative=True)
        r = check_scalar(default_r(form, r), "r", positive=True)
        qf = check_scalar(qf, "qf", nonnegative=True)
        positions = check_positions(positions)
        layers = check_layer_indices(layers, setpoint.horizon)
        if form == "relative":
            rel = relative_form(system, setpoint, q=q, r=r, qf=qf, layers=layers)
            tensors = {"w": np.array(rel.w, dtype=np.float64), "v": rel.v, "e_norm": rel.e_norm,
                       "beta_offset": rel.offsets,
                       "beta_star": rel.offsets + float(setpoint.lam) * rel.e_norm}
        else:
            tensors = {"w": feedback_gains(system, setpoint.v, q=q, r=r, qf=qf, layers=layers),
                       "v": setpoint.v, "e_norm": setpoint.e_norm, "beta_star": setpoint.beta_star}
        if layers is not None:
            off = np.ones(tensors["w"].shape[0], dtype=bool)
            off[layers] = False
            tensors["w"][off] = 0.0
        hyper = {"q": q, "r": r, "qf": qf, "lam": float(setpoint.lam), "form": form}
        return cls.from_setpoint_tensors(setpoint, tensors, hyperparameters=hyper, layers=layers,
                                         positions=positions)

    # ------------------------------------------------------------------ runtime

    @public_api
    def attach(
        self,
        model: Any,
        *,
        positions: str | None = None,
        lam: float | None = None,
        layers: Sequence[int] | None = None,
    ) -> SteeringHandle:
        """Steer ``model`` with ``u_k = (β*_k - v_kᵀz_k) w_k`` (see :meth:`Steerer.attach`).

        Parameters
        ----------
        model : torch.nn.Module
        positions : {"last", "all"} or None, default None
            ``None``: the fitted default (``"all"`` is A-LQR+).
        lam : float or None, default None
            ``β*_k = beta_offset_k + lam·e_norm_k`` (``beta_offset = 0`` for the paper form);
            ``None``: the fitted ``β*``.
        layers : list of int or None, default None
            Restrict control to these layers.

        Returns
        -------
        SteeringHandle
            Context manager; hooks removed on exit (also on error).
        """
        if lam is not None:
            lam = check_scalar(lam, "lam")
        return super().attach(model, positions=positions, layers=layers, lam=lam)

    def layer_laws(self, *, lam: float | None = None) -> dict:
        """``u_k = (β_k − v_kᵀz) w_k`` (paper form, :class:`AffineLaw`) or
        ``u_k = max(0, β_k − v_kᵀz) w_k`` (relative form, :class:`OneSidedLaw`), with
        ``U = w_k``, ``V = v_k``, ``b = β_k``, on the layers with a direction.

        Parameters
        ----------
        lam : float or None, default None
            ``β = beta_offset + lam·e_norm``; ``None``: the fitted ``β*``.

        Returns
        -------
        dict of int to AffineLaw
        """
        beta = self.beta_star if lam is None else self.beta_offset + lam * self.e_norm
        law = OneSidedLaw if self.form == "relative" else AffineLaw
        return {k: law(U=self.w[k], V=self.v[k], b=beta[k])
                for k in range(self.horizon) if float(self.e_norm[k]) > 0.0}
