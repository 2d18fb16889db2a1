r"""Per-layer control laws ``u_k = law_k(z_k)``, each written once, apart from any hook machinery.

A law maps block ``k``'s input ``z`` (float32 unless the law says otherwise; shape ``(B, n)`` for
the newest position or ``(B, L, n)`` for every position) to the input added to block ``k``'s
output.  :mod:`ltv_control.adapters.hooks` attaches laws to blocks.

Affine laws cover every steerer without memory:

.. math::

    u = c + U\,(b - V^\top z)

(ActAdd: ``c = coeff·e_k``; A-LQR: ``U = w_k``, ``V = v_k``, ``b = β*_k``; full-gain tracking:
``U = K_k``, ``V = I``, ``b = z̄_k``).  Their in-place fast path (``target += u`` with one
``addmv``/``addr_`` or ``addmm_`` per term) is derived from the same ``(c, U, V, b)``.  Laws with
memory across layers (S-PID) or a plan (the constrained steerer) implement only ``__call__``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Law", "AffineLaw", "PIDLaw", "RecordedLaw"]


class Law:
    """A per-layer law.  Subclasses implement ``__call__`` and :meth:`to`.

    Attributes
    ----------
    dtype : torch.dtype or None
        The dtype ``z`` is cast to before the law (``None``: float32).
    inplace : bool
        Whether :meth:`add_last_inplace` exists (affine laws only).
    """

    dtype: Any = None
    inplace: bool = False

    def __call__(self, z: Any, state: dict) -> Any:
        """``u`` with the shape of ``z``, or ``None`` for no input.

        ``state`` is a dict shared by the laws of one forward pass (fresh at every pass).
        """
        raise NotImplementedError

    def to(self, device: Any) -> Law:
        """This law with its tensors on ``device``."""
        return self

    def add_last_inplace(self, z: Any, target: Any) -> None:
        """``target += law(z)`` in place, for ``z``, ``target`` of shape ``(B, n)``."""
        raise NotImplementedError


def _move(x: Any, device: Any) -> Any:
    return None if x is None else x.to(device)


class AffineLaw(Law):
    """``u = c + U (b − Vᵀ z)``; every term optional (see the module docstring).

    Parameters
    ----------
    c : tensor (n,) or (B, n), optional
        Constant input (a ``(B, n)`` ``c`` gives one input per batch row, positions ``"last"``).
    U : tensor (n,) or (n, r), optional
        Input directions (a vector is rank one).
    V : tensor (n,) or (n, r), optional
        Feature directions, same rank as ``U``; ``None`` with ``U`` given means ``V = I``.
    b : tensor () or (r,) or (n,), optional
        Feature targets (zero when ``None``).
    dtype : torch.dtype, optional
        Compute dtype (default float32).
    """

    inplace = True

    def __init__(self, *, c: Any = None, U: Any = None, V: Any = None, b: Any = None, dtype: Any = None):
        import torch

        self.c, self.U, self.V, self.dtype = c, U, V, dtype
        if U is not None and b is None:
            width = U.shape[0] if V is None else (V.shape[-1] if V.ndim == 2 else None)
            b = torch.zeros(() if width is None else (width,), dtype=U.dtype, device=U.device)
        self.b = b

    def to(self, device: Any) -> AffineLaw:
        return AffineLaw(c=_move(self.c, device), U=_move(self.U, device), V=_move(self.V, device),
                         b=_move(self.b, device), dtype=self.dtype)

    def _alpha(self, z: Any) -> Any:
        """The feature error ``b − Vᵀz`` (``(..., 1)`` for rank one)."""
        if self.V is None:
            return self.b - z
        if self.V.ndim == 1:
            return (self.b - z @ self.V).unsqueeze(-1)
        return self.b - z @ self.V

    def __call__(self, z: Any, state: dict) -> Any:
        u = None
        if self.U is not None:
            alpha = self._alpha(z)
            u = alpha * self.U if self.U.ndim == 1 else alpha @ self.U.T
        if self.c is not None:
            u = self.c.expand_as(z) if u is None else u + self.c
        return u

    def add_last_inplace(self, z: Any, target: Any) -> None:
        import torch

        if self.U is not None:
            if self.V is None:
                target.addmm_(self.b - z, self.U.T)
            elif self.V.ndim == 1:  # rank one: two fused kernels, α = b − z v and target += α ⊗ U
                target.addr_(torch.addmv(self.b, z, self.V, alpha=-1.0), self.U)
            else:
                target.addmm_(torch.addmm(self.b, z, self.V, alpha=-1.0), self.U.T)
        if self.c is not None:
            target.add_(self.c)


class PIDLaw(Law):
    """S-PID at layer ``k``: ``u = (k_p ε + k_i I + k_d (ε − ε⁻)) v`` with ``ε = β* − vᵀz``.

    ``I`` sums ``ε`` over the controlled layers of ``k``'s reset window ``⌊k/R⌋`` seen so far in
    this forward pass; ``ε⁻`` is the previous one (no derivative at a window's first layer).
    The running sums live in the pass's ``state`` dict.
    """

    def __init__(self, k: int, v: Any, beta: Any, *, kp: float, ki: float, kd: float, reset_every: int):
        self.k, self.v, self.beta = k, v, beta
        self.kp, self.ki, self.kd, self.reset_every = kp, ki, kd, int(reset_every)

    def to(self, device: Any) -> PIDLaw:
        return PIDLaw(self.k, self.v.to(device), self.beta.to(device), kp=self.kp, ki=self.ki,
                      kd=self.kd, reset_every=self.reset_every)

    def __call__(self, z: Any, state: dict) -> Any:
        error = self.beta - z @ self.v
        window = self.k // self.reset_every
        fresh = (state.get("window") != window or state.get("integral") is None
                 or state["integral"].shape != error.shape)
        if fresh:
            state["window"] = window
            integral, derivative = error, None
        else:
            integral, derivative = state["integral"] + error, error - state["previous"]
        state["integral"], state["previous"] = integral, error
        gain = self.kp * error + self.ki * integral
        if derivative is not None and self.kd != 0.0:
            gain = gain + self.kd * derivative
        return gain.unsqueeze(-1) * self.v


class RecordedLaw(Law):
    """``law`` (or no input when ``None``) that also stores what it sees: ``store[("z", k)] = z``
    and ``store[("u", k)] = u`` (detached), for measurements under control."""

    def __init__(self, law: Law | None, k: int, store: dict, *, dtype: Any = None) -> None:
        self.law, self.k, self.store = law, k, store
        self.dtype = law.dtype if law is not None else dtype

    def to(self, device: Any) -> RecordedLaw:
        return RecordedLaw(None if self.law is None else self.law.to(device), self.k, self.store,
                           dtype=self.dtype)

    def __call__(self, z: Any, state: dict) -> Any:
        self.store[("z", self.k)] = z.detach()
        u = None if self.law is None else self.law(z, state)
        if u is not None:
            self.store[("u", self.k)] = u.detach()
        return u
