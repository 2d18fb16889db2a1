"""Per-layer feature strength profiles β_k: the data of the β figure.

β_k = v_kᵀ z_k is the feature strength of block ``k``'s input ``z_k`` at the last prompt token
along the unit LFS direction ``v_k``.  A steered profile is measured with the method's steerer
attached to the model while :meth:`LLMPlant.last_token_states` runs its forward pass, so the
states are the steered ones (the plant keeps no memo of earlier measurements).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ltv_control import DimensionError

__all__ = ["beta_profiles", "feature_strengths"]


def feature_strengths(plant: Any, prompts: Sequence[str], v: Any, *,
                      steering: Callable[[], contextlib.AbstractContextManager] | None = None,
                      batch_size: int = 16) -> np.ndarray:
    """Mean feature strength per layer, ``β_k = (1/P) Σ_p v_kᵀ z_k^{(p)}``.

    Parameters
    ----------
    plant : LLMPlant
    prompts : sequence of str, length P
    v : array-like, shape (T, n)
        Unit feature directions (zero rows for uncontrolled layers).
    steering : callable returning a context manager, optional
        Attaches a steerer while the states are recorded (β of the steered run).
    batch_size : int, default 16

    Returns
    -------
    numpy.ndarray, shape (T,), float64
    """
    import torch

    v = np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] > plant.horizon or v.shape[1] != plant.state_dim:
        raise DimensionError(f"v: expected shape (<= {plant.horizon}, {plant.state_dim}), "
                             f"found {v.shape}")
    context = steering() if steering is not None else contextlib.nullcontext()
    with torch.no_grad(), context:
        states = plant.last_token_states(list(prompts), batch_size=batch_size)
    z = states[:, : v.shape[0], :].double().numpy()
    return np.einsum("ptn,tn->pt", z, v).mean(axis=0)


def beta_profiles(plant: Any, prompts: Sequence[str], v: Any, beta_star: Any,
                  steerings: dict[str, Callable[[], contextlib.AbstractContextManager] | None],
                  *, batch_size: int = 16) -> dict[str, list[float]]:
    """The β figure's data: the target and each run's own profile.

    Parameters
    ----------
    plant : LLMPlant
    prompts : sequence of str
    v : array-like, shape (T, n)
        Unit feature directions.
    beta_star : array-like, shape (T,)
        Target ``β*_k``.
    steerings : dict of str to (callable or None)
        Per run name, the factory of the context that attaches its steerer (None: unsteered).

    Returns
    -------
    dict of str to list of float
        ``"target"`` then one profile per run, each measured with its own steerer attached.
    """
    target = np.asarray(beta_star.detach().cpu() if hasattr(beta_star, "detach") else beta_star,
                        dtype=np.float64)
    profiles = {"target": target.tolist()}
    for name, steering in steerings.items():
        profiles[name] = feature_strengths(plant, prompts, v, steering=steering,
                                           batch_size=batch_size).tolist()
    return profiles
