"""Array backends (numpy, torch): the core's only way to torch.

``get_backend(*arrays)`` returns the torch backend when any argument is a ``torch.Tensor`` and the
numpy backend otherwise; torch is imported only then (or by :func:`get_torch_backend`), so
``import ltv_control.backends`` works without torch.  Both implement :class:`Backend`
(``backends/protocol.py``), vectorised over leading batch dimensions.  Compute dtype: float64 by
default; torch tensors on devices without float64 (Apple MPS) default to their own dtype.
"""

from __future__ import annotations

import sys
from typing import Any

from ltv_control.backends.numpy_backend import NumpyBackend, numpy_backend
from ltv_control.backends.protocol import BACKEND_OPERATIONS, Backend

__all__ = ["Backend", "BACKEND_OPERATIONS", "get_backend", "backend_by_name", "is_torch_tensor",
           "numpy_backend", "get_torch_backend", "NumpyBackend"]


def is_torch_tensor(x: Any) -> bool:
    """Whether ``x`` is a ``torch.Tensor``, without importing torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    tensor_type = getattr(torch, "Tensor", None)
    return tensor_type is not None and isinstance(x, tensor_type)


def get_torch_backend() -> Backend:
    """The torch backend singleton (imports torch)."""
    from ltv_control.backends.torch_backend import torch_backend as backend

    return backend


def get_backend(*arrays: Any) -> Backend:
    """The backend for ``arrays``: torch if any is a torch tensor, else numpy.

    Parameters
    ----------
    *arrays : array-like or None
        Inputs to inspect; ``None`` and Python scalars are ignored.

    Returns
    -------
    backend : Backend
        ``numpy_backend`` or the torch backend.
    """
    for a in arrays:
        if is_torch_tensor(a):
            return get_torch_backend()
    return numpy_backend


def backend_by_name(name: str) -> Backend:
    """The backend called ``name`` (``"numpy"`` or ``"torch"``)."""
    if name == "numpy":
        return numpy_backend
    if name == "torch":
        return get_torch_backend()
    raise ValueError(f"unknown backend {name!r}; expected 'numpy' or 'torch'")
