"""Fitting the steering methods of an evaluation once, on shared work.

One evaluation fits every method on the same contrastive prompts.  The setpoint
(:meth:`LLMPlant.setpoint`: ``e_k``, ``v_k``, ``β*_k``) and the linearization
``z_{k+1} = A_k z_k + u_k`` (:meth:`LLMPlant.linearize`) are computed once; each steerer is
built from them (``ALQRSteerer.from_system``, ``ActAddSteerer.from_setpoint``,
``PIDSteerer.from_setpoint``, ``ConstrainedSteerer.from_system``).  :class:`FittedMethods`
gives, for any method and strength λ (ActAdd: coeff), the context manager that attaches it to
the model.
A-LQR+ is the A-LQR steerer attached with ``positions="all"``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from ltv_control import PropertyError
from ltv_control.app.datasets import SentimentTask
from ltv_control.app.settings import METHODS, ExperimentSettings

__all__ = ["FittedMethods", "fit_methods"]

#: method -> (steerer it uses, name of its strength option at attach, fixed attach options)
_ATTACH: dict[str, tuple[str, str, dict]] = {
    "alqr": ("alqr", "lam", {"positions": "last"}),
    "alqr_plus": ("alqr", "lam", {"positions": "all"}),
    "alqr_multi": ("alqr_multi", "lam", {"positions": "last"}),
    "actadd": ("actadd", "coeff", {}),
    "pid": ("pid", "lam", {}),
    "constrained": ("constrained", "lam", {}),
}

#: methods whose fit needs the linearization
_NEEDS_SYSTEM = frozenset({"alqr", "alqr_plus", "alqr_multi", "constrained"})


@dataclass
class FittedMethods:
    """The steerers of one evaluation and the work they share.

    Attributes
    ----------
    steerers : dict of str to Steerer
        By steerer name (``"alqr"``, ``"actadd"``, ``"pid"``, ``"constrained"``).
    actadd_layers : list of int
        The layers ActAdd adds its vector to.
    setpoint : Setpoint or None
        The shared setpoint (:meth:`LLMPlant.setpoint` at ``settings.lam``; None when only
        ``unsteered`` runs).
    system : LTVSystem or None
        The shared linearization (None when no fitted method needed it).
    concept_setpoints : dict of str to Setpoint
        One setpoint per concept of a multi-concept task (for ``alqr_multi``; else empty).
    requested : tuple of str or None
        The methods asked for (``settings.methods``); None: every method a fitted steerer
        serves.
    notes : list of str
        What was skipped and why.
    timings : dict of str to float
        Seconds per fitting step.
    """

    steerers: dict[str, Any] = field(default_factory=dict)
    actadd_layers: list[int] = field(default_factory=list)
    setpoint: Any = None
    system: Any = None
    concept_setpoints: dict[str, Any] = field(default_factory=dict)
    requested: tuple[str, ...] | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """``unsteered`` and every requested method whose steerer was fitted, in :data:`METHODS`
        order."""
        return ["unsteered"] + [m for m in METHODS[1:] if _ATTACH[m][0] in self.steerers
                                and (self.requested is None or m in self.requested)]

    def steering(self, model: Any, method: str,
                 lam: float | None) -> Callable[[], AbstractContextManager] | None:
        """A factory of the context manager that attaches ``method`` at strength ``lam`` to
        ``model`` (None for ``unsteered``); call it once per use."""
        if method == "unsteered":
            return None
        name, option, fixed = _ATTACH[method]
        steerer = self.steerers[name]
        return lambda: steerer.attach(model, **fixed, **{option: lam})


def _log(log: Callable[[str], None] | None, message: str) -> None:
    if log is not None:
        log(message)


def stderr_log(message: str) -> None:
    """Print one progress line on stderr (the default ``log`` of :func:`fit_methods`)."""
    print(message, file=sys.stderr, flush=True)


def _actadd_layers(settings: ExperimentSettings, horizon: int) -> list[int]:
    layers = list(settings.actadd_layers) if settings.actadd_layers is not None \
        else [max(0, horizon // 3)]
    bad = [k for k in layers if not 0 <= k < horizon]
    if bad:
        raise PropertyError(f"actadd_layers must lie in [0, {horizon - 1}], found {bad}")
    return layers


def _lqr_weights(settings: ExperimentSettings) -> dict:
    """``q``, ``qf`` and, when set, ``r`` (unset: each steerer's own default)."""
    weights = {"q": settings.q, "qf": settings.qf}
    if settings.r is not None:
        weights["r"] = settings.r
    return weights


def _fit_alqr(fitted: FittedMethods, settings: ExperimentSettings, plant: Any,
              task: SentimentTask) -> Any:
    from ltv_control.adapters import ALQRSteerer

    auto = {"plant": plant, "check_prompts": list(task.jacobian_prompts),
            "max_tokens": settings.max_jacobian_tokens} if settings.alqr_form == "auto" else {}
    steerer = ALQRSteerer.from_system(fitted.system, fitted.setpoint, **_lqr_weights(settings),
                                      positions="last", form=settings.alqr_form, **auto)
    if steerer.form_choice is not None:
        fitted.notes.append(steerer.form_choice.describe())
    return steerer


def _fit_actadd(fitted: FittedMethods, settings: ExperimentSettings, plant: Any,
                task: SentimentTask) -> Any:
    from ltv_control.adapters import ActAddSteerer

    return ActAddSteerer.from_setpoint(fitted.setpoint, layers=fitted.actadd_layers,
                                       coeff=settings.actadd_coeff, positions="all")


def _fit_pid(fitted: FittedMethods, settings: ExperimentSettings, plant: Any,
             task: SentimentTask) -> Any:
    from ltv_control.adapters import PIDSteerer

    return PIDSteerer.from_setpoint(fitted.setpoint, positions="last", **settings.pid)


def _fit_constrained(fitted: FittedMethods, settings: ExperimentSettings, plant: Any,
                     task: SentimentTask) -> Any:
    from ltv_control.adapters import ConstrainedSteerer

    options = {**_lqr_weights(settings), **settings.constrained}
    return ConstrainedSteerer.from_system(fitted.system, fitted.setpoint, **options)


def _fit_multi(fitted: FittedMethods, settings: ExperimentSettings, plant: Any,
               task: SentimentTask) -> Any:
    from ltv_control.adapters import MultiConceptSteerer

    return MultiConceptSteerer.from_system(fitted.system, fitted.concept_setpoints,
                                           **_lqr_weights(settings), positions="last")


#: steerer name -> (methods that use it, fit function, log line)
_FITS = (
    ("alqr", ("alqr", "alqr_plus"), _fit_alqr, "A-LQR gains on the shared linearization"),
    ("actadd", ("actadd",), _fit_actadd, "ActAdd vectors from the shared setpoint"),
    ("pid", ("pid",), _fit_pid, "S-PID from the shared setpoint"),
    ("alqr_multi", ("alqr_multi",), _fit_multi,
     "multi-concept A-LQR: one setpoint per concept, gains on the shared linearization"),
    ("constrained", ("constrained",), _fit_constrained,
     "constrained steerer on the shared linearization"),
)


def _concept_setpoints(plant: Any, task: Any, settings: ExperimentSettings,
                       fitted: FittedMethods, log: Callable[[str], None] | None) -> None:
    """One setpoint per concept of a multi-concept task (``task.components``), at ``lam``."""
    parts = getattr(task, "components", ())
    if len(parts) < 2:
        raise PropertyError("method alqr_multi needs a multi-concept task "
                            "(e.g. --task concept:sea+concept:food)")
    for part in parts:
        _log(log, f"measuring the setpoint of concept {part.short_name!r}")
        fitted.concept_setpoints[part.short_name] = plant.setpoint(
            list(part.desired), list(part.undesired), lam=settings.lam)


def fit_methods(plant: Any, task: SentimentTask, settings: ExperimentSettings, *,
                linearize: bool = False, progress: bool = True,
                log: Callable[[str], None] | None = stderr_log) -> FittedMethods:
    """Fit every method of ``settings.methods`` on ``task`` from one setpoint and one
    linearization.

    Parameters
    ----------
    plant : LLMPlant
    task : SentimentTask
        Its ``desired``/``undesired`` prompts give the setpoint ``e_k = mean(desired) −
        mean(undesired)`` (block inputs at the last token), ``v_k = e_k/‖e_k‖``,
        ``β*_k = settings.lam·‖e_k‖``; its ``jacobian_prompts``, cut to
        ``settings.max_jacobian_tokens`` tokens, the linearization
        ``A_k = mean ∂(block k output)/∂(block k input)``.
    settings : ExperimentSettings
    linearize : bool, default False
        Linearize even when no method needs it (the bound experiment does).
    progress : bool, default True
        Progress bars of the linearization.
    log : callable or None, default :func:`stderr_log`
        Receives one line per step.

    Returns
    -------
    FittedMethods
        A constrained fit that fails is recorded in ``notes`` and skipped; any other failure
        raises.
    """
    wanted = set(settings.methods)
    fitted = FittedMethods(actadd_layers=_actadd_layers(settings, plant.horizon),
                           requested=tuple(settings.methods))
    began = time.perf_counter()
    if wanted - {"unsteered"}:
        _log(log, f"measuring the setpoint on {len(task.desired)} + {len(task.undesired)} "
                  "contrastive prompts")
        fitted.setpoint = plant.setpoint(list(task.desired), list(task.undesired),
                                         lam=settings.lam)
    if "alqr_multi" in wanted:
        _concept_setpoints(plant, task, settings, fitted, log)
    fitted.timings["setpoint_shared_s"] = time.perf_counter() - began
    began = time.perf_counter()
    if linearize or wanted & _NEEDS_SYSTEM:
        _log(log, f"linearizing {plant.horizon} layers on {len(task.jacobian_prompts)} prompts")
        fitted.system = plant.linearize(list(task.jacobian_prompts),
                                        max_tokens=settings.max_jacobian_tokens,
                                        progress=progress)
    fitted.timings["linearize_shared_s"] = time.perf_counter() - began
    for name, methods, fit, message in _FITS:
        if not wanted & set(methods):
            continue
        _log(log, message)
        began = time.perf_counter()
        try:
            noted = len(fitted.notes)
            fitted.steerers[name] = fit(fitted, settings, plant, task)
            for note in fitted.notes[noted:]:  # what the fit measured and chose (A-LQR's form)
                _log(log, note)
        except Exception as exc:
            if name != "constrained":
                raise
            # the constrained QP may fail on a model; report it and keep the other methods
            fitted.notes.append(f"constrained: fit failed ({type(exc).__name__}: {exc}); skipped")
            _log(log, fitted.notes[-1])
        fitted.timings[f"fit_{name}_s"] = time.perf_counter() - began
    return fitted
