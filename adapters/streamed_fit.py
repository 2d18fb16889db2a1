"""A-LQR fitting in O(n²) memory: one layer's Jacobian at a time, in backward order.

Details: the Notes of :func:`fit_alqr_streamed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ltv_control.adapters.setpoint import measure_setpoint
from ltv_control.adapters._checks import (
    check_layer_indices,
    check_positions,
    check_prompts,
    check_scalar,
    reject_unknown,
)

__all__ = ["fit_alqr_streamed"]


def fit_alqr_streamed(
    plant: Any,
    desired: Sequence[str],
    undesired: Sequence[str],
    *,
    q: float = 0.1,
    r: float = 1.0,
    qf: float = 0.1,
    lam: float = 1.0,
    jacobian_prompts: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    positions: str = "last",
    max_tokens: int = 24,
    batch_size: int = 8,
    progress: bool = True,
    dtype: Any = None,
    device: Any = None,
    shard: str = "prompts",
    group: Any = None,
    **unknown: Any,
):
    """Fit an :class:`~ltv_control.adapters.ALQRSteerer` with the streamed Riccati recursion.

    Same model and result as :meth:`ALQRSteerer.fit` (``u_k = (β*_k − v_kᵀz_k) w_k`` with
    ``w_k = K_k v_k``, ``K_k`` the finite-horizon LQR gains of ``z_{k+1} = A_k z_k + B_k u_k``),
    but no ``(T, n, n)`` array is ever built.

    Parameters
    ----------
    plant : LLMPlant
        The language model as an LTV plant (needs ``iter_jacobians``, ``last_token_states``,
        ``horizon``, ``state_dim``).
    desired, undesired : list of str
        Contrastive prompts.
    q, r, qf : float, defaults 0.1, 1.0, 0.1
        ``Q = q·I`` (q >= 0), ``R = r·I`` (r > 0), ``Q_f = qf·I`` (qf >= 0).
    lam : float, default 1.0
        ``β*_k = lam·‖e_k‖``.
    jacobian_prompts : list of str or None
        Prompts averaged into ``A_k``; ``None``: the first 50 desired prompts.
    layers : list of int or None
        Controlled layers (``B_k = I`` there, ``B_k = 0`` elsewhere); ``None``: all.
    positions : {"last", "all"}, default "last"
        Default positions of ``attach`` (``"all"`` is A-LQR+).
    max_tokens, batch_size, progress : see :meth:`LLMPlant.iter_jacobians`
        As in :meth:`LLMPlant.iter_jacobians` (``batch_size`` also for the setpoint states).
    dtype : {"float64", "float32"}, a torch dtype or None, default None
        Precision of the Riccati recursion (``S_k``, ``K_k``); ``None`` means float64 (the
        device's own float dtype on devices without float64, such as Apple MPS).
    device : str or torch.device, optional
        Where the Riccati recursion runs; default the device of the model's first parameter
        (a GPU model runs its O(n³) steps on the GPU although Jacobians come back on the CPU).
    shard : {"prompts", "layers"}, default "prompts"
        How ranks split the Jacobian work when a ``torch.distributed`` group is initialised
        (ignored in a single process).
    group : ProcessGroup, optional
        Process group for the collectives.

    Returns
    -------
    ALQRSteerer
        Built through its public constructor; every rank gets the same steerer.

    Raises
    ------
    ArgumentError
        Unknown keyword, bad types, ``positions`` or ``shard``.
    PropertyError
        Non-finite or out-of-range weights.

    Notes
    -----
    :meth:`ALQRSteerer.fit` builds the whole plant ``A (T, n, n)`` and every gain before keeping
    only ``w_k = K_k v_k``.  :func:`fit_alqr_streamed` computes the same steerer while holding at most
    a few ``n × n`` matrices:

    1. the linear-feature setpoint ``e_k``, ``v_k = e_k/‖e_k‖``, ``β*_k = λ‖e_k‖`` from the
       last-token block inputs (:func:`ltv_control.setpoint.linear_feature_setpoint`);
    2. the Jacobian means ``A_k`` for ``k = T-1, ..., 0`` from ``plant.iter_jacobians`` (optionally
       spread over ``torch.distributed`` ranks, :mod:`ltv_control.adapters.distributed`);
    3. one backward Riccati step per ``A_k`` (:func:`ltv_control.streaming.streamed_feedback`,
       ``Q = q·I``, ``R = r·I``, ``Q_f = qf·I``, ``B_k = I`` on the controlled layers and ``B_k = 0``
       elsewhere, as the dense fit does), contracting ``K_k`` with ``v_k`` at once.

    Peak memory: ``S_{k+1}``, ``A_k``, ``K_k``, ``S_k`` and the step's temporaries, i.e. O(n²)
    instead of O(T·n²); at Llama-3-70B size (T = 80, n = 8192, float64) that is a few GiB instead of
    ~85 GiB.  The result equals the dense fit to rounding (tested to 1e-6 relative in float64).
    """
    from ltv_control.adapters.alqr import ALQRSteerer
    from ltv_control.adapters.distributed import iter_distributed_jacobians
    from ltv_control.adapters.gains import StreamedSystem
    from ltv_control.adapters.tokens import model_device

    reject_unknown(unknown, "fit_alqr_streamed")
    weights = {"q": q, "r": r, "qf": qf}
    for name, kw in (("q", "nonnegative"), ("r", "positive"), ("qf", "nonnegative")):
        check_scalar(weights[name], name, **{kw: True})  # fail before any forward pass
    positions = check_positions(positions)
    T, n = int(plant.horizon), int(plant.state_dim)
    check_layer_indices(layers, T)
    desired = check_prompts(desired, "desired")
    prompts = desired[:50] if jacobian_prompts is None else check_prompts(jacobian_prompts, "jacobian_prompts")
    setpoint = measure_setpoint(plant, desired, undesired, lam=lam, batch_size=batch_size)
    jacobians = iter_distributed_jacobians(plant, prompts, layers=range(T - 1, -1, -1), shard=shard,
                                           max_tokens=max_tokens, batch_size=batch_size,
                                           progress=progress, group=group)
    if device is None:
        device = model_device(plant.model) if hasattr(plant, "model") else "cpu"
    system = StreamedSystem(jacobians, horizon=T, state_dim=n, dtype=dtype, device=device)
    return ALQRSteerer.from_system(system, setpoint, **weights, layers=layers, positions=positions)
