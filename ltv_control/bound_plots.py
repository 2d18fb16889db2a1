"""Figure of realised tracking errors against the tracking-error bound (paper style).

matplotlib is imported lazily, and the figure is drawn on an Agg canvas of its own (the global
pyplot backend is left alone), so this module imports without matplotlib installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ltv_control._exceptions import ArgumentError, DimensionError, PropertyError
from ltv_control._validation import as_host_float64, as_int, public_api
from ltv_control.atomic import atomic_save_figure, output_path

__all__ = ["plot_tracking_bound"]

_NORMS = ("euclidean", "P")


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """float64 host array; complex, strings and NaN refused (``inf`` allowed: a vacuous bound)."""
    arr = as_host_float64(x, name, finite=False)
    if np.any(np.isnan(arr)):
        raise PropertyError(f"{name} contains NaN values")
    return arr


def _check_text(value: Any, name: str) -> None:
    if value is not None and not isinstance(value, str):
        raise ArgumentError(f"{name} must be a str or None, found {type(value).__name__}")


def _plot_data(deviations: Any, bound: Any, P: Any, norm: str) -> tuple:
    """Validated ``(D (R, T+1, n), bound (T+1,) or (R, T+1), realised errors (R, T+1))``."""
    from ltv_control.bounds import TrackingBound, _cholesky_stack, _weighted_norms

    D = as_host_float64(deviations, "deviations")
    if D.ndim == 2:
        D = D[None]
    if D.ndim != 3 or 0 in D.shape:
        raise DimensionError(f"deviations must have shape (R, T+1, n) or (T+1, n) with R, T+1, n >= 1, "
                             f"found {D.shape}")
    if isinstance(bound, TrackingBound):
        b = _to_numpy(bound.euclidean if norm == "euclidean" else bound.bound, "bound")
        P = bound.P if P is None else P
    else:
        b = _to_numpy(bound, "bound")
    if b.ndim not in (1, 2) or b.shape[-1] != D.shape[1] or b.shape[0] == 0:
        raise DimensionError(f"bound must have shape (T+1,) or (R, T+1) with T+1 = {D.shape[1]} and "
                             f"R >= 1, found {b.shape}")
    T1, n = D.shape[1], D.shape[2]
    if norm == "euclidean":  # scaled norms: no overflow for entries beyond 1e154
        return D, b, _weighted_norms(D, np.broadcast_to(np.eye(n), (T1, n, n)))
    if P is None:
        raise ArgumentError("norm='P' needs the weights P (or a TrackingBound)")
    Pm = as_host_float64(P, "P")
    if Pm.shape != (T1, n, n):
        raise DimensionError(f"P must have shape (T+1, n, n) = {(T1, n, n)}, found {Pm.shape}")
    return D, b, _weighted_norms(D, _cholesky_stack(Pm))


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
        Output PNG file; written atomically through :mod:`ltv_control.atomic` (temporary file
        in the same folder, then ``os.replace``; permissions ``0o666 & ~umask``).  The parent
        folder must exist (``FileNotFoundError`` otherwise).
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
        Resolution, ``1 <= dpi <= 2400``.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    if not isinstance(norm, str) or norm not in _NORMS:
        raise ArgumentError(f"norm must be one of {_NORMS}, found {norm!r}")
    target = output_path(path)
    for name, text in (("title", title), ("annotation", annotation), ("xlabel", xlabel)):
        _check_text(text, name)
    dpi = as_int(dpi, "dpi", low=1, high=2400)
    D, b, realised = _plot_data(deviations, bound, P, norm)
    b2 = np.atleast_2d(b)

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError("plot_tracking_bound needs matplotlib: pip install 'ltv-control[demo]'") from None

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

    return atomic_save_figure(fig, target, dpi=dpi)
