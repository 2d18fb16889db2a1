"""Torch autograd glue for the core's implicit (numpy) derivatives.

The core computes derivatives of non-torch solvers in numpy (e.g.
:mod:`ltv_control.constrained_grad` for :class:`~ltv_control.constrained.ConstrainedLQR`);
this module wraps such a ``(value, vector-Jacobian product)`` pair as a
``torch.autograd.Function`` so that the result joins the caller's graph.  It is the only
place outside the torch backend that touches ``torch.autograd``; the core imports it lazily,
only after it has been handed a torch tensor.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

__all__ = ["requires_grad", "implicit_apply"]


def requires_grad(*values: Any) -> bool:
    """Whether autograd is recording and any of ``values`` is a tensor that requires grad."""
    return torch.is_grad_enabled() and any(
        isinstance(v, torch.Tensor) and v.requires_grad for v in values)


class _Implicit(torch.autograd.Function):
    """``y = f(a, b)`` computed in numpy, with a numpy VJP ``ḡ_y -> (ḡ_a, ḡ_b)``."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, solve: Callable) -> torch.Tensor:
        y, vjp = solve(a.detach().cpu().numpy().astype(np.float64),
                       b.detach().cpu().numpy().astype(np.float64))
        ctx.vjp = vjp
        ctx.meta = (a.dtype, a.device, b.dtype, b.device)
        return torch.as_tensor(np.asarray(y), dtype=a.dtype, device=a.device)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple:
        if torch.is_grad_enabled() and grad_y.requires_grad:
            # create_graph=True through this node: the numpy VJP has no graph, so a second
            # derivative would silently miss this path.  Refuse instead.
            raise RuntimeError(
                "ltv_control: second derivatives through an implicit (numpy) solver such as "
                "ConstrainedLQR.solve are not supported; differentiate once (create_graph=False)")
        a_dtype, a_device, b_dtype, b_device = ctx.meta
        g_a, g_b = ctx.vjp(grad_y.detach().cpu().numpy().astype(np.float64))
        return (torch.as_tensor(g_a, dtype=a_dtype, device=a_device),
                torch.as_tensor(g_b, dtype=b_dtype, device=b_device), None)


def implicit_apply(solve: Callable, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Apply a numpy solver with an implicit derivative inside torch autograd.

    Parameters
    ----------
    solve : callable
        ``solve(a_np, b_np) -> (y_np, vjp)`` with ``vjp(ḡ_y) -> (ḡ_a, ḡ_b)`` (numpy float64).
    a, b : Tensor
        Inputs (the result takes ``a``'s dtype and device).

    Returns
    -------
    Tensor
        ``y``; its backward calls ``vjp`` (first order only: a backward pass that builds a graph
        for higher derivatives through it raises ``RuntimeError``).
    """
    return _Implicit.apply(a, b, solve)
