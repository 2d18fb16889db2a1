"""The affine Riccati step and the one backward loop every LQR solver of the package runs.

:func:`lqr_step` is the only place where the recursion ``S_k = Q + AᵀSA − HᵀG⁻¹H`` is written;
:func:`backward_recursion` is the only loop over it.  ``finite_horizon_lqr``, ``tracking_lqr``,
the streamed recursion and the ADMM factorisation all call them.  See ``docs/architecture.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from ltv_control._exceptions import DimensionError, NumericalError
from ltv_control._validation import batch_member, format_shape, public_api
from ltv_control.backends import get_backend

__all__ = ["lqr_step", "backward_recursion", "terminal_value", "riccati_step", "StepResult",
           "Stage", "DeferredChecks"]


class StepResult(NamedTuple):
    """One backward step (:func:`lqr_step`): policy ``u = −K x + k``,
    value ``V_k(x) = xᵀS x + 2 sᵀx + s0``.

    Attributes
    ----------
    K : array (*batch, m, n)
        Feedback gain.
    k : array (*batch, m) or None
        Feedforward term (None when the step has no affine data).
    S : array (*batch, n, n)
        Quadratic value term (symmetric).
    s : array (*batch, n) or None
        Linear value term (None when the step has no affine data).
    s0 : array (*batch,) or None
        Constant value term (None when the step has no affine data).
    L : array (*batch, m, m)
        Lower Cholesky factor of ``G = R + BᵀS_{k+1}B`` (used by the ADMM factorisation).
    """

    K: Any
    k: Any
    S: Any
    s: Any
    s0: Any
    L: Any


class Stage(NamedTuple):
    """Data of stage ``k`` for :func:`backward_recursion` (fields as in :func:`lqr_step`)."""

    k: int
    A: Any
    B: Any
    Q: Any
    R: Any
    N: Any = None
    c: Any = None
    x_ref: Any = None
    u_ref: Any = None


# ---------------------------------------------------------------------------------- failures


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
    """Failure flags of a recursion, checked once at the end (one host sync, not one per step).

    Used for torch tensors, where reading a flag on the host forces a device synchronisation.
    Entries are kept in processing order, so :meth:`raise_first` names the first step (in the
    backward order) that failed, exactly as the immediate checks would.
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.entries: list[tuple[str, str, Any, Any]] = []

    @classmethod
    def for_backend(cls, backend: Any) -> DeferredChecks | None:
        """Deferred checks for torch (device arrays), ``None`` (check at once) for numpy."""
        return cls(backend) if backend.name == "torch" else None

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


def _check_finite(be: Any, value: Any, name: str, step: Any, deferred: DeferredChecks | None,
                  trailing: int) -> None:
    """Raise (or record) a :class:`NumericalError` when ``value`` overflowed to inf/NaN."""
    finite = be.isfinite(value)
    for _ in range(trailing):
        finite = finite.all(-1)
    if deferred is not None:
        deferred.add("finite", name, step, ~finite)
    elif not bool(finite.all()):
        _raise_step("finite", name, step, ~np.asarray(be.to_host(finite)))


def _factor(be: Any, G: Any, step: Any, deferred: DeferredChecks | None) -> Any:
    """Lower Cholesky factor of ``G`` (its lower triangle is read; numpy may factor in place);
    failures name the step."""
    if deferred is not None:
        L, bad = be.cholesky_flags(G, overwrite_a=True)
        deferred.add("factor", "G", step, bad)
        return L
    L, info = be.cholesky(G, overwrite_a=True)
    info = np.asarray(info)
    if np.any(info):
        _raise_step("factor", "G", step, info != 0)
    return L


# ---------------------------------------------------------------------------------- the step


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _mv(be: Any, M: Any, v: Any) -> Any:
    """``M v`` where ``M`` may be a scalar ``c`` meaning ``c·I``."""
    return M * v if _is_scalar(M) else be.matvec(M, v)


def _plus(be: Any, M: Any, R: Any) -> Any:
    """``R + M`` where ``R`` may be a scalar ``r`` meaning ``r·I``."""
    return be.add_identity(M, float(R)) if _is_scalar(R) else R + M


def _reference_terms(be: Any, Q: Any, R: Any, N: Any, x_ref: Any, u_ref: Any) -> tuple:
    """Stage cost ``(x−r)ᵀQ(x−r) + (u−ū)ᵀR(u−ū) + 2(x−r)ᵀN(u−ū)`` written as
    ``xᵀQx + uᵀRu + 2xᵀNu + 2qᵀx + 2ρᵀu + c₀``: returns ``(q, ρ, c₀)`` (None where zero)."""
    q = rho = c0 = None
    if x_ref is not None:
        Qr = _mv(be, Q, x_ref)
        q, c0 = -Qr, be.sum(x_ref * Qr, axis=-1)
        if N is not None:
            rho = -be.matvec(be.mT(N), x_ref)
    if u_ref is not None:
        Ru = _mv(be, R, u_ref)
        rho = -Ru if rho is None else rho - Ru
        c0 = be.sum(u_ref * Ru, axis=-1) + (0.0 if c0 is None else c0)
        if N is not None:
            Nu = be.matvec(N, u_ref)
            q = -Nu if q is None else q - Nu
            if x_ref is not None:
                c0 = c0 + 2.0 * be.sum(x_ref * Nu, axis=-1)
    return q, rho, c0


def _affine_terms(be: Any, S_next: Any, A: Any, B: Any, L: Any, W: Any, Q: Any, R: Any,
                  N: Any, s_next: Any, s0_next: Any, c: Any, x_ref: Any, u_ref: Any) -> tuple:
    """Feedforward ``k`` and value terms ``s``, ``s0`` of one step (see :func:`lqr_step`)."""
    if s_next is None:
        s_next = be.zeros(tuple(S_next.shape[:-1]), dtype=be.dtype_of(S_next),
                          device=be.device_of(S_next))
    Scs = s_next if c is None else be.matvec(S_next, c) + s_next       # S c + s
    g = Scs if B is None else be.matvec(be.mT(B), Scs)
    q, rho, c0 = _reference_terms(be, Q, R, N, x_ref, u_ref)
    if rho is not None:
        g = g + rho
    w = be.solve_triangular(L, g[..., None], lower=True)                # L⁻¹ g
    k = -be.solve_triangular(L, w, lower=True, trans=True)[..., 0]       # −G⁻¹ g
    w = w[..., 0]
    s = be.matvec(be.mT(A), Scs) - be.matvec(be.mT(W), w)
    if q is not None:
        s = s + q
    s0 = -be.sum(w * w, axis=-1)
    if s0_next is not None:
        s0 = s0 + s0_next
    if c0 is not None:
        s0 = s0 + c0
    if c is not None:
        s0 = s0 + be.sum(c * (Scs + s_next), axis=-1)
    return k, s, s0


@public_api
def lqr_step(S_next: Any, A: Any, B: Any, Q: Any, R: Any, N: Any = None, *, s_next: Any = None,
             s0_next: Any = None, c: Any = None, x_ref: Any = None, u_ref: Any = None,
             step: Any = None, backend: Any = None,
             deferred: DeferredChecks | None = None) -> StepResult:
    """One backward step of the affine Riccati recursion (the model is trajax's ``lqr_step``).

    With ``V_{k+1}(x) = xᵀSx + 2sᵀx + s0`` (``S = S_next``, ``s = s_next``, ``s0 = s0_next``),
    the stage cost ``(x−r)ᵀQ(x−r) + (u−ū)ᵀR(u−ū) + 2(x−r)ᵀN(u−ū)`` folded into
    ``xᵀQx + uᵀRu + 2xᵀNu + 2qᵀx + 2ρᵀu + c₀`` and ``x⁺ = Ax + Bu + c``:

    .. math::

        G &= R + BᵀSB = LLᵀ,\\quad H = BᵀSA + Nᵀ,\\quad g = ρ + Bᵀ(Sc + s),\\\\
        K &= G⁻¹H,\\quad k = −G⁻¹g \\qquad (u = −Kx + k),\\\\
        S_k &= \\mathrm{sym}(Q + AᵀSA − HᵀG⁻¹H),\\\\
        s_k &= q + Aᵀ(Sc + s) − HᵀG⁻¹g,\\\\
        s0_k &= c₀ + cᵀ(Sc + 2s) + s0 − gᵀG⁻¹g,

    with ``W = L⁻¹H`` and ``w = L⁻¹g`` from triangular solves (``HᵀG⁻¹H = WᵀW``); no inverse is
    formed.  Without affine data (``s_next``, ``c``, ``x_ref``, ``u_ref`` all None) only ``K``
    and ``S`` are computed.

    Parameters
    ----------
    S_next : array (*batch, n, n)
        Symmetric ``S_{k+1}``.
    A : array (*batch, n, n)
    B : array (*batch, n, m) or None
        ``None`` means ``B = I`` (``m = n``); the products with it are skipped.
    Q : array (*batch, n, n) or float
        State weight; a Python scalar ``q`` means ``q·I`` (never materialised).
    R : array (*batch, m, m) or float
        Input weight (positive definite); a Python scalar ``r`` means ``r·I``.
    N : array (*batch, n, m), optional
        Cross weight.
    s_next : array (*batch, n), optional
        Linear value term ``s_{k+1}`` (default zero).
    s0_next : array (*batch,), optional
        Constant value term ``s0_{k+1}`` (default zero).
    c : array (*batch, n), optional
        Affine drift ``c_k``.
    x_ref : array (*batch, n), optional
        State reference ``r_k``.
    u_ref : array (*batch, m), optional
        Input reference ``ū_k``.
    step : int, optional
        ``k``, named in error messages.
    backend : backend namespace, optional
        Default: ``get_backend`` of the arrays.
    deferred : DeferredChecks, optional
        Record the failure flags there instead of checking them now (torch: no host sync).

    Returns
    -------
    StepResult
        ``(K, k, S, s, s0, L)``; ``k``, ``s``, ``s0`` are None without affine data.  numpy in,
        numpy out; torch in, torch out (every operation is out of place: autograd flows through).

    Raises
    ------
    NumericalError
        ``G`` is not positive definite, or ``S``, ``s`` or ``s0`` overflowed (names the step and
        the first failing batch member).
    """
    be = backend or get_backend(S_next, A, B, Q, R, N)
    SA = be.matmul(S_next, A)
    X = be.matmul(be.mT(A), SA)                                           # AᵀSA
    if B is None:
        G, H = _plus(be, S_next, R), SA
    else:
        G = _plus(be, be.matmul(be.mT(B), be.matmul(S_next, B)), R)
        H = be.matmul(be.mT(B), SA)
    if N is not None:
        H = H + be.mT(N)
    # G, H, X and W are fresh arrays of this step: numpy reuses their memory (O(n²) streaming)
    L = _factor(be, G, step, deferred)
    del G, SA
    W = be.solve_triangular(L, H, lower=True, overwrite_b=True)
    del H
    k = s = s0 = None
    if s_next is not None or c is not None or x_ref is not None or u_ref is not None:
        k, s, s0 = _affine_terms(be, S_next, A, B, L, W, Q, R, N, s_next, s0_next, c, x_ref, u_ref)
        _check_finite(be, s, "s", step, deferred, 1)
        _check_finite(be, s0, "s0", step, deferred, 0)
    S = be.riccati_update(Q, X, W)                                        # consumes X
    _check_finite(be, S, "S", step, deferred, 2)
    K = be.solve_triangular(L, W, lower=True, trans=True, overwrite_b=True)  # consumes W
    return StepResult(K, k, S, s, s0, L)


# ---------------------------------------------------------------------------------- the loop


def terminal_value(Qf: Any, x_ref: Any = None, *, step: Any = None,
                   backend: Any = None) -> tuple[Any, Any, Any]:
    """``V_T(x) = (x − r_T)ᵀQ_f(x − r_T)`` as ``(S_T, s_T, s0_T) = (Q_f, −Q_f r_T, r_TᵀQ_f r_T)``.

    Without ``x_ref`` the value is purely quadratic: ``(Q_f, None, None)``.  An overflow of
    ``s_T`` or ``s0_T`` raises :class:`NumericalError` naming ``step`` (``T``).
    """
    if x_ref is None:
        return Qf, None, None
    be = backend or get_backend(Qf, x_ref)
    Qr = be.matvec(Qf, x_ref)
    s, s0 = -Qr, be.sum(x_ref * Qr, axis=-1)
    _check_finite(be, s, "s", step, None, 1)
    _check_finite(be, s0, "s0", step, None, 0)
    return Qf, s, s0


def backward_recursion(stages: Iterable[Stage], S_T: Any, s_T: Any = None, s0_T: Any = None, *,
                       backend: Any = None,
                       deferred: DeferredChecks | None = None) -> Iterator[tuple[int, StepResult]]:
    """Run :func:`lqr_step` backwards over ``stages`` (``k = T−1, …, 0``), yielding ``(k, step)``.

    ``V_T`` is ``(S_T, s_T, s0_T)``; each step feeds its ``(S, s, s0)`` to the next.  Only the
    current ``V_{k+1}`` is held, so a lazily generated ``stages`` (a provider of ``A_k``) runs in
    O(n²) memory.  With ``deferred`` the failure flags are checked once, after the last stage.

    Raises
    ------
    NumericalError
        As :func:`lqr_step`.
    """
    S, s, s0 = S_T, s_T, s0_T
    for st in stages:
        res = lqr_step(S, st.A, st.B, st.Q, st.R, st.N, s_next=s, s0_next=s0, c=st.c,
                       x_ref=st.x_ref, u_ref=st.u_ref, step=st.k, backend=backend,
                       deferred=deferred)
        S, s, s0 = res.S, res.s, res.s0
        yield st.k, res
        del res, st          # O(n²) memory: nothing of the previous stage outlives it
    if deferred is not None:
        deferred.raise_first()


# ---------------------------------------------------------------------------------- public wrapper


def _as_arrays(be: Any, S_next: Any, A: Any, B: Any, Q: Any, R: Any, N: Any) -> tuple:
    """Arrays of one backend; Python scalars ``Q``/``R`` are kept (they mean ``c·I``)."""
    like = S_next if be.is_array(S_next) else A
    device = be.device_of(like) if be.is_array(like) else None
    dtype = be.dtype_of(like) if be.is_array(like) else None

    def conv(x: Any) -> Any:
        if x is None or be.is_array(x):
            return x
        if np.ndim(x) == 0 and not isinstance(x, bool):
            return float(x)
        return be.asarray(x, dtype=dtype, device=device)

    return conv(S_next), conv(A), conv(B), conv(Q), conv(R), conv(N)


def _check_shapes(S_next: Any, A: Any, B: Any, Q: Any, R: Any, N: Any) -> None:
    n = A.shape[-1]
    if A.ndim < 2 or A.shape[-2] != n:
        raise DimensionError(f"A: expected (*batch, n, n); found shape {format_shape(A.shape)}")
    m = n if B is None else B.shape[-1]
    checks = [("S_next", S_next, (n, n)), ("Q", Q, (n, n)), ("R", R, (m, m))]
    checks += [("B", B, (n, m)), ("N", N, (n, m))]
    for name, x, shape in checks:
        if x is None or _is_scalar(x):
            continue
        if x.ndim < 2 or tuple(x.shape[-2:]) != shape:
            raise DimensionError(f"{name}: expected (*batch, {shape[0]}, {shape[1]}); found shape "
                                 f"{format_shape(x.shape)}")


@public_api
def riccati_step(S_next: Any, A: Any, B: Any, Q: Any, R: Any, N: Any = None, *,
                 step: Any = None) -> tuple[Any, Any]:
    """One backward Riccati step ``(S_{k+1}, A_k, B_k, Q_k, R_k, N_k) -> (K_k, S_k)``.

    .. math::

        K_k = (R_k + B_kᵀS_{k+1}B_k)^{-1}(B_kᵀS_{k+1}A_k + N_kᵀ),\\qquad
        S_k = Q_k + A_kᵀS_{k+1}A_k − (B_kᵀS_{k+1}A_k + N_kᵀ)ᵀ K_k,

    the quadratic part of :func:`lqr_step` (Cholesky solves, symmetrised ``S_k``), with the
    arguments checked for shape.  The optimal input is ``u_k = −K_k x_k``.

    Parameters
    ----------
    S_next : array (*batch, n, n)
        Symmetric cost-to-go matrix of step ``k+1``.
    A : array (*batch, n, n)
        State matrix of step ``k``.
    B : array (*batch, n, m) or None
        Input matrix; ``None`` means the identity (``m = n``).
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
        numpy in, numpy out; torch in, torch out on the same device.  Batch dimensions
        broadcast.  No dtype conversion and no symmetry/definiteness validation (the inner
        loop; :func:`ltv_control.finite_horizon_lqr` validates and converts).

    Raises
    ------
    NumericalError
        When ``R + BᵀS B`` is not positive definite or ``S`` overflows (names the step and
        batch member).
    DimensionError
        When the trailing matrix shapes do not fit together.
    """
    be = get_backend(S_next, A, B, Q, R, N)
    S_next, A, B, Q, R, N = _as_arrays(be, S_next, A, B, Q, R, N)
    _check_shapes(S_next, A, B, Q, R, N)
    res = lqr_step(S_next, A, B, Q, R, N, step=step, backend=be)
    return res.K, res.S
