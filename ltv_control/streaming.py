"""Streamed finite-horizon LQR synthesis in O(n²) memory: the plant matrices ``A_k`` arrive one
at a time, in backward order, from a *provider*, and feed :func:`ltv_control.riccati.backward_recursion`.

A provider is an iterable of ``(k, A_k)`` with ``k = T−1, …, 0`` (e.g.
``LLMPlant.iter_jacobians(prompts, layers=reversed(range(T)))``), a callable ``k -> A_k``
(``horizon`` required) or a stacked ``(T, n, n)`` array.  numpy or torch, chosen by the first
``A_k`` (torch only through :mod:`ltv_control.backends`).  Memory model: ``docs/scale.md``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from ltv_control._exceptions import ArgumentError, DimensionError
from ltv_control._validation import as_array, as_terminal_weight, as_weight, public_api, resolve_dtype
from ltv_control.backends import backend_by_name, get_backend
from ltv_control.riccati import Stage, backward_recursion, lqr_step

__all__ = [
    "GainStep",
    "StreamedFeedback",
    "iter_lqr_gains",
    "streamed_feedback",
    "scaled_identity_step",
    "dense_memory_bytes",
    "streamed_memory_bytes",
]


class GainStep(NamedTuple):
    """One step of the streamed recursion: stage ``k`` and its gain ``K_k`` (m, n)."""

    k: int
    K: Any


class StreamedFeedback(NamedTuple):
    """Result of :func:`streamed_feedback`.

    Attributes
    ----------
    w : array (T, m)
        ``w_k = K_k v_k`` for the given directions ``v_k``.
    S0 : array (n, n)
        Cost-to-go matrix at stage 0 (optimal cost from ``x_0`` is ``x_0ᵀ S_0 x_0``).
    """

    w: Any
    S0: Any


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------


def _is_scalar(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, (int, float, np.integer, np.floating)):
        return True
    return hasattr(x, "ndim") and x.ndim == 0


def _shape(x: Any) -> tuple[int, ...]:
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    return tuple(int(s) for s in x.shape)


# ----------------------------------------------------------------------------------------------
# providers
# ----------------------------------------------------------------------------------------------


def _backward_matrices(provider: Any, horizon: int | None, name: str = "provider") -> Iterator[tuple[int, Any]]:
    """Yield ``(k, A_k)`` for ``k = T-1, ..., 0`` from any supported provider, checking the order."""
    if hasattr(provider, "shape") and hasattr(provider, "ndim") and not callable(provider):
        shape = _shape(provider)
        if len(shape) != 3 or shape[1] != shape[2]:
            raise DimensionError(f"{name}: a stacked provider must have shape (T, n, n), found {shape}")
        if horizon is not None and shape[0] != horizon:
            raise DimensionError(f"{name}: expected horizon {horizon}, found a stack of {shape[0]}")
        for k in range(shape[0] - 1, -1, -1):
            yield k, provider[k]
        return
    if callable(provider):
        if horizon is None:
            raise ArgumentError(f"{name}: a callable provider k -> A_k needs horizon=")
        for k in range(horizon - 1, -1, -1):
            yield k, provider(k)
        return
    if not isinstance(provider, Iterable):
        raise ArgumentError(
            f"{name}: expected an iterable of (k, A_k), a callable k -> A_k or a (T, n, n) stack, "
            f"found {type(provider).__name__}"
        )
    expected_k: int | None = None if horizon is None else horizon - 1
    for item in provider:
        try:
            k, A_k = item
        except (TypeError, ValueError) as exc:
            raise ArgumentError(f"{name}: each item must be a pair (k, A_k), found {type(item).__name__}") from exc
        k = int(k)
        if expected_k is None:
            expected_k = k
        if k != expected_k or k < 0:
            raise DimensionError(
                f"{name}: expected the stages in backward order, stage {expected_k} next, found stage {k}"
            )
        yield k, A_k
        expected_k = k - 1
    if expected_k is None:
        raise DimensionError(f"{name}: the provider yielded no stage")
    if expected_k != -1:
        raise DimensionError(f"{name}: the provider stopped before stage 0 (stage {expected_k} missing)")


# ----------------------------------------------------------------------------------------------
# the activation-steering step (B = I, Q = qI, R = rI)
# ----------------------------------------------------------------------------------------------


def scaled_identity_step(S_next: Any, A: Any, q: float, r: float, *, step: Any = None) -> tuple[Any, Any]:
    """One Riccati step for ``B = I``, ``Q = q·I``, ``R = r·I``: :func:`~ltv_control.riccati.lqr_step`
    with scalar weights.

    ``G = S_{k+1} + rI = LLᵀ``, ``W = L⁻¹S_{k+1}A``, ``K = L⁻ᵀW``, ``S_k = sym(qI + AᵀS_{k+1}A − WᵀW)``.
    ``Q`` and ``R`` are never materialised as matrices, so (numpy) the step holds about 7
    ``n × n`` arrays at its peak, inputs included.  numpy or torch (any device).

    Parameters
    ----------
    S_next : array (n, n)
        Symmetric ``S_{k+1}``.
    A : array (n, n)
        ``A_k`` (same backend, dtype and device as ``S_next``).
    q, r : float
        ``Q = q·I`` (q >= 0) and ``R = r·I`` (r > 0).
    step : int, optional
        ``k``, named in error messages.

    Returns
    -------
    K : array (n, n)
    S : array (n, n)

    Raises
    ------
    NumericalError
        When ``S_{k+1} + rI`` is not positive definite, or ``S_k`` overflows.
    """
    result = lqr_step(S_next, A, None, float(q), float(r), step=step)
    return result.K, result.S


# ----------------------------------------------------------------------------------------------
# the streamed recursion
# ----------------------------------------------------------------------------------------------


class _Plan(NamedTuple):
    """What the first stage fixes: backend, dtype, device, sizes, weights and ``S_T``."""

    be: Any
    dtype: Any
    device: Any
    n: int
    m: int
    B_at: Any
    weights_at: Any


def _input_matrices(B: Any, be: Any, dt: Any, device: Any, n: int, steps: int) -> Any:
    """``k -> B_k`` (None meaning the identity) from None, (n, m), (T, n, m) or a callable."""
    if callable(B):
        return B
    if B is None:
        return lambda _k: None
    B_arr = as_array(B, "B", be, dtype=dt, device=device)
    if B_arr.ndim == 2:
        return lambda _k: B_arr
    if B_arr.ndim != 3 or _shape(B_arr)[0] != steps:
        raise DimensionError(f"B: expected None, ({n}, m), ({steps}, {n}, m) or a callable, "
                             f"found {_shape(B_arr)}")
    return lambda k: B_arr[k]


def _weights(Q: Any, R: Any, n: int, m: int, common: dict) -> tuple[Any, Any]:
    """``k -> (Q_k, R_k)``, validated once, and ``Q`` of the last stage.  Scalar ``Q`` and ``R``
    stay Python floats (``c·I`` is never materialised)."""
    if _is_scalar(Q) and _is_scalar(R):
        as_weight(Q, "Q", rows=1, definiteness="psd", **common)
        as_weight(R, "R", rows=1, definiteness="pd", **common)
        q, r = float(Q), float(R)
        return (lambda _k: (q, r)), q * common["backend"].eye(n, dtype=common["dtype"],
                                                             device=common["device"])
    Qw = as_weight(Q, "Q", rows=n, definiteness="psd", **common)
    Rw = as_weight(R, "R", rows=m, definiteness="pd", **common)
    if Qw.batch_shape or Rw.batch_shape:
        raise DimensionError("Q, R: batched weights are not supported by the streamed path")
    return (lambda k: (Qw.at(k), Rw.at(k))), Qw.last()


def _plan(k: int, A_k: Any, Q: Any, R: Any, Qf: Any, B: Any, dtype: Any,
          device: Any) -> tuple[_Plan, Any]:
    """Fix backend, dtype, device and sizes from the first stage; validate the weights once.

    Returns the plan and ``S_T`` (not kept in the plan, so that it is freed after step T−1).
    """
    if device is None:
        be = get_backend(A_k)
        device = be.device_of(A_k) if be.is_array(A_k) else None
    else:
        be = backend_by_name("torch")
    dt = resolve_dtype(dtype, be, A_k if be.is_array(A_k) else device)
    shape = _shape(A_k)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise DimensionError(f"A[{k}]: expected a square (n, n) matrix, found {shape}")
    n, steps = shape[0], k + 1
    B_at = _input_matrices(B, be, dt, device, n, steps)
    B_first = B_at(k)
    m = n if B_first is None else _shape(B_first)[-1]
    common = dict(horizon=steps, backend=be, dtype=dt, device=device)
    weights_at, Q_last = _weights(Q, R, n, m, common)
    if Qf is None:
        S_T = Q_last
    else:
        S_T = as_terminal_weight(Qf, "Qf", n=n, backend=be, dtype=dt, device=device)
        if S_T.ndim != 2:
            raise DimensionError(f"Qf: expected a scalar or a ({n}, {n}) matrix, found {_shape(S_T)}")
    return _Plan(be, dt, device, n, m, B_at, weights_at), S_T


def _stages(stream: Iterator[tuple[int, Any]], plan: _Plan) -> Iterator[Stage]:
    """Convert and check each ``(k, A_k)`` of the provider into a :class:`Stage`."""
    n, m, be = plan.n, plan.m, plan.be
    for k, A_k in stream:
        A = as_array(A_k, f"A[{k}]", be, dtype=plan.dtype, device=plan.device)
        del A_k
        if _shape(A) != (n, n):
            raise DimensionError(f"A[{k}]: expected shape ({n}, {n}), found {_shape(A)}")
        B_k = plan.B_at(k)
        if B_k is not None:
            B_k = as_array(B_k, f"B[{k}]", be, dtype=plan.dtype, device=plan.device)
            if _shape(B_k) != (n, m):
                raise DimensionError(f"B[{k}]: expected shape ({n}, {m}), found {_shape(B_k)}")
        Q_k, R_k = plan.weights_at(k)
        yield Stage(k, A, B_k, Q_k, R_k)
        del A, B_k, Q_k, R_k


def _run(provider: Any, Q: Any, R: Any, *, Qf: Any, B: Any, horizon: int | None, dtype: Any,
         device: Any, final: dict) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(k, n, K_k)`` from :func:`~ltv_control.riccati.backward_recursion` over the
    provider's stages; store ``S_0`` in ``final['S0']`` at the end.

    Only ``S_{k+1}`` and the current stage are alive (references are dropped after each yield).
    """
    stream = _backward_matrices(provider, horizon)
    try:
        k, A_k = next(stream)
        plan, S = _plan(k, A_k, Q, R, Qf, B, dtype, device)
        stages = _stages(itertools.chain([(k, A_k)], stream), plan)
        del A_k
        recursion = backward_recursion(stages, S, backend=plan.be)
        del S
        for k, result in recursion:
            S, K = result.S, result.K
            del result
            yield k, plan.n, K
            del K
        final["S0"] = S
    finally:
        # an abandoned recursion (error, early break) closes the provider's generator at once,
        # so that e.g. the plant's hooks and progress bars are released deterministically
        stream.close()
        if hasattr(provider, "__next__") and hasattr(provider, "close"):
            provider.close()


@public_api
def iter_lqr_gains(
    provider: Any,
    Q: Any,
    R: Any,
    *,
    Qf: Any = None,
    B: Any = None,
    horizon: int | None = None,
    dtype: Any = None,
    device: Any = None,
) -> Iterator[GainStep]:
    """Yield the finite-horizon LQR gains ``(k, K_k)`` one at a time, ``k = T-1, ..., 0``.

    Runs the backward Riccati recursion
    ``K_k = (R_k + B_kᵀS_{k+1}B_k)⁻¹ B_kᵀS_{k+1}A_k``,
    ``S_k = Q_k + A_kᵀS_{k+1}(A_k − B_kK_k)``, ``S_T = Q_f``
    while ``A_k`` streams in from ``provider``; only ``S_{k+1}`` and the current stage are held.

    Parameters
    ----------
    provider : iterable of (k, A_k), callable k -> A_k, or array (T, n, n)
        The plant matrices in backward order (see the module docstring).
    Q, R : scalar, matrix (n, n) / (m, m), or per-step stack (T, ·, ·)
        Stage weights; a scalar c means c·I.
    Qf : scalar or (n, n), optional
        Terminal weight; ``None`` means ``Q`` at the last stage (``Q_{T-1}``).
    B : None, (n, m), (T, n, m) or callable k -> B_k, optional
        Input matrices; ``None`` means ``B_k = I`` (m = n, the activation-steering plant).
        A callable may return ``None`` (identity) at some steps and an (n, n) matrix (e.g.
        zeros: no input at that step) at others, without storing a (T, n, m) stack.
    horizon : int, optional
        T; required for a callable provider, checked otherwise.
    dtype : {'float64', 'float32'} or a numpy / torch dtype, optional
        Precision of the recursion (S and K); default float64.
    device : str or torch.device, optional
        Run the recursion as torch on this device (e.g. ``"cuda"`` while the Jacobians arrive
        on the CPU); default: the first ``A_k``'s own backend and device.

    Yields
    ------
    GainStep
        ``(k, K_k)`` with ``K_k`` of shape (m, n), in the provider's array type.
    """
    final: dict = {}
    for k, _n, K_k in _run(provider, Q, R, Qf=Qf, B=B, horizon=horizon, dtype=dtype, device=device, final=final):
        yield GainStep(k, K_k)


@public_api
def streamed_feedback(
    provider: Any,
    directions: Any,
    Q: Any,
    R: Any,
    *,
    Qf: Any = None,
    B: Any = None,
    horizon: int | None = None,
    dtype: Any = None,
    device: Any = None,
    progress: bool = False,
) -> StreamedFeedback:
    """Feedback directions ``w_k = K_k v_k`` of the finite-horizon LQR, in O(n²) memory.

    Same recursion as :func:`iter_lqr_gains`; each gain ``K_k`` is contracted with its direction
    ``v_k`` as soon as it is computed and then dropped, so neither the gains (T·m·n) nor the
    cost-to-go matrices (T·n²) are ever stored.  This is the quantity A-LQR steering needs
    (``u_k = (β*_k − v_kᵀz_k) w_k``).

    Parameters
    ----------
    provider : iterable of (k, A_k), callable k -> A_k, or array (T, n, n)
        The plant matrices in backward order.
    directions : array (T, n)
        ``v_k`` per stage (rows may be zero, giving ``w_k = 0``).
    Q, R, Qf, B, horizon, dtype, device : see :func:`iter_lqr_gains`
        Weights, input matrices, horizon check, precision and device of the recursion.
    progress : bool
        Show a tqdm progress bar over the stages (needs ``horizon`` or a sized provider).

    Returns
    -------
    StreamedFeedback
        ``w`` (T, m) and ``S0`` (n, n), in the provider's array type and ``dtype``.
    """
    d_shape = _shape(directions)
    if len(d_shape) != 2:
        raise DimensionError(f"directions: expected shape (T, n), found {d_shape}")
    T = d_shape[0]
    if horizon is not None and horizon != T:
        raise DimensionError(f"directions: expected {horizon} rows (horizon), found {T}")
    final: dict = {}
    rows: list[Any] = [None] * T
    gen = _run(provider, Q, R, Qf=Qf, B=B, horizon=T, dtype=dtype, device=device, final=final)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=T, desc="streamed Riccati", unit="layer")
    try:
        for k, n, K_k in gen:
            if d_shape[1] != n:
                raise DimensionError(f"directions: expected shape ({T}, {n}), found {d_shape}")
            bk = get_backend(K_k)
            v = as_array(directions[k], f"directions[{k}]", bk, dtype=bk.dtype_of(K_k), device=bk.device_of(K_k))
            rows[k] = K_k @ v
            if bar is not None:
                bar.update(1)
    finally:
        gen.close()
        if bar is not None:
            bar.close()
    w = get_backend(rows[0]).stack(rows)
    return StreamedFeedback(w, final["S0"])


# ----------------------------------------------------------------------------------------------
# memory model (bytes), used by the benchmarks and the docs
# ----------------------------------------------------------------------------------------------


def dense_memory_bytes(T: int, n: int, itemsize: int = 8, *, m: int | None = None) -> int:
    """Bytes held by the dense path's inputs and outputs: ``A`` (T,n,n), ``K`` (T,m,n), ``S`` (T+1,n,n).

    Excludes the per-step temporaries (a few n×n matrices), which both paths share.
    """
    m = n if m is None else m
    return itemsize * (T * n * n + T * m * n + (T + 1) * n * n)


def streamed_memory_bytes(T: int, n: int, itemsize: int = 8, *, m: int | None = None) -> int:
    """Bytes held by the streamed path: ``S_{k+1}``, ``A_k``, ``K_k``, ``S_k`` and ``w`` (T, m).

    Excludes the per-step temporaries, as :func:`dense_memory_bytes` does.
    """
    m = n if m is None else m
    return itemsize * (3 * n * n + m * n + T * m)
