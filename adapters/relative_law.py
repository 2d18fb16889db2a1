r"""The one-sided A-LQR law of the relative form: push towards the target, never back from it.

The paper's law feeds back the full feature error, ``u_k = (β*_k − v_kᵀz_k) w_k``, so a prompt that
already shows more of the feature than the target is pushed *back* towards it: natural
prompt-to-prompt variation is fought like a disturbance.  The relative form regulates the
half-space ``v_kᵀz_k ≥ β*_k`` instead of the line ``v_kᵀz_k = β*_k``:

.. math::

    u_k = \max\left(0,\ \beta^*_k - v_k^\top z_k\right) w_k ,

the LQR feedback ``-K_k x_k`` applied to the constraint violation
``x_k = \min(0, v_kᵀz_k − β*_k) v_k``.  Below the target it is the paper's law; at or above the
target the input is zero.
"""

from __future__ import annotations

from typing import Any

from ltv_control.adapters.laws import AffineLaw, _move

__all__ = ["OneSidedLaw"]


class OneSidedLaw(AffineLaw):
    """``u = max(0, b − vᵀz)·w`` (rank one: ``U = w``, ``V = v``; ``c`` is not used).

    Parameters
    ----------
    U : tensor (n,)
        Feedback direction ``w_k``.
    V : tensor (n,)
        Feature direction ``v_k``.
    b : tensor ()
        Target ``β*_k``.
    dtype : torch.dtype, optional
    """

    def __init__(self, *, U: Any, V: Any, b: Any, dtype: Any = None):
        super().__init__(U=U, V=V, b=b, dtype=dtype)

    def to(self, device: Any) -> OneSidedLaw:
        return OneSidedLaw(U=_move(self.U, device), V=_move(self.V, device), b=_move(self.b, device),
                           dtype=self.dtype)

    def _alpha(self, z: Any) -> Any:
        return (self.b - z @ self.V).clamp(min=0.0).unsqueeze(-1)

    def add_last_inplace(self, z: Any, target: Any) -> None:
        import torch

        target.addr_(torch.addmv(self.b, z, self.V, alpha=-1.0).clamp_(min=0.0), self.U)
