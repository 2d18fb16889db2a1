"""Array backends (numpy, torch) so the core numerics are written once.

``get_backend(*arrays)`` returns the torch backend when any argument is a
``torch.Tensor`` and the numpy backend otherwise. ``torch`` is imported only
when a tensor is actually passed (or :func:`get_torch_backend` is called), so
``import ltv_control.backends`` works without torch installed.

Both backends expose the same operations (``asarray``, ``zeros``, ``eye``,
``stack``, ``matmul``, ``einsum``, ``mT``, ``symmetrize``, ``matvec``,
``cholesky`` returning a per-batch-member failure flag, ``solve_triangular``,
``cholesky_solve``, ``eigvalsh``, ``isfinite``, ``frobenius``, ``norm``, ...),
all vectorised over leading batch dimensions.

Compute dtype: float64 by default (``resolve_dtype(None)``); torch tensors on
devices without float64 (Apple MPS) default to their own floating dtype.
"""

from __future__ import annotations

import sys
from typing import Any

from ltv_control.backends.numpy_backend import NumpyBackend, numpy_backend

__all__ = ["get_backend", "backend_by_name", "is_torch_tensor", "numpy_backend",
           "get_torch_backend", "NumpyBackend"]


def is_torch_tensor(x: Any) -> bool:
    """Whether ``x`` is a ``torch.Tensor``, without importing torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    tensor_type = getattr(torch, "Tensor", None)
    return tensor_type is not None and isinstance(x, tensor_type)


def get_torch_backend():
    """The torch backend singleton (imports torch)."""
    from ltv_control.backends.torch_backend import torch_backend as backend

    return backend


def get_backend(*arrays: Any):
    """The backend for ``arrays``: torch if any is a torch tensor, else numpy.

    Parameters
    ----------
    *arrays : array-like or None
        Inputs to inspect; ``None`` and Python scalars are ignored.

    Returns
    -------
    backend : NumpyBackend or TorchBackend
    """
    for a in arrays:
        if is_torch_tensor(a):
            return get_torch_backend()
    return numpy_backend


def backend_by_name(name: str):
    """The backend called ``name`` (``"numpy"`` or ``"torch"``)."""
    if name == "numpy":
        return numpy_backend
    if name == "torch":
        return get_torch_backend()
    raise ValueError(f"unknown backend {name!r}; expected 'numpy' or 'torch'")
