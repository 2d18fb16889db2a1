"""The linear-feature setpoint measured on a language model (the first step of every fit).

The math is :func:`ltv_control.setpoint.linear_feature_setpoint`; this module only measures the
last-token block inputs ``z_0 .. z_{T-1}`` of the desired and undesired prompts and keeps, beside
the setpoint, what a steerer needs to know about the plant it came from.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ltv_control.adapters._checks import check_positive_int, check_prompts, check_scalar

__all__ = ["Setpoint", "measure_setpoint"]


class Setpoint(NamedTuple):
    """LFS setpoint of a plant: ``e_k = z̄_k^desired − z̄_k^undesired``, ``v_k = e_k/‖e_k‖``,
    ``β*_k = lam·‖e_k‖`` (steps with ``‖e_k‖ <= 1e-6·max_j ‖e_j‖`` get ``v_k = 0``, ``β*_k = 0``).

    Attributes
    ----------
    v : numpy.ndarray, shape (T, n), float64
    e : numpy.ndarray, shape (T, n), float64
        The mean differences as measured (not zeroed).
    e_norm : numpy.ndarray, shape (T,), float64
        ``‖e_k‖`` (zero where there is no direction, so ``β* = lam·e_norm`` always).
    beta_star : numpy.ndarray, shape (T,), float64
    lam : float
        The scale used for ``beta_star``.
    model_id, layer_path : str or None
        The plant's model name and decoder-block path (written into controller files).
    v_all, e_norm_all : numpy.ndarray, shapes (T+1, n) and (T+1,), or None
        The same setpoint over all ``T+1`` states (the last block's output included).
    z_mean, act_norm : numpy.ndarray, shapes (T+1, n) and (T+1,), or None
        Mean state and median state norm over all measured prompts (the constrained steerer's
        linearization point and budget scale).
    z_mid : numpy.ndarray, shape (T+1, n), or None
        Midpoint of the class means ``m_k = ½(z̄_k^desired + z̄_k^undesired)`` (where the
        relative A-LQR form looks for massive coordinates, and its target's anchor with
        ``relative_form(..., anchor="midpoint")``,
        :func:`ltv_control.adapters.scaling.midpoint_offsets`).
    """

    v: Any
    e: Any
    e_norm: Any
    beta_star: Any
    lam: float = 1.0
    model_id: str | None = None
    layer_path: str | None = None
    v_all: Any = None
    e_norm_all: Any = None
    z_mean: Any = None
    act_norm: Any = None
    z_mid: Any = None

    @property
    def horizon(self) -> int:
        """``T``, the number of decoder blocks."""
        return int(self.v.shape[0])

    @property
    def state_dim(self) -> int:
        """``n``, the hidden size."""
        return int(self.v.shape[1])


def measure_setpoint(plant: Any, desired: Any, undesired: Any, *, lam: float = 1.0,
                     batch_size: int = 8) -> Setpoint:
    """The LFS setpoint of ``plant`` from the last-token block inputs of two prompt sets.

    Parameters
    ----------
    plant : LLMPlant
        Anything with ``last_token_states(prompts, batch_size=)`` returning ``(P, T+1, n)`` and
        ``horizon``.
    desired, undesired : list of str
    lam : float, default 1.0
        ``β*_k = lam·‖e_k‖``.
    batch_size : int, default 8

    Returns
    -------
    Setpoint
    """
    from ltv_control.setpoint import linear_feature_setpoint

    desired = check_prompts(desired, "desired")
    undesired = check_prompts(undesired, "undesired")
    lam = check_scalar(lam, "lam")
    batch_size = check_positive_int(batch_size, "batch_size")
    T = int(plant.horizon)
    zd = plant.last_token_states(desired, batch_size=batch_size).double().numpy()
    zu = plant.last_token_states(undesired, batch_size=batch_size).double().numpy()
    lfs = linear_feature_setpoint(zd[:, :T], zu[:, :T], lam=lam)
    lfs_all = linear_feature_setpoint(zd, zu, lam=lam)
    z_all = np.concatenate([zd, zu], axis=0)
    return Setpoint(v=lfs.v, e=lfs.e, e_norm=lfs.e_norm, beta_star=lfs.beta_star, lam=lam,
                    model_id=getattr(plant, "model_id", None), layer_path=getattr(plant, "layer_path", None),
                    v_all=np.asarray(lfs_all.v), e_norm_all=np.asarray(lfs_all.e_norm),
                    z_mean=z_all.mean(axis=0), act_norm=np.median(np.linalg.norm(z_all, axis=2), axis=0),
                    z_mid=0.5 * (zd.mean(axis=0) + zu.mean(axis=0)))
