"""NumPy array backend: the handful of array operations the LTV core needs.

Every operation accepts arrays with optional leading batch dimensions and works
on the last one or two axes, so the Riccati code is written once for numpy and
torch. Batched linear algebra is vectorised by NumPy's gufuncs (Cholesky) and
SciPy's batched triangular solves; no Python loop runs over batch members,
except on the error path, which locates the failing member.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.linalg
from scipy.linalg import blas as _blas
from scipy.linalg import lapack as _lapack

__all__ = ["NumpyBackend", "numpy_backend"]

_ROUTINES: dict = {}


def _routine(kind: str, name: str, dtype: np.dtype):
    """Cached BLAS/LAPACK routine ``name`` for ``dtype`` (float32 or float64)."""
    key = (kind, name, dtype)
    fn = _ROUTINES.get(key)
    if fn is None:
        getter = _blas.get_blas_funcs if kind == "blas" else _lapack.get_lapack_funcs
        fn = _ROUTINES[key] = getter(name, dtype=dtype)
    return fn


def _fortran_transpose(x: np.ndarray) -> tuple[np.ndarray, int]:
    """``(f, trans)`` with ``f`` Fortran-ordered and ``op(f) = xᵀ`` (``trans``: BLAS flag), no copy
    when ``x`` is C- or Fortran-contiguous."""
    if x.flags.c_contiguous:
        return x.T, 0
    if x.flags.f_contiguous:
        return x, 1
    return np.ascontiguousarray(x).T, 0


class NumpyBackend:
    """Array operations on :class:`numpy.ndarray`.

    The namespace is stateless; use the module-level singleton
    :data:`numpy_backend`.
    """

    name = "numpy"
    _default_dtype = np.dtype(np.float64)

    # ------------------------------------------------------------------ types
    @staticmethod
    def is_array(x: Any) -> bool:
        """Whether ``x`` is a numpy array (not a torch tensor)."""
        return isinstance(x, np.ndarray)

    def resolve_dtype(self, dtype: Any = None, like: Any = None) -> np.dtype:
        """The compute dtype: ``dtype`` if given (numpy, string or torch dtype), else float64.

        Parameters
        ----------
        dtype : numpy dtype, str, torch.dtype or None
            Requested dtype; ``None`` selects float64.
        like : array or None
            Unused for numpy (kept so both backends share one signature).
        """
        if dtype is None:
            return self._default_dtype
        if type(dtype).__module__ == "torch":  # a torch.dtype given to a numpy system
            dtype = str(dtype).replace("torch.", "")
        return np.dtype(dtype)

    def asarray(self, x: Any, dtype: Any = None, device: Any = None) -> np.ndarray:
        """Convert ``x`` (array, tensor, list, scalar) to a numpy array of ``dtype``.

        Torch tensors are detached and copied to host memory. ``device`` must be
        None or ``"cpu"``.
        """
        if device not in (None, "cpu"):
            raise ValueError(f"numpy arrays live on the CPU; device={device!r} is not available")
        if type(x).__module__.startswith("torch"):
            import torch

            x = x.detach().cpu()
            if x.dtype in (torch.bfloat16, torch.float16) and dtype is None:
                x = x.to(torch.float32)
            x = x.numpy()
        if dtype is None:
            return np.asarray(x)
        return np.asarray(x, dtype=self.resolve_dtype(dtype))

    @staticmethod
    def dtype_of(x: np.ndarray) -> np.dtype:
        """The dtype of ``x``."""
        return x.dtype

    @staticmethod
    def device_of(x: np.ndarray) -> str:
        """Always ``"cpu"``."""
        return "cpu"

    @staticmethod
    def is_floating(x: np.ndarray) -> bool:
        """Whether ``x`` has a real floating dtype."""
        return np.issubdtype(x.dtype, np.floating)

    def eps(self, dtype: Any) -> float:
        """Machine epsilon of the floating ``dtype`` (numpy, string or torch dtype)."""
        return float(np.finfo(self.resolve_dtype(dtype)).eps)

    @staticmethod
    def to_numpy(x: np.ndarray) -> np.ndarray:
        """Identity (the array is already numpy)."""
        return x

    @staticmethod
    def result_dtype(*arrays: Any) -> np.dtype:
        """The promoted floating dtype of ``arrays`` (at least float32)."""
        dt = np.result_type(*[a.dtype if hasattr(a, "dtype") else a for a in arrays])
        if not np.issubdtype(dt, np.floating):
            dt = np.dtype(np.float64)
        return dt

    # ------------------------------------------------------------ creation
    def zeros(self, shape: Sequence[int], dtype: Any = None, device: Any = None) -> np.ndarray:
        """A zero array of ``shape``."""
        return np.zeros(tuple(shape), dtype=self.resolve_dtype(dtype))

    def eye(self, n: int, dtype: Any = None, device: Any = None) -> np.ndarray:
        """The ``n x n`` identity."""
        return np.eye(n, dtype=self.resolve_dtype(dtype))

    @staticmethod
    def stack(arrays: Sequence[np.ndarray], axis: int = 0) -> np.ndarray:
        """Stack along a new axis."""
        return np.stack(arrays, axis=axis)

    @staticmethod
    def broadcast_to(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """A read-only broadcast view of ``x`` with ``shape``."""
        return np.broadcast_to(x, tuple(shape))

    @staticmethod
    def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
        """The broadcast of ``shapes`` (raises ValueError when incompatible)."""
        return tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))

    @staticmethod
    def astype(x: np.ndarray, dtype: Any) -> np.ndarray:
        """``x`` in ``dtype`` (no copy when it already is)."""
        return x.astype(dtype, copy=False)

    # ------------------------------------------------------------ algebra
    @staticmethod
    def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Batched matrix product ``a @ b``.

        Two single float matrices of one dtype go to SciPy's BLAS ``gemm``, the library that
        also runs the Cholesky and triangular solves of the recursion: numpy and SciPy ship
        separate OpenBLAS builds, and alternating between their thread pools made a Riccati
        step up to 2.5× slower on a 2-core machine (see ``benchmarks/README.md``).
        """
        if (a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype
                and a.dtype in (np.float32, np.float64) and min(a.shape + b.shape) > 0):
            # a @ b = (bᵀ aᵀ)ᵀ; a C-ordered matrix read in Fortran order is its transpose.
            gemm = _routine("blas", "gemm", a.dtype)
            bt, trans_b = _fortran_transpose(b)
            at, trans_a = _fortran_transpose(a)
            return gemm(1.0, bt, at, trans_a=trans_b, trans_b=trans_a).T
        return np.matmul(a, b)

    @staticmethod
    def einsum(spec: str, *operands: np.ndarray) -> np.ndarray:
        """Einstein summation (optimised contraction order)."""
        return np.einsum(spec, *operands, optimize=True)

    @staticmethod
    def mT(x: np.ndarray) -> np.ndarray:
        """Transpose of the last two axes."""
        return np.swapaxes(x, -1, -2)

    @staticmethod
    def symmetrize(x: np.ndarray) -> np.ndarray:
        """``(x + xᵀ)/2`` over the last two axes."""
        return 0.5 * (x + np.swapaxes(x, -1, -2))

    @staticmethod
    def matvec(a: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Batched ``a @ v`` with ``v`` of shape (..., n)."""
        return np.matmul(a, v[..., None])[..., 0]

    @staticmethod
    def cholesky(x: np.ndarray, *, overwrite_a: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Lower Cholesky factor of each matrix and a failure flag per batch member.

        Only the lower triangle (and diagonal) of ``x`` is read.  ``overwrite_a=True`` lets a
        single C-ordered matrix be factored in place (its memory becomes ``L``).

        Returns
        -------
        L : ndarray (..., n, n)
            Lower-triangular factors (undefined where ``info`` is nonzero).
        info : ndarray of int (...)
            0 where the factorisation succeeded, 1 where the matrix is not
            (numerically) positive definite or not finite.
        """
        batch = x.shape[:-2]
        if x.ndim == 2 and x.dtype in (np.float32, np.float64) and x.shape[0] > 0:
            # One matrix: LAPACK potrf directly. The C-ordered symmetric x is, read in Fortran
            # order, xᵀ = x; its upper factor U (xᵀ = UᵀU) read back in C order is L = Uᵀ.
            potrf = _routine("lapack", "potrf", x.dtype)
            U, info = potrf(np.ascontiguousarray(x).T, lower=0, clean=1,
                             overwrite_a=int(overwrite_a))
            L = U.T
            ok = info == 0 and bool(np.isfinite(L).all())
            return L, np.asarray(0 if ok else 1, dtype=np.int64)
        try:
            L = np.linalg.cholesky(x)
        except np.linalg.LinAlgError:
            # Error path only: factor member by member to find the culprits.
            flat = x.reshape((-1,) + x.shape[-2:])
            L = np.zeros_like(flat)
            info = np.zeros(flat.shape[0], dtype=np.int64)
            for i, member in enumerate(flat):
                try:
                    L[i] = np.linalg.cholesky(member)
                except np.linalg.LinAlgError:
                    info[i] = 1
            L = L.reshape(x.shape)
            info = info.reshape(batch)
        else:
            info = np.zeros(batch, dtype=np.int64)
        bad = ~np.isfinite(L).all(axis=(-1, -2))
        if np.any(bad):
            info = np.where(bad, 1, info)
        return L, info

    @classmethod
    def cholesky_flags(cls, x: np.ndarray, *, overwrite_a: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`cholesky`, with boolean failure flags (same interface as torch)."""
        L, info = cls.cholesky(x, overwrite_a=overwrite_a)
        return L, np.asarray(info) != 0

    @staticmethod
    def solve_triangular(L: np.ndarray, b: np.ndarray, *, lower: bool = True,
                         trans: bool = False, overwrite_b: bool = False) -> np.ndarray:
        """Solve ``L X = b`` (or ``Lᵀ X = b`` with ``trans=True``) for triangular ``L``.

        ``overwrite_b=True`` lets a single C-ordered ``b`` hold the solution (no new array).
        """
        if (L.ndim == 2 and b.ndim == 2 and L.dtype == b.dtype
                and L.dtype in (np.float32, np.float64) and b.shape[1] > 0):
            # BLAS trsm on C-ordered data, read as Fortran-ordered transposes:
            # L X = b  <=>  Xᵀ Lᵀ = bᵀ (right side; Lᵀ is upper when L is lower).
            trsm = _routine("blas", "trsm", L.dtype)
            Lt = np.ascontiguousarray(L).T
            bt = np.ascontiguousarray(b).T
            Xt = trsm(1.0, Lt, bt, side=1, lower=0 if lower else 1, trans_a=1 if trans else 0,
                      overwrite_b=int(overwrite_b))
            return Xt.T
        return scipy.linalg.solve_triangular(L, b, lower=lower, trans=1 if trans else 0,
                                             overwrite_b=overwrite_b, check_finite=False)

    @staticmethod
    def add_identity(x: np.ndarray, c: float) -> np.ndarray:
        """``x + c·I`` over the last two axes (a new array; no identity is materialised)."""
        out = np.array(x, copy=True)
        np.einsum("...ii->...i", out)[...] += c
        return out

    @staticmethod
    def riccati_update(Q: Any, X: np.ndarray, W: np.ndarray) -> np.ndarray:
        """``sym(Q + X − WᵀW)`` with ``sym(M) = (M + Mᵀ)/2``, over the last two axes.

        ``Q`` is a symmetric array or a Python scalar ``q`` meaning ``q·I``.  ``X`` is consumed
        (its memory may be reused for the result).  For single matrices the Gram term comes
        from BLAS syrk, which fills one triangle ``Y_l`` (diagonal included) of
        ``WᵀW = Y_l + Y_lᵀ − D``; since ``sym(Q + X − 2Y_l + D) = Q + sym(X) − WᵀW`` (for
        symmetric ``Q``), the mirrored Gram matrix is never formed.
        """
        scalar = not isinstance(Q, np.ndarray)
        if (W.ndim == 2 and X.ndim == 2 and (scalar or Q.ndim == 2) and W.dtype == X.dtype
                and W.dtype in (np.float32, np.float64) and W.shape[0] > 0
                and X.flags.writeable and X.flags.c_contiguous):
            syrk = _routine("blas", "syrk", W.dtype)
            Yl2 = syrk(-2.0, np.ascontiguousarray(W).T, trans=0, lower=0).T  # −2·Y_l (C lower)
            Yl2.flat[:: Yl2.shape[0] + 1] *= 0.5                              # −2Y_l + D
            M = X
            M += Yl2
            del Yl2
        else:
            M = X - np.matmul(np.swapaxes(W, -1, -2), W)
        if scalar:
            np.einsum("...ii->...i", M)[...] += Q
        elif M.shape == np.broadcast_shapes(M.shape, Q.shape):
            M += Q
        else:
            M = M + Q
        M += np.swapaxes(M, -1, -2).copy()
        M *= 0.5
        return M

    def cholesky_solve(self, L: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Solve ``(L Lᵀ) X = b`` given the lower Cholesky factor ``L``."""
        w = self.solve_triangular(L, b, lower=True)
        return self.solve_triangular(L, w, lower=True, trans=True)

    @staticmethod
    def eigvalsh(x: np.ndarray) -> np.ndarray:
        """Eigenvalues (ascending) of symmetric matrices."""
        return np.linalg.eigvalsh(x)

    # ------------------------------------------------------------ reductions
    @staticmethod
    def isfinite(x: np.ndarray) -> np.ndarray:
        """Element-wise finiteness."""
        return np.isfinite(x)

    @staticmethod
    def all_finite(x: np.ndarray) -> bool:
        """Whether every element is finite."""
        return bool(np.isfinite(x).all())

    @staticmethod
    def frobenius(x: np.ndarray) -> np.ndarray:
        """Frobenius norm of each matrix (over the last two axes)."""
        return np.sqrt(np.sum(x * x, axis=(-1, -2)))

    @staticmethod
    def sum(x: np.ndarray, axis: Any = None) -> np.ndarray:
        """Sum over ``axis``."""
        return np.sum(x, axis=axis)

    @staticmethod
    def to_host(x: np.ndarray) -> np.ndarray:
        """A numpy view of ``x`` (for messages and checks)."""
        return np.asarray(x)


numpy_backend = NumpyBackend()
