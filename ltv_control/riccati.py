"""One step of the discrete Riccati recursion, written once for numpy and torch.

The finite-horizon LQR problem with cost ``Σ xᵀQx + uᵀRu + 2xᵀNu`` has the
backward recursion (``S = S_{k+1}``)

.. math::

    G_k &= R_k + B_kᵀ S B_k, \\qquad H_k = B_kᵀ S A_k + N_kᵀ,\\\\
    K_k &= G_k^{-1} H_k,\\\\
    S_k &= Q_k + A_kᵀ S A_k − H_kᵀ G_k^{-1} H_k .

With the Cholesky factor ``G = L Lᵀ`` and ``W = L⁻¹H`` (one triangular solve),
``K = L⁻ᵀW`` (a second one) and ``H ᵀG⁻¹H = WᵀW``; ``S_k`` is symmetrised. No
inverse is formed. For ``B = I`` (``B=None``) the products with the identity are
skipped: ``G = R + S`` and ``H = S A + Nᵀ``.

These are small pure functions: arrays in, arrays out, with optional leading
batch dimensions that broadcast. The streaming / scale helpers call
:func:`riccati_step` one layer at a time; its signature is stable.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ltv_control._exceptions import DimensionError, NumericalError
from ltv_control._validation import batch_member, format_shape, public_api
from ltv_control.backends import get_backend

__all__ = ["riccati_step", "StageFactor", "factor_stage", "check_finite_step", "DeferredChecks"]


class StageFactor(NamedTuple):
    """Intermediate terms of one Riccati step (shared by LQR and tracking LQR).

    Attributes
    ----------
    L : array (*batch, m, m)
        Lower Cholesky factor of ``G = R + BᵀSB``.
    W : array (*batch, m, n)
        ``L⁻¹ H`` with ``H = BᵀSA + Nᵀ``.
    SA : array (*batch, n, n)
        ``S_{k+1} A_k``.
    """

    L: Any
    W: Any
    SA: Any


def _as_arrays(be: Any, S_next: Any, A: Any, B: Any, Q: Any, R: Any, N: Any) -> tuple:
    """Arrays of one backend; Python scalars ``Q``/``R`` mean ``c·I`` (in ``S_next``'s dtype)."""
    like = S_next if be.is_array(S_next) else A
    device = be.device_of(like) if be.is_array(like) else None
    dtype = be.dtype_of(like) if be.is_array(like) else None

    def conv(x: Any) -> Any:
        return x if x is None or be.is_array(x) else be.asarray(x, dtype=dtype, device=device)

    S_next, A, B, N = conv(S_next), conv(A), conv(B), conv(N)
    n = A.shape[-1]
    m = n if B is None else B.shape[-1]
    if not be.is_array(Q) and np.ndim(Q) == 0:
        Q = float(Q) * be.eye(n, dtype=be.dtype_of(A), device=device)
    if not be.is_array(R) and np.ndim(R) == 0:
        R = float(R) * be.eye(m, dtype=be.dtype_of(A), device=device)
    return S_next, A, B, conv(Q), conv(R), N


def _check_shapes(S_next: Any, A: Any, B: Any, Q: Any, R: Any, N: Any) -> tuple[int, int]:
    n = A.shape[-1]
    if A.ndim < 2 or A.shape[-2] != n:
        raise DimensionError(f"A: expected (*batch, n, n); found shape {format_shape(A.shape)}")
    m = n if B is None else B.shape[-1]
    checks = [("S_next", S_next, (n, n)), ("Q", Q, (n, n)), ("R", R, (m, m))]
    if B is not None:
        checks.append(("B", B, (n, m)))
    if N is not None:
        checks.append(("N", N, (n, m)))
    for name, x, shape in checks:
        if x.ndim < 2 or tuple(x.shape[-2:]) != shape:
            raise DimensionError(f"{name}: expected (*batch, {shape[0]}, {shape[1]}); found shape "
                                 f"{format_shape(x.shape)}")
    return n, m


def _raise_step(kind: str, name: str, step: Any, bad: np.ndarray) -> None:
    idx = tuple(int(i) for i in np.argwhere(np.atleast_1d(bad))[0]) if bad.ndim else ()
    where = "" if step is None else f" at step {step}"
    if kind == "factor":
        raise NumericalError(
            f"Riccati recursion{where}: R + BᵀSB is not positive definite for "
            f"{batch_member(idx)} (Cholesky factorisation failed); check that R is positive "
            "definite and the data are finite and well scaled")
    raise NumericalError(f"Riccati recursion{where}: {name} is not finite for "
                         f"{batch_member(idx)} (overflow; rescale the problem or use float64)")


class DeferredChecks:
    """Failure flags of a recursion, checked once at the end (one host sync instead of one per step).

    Used for torch tensors, where reading a flag on the host forces a device synchronisation.
    Entries are kept in processing order, so :meth:`raise_first` names the first step (in the
    backward order) that failed, exactly as the immediate checks would.
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.entries: list[tuple[str, str, Any, Any]] = []

    def add(self, kind: str, name: str, step: Any, bad: Any) -> None:
        """Record the per-member flag ``bad`` (device bool array) of ``step``."""
        self.entries.append((kind, name, step, bad))

    def raise_first(self) -> None:
        """Raise :class:`NumericalError` for the first recorded failure, if any."""
        if not self.entries:
            return
        be = self.backend
        anys = be.to_host(be.stack([be.sum(bad.reshape(-1)) for *_, bad in self.entries]))
        failing = np.flatnonzero(np.asarray(anys) > 0)
        if failing.size:
            kind, name, step, bad = self.entries[int(failing[0])]
            _raise_step(kind, name, step, np.asarray(be.to_host(bad)))


def check_finite_step(value: Any, name: str, step: Any, backend: Any,
                      deferred: DeferredChecks | None = None) -> None:
    """Raise :class:`NumericalError` if ``value`` (*batch, n, n) overflowed to inf/NaN.

    The message names the step and the first non-finite batch member. With ``deferred``
    the flag is recorded there instead (checked by ``deferred.raise_first()``).
    """
    if deferred is not None:
        deferred.add("finite", name, step, ~backend.isfinite(value).all(-1).all(-1))
        return
    finite = backend.isfinite(value)
    if bool(finite.all()):
        return
    bad = ~np.asarray(backend.to_host(finite.all(-1).all(-1)))
    _raise_step("finite", name, step, bad)


def factor_stage(S_next: Any, A: Any, B: Any, R: Any, N: Any = None, *, step: Any = None,
                 backend: Any = None, deferred: DeferredChecks | None = None) -> StageFactor:
    """Factor ``G = R + BᵀS_{k+1}B`` and form ``W = L⁻¹(BᵀS_{k+1}A + Nᵀ)``.

    Parameters
    ----------
    S_next : array (*batch, n, n)
        Symmetric cost-to-go matrix of step ``k+1``.
    A : array (*batch, n, n)
    B : array (*batch, n, m) or None
        ``None`` means the identity (``m = n``).
    R : array (*batch, m, m)
    N : array (*batch, n, m) or None
    step : int, optional
        Step index used in the error message.
    backend : backend namespace, optional
        Defaults to ``get_backend(S_next, A, B, R, N)``.
    deferred : DeferredChecks, optional
        Record the factorisation flag there instead of checking it now (torch: avoids a
        device synchronisation per step).

    Returns
    -------
    StageFactor

    Raises
    ------
    NumericalError
        If ``G`` is not numerically positive definite, naming the step and the
        first failing batch member.
    """
    be = backend or get_backend(S_next, A, B, R, N)
    SA = be.matmul(S_next, A)
    if B is None:
        G = R + S_next
        H = SA
    else:
        SB = be.matmul(S_next, B)
        G = R + be.matmul(be.mT(B), SB)
        H = be.matmul(be.mT(B), SA)
    if N is not None:
        H = H + be.mT(N)
    # G is symmetric up to rounding; every backend's Cholesky reads its lower triangle only,
    # so no explicit symmetrisation is needed here.
    if deferred is not None:
        L, bad = be.cholesky_flags(G)
        deferred.add("factor", "G", step, bad)
    else:
        L, info = be.cholesky(G)
        info = np.asarray(info)
        if np.any(info):
            _raise_step("factor", "G", step, info != 0)
    W = be.solve_triangular(L, H, lower=True)
    return StageFactor(L, W, SA)


@public_api
def riccati_step(S_next: Any, A: Any, B: Any, Q: Any, R: Any, N: Any = None, *,
                 step: Any = None) -> tuple[Any, Any]:
    """One backward Riccati step: ``(S_{k+1}, A_k, B_k, Q_k, R_k, N_k) -> (K_k, S_k)``.

    .. math::

        K_k = (R_k + B_kᵀS_{k+1}B_k)^{-1}(B_kᵀS_{k+1}A_k + N_kᵀ),\\qquad
        S_k = Q_k + A_kᵀS_{k+1}A_k − (B_kᵀS_{k+1}A_k + N_kᵀ)ᵀ K_k,

    computed with a Cholesky factorisation and two triangular solves; ``S_k`` is
    symmetrised. The optimal input is ``u_k = −K_k x_k``.

    Parameters
    ----------
    S_next : array (*batch, n, n)
        Symmetric cost-to-go matrix of step ``k+1``.
    A : array (*batch, n, n)
        State matrix of step ``k``.
    B : array (*batch, n, m) or None
        Input matrix; ``None`` means the identity (``m = n``) and skips the
        products with it.
    Q : array (*batch, n, n) or float
        Symmetric state weight (a scalar ``q`` means ``q·I``).
    R : array (*batch, m, m) or float
        Symmetric positive definite input weight (a scalar ``r`` means ``r·I``).
    N : array (*batch, n, m), optional
        Cross weight of the term ``2 xᵀN u``.
    step : int, optional
        Index ``k`` used in error messages.

    Returns
    -------
    K : array (*batch, m, n)
    S : array (*batch, n, n)
        numpy in, numpy out; torch in, torch out on the same device. Batch
        dimensions broadcast. Inputs should share one dtype (no dtype conversion is
        done here, and no symmetry/definiteness validation: this is the inner loop;
        :func:`ltv_control.finite_horizon_lqr` validates and converts).

    Raises
    ------
    NumericalError
        When ``R + BᵀS B`` is not positive definite (names the step and batch member).
    DimensionError
        When the trailing matrix shapes do not fit together.
    """
    be = get_backend(S_next, A, B, Q, R, N)
    S_next, A, B, Q, R, N = _as_arrays(be, S_next, A, B, Q, R, N)
    _check_shapes(S_next, A, B, Q, R, N)
    L, W, SA = factor_stage(S_next, A, B, R, N, step=step, backend=be)
    K = be.solve_triangular(L, W, lower=True, trans=True)
    S = be.riccati_update(Q, be.matmul(be.mT(A), SA), W)
    check_finite_step(S, "S", step, be)
    return K, S
