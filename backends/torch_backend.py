"""PyTorch array backend: the same operations as :mod:`ltv_control.backends.numpy_backend`.

Tensors keep their device (CPU, CUDA, ROCm, MPS); batched linear algebra uses
``torch.linalg`` kernels, which vectorise over leading batch dimensions.
``torch`` is imported when this module is imported, so import this module only
once a torch tensor is actually in play (``ltv_control.backends.get_backend``
does that).

Compute dtype: float64 by default. Devices without float64 support (Apple MPS)
default to the tensor's own floating dtype (float32 when the input is not
floating); pass ``dtype=`` to choose explicitly.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["TorchBackend", "torch_backend"]

_NO_FLOAT64_DEVICES = {"mps"}


def _device_type(device: Any) -> str:
    if device is None:
        return "cpu"
    return torch.device(device).type


class TorchBackend:
    """Array operations on :class:`torch.Tensor`; use the singleton :data:`torch_backend`."""

    name = "torch"
    _default_dtype = torch.float64

    # ------------------------------------------------------------------ types
    @staticmethod
    def is_array(x: Any) -> bool:
        """Whether ``x`` is a torch tensor."""
        return isinstance(x, torch.Tensor)

    def resolve_dtype(self, dtype: Any = None, like: Any = None) -> torch.dtype:
        """The compute dtype.

        Parameters
        ----------
        dtype : torch.dtype, numpy dtype, str or None
            Requested dtype. ``None`` selects float64, except on devices without
            float64 support (MPS), where the dtype of ``like`` (or float32) is used.
        like : torch.Tensor or device or None
            The tensor (or device) whose device decides the default.
        """
        if dtype is not None:
            if isinstance(dtype, torch.dtype):
                return dtype
            name = np.dtype(dtype).name
            try:
                return getattr(torch, name)
            except AttributeError:  # pragma: no cover - exotic dtypes
                raise TypeError(f"dtype {dtype!r} has no torch equivalent") from None
        if isinstance(like, torch.Tensor):
            if like.device.type in _NO_FLOAT64_DEVICES:
                return like.dtype if like.is_floating_point() else torch.float32
        elif like is not None and _device_type(like) in _NO_FLOAT64_DEVICES:
            return torch.float32
        return self._default_dtype

    def asarray(self, x: Any, dtype: Any = None, device: Any = None) -> torch.Tensor:
        """Convert ``x`` (tensor, numpy array, list, scalar) to a tensor.

        Tensors keep their device unless ``device`` is given; other inputs go to
        ``device`` (default CPU).
        """
        tdtype = None if dtype is None else self.resolve_dtype(dtype)
        if isinstance(x, torch.Tensor):
            if tdtype is None and device is None:
                return x
            return x.to(device=device if device is not None else x.device, dtype=tdtype)
        if not isinstance(x, (int, float)):
            x = np.asarray(x)
            if not x.flags.writeable:  # e.g. a broadcast view: torch needs writable memory
                x = np.array(x, copy=True)
        return torch.as_tensor(x, dtype=tdtype, device=device)

    @staticmethod
    def dtype_of(x: torch.Tensor) -> torch.dtype:
        """The dtype of ``x``."""
        return x.dtype

    @staticmethod
    def device_of(x: torch.Tensor) -> torch.device:
        """The device of ``x``."""
        return x.device

    @staticmethod
    def is_floating(x: torch.Tensor) -> bool:
        """Whether ``x`` has a real floating dtype."""
        return x.is_floating_point()

    def eps(self, dtype: Any) -> float:
        """Machine epsilon of the floating ``dtype`` (torch, numpy or string dtype)."""
        return float(torch.finfo(self.resolve_dtype(dtype)).eps)

    @staticmethod
    def to_numpy(x: torch.Tensor) -> np.ndarray:
        """A host numpy copy of ``x`` (half precisions widened to float32)."""
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.to(torch.float32)
        return x.numpy()

    @staticmethod
    def result_dtype(*arrays: Any) -> torch.dtype:
        """The promoted floating dtype of ``arrays``."""
        dt = None
        for a in arrays:
            d = a.dtype if isinstance(a, torch.Tensor) else torch.float64
            dt = d if dt is None else torch.promote_types(dt, d)
        if dt is None or not dt.is_floating_point:
            dt = torch.float64
        return dt

    # ------------------------------------------------------------ creation
    def zeros(self, shape: Sequence[int], dtype: Any = None, device: Any = None) -> torch.Tensor:
        """A zero tensor of ``shape`` on ``device``."""
        return torch.zeros(tuple(shape), dtype=self.resolve_dtype(dtype, device), device=device)

    def eye(self, n: int, dtype: Any = None, device: Any = None) -> torch.Tensor:
        """The ``n x n`` identity on ``device``."""
        return torch.eye(n, dtype=self.resolve_dtype(dtype, device), device=device)

    @staticmethod
    def stack(arrays: Sequence[torch.Tensor], axis: int = 0) -> torch.Tensor:
        """Stack along a new axis."""
        return torch.stack(list(arrays), dim=axis)

    @staticmethod
    def broadcast_to(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """A broadcast view of ``x`` with ``shape``."""
        return x.expand(tuple(shape))

    @staticmethod
    def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
        """The broadcast of ``shapes`` (raises ValueError/RuntimeError when incompatible)."""
        return tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))

    def astype(self, x: torch.Tensor, dtype: Any) -> torch.Tensor:
        """``x`` in ``dtype`` (no copy when it already is)."""
        return x.to(self.resolve_dtype(dtype))

    # ------------------------------------------------------------ algebra
    @staticmethod
    def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Batched matrix product ``a @ b``."""
        return torch.matmul(a, b)

    @staticmethod
    def einsum(spec: str, *operands: torch.Tensor) -> torch.Tensor:
        """Einstein summation."""
        return torch.einsum(spec, *operands)

    @staticmethod
    def mT(x: torch.Tensor) -> torch.Tensor:
        """Transpose of the last two axes."""
        return x.transpose(-1, -2)

    @staticmethod
    def symmetrize(x: torch.Tensor) -> torch.Tensor:
        """``(x + xᵀ)/2`` over the last two axes."""
        return 0.5 * (x + x.transpose(-1, -2))

    @staticmethod
    def matvec(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Batched ``a @ v`` with ``v`` of shape (..., n)."""
        return torch.matmul(a, v.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def cholesky(x: torch.Tensor, *, overwrite_a: bool = False) -> tuple[torch.Tensor, np.ndarray]:
        """Lower Cholesky factor and a failure flag per batch member.

        Only the lower triangle (and diagonal) of ``x`` is read.  ``overwrite_a`` is accepted
        for parity with numpy and ignored (out of place, so autograd flows through).

        Returns
        -------
        L : Tensor (..., n, n)
        info : numpy int array (...)
            0 where the factorisation succeeded, nonzero where the matrix is not
            (numerically) positive definite or not finite. Returned on the host
            so callers can name the failing member.
        """
        L, bad = TorchBackend.cholesky_flags(x)
        return L, bad.to(torch.int64).cpu().numpy()

    @staticmethod
    def cholesky_flags(x: torch.Tensor, *, overwrite_a: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`cholesky`, but the failure flags stay on the device (bool, no sync)."""
        L, info = torch.linalg.cholesky_ex(x)
        bad = (info != 0) | ~torch.isfinite(L).all(dim=-1).all(dim=-1)
        return L, bad

    @staticmethod
    def solve_triangular(L: torch.Tensor, b: torch.Tensor, *, lower: bool = True,
                         trans: bool = False, overwrite_b: bool = False) -> torch.Tensor:
        """Solve ``L X = b`` (or ``Lᵀ X = b`` with ``trans=True``) for triangular ``L``.

        ``overwrite_b`` is accepted for parity with numpy and ignored (out of place).
        """
        if trans:
            return torch.linalg.solve_triangular(L.transpose(-1, -2), b, upper=lower)
        return torch.linalg.solve_triangular(L, b, upper=not lower)

    @staticmethod
    def add_identity(x: torch.Tensor, c: float) -> torch.Tensor:
        """``x + c·I`` over the last two axes (out of place; no identity is materialised)."""
        diag = x.diagonal(dim1=-2, dim2=-1) + c
        return x.diagonal_scatter(diag, dim1=-2, dim2=-1)

    @staticmethod
    def riccati_update(Q: Any, X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """``sym(Q + X − WᵀW)`` with ``sym(M) = (M + Mᵀ)/2`` (``Q`` a tensor or a scalar ``q·I``).

        Out of place (autograd flows through); ``X`` is left untouched.
        """
        M = X - torch.matmul(W.transpose(-1, -2), W)
        if isinstance(Q, torch.Tensor):
            M = M + Q
        else:
            M = TorchBackend.add_identity(M, float(Q))
        return 0.5 * (M + M.transpose(-1, -2))

    def cholesky_solve(self, L: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Solve ``(L Lᵀ) X = b`` given the lower Cholesky factor ``L``."""
        return torch.cholesky_solve(b, L, upper=False)

    @staticmethod
    def eigvalsh(x: torch.Tensor) -> torch.Tensor:
        """Eigenvalues (ascending) of symmetric matrices."""
        return torch.linalg.eigvalsh(x)

    # ------------------------------------------------------------ reductions
    @staticmethod
    def isfinite(x: torch.Tensor) -> torch.Tensor:
        """Element-wise finiteness."""
        return torch.isfinite(x)

    @staticmethod
    def all_finite(x: torch.Tensor) -> bool:
        """Whether every element is finite."""
        return bool(torch.isfinite(x).all())

    @staticmethod
    def frobenius(x: torch.Tensor) -> torch.Tensor:
        """Frobenius norm of each matrix (over the last two axes)."""
        return torch.sqrt(torch.sum(x * x, dim=(-1, -2)))

    @staticmethod
    def sum(x: torch.Tensor, axis: Any = None) -> torch.Tensor:
        """Sum over ``axis``."""
        if axis is None:
            return torch.sum(x)
        return torch.sum(x, dim=axis)

    @staticmethod
    def to_host(x: torch.Tensor) -> np.ndarray:
        """A host numpy copy of ``x`` (for messages and checks)."""
        return TorchBackend.to_numpy(x)


torch_backend = TorchBackend()
