"""A-LQR in per-layer normalised coordinates: gains that do not depend on the activation scale.

The residual stream of a transformer changes scale along the stack: SmolLM2-135M's last-token
states grow from ‖z_0‖ ≈ 1 to ≈ 80, Gemma-3-270M's from ≈ 26 to ≈ 37,000 (see
``docs/transfer.md``).  The paper's A-LQR weighs every layer alike (``Q = qI``, ``R = rI``), so
what its weights mean changes with the model.  The normalised form measures every state and input
relative to the typical state size of its layer,

.. math::

    \\sigma_k = \\Big( \\frac{1}{P n} \\sum_{p=1}^{P} \\lVert z_k^{(p)} \\rVert^2 \\Big)^{1/2},
    \\qquad \\tilde z_k = z_k / \\sigma_k ,

which is the similarity transform ``D_k = σ_k I`` of the linearised plant
``z_{k+1} = A_k z_k + u_k``:

.. math::

    \\tilde z_{k+1} = \\tilde A_k \\tilde z_k + \\tilde u_k, \\qquad
    \\tilde A_k = D_{k+1}^{-1} A_k D_k = \\frac{\\sigma_k}{\\sigma_{k+1}} A_k, \\qquad
    \\tilde u_k = u_k / \\sigma_{k+1} .

LQR on the normalised plant with ``Q = qI``, ``R = rI``, ``Q_f = q_f I`` gives ``K̃_k``
(``ũ_k = -K̃_k z̃_k``); in the model's coordinates

.. math::

    K_k = D_{k+1} \\tilde K_k D_k^{-1} = \\frac{\\sigma_{k+1}}{\\sigma_k} \\tilde K_k ,
    \\qquad w_k = K_k v_k ,

which is the LQR of the original plant with relative weights ``Q_k = (q/σ_k²) I``,
``R_k = (r/σ_{k+1}²) I``, ``Q_f = (q_f/σ_T²) I``.  Rescaling layer ``k`` of a model by any
``c_k > 0`` (``z_k → c_k z_k``) rescales ``σ_k`` by ``c_k`` and leaves the steered trajectory
unchanged up to the same factors: the gains are scale-equivariant, the paper's are not.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ltv_control._exceptions import ArgumentError, DimensionError, PropertyError
from ltv_control.adapters._checks import to_numpy64

__all__ = [
    "ANCHORS",
    "DEFAULT_R",
    "FORMS",
    "MASSIVE_THRESHOLD",
    "RelativeForm",
    "content_direction",
    "default_r",
    "massive_dimensions",
    "midpoint_offsets",
    "normalise_system",
    "normalised_feedback_directions",
    "relative_form",
    "state_scales",
]

FORMS = ("paper", "relative")
"""A-LQR forms (``ALQRSteerer.fit(..., form=)``): ``"paper"`` (the library default: arXiv 2604.19018
as published, ``Q = qI``, ``R = rI`` on raw states, ``β*_k = λ‖e_k‖``) and
``"relative"`` (chosen by the CLI/demo default ``auto`` where the paper form's input leaves the
blocks' linear range, :mod:`ltv_control.adapters.form_choice`: normalised gains, massive
coordinates out of the direction,
``β*_k = λ‖P_k e_k‖``, one-sided law)."""


DEFAULT_R = {"paper": 1.0, "relative": 0.1}
"""Default input weight ``r`` per form (``ALQRSteerer.fit(..., r=None)``).  The paper's is the
contract's ``r = 1``.  The relative form's is ``r = 0.1`` (``q = q_f = 0.1`` as for the paper):
with the one-sided law a stiffer loop (``v_kᵀw_k`` 0.4-0.9 instead of 0.1-0.35) brings a prompt
that is short of the target up to it within fewer layers.  Measured in ``docs/transfer.md``:
on held-out prompts it raises Gemma-3-270M's positive rate at equal λ and moves both
families' trade-off curves no further from the paper form's than ``r = 1`` does."""


def default_r(form: str, r: float | None = None) -> float:
    """``r`` if given, else :data:`DEFAULT_R` of ``form``."""
    return DEFAULT_R[form] if r is None else r


ANCHORS = ("origin", "midpoint")
"""Where the relative form measures its target from (:func:`relative_form`, ``anchor=``)."""

MASSIVE_THRESHOLD = 10.0
"""A coordinate is *massive* at layer ``k`` when ``|z̄_{k,i}| > 10 σ_k`` (mean state over the
fitting prompts, ``σ_k`` the RMS coordinate size).  Measured gap: the massive coordinates sit at
11-24 σ_k (Gemma-3-270M) and 11-18 σ_k (SmolLM2-135M), the next largest at 1-9 σ_k."""


class RelativeForm(NamedTuple):
    """What the relative form changes: direction, its strength, gains and target offsets.

    Attributes
    ----------
    v : numpy.ndarray, shape (T, n)
        Unit content direction (massive coordinates removed from ``e_k``).
    e_norm : numpy.ndarray, shape (T,)
        ``‖e_k‖`` over the content coordinates (zero where no direction).
    w : numpy.ndarray, shape (T, n)
        Feedback directions ``(σ_{k+1}/σ_k) K̃_k v_k``.
    offsets : numpy.ndarray, shape (T,)
        ``v_kᵀ m_k``; the target is ``β*_k = offsets_k + λ e_norm_k``.
    massive : numpy.ndarray of bool, shape (T, n)
        The coordinates removed.
    """

    v: np.ndarray
    e_norm: np.ndarray
    w: np.ndarray
    offsets: np.ndarray
    massive: np.ndarray


def state_scales(states: Any) -> np.ndarray:
    """Per-layer RMS state size ``σ_k = sqrt(mean_p ‖z_k^{(p)}‖² / n)``.

    Parameters
    ----------
    states : array, shape (P, T+1, n)
        Last-token states of ``P`` prompts (e.g. :meth:`LLMPlant.last_token_states`).

    Returns
    -------
    numpy.ndarray, shape (T+1,), float64

    Raises
    ------
    DimensionError
        ``states`` is not 3-D or has no prompt.
    PropertyError
        Non-finite values, or a layer whose states are all zero (σ_k = 0).
    """
    Z = to_numpy64(states)
    if Z.ndim != 3 or Z.shape[0] < 1:
        raise DimensionError(f"states: expected shape (P >= 1, T+1, n), found {Z.shape}")
    if not np.all(np.isfinite(Z)):
        raise PropertyError("states: expected finite values, found NaN or inf")
    sigma = np.sqrt(np.mean(Z * Z, axis=(0, 2)))
    if np.any(sigma <= 0):
        raise PropertyError(f"states: layers {np.flatnonzero(sigma <= 0).tolist()} have zero scale")
    return sigma


def _check_sigma(sigma: Any, T: int) -> np.ndarray:
    s = to_numpy64(sigma).reshape(-1)
    if s.shape != (T + 1,):
        raise DimensionError(f"sigma: expected shape ({T + 1},) (one scale per state), found {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise PropertyError("sigma: expected positive finite scales")
    return s


def normalise_system(system: Any, sigma: Any) -> Any:
    """The plant in normalised coordinates: ``Ã_k = (σ_k/σ_{k+1}) A_k``, ``B̃_k = B_k/σ_{k+1}·σ_{k+1}``.

    With ``u_k = σ_{k+1} ũ_k`` the input matrix is unchanged (``B̃_k = D_{k+1}^{-1} B_k
    σ_{k+1} = B_k`` for the scalar ``D``), and so is ``B = None`` (identity).

    Parameters
    ----------
    system : LTVSystem
        ``A`` of shape (T, n, n); ``B`` None or (T, n, m); no drift ``c``.
    sigma : array, shape (T+1,)

    Returns
    -------
    LTVSystem
        Same array type (numpy / torch) as ``system.A``.
    """
    from ltv_control import LTVSystem

    T = system.horizon
    s = _check_sigma(sigma, T)
    ratio = s[:-1] / s[1:]
    A = system.A
    if type(A).__module__.split(".")[0] == "torch":
        import torch

        factor = torch.as_tensor(ratio, dtype=A.dtype, device=A.device)
    else:
        factor = ratio.astype(A.dtype)
    if system.c is not None:
        raise PropertyError("system: an affine drift c is not supported by the normalised form")
    return LTVSystem(A * factor[:, None, None], system.B)


def normalised_feedback_directions(system: Any, v: Any, sigma: Any, *, q: float, r: float,
                                   qf: float, layers: list[int] | None = None) -> np.ndarray:
    """``w_k = (σ_{k+1}/σ_k) K̃_k v_k`` with ``K̃`` the LQR gains of the normalised plant.

    Parameters
    ----------
    system : LTVSystem or StreamedSystem
        The linearised plant (``A`` (T, n, n), ``B`` None), or a stream of ``A_k`` in backward
        order (rescaled on the fly, never stacked).
    v : array, shape (T, n)
        Feature directions.
    sigma : array, shape (T+1,)
        Per-layer scales (:func:`state_scales`; only their ratios matter).
    q, r, qf : float
        Relative weights ``Q = qI``, ``R = rI``, ``Q_f = q_f I`` of the normalised plant.
    layers : list of int or None, default None
        Controlled layers (``None``: all), as for
        :func:`ltv_control.adapters.gains.feedback_gains`.

    Returns
    -------
    numpy.ndarray, shape (T, n), float64
    """
    from ltv_control.adapters.gains import StreamedSystem, feedback_gains

    s = _check_sigma(sigma, system.horizon)
    ratio = s[:-1] / s[1:]
    if isinstance(system, StreamedSystem):
        scaled = _scaled_stream(system, ratio)
    else:
        scaled = normalise_system(system, s)
    return feedback_gains(scaled, v, q=q, r=r, qf=qf, layers=layers) / ratio[:, None]


def midpoint_offsets(v: Any, z_mid: Any) -> np.ndarray:
    """``c_k = v_kᵀ m_k``: the feature value of the midpoint ``m_k = ½(z̄_k^desired + z̄_k^undesired)``.

    With ``relative_form(..., anchor="midpoint")`` the target is ``β*_k = c_k + λ‖e_k‖``: a
    displacement of ``λ‖e_k‖`` from the neutral point between the two classes, not from the
    origin of the residual stream (the default ``anchor="origin"`` is ``c_k = 0``, the paper's
    ``β*_k = λ‖e_k‖``).

    Parameters
    ----------
    v : array, shape (T, n)
    z_mid : array, shape (T, n) or (T+1, n)
        Midpoint states (only the first ``T`` rows are used).

    Returns
    -------
    numpy.ndarray, shape (T,), float64
    """
    V, M = to_numpy64(v), to_numpy64(z_mid)
    if V.ndim != 2 or M.ndim != 2 or M.shape[1] != V.shape[1] or M.shape[0] < V.shape[0]:
        raise DimensionError(f"z_mid: expected shape ({V.shape[0]} or {V.shape[0] + 1}, "
                             f"{V.shape[-1]}) to match v {V.shape}, found {M.shape}")
    if not np.all(np.isfinite(M)):
        raise PropertyError("z_mid: expected finite values, found NaN or inf")
    return np.einsum("kn,kn->k", V, M[: V.shape[0]])


def massive_dimensions(z_mean: Any, sigma: Any, *, threshold: float = MASSIVE_THRESHOLD) -> np.ndarray:
    """Boolean mask ``|z̄_{k,i}| > threshold · σ_k`` of the massive coordinates.

    Parameters
    ----------
    z_mean : array, shape (K, n)
        Mean state per layer.
    sigma : array, shape (K,)
        Per-layer state size; a median state *norm* is converted to the RMS coordinate size
        ``σ_k = ‖z‖/sqrt(n)`` by the caller (:func:`relative_form` does).
    threshold : float, default 10

    Returns
    -------
    numpy.ndarray of bool, shape (K, n)
    """
    M, s = to_numpy64(z_mean), to_numpy64(sigma).reshape(-1)
    if M.ndim != 2 or s.shape != (M.shape[0],):
        raise DimensionError(f"sigma: expected shape ({M.shape[0]},) to match z_mean {M.shape}, found {s.shape}")
    return np.abs(M) > threshold * s[:, None]


def content_direction(e: Any, massive: Any, *, rel_tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """``ẽ_k = e_k`` with the massive coordinates zeroed; ``(v_k, ‖ẽ_k‖) = (ẽ_k/‖ẽ_k‖, ‖ẽ_k‖)``.

    Steps with ``‖ẽ_k‖ <= rel_tol·max_j ‖ẽ_j‖`` get ``v_k = 0`` and ``‖ẽ_k‖ = 0`` (no control).
    """
    E = np.where(to_numpy64(massive).astype(bool), 0.0, to_numpy64(e))
    norm = np.linalg.norm(E, axis=1)
    ok = norm > rel_tol * (norm.max() if norm.size else 0.0)
    v = np.where(ok[:, None], E / np.where(ok, norm, 1.0)[:, None], 0.0)
    return v, np.where(ok, norm, 0.0)


def _scaled_stream(system: Any, ratio: np.ndarray) -> Any:
    """A StreamedSystem whose ``A_k`` are multiplied by ``ratio[k] = σ_k/σ_{k+1}`` on the fly."""
    from ltv_control.adapters.gains import StreamedSystem

    stream = ((k, A_k * float(ratio[k])) for k, A_k in system.jacobians)
    return StreamedSystem(stream, horizon=system.horizon, state_dim=system.state_dim,
                          dtype=system.dtype, device=system.device)


def relative_form(system: Any, setpoint: Any, *, q: float, r: float, qf: float,
                  layers: list[int] | None = None,
                  threshold: float = MASSIVE_THRESHOLD, anchor: str = "origin") -> RelativeForm:
    """Direction, gains and target offsets of the relative A-LQR form.

    .. math::

        v_k = \\frac{P_k e_k}{\\lVert P_k e_k \\rVert}, \\qquad
        w_k = \\frac{\\sigma_{k+1}}{\\sigma_k} \\tilde K_k v_k, \\qquad
        \\beta^*_k = c_k + \\lambda \\lVert P_k e_k \\rVert ,

    with ``P_k`` the projection that zeroes the massive coordinates
    (:func:`massive_dimensions`), ``K̃`` the LQR gains of ``Ã_k = (σ_k/σ_{k+1}) A_k``
    (through :func:`normalised_feedback_directions`, so a streamed system and a
    restricted ``layers`` set work as for the paper's form) and the anchor ``c_k = 0``
    (``anchor="origin"``, the default: the paper's target on the content direction) or
    ``c_k = v_kᵀ m_k`` with ``m_k`` the midpoint of the two class means (``anchor="midpoint"``).
    ``σ_k`` comes from the setpoint's ``act_norm`` (median state norm per layer
    over ``sqrt(n)``), ``m_k`` from its ``z_mid`` when present, else its ``z_mean`` (the same for
    equal-sized prompt sets).

    Parameters
    ----------
    system : LTVSystem or StreamedSystem
        ``A (T, n, n)``, ``B = None``.
    setpoint : Setpoint
        With ``e`` (T, n), ``act_norm`` (T+1,) and ``z_mid`` or ``z_mean`` (T+1, n).
    q, r, qf : float
        Relative weights.
    layers : list of int or None
        Controlled layers.
    threshold : float, default 10
        Massive-coordinate threshold in units of ``σ_k``.
    anchor : {"origin", "midpoint"}, default "origin"
        Where the target is measured from (``offsets``).  Measured in ``docs/transfer.md``:
        once the massive coordinates are out of ``v_k`` the midpoint projects to within about
        ``‖P_k e_k‖`` of the origin on both families, and anchoring at it costs SmolLM2
        perplexity (it raises the middle layers' targets) without helping Gemma-3.

    Returns
    -------
    RelativeForm

    Raises
    ------
    ArgumentError
        ``anchor`` is not ``"origin"`` or ``"midpoint"``.
    PropertyError
        The setpoint lacks ``act_norm`` or both ``z_mid`` and ``z_mean``.
    """
    if anchor not in ANCHORS:
        raise ArgumentError(f"anchor: expected one of {ANCHORS}, found {anchor!r}")
    e = to_numpy64(setpoint.e)
    T, n = e.shape
    scale = getattr(setpoint, "act_norm", None)
    mid = getattr(setpoint, "z_mid", None)
    mid = getattr(setpoint, "z_mean", None) if mid is None else mid
    if scale is None or mid is None:
        raise PropertyError("setpoint: the relative form needs act_norm and z_mean (measure it "
                            "with LLMPlant.setpoint)")
    s = _check_sigma(scale, T) / np.sqrt(n)
    mid = to_numpy64(mid)
    massive = massive_dimensions(mid[:T], s[:T], threshold=threshold)
    v, e_norm = content_direction(e, massive)
    w = normalised_feedback_directions(system, v, s, q=q, r=r, qf=qf, layers=layers)
    offsets = midpoint_offsets(v, mid) if anchor == "midpoint" else np.zeros(T)
    return RelativeForm(v, e_norm, w, offsets, massive)
