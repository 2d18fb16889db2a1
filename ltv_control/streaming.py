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

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from ltv_control._exceptions import ArgumentError, DimensionError, PropertyError

__all__ = [
    "GainStep",
    "StreamedFeedback",
    "iter_lqr_gains",
    "streamed_feedback",
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
# small backend helpers (numpy or torch, decided by the first A_k)
# ----------------------------------------------------------------------------------------------


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _resolve_dtype(dtype: Any, torch_backend: bool) -> Any:
    """Map ``dtype`` (None, 'float32'/'float64', numpy or torch dtype) to the backend's dtype."""
    if dtype is None:
        name = "float64"
    elif isinstance(dtype, str):
        name = dtype
    else:
        name = str(dtype).replace("torch.", "")
        if name.startswith("<class 'numpy."):
            name = name[len("<class 'numpy.") : -2]
    if name not in ("float32", "float64"):
        raise ArgumentError(f"dtype: expected float32 or float64 (or None for float64), found {dtype!r}")
    if torch_backend:
        import torch

        return getattr(torch, name)
    return np.dtype(name)


def _as_backend(x: Any, like_torch: bool, dtype: Any, device: Any, name: str) -> Any:
    """Convert ``x`` (array, tensor or nested list) to the backend array with ``dtype``."""
    if like_torch:
        import torch

        if _is_torch(x):
            return x.to(device=device, dtype=dtype)
        return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"{name}: expected a numeric array, found {type(x).__name__}") from exc


def _eye(n: int, like_torch: bool, dtype: Any, device: Any) -> Any:
    if like_torch:
        import torch

        return torch.eye(n, dtype=dtype, device=device)
    return np.eye(n, dtype=dtype)


def _all_finite(x: Any) -> bool:
    if _is_torch(x):
        import torch

        return bool(torch.isfinite(x).all())
    return bool(np.isfinite(x).all())


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


# ----------------------------------------------------------------------------------------------
# weights: scalar c (c·I), constant matrix, or per-step stack
# ----------------------------------------------------------------------------------------------


class _Weight:
    """A cost weight given as a scalar, a constant (d, d) matrix or a per-step stack (T', d, d)."""

    def __init__(self, value: Any, name: str, dim: int, steps: int | None) -> None:
        self.name = name
        self.dim = dim
        self.scalar: float | None = None
        self.matrix: Any = None
        self.stack: Any = None
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            c = float(value)
            if not np.isfinite(c):
                raise PropertyError(f"{name}: expected a finite scalar, found {c}")
            self.scalar = c
            return
        if value is None or isinstance(value, bool):
            raise ArgumentError(f"{name}: expected a scalar, a ({dim}, {dim}) matrix or a stack, found {value!r}")
        arr = value
        if not _is_torch(arr):
            arr = np.asarray(arr, dtype=float)
        shape = _shape(arr)
        if len(shape) == 0:
            self.scalar = float(arr)
            if not np.isfinite(self.scalar):
                raise PropertyError(f"{name}: expected a finite scalar, found {self.scalar}")
            return
        if len(shape) == 2 and shape == (dim, dim):
            self.matrix = arr
        elif len(shape) == 3 and shape[1:] == (dim, dim) and (steps is None or shape[0] == steps):
            self.stack = arr
        else:
            expected = f"({dim}, {dim})" + (f" or ({steps}, {dim}, {dim})" if steps else "")
            raise DimensionError(f"{name}: expected a scalar or shape {expected}, found {shape}")
        if not _all_finite(arr):
            raise PropertyError(f"{name}: contains NaN or inf")

    def at(self, k: int, like_torch: bool, dtype: Any, device: Any, cache: dict) -> Any:
        """The weight at step ``k`` as a (dim, dim) backend matrix (constants built once)."""
        if self.stack is not None:
            return _as_backend(self.stack[k], like_torch, dtype, device, self.name)
        key = self.name
        if key not in cache:
            if self.scalar is not None:
                cache[key] = self.scalar * _eye(self.dim, like_torch, dtype, device)
            else:
                cache[key] = _as_backend(self.matrix, like_torch, dtype, device, self.name)
        return cache[key]


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
    final: dict,
) -> Iterator[tuple[int, Any, Any]]:
    """Core generator: yields ``(k, A_k, K_k)``; stores ``S_0`` in ``final['S0']`` at the end."""
    from ltv_control.riccati import riccati_step

    stream = _backward_matrices(provider, horizon)
    S_next = None
    cache: dict = {}
    weights: dict[str, _Weight] = {}
    backend: tuple | None = None
    n = m = steps = None
    if B is not None and not _is_torch(B):
        B = np.asarray(B, dtype=float)
    for k, A_k in stream:
        if backend is None:
            # first stage: fix backend, dtype, device, sizes; validate the weights once
            torch_backend = _is_torch(A_k)
            dt = _resolve_dtype(dtype, torch_backend)
            device = A_k.device if torch_backend else None
            backend = (torch_backend, dt, device)
            shape = _shape(A_k) if hasattr(A_k, "shape") else _shape(np.asarray(A_k))
            if len(shape) != 2 or shape[0] != shape[1]:
                raise DimensionError(f"A[{k}]: expected a square (n, n) matrix, found {shape}")
            n = shape[0]
            steps = k + 1
            if B is None:
                m = n
            else:
                b_shape = _shape(B) if hasattr(B, "shape") else _shape(np.asarray(B))
                if len(b_shape) == 2 and b_shape[0] == n:
                    m = b_shape[1]
                elif len(b_shape) == 3 and b_shape[0] == steps and b_shape[1] == n:
                    m = b_shape[2]
                else:
                    raise DimensionError(
                        f"B: expected None, ({n}, m) or ({steps}, {n}, m), found {b_shape}"
                    )
            weights["Q"] = _Weight(Q, "Q", n, steps)
            weights["R"] = _Weight(R, "R", m, steps)
            weights["Qf"] = weights["Q"] if Qf is None else _Weight(Qf, "Qf", n, None)
            if weights["Qf"].stack is not None and Qf is not None:
                raise DimensionError(f"Qf: expected a scalar or a ({n}, {n}) matrix, found a stack")
            qf = weights["Qf"].at(steps - 1, torch_backend, dt, device, {})
            S_next = qf
        torch_backend, dt, device = backend
        A = _as_backend(A_k, torch_backend, dt, device, f"A[{k}]")
        if _shape(A) != (n, n):
            raise DimensionError(f"A[{k}]: expected shape ({n}, {n}), found {_shape(A)}")
        if not _all_finite(A):
            raise PropertyError(f"A[{k}]: contains NaN or inf")
        B_k = None
        if B is not None:
            b = B if len(_shape(B)) == 2 else B[k]
            B_k = _as_backend(b, torch_backend, dt, device, "B")
        Q_k = weights["Q"].at(k, torch_backend, dt, device, cache)
        R_k = weights["R"].at(k, torch_backend, dt, device, cache)
        K_k, S_k = riccati_step(S_next, A, B_k, Q_k, R_k)
        del A_k
        S_next = S_k  # the previous S_{k+1} is released here
        yield k, A, K_k
        del A, K_k
    final["S0"] = S_next


def iter_lqr_gains(
    provider: Any,
    Q: Any,
    R: Any,
    *,
    Qf: Any = None,
    B: Any = None,
    horizon: int | None = None,
    dtype: Any = None,
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
    B : None, (n, m) or (T, n, m), optional
        Input matrices; ``None`` means ``B_k = I`` (m = n, the activation-steering plant).
    horizon : int, optional
        T; required for a callable provider, checked otherwise.
    dtype : {'float64', 'float32'} or a numpy / torch dtype, optional
        Precision of the recursion (S and K); default float64.

    Yields
    ------
    GainStep
        ``(k, K_k)`` with ``K_k`` of shape (m, n), in the provider's array type.
    """
    final: dict = {}
    for k, _A, K_k in _run(provider, Q, R, Qf=Qf, B=B, horizon=horizon, dtype=dtype, final=final):
        yield GainStep(k, K_k)


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
    Q, R, Qf, B, horizon, dtype
        As in :func:`iter_lqr_gains`.
    progress : bool
        Show a tqdm progress bar over the stages (needs ``horizon`` or a sized provider).

    Returns
    -------
    StreamedFeedback
        ``w`` (T, m) and ``S0`` (n, n), in the provider's array type and ``dtype``.
    """
    d_shape = _shape(directions) if hasattr(directions, "shape") else _shape(np.asarray(directions))
    if len(d_shape) != 2:
        raise DimensionError(f"directions: expected shape (T, n), found {d_shape}")
    T = d_shape[0]
    if horizon is not None and horizon != T:
        raise DimensionError(f"directions: expected {horizon} rows (horizon), found {T}")
    final: dict = {}
    rows: list[Any] = [None] * T
    gen = _run(provider, Q, R, Qf=Qf, B=B, horizon=T, dtype=dtype, final=final)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=T, desc="streamed Riccati", unit="layer")
    try:
        for k, A, K_k in gen:
            if d_shape[1] != _shape(A)[0]:
                raise DimensionError(f"directions: expected shape ({T}, {_shape(A)[0]}), found {d_shape}")
            v = directions[k]
            if _is_torch(K_k):
                import torch

                v = torch.as_tensor(np.asarray(v) if not _is_torch(v) else v).to(device=K_k.device, dtype=K_k.dtype)
            else:
                v = np.asarray(v.detach().cpu().numpy() if _is_torch(v) else v, dtype=K_k.dtype)
            rows[k] = K_k @ v
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if _is_torch(rows[0]):
        import torch

        w = torch.stack(rows)
    else:
        w = np.stack(rows)
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
