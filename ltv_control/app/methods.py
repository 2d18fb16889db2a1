"""Fitting the steering methods of an evaluation once, on shared work.

One evaluation fits every method on the same contrastive prompts.  The linearization
``z_{k+1} = A_k z_k + u_k`` (:meth:`LLMPlant.linearize`) is computed once and handed to the
steerers that need it (A-LQR, the constrained steerer); :class:`FittedMethods` then gives, for
any method and strength λ (ActAdd: coeff), the context manager that attaches it to the model.
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
    "actadd": ("actadd", "coeff", {}),
    "pid": ("pid", "lam", {}),
    "constrained": ("constrained", "lam", {}),
}

#: methods whose fit needs the linearization
_NEEDS_SYSTEM = frozenset({"alqr", "alqr_plus", "constrained"})


@dataclass
class FittedMethods:
    """The steerers of one evaluation and the work they share.

    Attributes
    ----------
    steerers : dict of str to Steerer
        By steerer name (``"alqr"``, ``"actadd"``, ``"pid"``, ``"constrained"``).
    actadd_layers : list of int
        The layers ActAdd adds its vector to.
    system : LTVSystem or None
        The shared linearization (None when no fitted method needed it).
    notes : list of str
        What was skipped and why.
    timings : dict of str to float
        Seconds per fitting step.
    """

    steerers: dict[str, Any] = field(default_factory=dict)
    actadd_layers: list[int] = field(default_factory=list)
    system: Any = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """``unsteered`` and every method whose steerer was fitted, in :data:`METHODS` order."""
        return ["unsteered"] + [m for m in METHODS[1:] if _ATTACH[m][0] in self.steerers]

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


def _fit_alqr(plant: Any, task: SentimentTask, settings: ExperimentSettings,
              fitted: FittedMethods, progress: bool) -> Any:
    from ltv_control.adapters import ALQRSteerer

    return ALQRSteerer.fit(plant, list(task.desired), list(task.undesired), q=settings.q,
                           r=settings.r, qf=settings.qf, lam=settings.lam, positions="last",
                           system=fitted.system, progress=progress)


def _fit_actadd(plant: Any, task: SentimentTask, settings: ExperimentSettings,
                fitted: FittedMethods, progress: bool) -> Any:
    from ltv_control.adapters import ActAddSteerer

    return ActAddSteerer.fit(plant, list(task.desired), list(task.undesired),
                             layers=fitted.actadd_layers, coeff=settings.actadd_coeff,
                             positions="all")


def _fit_pid(plant: Any, task: SentimentTask, settings: ExperimentSettings,
             fitted: FittedMethods, progress: bool) -> Any:
    from ltv_control.adapters import PIDSteerer

    return PIDSteerer.fit(plant, list(task.desired), list(task.undesired), lam=settings.lam,
                          positions="last", **settings.pid)


def _fit_constrained(plant: Any, task: SentimentTask, settings: ExperimentSettings,
                     fitted: FittedMethods, progress: bool) -> Any:
    from ltv_control.adapters import ConstrainedSteerer

    options = {"q": settings.q, "r": settings.r, "qf": settings.qf, "lam": settings.lam,
               **settings.constrained}
    return ConstrainedSteerer.fit(plant, list(task.desired), list(task.undesired),
                                  system=fitted.system, progress=progress, **options)


#: steerer name -> (methods that use it, fit function, log line)
_FITS = (
    ("alqr", ("alqr", "alqr_plus"), _fit_alqr, "fitting A-LQR on the shared linearization"),
    ("actadd", ("actadd",), _fit_actadd, "fitting ActAdd"),
    ("pid", ("pid",), _fit_pid, "fitting S-PID"),
    ("constrained", ("constrained",), _fit_constrained, "fitting the constrained steerer"),
)


def fit_methods(plant: Any, task: SentimentTask, settings: ExperimentSettings, *,
                linearize: bool = False, progress: bool = True,
                log: Callable[[str], None] | None = stderr_log) -> FittedMethods:
    """Fit every method of ``settings.methods`` on ``task``, linearizing the plant once.

    Parameters
    ----------
    plant : LLMPlant
    task : SentimentTask
        Its ``desired``/``undesired`` prompts give the setpoint ``e_k = mean(desired) −
        mean(undesired)`` (block inputs at the last token); its ``jacobian_prompts``, cut to
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
    fitted = FittedMethods(actadd_layers=_actadd_layers(settings, plant.horizon))
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
            fitted.steerers[name] = fit(plant, task, settings, fitted, progress)
        except Exception as exc:
            if name != "constrained":
                raise
            # the constrained QP may fail on a model; report it and keep the other methods
            fitted.notes.append(f"constrained: fit failed ({type(exc).__name__}: {exc}); skipped")
            _log(log, fitted.notes[-1])
        fitted.timings[f"fit_{name}_s"] = time.perf_counter() - began
    return fitted
