"""Discrete linear time-varying systems ``x_{k+1} = A_k x_k + B_k u_k + c_k``."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ltv_control._exceptions import ArgumentError, DimensionError, PropertyError
from ltv_control._validation import (
    all_finite,
    as_array,
    as_host_float64,
    as_initial_state,
    as_system_arrays,
    as_vector_stack,
    convert_broadcast,
    format_shape,
    public_api,
    refuse_nonfinite_result,
    resolve_device,
    resolve_storage_dtype,
)
from ltv_control.backends import backend_by_name, get_backend

__all__ = ["LTVSystem"]

_MAX_ELEMENTS = 2 ** 62
"""Largest element count of a (broadcast) stack: beyond it numpy/torch cannot index a view."""


def _refuse_unaddressable(T: int, constants: list) -> None:
    """Refuse a horizon whose broadcast stacks could not even be indexed (no allocation)."""
    for x in constants:
        per_step = int(np.prod([int(d) for d in x.shape], dtype=object))
        if T * per_step >= _MAX_ELEMENTS:
            raise DimensionError(f"horizon: T = {T} is too large: a stack of {T} × "
                                 f"{format_shape(tuple(x.shape))} would have more than 2**62 "
                                 "elements")


class LTVSystem:
    """A discrete LTV system ``x_{k+1} = A_k x_k + B_k u_k + c_k``, ``k = 0, …, T−1``.

    Parameters
    ----------
    A : array (*batch, T, n, n)
        State matrices, one per step (numpy array or torch tensor). A single
        ``(n, n)`` matrix is refused: use :meth:`LTVSystem.constant` to repeat a
        time-invariant model, so that ``T == n`` is never ambiguous.
    B : array (*batch, T, n, m) or None, default None
        Input matrices; ``None`` means ``B_k = I`` (``m = n``, the activation-steering
        plant where the input is added to the state).
    c : array (*batch, T, n) or None, default None
        Affine drift; ``None`` means no drift.

    Notes
    -----
    Arrays are kept in the caller's array type (numpy or torch, same device);
    integer input is converted to float64. Batch dimensions of ``A``, ``B`` and
    ``c`` broadcast. Non-finite values raise :class:`~ltv_control.PropertyError`,
    wrong shapes :class:`~ltv_control.DimensionError`.

    Examples
    --------
    >>> import numpy as np, ltv_control as lc
    >>> sys = lc.LTVSystem(np.stack([np.eye(2)] * 5))
    >>> sys.horizon, sys.n_states, sys.n_inputs
    (5, 2, 2)
    """

    @public_api
    def __init__(self, A: Any, B: Any = None, c: Any = None) -> None:
        A, B, c, backend, batch = as_system_arrays(A, B, c)
        self._A = A
        self._B = B
        self._c = c
        self._backend = backend
        self._batch_shape = batch
        self._statespace_cache: dict = {}

    # ------------------------------------------------------------------ properties
    @property
    def A(self) -> Any:
        """State matrices, ``(*batch, T, n, n)``."""
        return self._A

    @property
    def B(self) -> Any:
        """Input matrices ``(*batch, T, n, m)``, or ``None`` when ``B_k = I``."""
        return self._B

    @property
    def c(self) -> Any:
        """Affine drift ``(*batch, T, n)``, or ``None`` when absent."""
        return self._c

    @property
    def horizon(self) -> int:
        """Number of steps ``T``."""
        return int(self._A.shape[-3])

    @property
    def n_states(self) -> int:
        """State dimension ``n``."""
        return int(self._A.shape[-1])

    @property
    def n_inputs(self) -> int:
        """Input dimension ``m`` (``n`` when ``B`` is the identity)."""
        return self.n_states if self._B is None else int(self._B.shape[-1])

    @property
    def backend(self) -> str:
        """``"numpy"`` or ``"torch"``."""
        return self._backend.name

    @property
    def batch_shape(self) -> tuple:
        """Broadcast batch dimensions of ``A``, ``B`` and ``c`` (``()`` when unbatched)."""
        return self._batch_shape

    @property
    def dtype(self) -> Any:
        """The dtype of ``A``."""
        return self._A.dtype

    @property
    def device(self) -> Any:
        """The device of ``A`` (``"cpu"`` for numpy)."""
        return self._backend.device_of(self._A)

    def __repr__(self) -> str:
        parts = [f"T={self.horizon}", f"n={self.n_states}",
                 f"m={self.n_inputs}" + (" (B=I)" if self._B is None else "")]
        if self._c is not None:
            parts.append("affine")
        if self._batch_shape:
            parts.append(f"batch={self._batch_shape}")
        parts.append(f"backend={self.backend}")
        parts.append(f"dtype={self.dtype}")
        return f"LTVSystem({', '.join(parts)})"

    # ------------------------------------------------------------------ dynamics
    def _input_term(self, k: int, u: Any) -> Any:
        if self._B is None:
            return u
        return self._backend.matvec(self._B[..., k, :, :], u)

    @public_api
    def simulate(self, x0: Any, u: Any = None, *, K: Any = None, k: Any = None) -> Any:
        """Roll the system out from ``x0``.

        Open loop: ``x_{j+1} = A_j x_j + B_j u_j + c_j``. Closed loop (``K`` given):
        ``u_j = −K_j x_j + k_j`` (``k`` defaults to zero).

        Parameters
        ----------
        x0 : array (n,) or (*batch, n)
            Initial state.
        u : array (T, m) or (*batch, T, m), optional
            Open-loop inputs; ``None`` (and no ``K``) means zero input.
        K : array (T, m, n) or (*batch, T, m, n), optional
            Feedback gains (sign convention ``u = −Kx``). Exclusive with ``u``.
        k : array (m,), (T, m) or (*batch, T, m), optional
            Feedforward terms of the closed-loop policy; requires ``K``.

        Returns
        -------
        x : array (*batch, T+1, n)
            States ``x_0 … x_T``, in the promoted floating dtype of the inputs.

        Notes
        -----
        Differentiability: with a torch system, the trajectory is differentiable in x0, u, K,
        k, A, B and c (``gradcheck``-tested in ``tests/test_gradients.py``).

        Raises
        ------
        NumericalError
            The states overflow the dtype (inf/NaN from finite input); the message names
            the first step ``k`` whose result ``x_{k+1}`` is not finite and the batch member.
        """
        be = self._backend
        T, n, m = self.horizon, self.n_states, self.n_inputs
        if u is not None and K is not None:
            raise ArgumentError("simulate(): give either an open-loop input u or a feedback K "
                                "(with optional k), not both")
        if k is not None and K is None:
            raise ArgumentError("simulate(): k is the feedforward of u = -K x + k and requires K; "
                                "pass an open-loop input as u")
        device = None if be.name == "numpy" else self._A.device
        x0 = as_initial_state(x0, "x0", n=n, backend=be, dtype=None, device=device,
                              batch_shape=self._batch_shape)
        batches = {"x0": tuple(x0.shape[:-1])}
        if u is not None:
            u = as_vector_stack(u, "u", length=T, dim=m, backend=be, dtype=None, device=device,
                                allow_constant=False, batch_shape=self._batch_shape)
            batches["u"] = tuple(u.shape[:-2])
        if K is not None:
            K = as_array(K, "K", be, device=device)
            if K.ndim < 3 or tuple(K.shape[-3:]) != (T, m, n):
                raise DimensionError(f"K: expected (T={T}, m={m}, n={n}) or (*batch, {T}, {m}, {n}); "
                                     f"found shape {format_shape(K.shape)}")
            batches["K"] = tuple(K.shape[:-3])
            if k is not None:
                k = as_vector_stack(k, "k", length=T, dim=m, backend=be, dtype=None, device=device,
                                    batch_shape=self._batch_shape)
                batches["k"] = tuple(k.shape[:-2])
        batch = self._common_batch(batches)
        present = [a for a in (self._A, self._B, self._c, x0, u, K, k) if a is not None]
        dtype = be.result_dtype(*present)
        A = be.astype(self._A, dtype)
        B = None if self._B is None else be.astype(self._B, dtype)
        c = None if self._c is None else be.astype(self._c, dtype)
        x = be.broadcast_to(be.astype(x0, dtype), tuple(batch) + (n,))
        if u is not None:
            u = be.astype(u, dtype)
        if K is not None:
            K = be.astype(K, dtype)
            if k is not None:
                k = be.astype(k, dtype)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
            x = self._rollout(x, u, K, k, A, B, c, tuple(batch))
        refuse_nonfinite_result(x, "simulate(): the state x_{k+1}", be, step_offset=-1,
                                hint=f"; the trajectory grows beyond the range of {dtype}")
        return x

    def _common_batch(self, batches: dict) -> tuple:
        """Broadcast the system's batch shape with each argument's; DimensionError naming them."""
        batch = self._batch_shape
        for name, shape in batches.items():
            try:
                batch = tuple(self._backend.broadcast_shapes(batch, shape))
            except (ValueError, RuntimeError):
                raise DimensionError(
                    f"{name}: batch dimensions {format_shape(shape)} do not broadcast with "
                    f"{format_shape(batch)} (the system's and the other arguments')") from None
        return batch

    def _rollout(self, x: Any, u: Any, K: Any, k: Any, A: Any, B: Any, c: Any, batch: tuple) -> Any:
        """``x_{j+1} = A_j x_j + B_j u_j + c_j`` for ``j < T``; returns the stacked states."""
        be = self._backend
        n = self.n_states
        states = [x]
        for j in range(self.horizon):
            if K is not None:
                uj = -be.matvec(K[..., j, :, :], x)
                if k is not None:
                    uj = uj + k[..., j, :]
            elif u is not None:
                uj = u[..., j, :]
            else:
                uj = None
            x_next = be.matvec(A[..., j, :, :], x)
            if uj is not None:
                x_next = x_next + (uj if B is None else be.matvec(B[..., j, :, :], uj))
            if c is not None:
                x_next = x_next + c[..., j, :]
            x = be.broadcast_to(x_next, tuple(batch) + (n,))
            states.append(x)
        return be.stack(states, axis=-2)

    @public_api
    def closed_loop(self, K: Any) -> Any:
        """The closed-loop matrices ``Â_k = A_k − B_k K_k``.

        Parameters
        ----------
        K : array (T, m, n) or (*batch, T, m, n)
            Feedback gains (``u = −Kx``).

        Returns
        -------
        A_cl : array (*batch, T, n, n)

        Raises
        ------
        NumericalError
            ``A_k − B_k K_k`` overflows the dtype (the message names the step and batch member).
        """
        be = self._backend
        T, n, m = self.horizon, self.n_states, self.n_inputs
        device = None if be.name == "numpy" else self._A.device
        K = as_array(K, "K", be, device=device)
        if K.ndim < 3 or tuple(K.shape[-3:]) != (T, m, n):
            raise DimensionError(f"K: expected (T={T}, m={m}, n={n}) or (*batch, {T}, {m}, {n}); "
                                 f"found shape {format_shape(K.shape)}")
        self._common_batch({"K": tuple(K.shape[:-3])})
        dtype = be.result_dtype(self._A, K)
        A = be.astype(self._A, dtype)
        K = be.astype(K, dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            A_cl = A - K if self._B is None else A - be.matmul(be.astype(self._B, dtype), K)
        refuse_nonfinite_result(A_cl, "closed_loop(): A_k - B_k K_k", be, item_ndim=2,
                                hint=f"; the gains are too large for {dtype}")
        return A_cl

    @public_api
    def project(self, bases: Any) -> "LTVSystem":
        """Project onto per-step orthonormal bases.

        ``A_r,k = U_{k+1}ᵀ A_k U_k``, ``B_r,k = U_{k+1}ᵀ B_k`` (``U_{k+1}ᵀ`` when
        ``B = I``, so ``m`` stays ``n``) and ``c_r,k = U_{k+1}ᵀ c_k``.

        Parameters
        ----------
        bases : array (T+1, n, r) or (*batch, T+1, n, r)
            Orthonormal columns per step (``U_kᵀU_k = I_r``, checked to
            ``max(1e-6, 100·n·eps)`` in Frobenius norm).

        Returns
        -------
        LTVSystem
            The reduced system with ``r`` states.

        Raises
        ------
        NumericalError
            A projected matrix overflows the dtype (the message names the step).
        """
        be = self._backend
        T, n = self.horizon, self.n_states
        device = None if be.name == "numpy" else self._A.device
        U = as_array(bases, "bases", be, device=device)
        if U.ndim < 3 or U.shape[-3] != T + 1 or U.shape[-2] != n or U.shape[-1] < 1:
            raise DimensionError(f"bases: expected (T+1={T + 1}, n={n}, r) or (*batch, {T + 1}, {n}, r); "
                                 f"found shape {format_shape(U.shape)}")
        self._common_batch({"bases": tuple(U.shape[:-3])})
        r = U.shape[-1]
        if r > n:
            raise DimensionError(f"bases: expected r <= n = {n} orthonormal columns; found r = {r}")
        dtype = be.result_dtype(self._A, U)
        U = be.astype(U, dtype)
        gram = be.matmul(be.mT(U), U) - be.eye(r, dtype=dtype, device=device)
        err = float(np.max(be.to_host(be.frobenius(gram))))
        eps = float(np.finfo(np.float32 if "32" in str(dtype) or "16" in str(dtype) else np.float64).eps)
        if err > max(1e-6, 100 * n * eps):
            raise PropertyError(f"bases: expected orthonormal columns (UᵀU = I), found "
                                f"‖UᵀU − I‖_F = {err:.3g}")
        Ut_next = be.mT(U[..., 1:, :, :])
        with np.errstate(over="ignore", invalid="ignore"):
            A_r = be.matmul(be.matmul(Ut_next, be.astype(self._A, dtype)), U[..., :-1, :, :])
            B_r = Ut_next if self._B is None else be.matmul(Ut_next, be.astype(self._B, dtype))
            c_r = None if self._c is None else be.matvec(Ut_next, be.astype(self._c, dtype))
        for label, M, item in (("A_r", A_r, 2), ("B_r", B_r, 2), ("c_r", c_r, 1)):
            if M is not None:
                refuse_nonfinite_result(M, f"project(): the projected {label}", be, item_ndim=item,
                                        hint=f"; the system's matrices are too large for {dtype}")
        if self._B is None:
            B_r = be.broadcast_to(B_r, tuple(A_r.shape[:-2]) + (r, n))
        return LTVSystem(A_r, B_r, c_r)

    # ------------------------------------------------------------------ conversions
    @public_api
    def to(self, dtype: Any = None, device: Any = None) -> "LTVSystem":
        """A copy with arrays in ``dtype`` and/or on ``device``.

        Parameters
        ----------
        dtype : numpy dtype, torch dtype or str, optional
            Target floating dtype (``None`` keeps the current one): float16, float32,
            float64, or bfloat16 for torch systems. Half precisions are for storage only:
            the recursions (LQR, tracking) compute in float32 or float64 (``dtype=``).
        device : str or torch.device, optional
            Target torch device. Given for a numpy system, the arrays become torch
            tensors on that device (requires torch).

        Returns
        -------
        LTVSystem

        Raises
        ------
        ArgumentError
            An integer, boolean, complex or unknown dtype (a cast would truncate the
            matrices), or a device that does not exist here (``"cuda"`` without CUDA, an
            unknown name, ``"meta"``).
        PropertyError
            A value overflows the target dtype (e.g. ``1e5`` in float16).
        """
        be = self._backend
        if device is not None and be.name == "numpy":
            try:
                be = backend_by_name("torch")
            except ImportError:
                raise ArgumentError(f"device: {device!r} needs torch, which is not installed") from None
        device = resolve_device(device, be)
        dtype = resolve_storage_dtype(dtype, be)
        arrays = []
        for name, x in (("A", self._A), ("B", self._B), ("c", self._c)):
            if x is None:
                arrays.append(None)
                continue
            try:  # broadcast views (LTVSystem.constant) stay views
                y = convert_broadcast(x, self._backend, be, dtype=dtype, device=device)
            except (TypeError, ValueError) as exc:
                raise ArgumentError(f"to(): cannot convert to dtype={dtype!r}, device={device!r} "
                                    f"({exc})") from None
            if not all_finite(y, be):
                raise PropertyError(f"{name}: values overflow the target dtype {dtype}; "
                                    "keep a wider dtype or rescale the system")
            arrays.append(y)
        return LTVSystem(*arrays)

    def numpy(self) -> "LTVSystem":
        """A copy whose arrays are numpy arrays (host memory; half precisions become float32)."""
        be, host = self._backend, backend_by_name("numpy")
        arrays = [None if x is None else convert_broadcast(x, be, host)  # half precisions -> float32
                  for x in (self._A, self._B, self._c)]
        return LTVSystem(*arrays)

    def __getitem__(self, index: Any):
        """``sys[k]`` (or ``sys[b…, k]`` when batched): python-control ``StateSpace(A_k, B_k, I, 0, dt=True)``.

        Built on access (python-control's constructor is slow for large ``n``) and
        cached. The drift ``c_k`` has no StateSpace counterpart and is dropped.
        """
        import control

        idx = index if isinstance(index, tuple) else (index,)
        if len(idx) != len(self._batch_shape) + 1 or not all(
                isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in idx):
            raise ArgumentError(
                f"LTVSystem[...]: expected {len(self._batch_shape) + 1} integer index(es) "
                f"(batch indices then the step k), found {index!r}")
        T = self.horizon
        k = int(idx[-1])
        if not -T <= k < T:
            raise IndexError(f"step {k} out of range for horizon T = {T}")
        k %= T
        for i, (b, size) in enumerate(zip(idx[:-1], self._batch_shape)):
            if not -size <= b < size:
                raise IndexError(f"batch index {b} out of range for batch dimension {i} of size {size}")
        key = tuple(int(b) % s for b, s in zip(idx[:-1], self._batch_shape)) + (k,)
        if key in self._statespace_cache:
            return self._statespace_cache[key]
        be = self._backend
        n, m = self.n_states, self.n_inputs
        A = be.to_numpy(be.broadcast_to(self._A, self._batch_shape + self._A.shape[-3:])[key])
        A = np.asarray(A, dtype=np.float64)
        if self._B is None:
            B = np.eye(n)
        else:
            Bfull = be.broadcast_to(self._B, self._batch_shape + tuple(self._B.shape[-3:]))
            B = np.asarray(be.to_numpy(Bfull[key]), dtype=np.float64)
        ss = control.StateSpace(A, B, np.eye(n), np.zeros((n, m)), dt=True)
        self._statespace_cache[key] = ss
        return ss

    # ------------------------------------------------------------------ constructors
    @classmethod
    @public_api
    def constant(cls, A: Any, B: Any = None, horizon: Any = None, *, c: Any = None) -> "LTVSystem":
        """Repeat a time-invariant model over ``horizon`` steps (explicit broadcast).

        Parameters
        ----------
        A : array (n, n) or (*batch, n, n)
            State matrix.
        B : array (n, m) or (*batch, n, m) or None
            Input matrix; ``None`` means ``B = I``.
        horizon : int
            Number of steps ``T >= 1``.
        c : array (n,) or (*batch, n), optional
            Constant affine drift.

        Returns
        -------
        LTVSystem
            With ``A_k = A`` for all ``k`` (broadcast views, no copies).

        Raises
        ------
        PropertyError
            Non-finite ``A``, ``B`` or ``c``: checked on the constant matrices before the
            broadcast, so nothing of size ``T`` is ever allocated (a horizon of ``10**12``
            costs no memory).
        DimensionError
            ``horizon < 1``, or so large that a stack would exceed ``2**62`` elements (numpy
            and torch cannot index such a view).
        ArgumentError
            ``horizon`` missing or not an int (a bool or a float is refused).
        """
        if horizon is None:
            raise ArgumentError("LTVSystem.constant(): horizon (the number of steps T) is required")
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)):
            raise ArgumentError(f"horizon: expected a positive int, found {type(horizon).__name__}")
        T = int(horizon)
        if T < 1:
            raise DimensionError(f"horizon: expected T >= 1, found {T}")
        be = get_backend(A, B, c)
        device = next((x.device for x in (A, B, c) if be.name == "torch" and be.is_array(x)), None)
        # finiteness is checked here, on the constant matrices, before any broadcast
        A = as_array(A, "A", be, device=device)
        if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
            raise DimensionError(f"A: expected a square matrix (n, n) or (*batch, n, n); found "
                                 f"shape {format_shape(A.shape)}")
        n = A.shape[-1]
        if B is not None:
            B = as_array(B, "B", be, device=device)
            if B.ndim < 2 or B.shape[-2] != n:
                raise DimensionError(f"B: expected (n={n}, m) or (*batch, {n}, m); found shape "
                                     f"{format_shape(B.shape)}")
        if c is not None:
            c = as_array(c, "c", be, device=device)
            if c.ndim < 1 or c.shape[-1] != n:
                raise DimensionError(f"c: expected (n={n},) or (*batch, {n}); found shape "
                                     f"{format_shape(c.shape)}")
        _refuse_unaddressable(T, [x for x in (A, B, c) if x is not None])
        A_st = be.broadcast_to(A[..., None, :, :], tuple(A.shape[:-2]) + (T, n, n))
        B_st = None if B is None else be.broadcast_to(
            B[..., None, :, :], tuple(B.shape[:-2]) + (T,) + tuple(B.shape[-2:]))
        c_st = None if c is None else be.broadcast_to(c[..., None, :], tuple(c.shape[:-1]) + (T, n))
        return cls(A_st, B_st, c_st)

    @classmethod
    @public_api
    def from_statespace(cls, systems: Sequence[Any]) -> "LTVSystem":
        """Build an LTV system from a list of discrete-time python-control models.

        Parameters
        ----------
        systems : sequence of control.StateSpace
            ``T`` discrete-time models with equal state and input sizes; model
            ``k`` gives ``A_k`` and ``B_k`` (``C`` and ``D`` are ignored).

        Returns
        -------
        LTVSystem
            numpy-backed, float64.
        """
        import control

        if isinstance(systems, control.StateSpace) or not isinstance(systems, (list, tuple)):
            raise ArgumentError("systems: expected a list of control.StateSpace models, found "
                                f"{type(systems).__name__}")
        if not systems:
            raise DimensionError("systems: expected at least one model (T >= 1), found an empty list")
        A_list, B_list = [], []
        for k, s in enumerate(systems):
            if not isinstance(s, control.StateSpace):
                raise ArgumentError(f"systems[{k}]: expected a control.StateSpace, found "
                                    f"{type(s).__name__}")
            if s.dt == 0:
                raise PropertyError(f"systems[{k}]: expected a discrete-time model (dt != 0), "
                                    "found a continuous-time one")
            A_list.append(as_host_float64(s.A, f"systems[{k}].A"))  # complex refused, not truncated
            B_list.append(as_host_float64(s.B, f"systems[{k}].B"))
        n, m = A_list[0].shape[0], B_list[0].shape[1]
        for k, (a, b) in enumerate(zip(A_list, B_list)):
            if a.shape != (n, n) or b.shape != (n, m):
                raise DimensionError(f"systems[{k}]: expected A ({n}, {n}) and B ({n}, {m}) like "
                                     f"systems[0]; found A {a.shape} and B {b.shape}")
        return cls(np.stack(A_list), np.stack(B_list))
