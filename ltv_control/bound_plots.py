"""Figure of realised tracking errors against the tracking-error bound (paper style).

matplotlib is imported lazily, and the figure is drawn on an Agg canvas of its own (the global
pyplot backend is left alone), so this module imports without matplotlib installed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ltv_control._exceptions import ArgumentError, DimensionError
from ltv_control._validation import public_api

__all__ = ["plot_tracking_bound"]

_NORMS = ("euclidean", "P")


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if type(x).__module__.split(".")[0] == "torch":
        x = x.detach().to("cpu").double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"{name} must be a numeric array, found {type(x).__name__}") from exc


@public_api
def plot_tracking_bound(
    path: str | os.PathLike,
    deviations: Any,
    bound: Any,
    *,
    P: Any = None,
    norm: str = "euclidean",
    title: str | None = None,
    annotation: str | None = None,
    xlabel: str = "step k",
    dpi: int = 130,
) -> Path:
    r"""Write a PNG: per-step min–max envelope of realised errors against the bound, log scale.

    The realised error of rollout ``r`` at step ``k`` is ``‖δz_k‖₂`` (``norm="euclidean"``) or
    ``‖δz_k‖_{P_k}`` (``norm="P"``); the figure shades its min–max envelope over rollouts, draws
    the median, and draws the bound (its maximum over rollouts, and its minimum dashed, when one
    bound per rollout is given).  Zeros are clipped to the smallest positive value for the log axis.

    Parameters
    ----------
    path : str or PathLike
        Output PNG file; written atomically (temporary file in the same folder, then
        ``os.replace``).  The parent folder must exist.
    deviations : array (R, T+1, n) or (T+1, n)
        Realised deviations ``δz`` from the nominal trajectory.
    bound : TrackingBound or array (T+1,) or (R, T+1)
        A :class:`ltv_control.bounds.TrackingBound` (its ``euclidean`` or ``bound`` field is used,
        matching ``norm``, and its ``P``), or the bound values in the chosen norm.
    P : array (T+1, n, n), optional
        Weights for ``norm="P"`` when ``bound`` is a plain array.
    norm : {"euclidean", "P"}, default "euclidean"
    title : str, optional
    annotation : str, optional
        Text drawn in the upper right corner (e.g. a coverage figure).
    xlabel : str, default "step k"
    dpi : int, default 130

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from ltv_control.bounds import TrackingBound, _cholesky_stack, _weighted_norms

    if norm not in _NORMS:
        raise ArgumentError(f"norm must be one of {_NORMS}, found {norm!r}")
    D = _to_numpy(deviations, "deviations")
    if D.ndim == 2:
        D = D[None]
    if D.ndim != 3:
        raise DimensionError(f"deviations must have shape (R, T+1, n) or (T+1, n), found {D.shape}")
    if isinstance(bound, TrackingBound):
        b = _to_numpy(bound.euclidean if norm == "euclidean" else bound.bound, "bound")
        if P is None:
            P = bound.P
    else:
        b = _to_numpy(bound, "bound")
    if b.shape[-1] != D.shape[1] or b.ndim not in (1, 2):
        raise DimensionError(f"bound must have shape (T+1,) or (R, T+1) with T+1 = {D.shape[1]}, found {b.shape}")
    if norm == "euclidean":
        realised = np.linalg.norm(D, axis=-1)
    else:
        if P is None:
            raise ArgumentError("norm='P' needs the weights P (or a TrackingBound)")
        Pm = _to_numpy(P, "P")
        if Pm.shape != (D.shape[1], D.shape[2], D.shape[2]):
            raise DimensionError(f"P must have shape (T+1, n, n) = {(D.shape[1], D.shape[2], D.shape[2])}, found {Pm.shape}")
        realised = _weighted_norms(D, _cholesky_stack(Pm))
    b2 = np.atleast_2d(b)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    steps = np.arange(D.shape[1])
    positive = np.concatenate([realised[realised > 0], b2[np.isfinite(b2) & (b2 > 0)]])
    floor = positive.min() if positive.size else 1e-12
    clip = lambda v: np.clip(v, floor, None)  # noqa: E731

    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    unit = r"\|\delta z_k\|_2" if norm == "euclidean" else r"\|\delta z_k\|_{P_k}"
    ax.fill_between(steps, clip(realised.min(axis=0)), clip(realised.max(axis=0)), color="tab:blue", alpha=0.3,
                    label=f"realised ${unit}$ (min–max, {realised.shape[0]} rollouts)")
    ax.plot(steps, clip(np.median(realised, axis=0)), color="tab:blue", lw=1.2, label="realised (median)")
    upper = b2.max(axis=0)
    finite = np.isfinite(upper)
    ax.plot(steps[finite], clip(upper[finite]), color="tab:red", lw=2.0,
            label="bound" if b2.shape[0] == 1 else "bound (max over rollouts)")
    if b2.shape[0] > 1:
        lower = b2.min(axis=0)
        ok = np.isfinite(lower)
        ax.plot(steps[ok], clip(lower[ok]), color="tab:red", lw=1.0, ls="--", label="bound (min over rollouts)")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Euclidean error" if norm == "euclidean" else "P-weighted error")
    if title:
        ax.set_title(title)
    if annotation:
        ax.text(0.98, 0.97, annotation, transform=ax.transAxes, ha="right", va="top", fontsize=9,
                bbox=dict(boxstyle="round", facecolor="white", alpha=0.8))
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()

    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent if str(target.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target
