r"""Choosing the A-LQR form from the plant: the paper's law where the linear model describes it.

The paper's A-LQR is the optimal law *of the linearised plant*; it is worth applying as it is
when the blocks respond to its input as the linearisation predicts.  That is checked directly:
the paper-form law's input ``u_k = (β*_k − v_kᵀz) w_k`` at the unsteered states of a few prompts
is fed to each block in both signs, and the block's nonlinearity at that input,

.. math::

    \eta_k = \operatorname{mean}_p
    \frac{\lVert \varphi_k(z + u_k) - 2\varphi_k(z) + \varphi_k(z - u_k) \rVert}
         {\lVert \varphi_k(z + u_k) - \varphi_k(z - u_k) \rVert}

(:func:`ltv_control.adapters.diagnostics.input_nonlinearity`, to leading order the relative
error of the first-order prediction ``J_k u_k``), decides:

.. math::

    \text{form} = \begin{cases}
        \text{"paper"} & \operatorname{median}_k \eta_k \le \tau, \\
        \text{"relative"} & \text{otherwise,}
    \end{cases}
    \qquad \tau = 0.1 .

Measured in ``docs/transfer.md``: SmolLM2-135M's blocks answer the paper form's input with a
median ``η`` of 0.03 (the linearisation explains 97 % of the response), Gemma-3-270M's with
0.6-0.8 (its inputs are 6-12 % of ``‖z_k‖`` but, the state being mostly massive coordinates,
several times the content part the normalisation passes on); the relative form is built for
exactly that case.  The rule has one constant, the tolerance, and no per-model setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ltv_control._exceptions import ArgumentError
from ltv_control.adapters.diagnostics import input_nonlinearity
from ltv_control.adapters.scaling import FORMS

__all__ = ["AUTO_TOLERANCE", "FORM_OPTIONS", "FormChoice", "check_tolerance", "choose_form"]

FORM_OPTIONS = FORMS + ("auto",)
"""What ``ALQRSteerer.fit/from_system(form=)``, ``ExperimentSettings.alqr_form`` and the CLI's
``--alqr-form``/``--form`` accept: a form of :data:`~ltv_control.adapters.scaling.FORMS`, or
``"auto"`` (:func:`choose_form`)."""

AUTO_TOLERANCE = 0.1
"""Largest median nonlinearity ``η`` (:func:`choose_form`) at which the paper form is kept: the
first-order model must explain about 90 % of a typical block's response to the paper law's input."""


class FormChoice(NamedTuple):
    """What :func:`choose_form` measured and chose.

    Attributes
    ----------
    form : {"paper", "relative"}
        The chosen form.
    nonlinearity : numpy.ndarray, shape (T,)
        ``η_k`` of the paper law's input per layer (NaN where it adds none).
    median : float
        ``median_k η_k`` over the layers with a value (NaN if none).
    tolerance : float
        The threshold ``τ`` it was compared with.
    """

    form: str
    nonlinearity: np.ndarray
    median: float
    tolerance: float

    def describe(self) -> str:
        """One line: the choice and the measurement behind it."""
        relation = "<=" if self.form == "paper" else ">"
        return (f"A-LQR form auto -> {self.form}: the blocks' median nonlinearity at the paper "
                f"law's input is {self.median:.3f} {relation} {self.tolerance:g}")


def check_tolerance(tolerance: Any) -> float:
    """``tolerance`` as a float if it is a non-negative number (``inf`` allowed: always paper).

    Raises
    ------
    ArgumentError
        Not a number, a bool, NaN or negative.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ArgumentError(f"tolerance: expected a non-negative number, found {tolerance!r}")
    return float(tolerance)


def choose_form(plant: Any, prompts: Sequence[str], paper_laws: Mapping[int, Any], *,
                tolerance: float = AUTO_TOLERANCE, max_tokens: int = 24, batch_size: int = 8,
                progress: bool = False) -> FormChoice:
    """Keep the paper form where the blocks answer its input linearly, else the relative form.

    Parameters
    ----------
    plant : LLMPlant
    prompts : list of str
        Prompts whose unsteered states are probed (the linearization's prompts are the natural
        choice).
    paper_laws : dict of int to Law
        The paper-form steerer's laws (:meth:`ALQRSteerer.layer_laws`).
    tolerance : float, default 0.1
        ``τ``: the paper form is kept when ``median_k η_k <= τ``.
    max_tokens : int, default 24
        Prompts keep their first ``max_tokens`` tokens.
    batch_size : int, default 8
    progress : bool, default False
        Show a progress bar.

    Returns
    -------
    FormChoice
        ``"paper"`` also when the paper law adds no input at any probed state (nothing to check).

    Raises
    ------
    ArgumentError
        ``tolerance`` is not a non-negative number.
    """
    tolerance = check_tolerance(tolerance)
    eta = input_nonlinearity(plant, list(prompts), dict(paper_laws), max_tokens=max_tokens,
                             batch_size=batch_size, progress=progress)
    finite = eta[np.isfinite(eta)]
    median = float(np.median(finite)) if finite.size else float("nan")
    form = "paper" if not finite.size or median <= tolerance else "relative"
    return FormChoice(form, eta, median, tolerance)
