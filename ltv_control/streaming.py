"""Streamed finite-horizon LQR synthesis in O(n²) memory.

The dense path (:func:`ltv_control.finite_horizon_lqr`) holds the whole plant ``A (T, n, n)`` and
returns every gain ``K (T, m, n)`` and cost-to-go ``S (T+1, n, n)``: at Llama-3-8B size
(T = 32, n = 4096) that is about 6 GiB in float32 before any temporaries.  A controller such as
A-LQR needs far less: only ``w_k = K_k v_k`` for one direction ``v_k`` per step.

This module runs the same backward Riccati recursion (one :func:`ltv_control.riccati.riccati_step`
per step, Cholesky solves, symmetrised iterates)

.. math::

    K_k = (R_k + B_k^T S_{k+1} B_k)^{-1} B_k^T S_{k+1} A_k, \\qquad
    S_k = Q_k + A_k^T S_{k+1} (A_k - B_k K_k), \\qquad S_T = Q_f,

while the plant matrices ``A_k`` arrive one at a time in backward order (``k = T-1, ..., 0``)
from a *provider*, so that at any moment only ``S_{k+1}``, ``A_k``, ``K_k`` and ``S_k`` (plus the
step's temporaries) are alive: peak memory is O(n²), independent of T.

Providers
---------
A provider of the plant matrices is one of

* an iterable of ``(k, A_k)`` pairs with ``k = T-1, T-2, ..., 0`` in that order (for example
  ``LLMPlant.iter_jacobians(prompts, layers=reversed(range(T)))``); ``horizon`` is then optional
  and checked when given;
* a callable ``k -> A_k`` (``horizon`` required);
* a stacked array ``(T, n, n)`` (convenient for tests; it is not streamed, of course).

Each ``A_k`` is a numpy array or a torch tensor; the backend and device are taken from the first
``A_k``, and results come back in that array type.  Torch is imported only when a torch tensor
arrives: ``import ltv_control.streaming`` does not import torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from ltv_control._exceptions import ArgumentError, DimensionError
from ltv_control._validation import as_array, as_terminal_weight, as_weight, public_api, resolve_dtype

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
# memory-lean step for the activation-steering case (B = I, Q = qI, R = rI)
# ----------------------------------------------------------------------------------------------


def scaled_identity_step(S_next: Any, A: Any, q: float, r: float, *, step: Any = None) -> tuple[Any, Any]:
    """One Riccati step for ``B = I``, ``Q = q·I``, ``R = r·I``, with few ``n × n`` temporaries.

    Same equations as :func:`ltv_control.riccati.riccati_step` (``G = rI + S``, ``G = LLᵀ``,
    ``W = L⁻¹ S A``, ``K = L⁻ᵀ W``, ``S_k = qI + Aᵀ S A − Wᵀ W``, symmetrised), but ``Q`` and
    ``R`` are never materialised as matrices and intermediate products are updated in place, so
    the step holds about 7 ``n × n`` arrays (inputs included) instead of about 15.  numpy or torch
    (any device); unbatched ``(n, n)`` only.

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
        When ``S_{k+1} + rI`` is not positive definite.
    """
    from ltv_control._exceptions import NumericalError

    where = "" if step is None else f" at step {step}"
    if type(S_next).__module__.split(".")[0] == "torch":
        import torch

        G = S_next.clone()
        G.diagonal().add_(r)
        L, info = torch.linalg.cholesky_ex(G)
        del G
        if int(info) != 0 or not bool(torch.isfinite(L.diagonal()).all()):
            raise NumericalError(f"Riccati recursion{where}: S + rI is not positive definite "
                                 "(Cholesky factorisation failed)")
        SA = S_next @ A
        S_new = A.mT @ SA
        W = torch.linalg.solve_triangular(L, SA, upper=False)
        del SA
        K = torch.linalg.solve_triangular(L.mT, W, upper=True)
        del L
        S_new.sub_(W.mT @ W)
        del W
        S_new.diagonal().add_(q)
        S_new.add_(S_new.mT.clone()).mul_(0.5)
        return K, S_new
    import scipy.linalg

    G = S_next.copy()
    G[np.diag_indices_from(G)] += r
    try:
        L = scipy.linalg.cholesky(G, lower=True, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError:
        L = None
    del G
    if L is None or not np.isfinite(np.diagonal(L)).all():
        raise NumericalError(f"Riccati recursion{where}: S + rI is not positive definite "
                             "(Cholesky factorisation failed)")
    SA = S_next @ A
    S_new = A.T @ SA
    W = scipy.linalg.solve_triangular(L, SA, lower=True, overwrite_b=True, check_finite=False)
    del SA
    K = scipy.linalg.solve_triangular(L, W, lower=True, trans=1, check_finite=False)
    del L
    S_new -= W.T @ W
    del W
    S_new[np.diag_indices_from(S_new)] += q
    S_new += S_new.T.copy()
    S_new *= 0.5
    return K, S_new


# ----------------------------------------------------------------------------------------------
# the streamed recursion
# ----------------------------------------------------------------------------------------------


def _run(
    provider: Any,
    Q: Any,
    R: Any,
    *,
    Qf: Any,
    B: Any,
    horizon: int | None,
    dtype: Any,
    device: Any,
    final: dict,
) -> Iterator[tuple[int, Any, Any]]:
    """Core generator: yields ``(k, A_k, K_k)``; stores ``S_0`` in ``final['S0']`` at the end.

    Backend, device and compute dtype are fixed by the first ``A_k``; the weights are validated
    once (symmetry, PSD ``Q``/``Qf``, PD ``R``) by the core's validation gatekeeper.
    """
    from ltv_control.backends import get_backend, get_torch_backend
    from ltv_control.riccati import riccati_step

    stream = _backward_matrices(provider, horizon)
    try:
        S_next = None
        for k, A_k in stream:
            if S_next is None:
                # first stage: fix backend, dtype, device, sizes; validate the weights once
                if device is None:
                    bk = get_backend(A_k)
                    device = bk.device_of(A_k) if bk.is_array(A_k) else None
                else:
                    import torch

                    bk = get_torch_backend()
                    device = torch.device(device)
                dt = resolve_dtype(dtype, bk, A_k if bk.is_array(A_k) else None)
                shape = _shape(A_k)
                if len(shape) != 2 or shape[0] != shape[1]:
                    raise DimensionError(f"A[{k}]: expected a square (n, n) matrix, found {shape}")
                n = shape[0]
                steps = k + 1
                if callable(B):
                    B_fn = B
                elif B is not None:
                    B_arr = as_array(B, "B", bk, dtype=dt, device=device)
                    if B_arr.ndim == 2:
                        B_fn = lambda _k, _B=B_arr: _B  # noqa: E731
                    else:
                        B_fn = lambda _k, _B=B_arr: _B[_k]  # noqa: E731
                        if B_arr.ndim != 3 or _shape(B_arr)[0] != steps:
                            raise DimensionError(
                                f"B: expected None, ({n}, m), ({steps}, {n}, m) or a callable, found {_shape(B_arr)}"
                            )
                else:
                    B_fn = lambda _k: None  # noqa: E731
                B_first = B_fn(k)
                m = n if B_first is None else _shape(B_first)[-1]
                common = dict(horizon=steps, backend=bk, dtype=dt, device=device)
                # scalar Q and R: validated here, materialised as matrices only if a step needs them
                lean = _is_scalar(Q) and _is_scalar(R)
                weights: dict = {}

                def weight_matrices(k: int) -> tuple[Any, Any]:
                    if "Q" not in weights:
                        weights["Q"] = as_weight(Q, "Q", rows=n, definiteness="psd", **common)
                        weights["R"] = as_weight(R, "R", rows=m, definiteness="pd", **common)
                        if weights["Q"].batch_shape or weights["R"].batch_shape:
                            raise DimensionError("Q, R: batched weights are not supported by the streamed path")
                    return weights["Q"].at(k), weights["R"].at(k)

                if lean:
                    as_weight(Q, "Q", rows=1, definiteness="psd", **common)
                    as_weight(R, "R", rows=1, definiteness="pd", **common)
                    q_scalar, r_scalar = float(Q), float(R)
                else:
                    weight_matrices(steps - 1)
                if Qf is None:
                    S_next = q_scalar * bk.eye(n, dtype=dt, device=device) if lean else weights["Q"].last()
                else:
                    S_next = as_terminal_weight(Qf, "Qf", n=n, backend=bk, dtype=dt, device=device)
                    if S_next.ndim != 2:
                        raise DimensionError(f"Qf: expected a scalar or a ({n}, {n}) matrix, found {_shape(S_next)}")
            A = as_array(A_k, f"A[{k}]", bk, dtype=dt, device=device)
            del A_k
            if _shape(A) != (n, n):
                raise DimensionError(f"A[{k}]: expected shape ({n}, {n}), found {_shape(A)}")
            B_k = B_fn(k)
            if B_k is not None:
                B_k = as_array(B_k, f"B[{k}]", bk, dtype=dt, device=device)
                if _shape(B_k) != (n, m):
                    raise DimensionError(f"B[{k}]: expected shape ({n}, {m}), found {_shape(B_k)}")
            if lean and B_k is None:
                K_k, S_k = scaled_identity_step(S_next, A, q_scalar, r_scalar, step=k)
            else:
                Q_k, R_k = weight_matrices(k)
                K_k, S_k = riccati_step(S_next, A, B_k, Q_k, R_k, step=k)
                del Q_k, R_k
            S_next = S_k  # the previous S_{k+1} is released here
            del S_k
            yield k, A, K_k
            del A, K_k
        final["S0"] = S_next
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
    for k, _A, K_k in _run(provider, Q, R, Qf=Qf, B=B, horizon=horizon, dtype=dtype, device=device, final=final):
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
    from ltv_control.backends import get_backend

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
        for k, A, K_k in gen:
            if d_shape[1] != _shape(A)[0]:
                raise DimensionError(f"directions: expected shape ({T}, {_shape(A)[0]}), found {d_shape}")
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
