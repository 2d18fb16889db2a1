r"""Implicit differentiation of the constrained LQR plan with respect to ``x_0`` and ``r``.

The plan of :class:`~ltv_control.constrained.ConstrainedLQR` is the solution of a convex QP
with second-order-cone input budgets.  Condensing the dynamics
(``x = P x_0 + G u + d``, stacked over ``k = 0..T``; ``d`` carries the drift ``c``) leaves a
problem in the inputs ``u`` (length ``N = T m``) alone:

.. math::

    \min_u\; J(u) = (x - r)^\top \bar Q (x - r) + u^\top \bar R u,\qquad
    \nabla J = H u + h,\quad H = 2(G^\top\bar QG + \bar R),\quad
    h = 2G^\top\bar Q(P x_0 + d - r),

with ``\bar Q = blkdiag(Q_0, …, Q_{T-1}, Q_f)``.  At the solution the *active* constraints
``g_i(u; x_0) = 0`` (box faces ``±e_iᵀu``, state-box faces and feature constraints
``±(row of G) u + (row of P) x_0 + const``, and budgets ``½‖u_k‖² − ½ρ_k²``) carry
multipliers ``λ_i > 0`` found from stationarity ``Hu + h + Σλ_i∇g_i = 0`` (least squares).
The implicit function theorem applied to the KKT conditions restricted to the active set,

.. math::

    \begin{bmatrix} H_\lambda & J^\top \\ J & 0 \end{bmatrix}
    \begin{bmatrix} du \\ dλ \end{bmatrix} =
    \begin{bmatrix} -dh \\ -E\,dx_0 \end{bmatrix},\qquad
    H_\lambda = H + \sum_{k\ \text{budget}} λ_k E_k^\top E_k ,

(``J`` the active constraints' gradients in ``u``, ``E`` their ``x_0`` coefficients) gives
the vector-Jacobian product of ``u(x_0, r)``: with ``w = K^{-1}[\bar g_u; 0]`` (``K`` the
symmetric KKT matrix),

.. math::

    \bar g_{x_0} = -2P^\top\bar QG\,w_u - E^\top w_λ,\qquad \bar g_r = 2\bar QG\,w_u .

Differentiability: the plan is a piecewise-smooth function of ``(x_0, r)``; the derivative
computed here is exact where the active set is locally constant (strict complementarity).
Constraints that touch their bound with a zero multiplier (weakly active) are treated as
inactive, which gives one of the one-sided derivatives there.  Linearly dependent active
constraint gradients (LICQ fails, e.g. a box corner lying exactly on a budget sphere) raise
:class:`~ltv_control.NumericalError`.  Cost: the condensed matrices take ``O(T² n m)``
memory and the KKT factorisation ``O((Tm + p)³)`` time (``p`` active constraints): meant
for the projected problems this package builds (``Tm`` up to a few thousand), not for
``T = 30, m = 576`` dense plants.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import scipy.linalg

from ltv_control._exceptions import NumericalError

__all__ = ["CondensedQP", "ActiveSet", "KKTSensitivity", "differentiable_plan"]

_ACTIVE_TOL = 1e-5      # candidate: within 1e-5·scale of the bound
_MULTIPLIER_TOL = 1e-7  # active: λ_i‖∇g_i‖ above 1e-7 of the stationarity terms


class CondensedQP:
    """Condensed dynamics and cost of the constrained LQR problem (``x = P x_0 + G u + d``).

    Parameters
    ----------
    A : array (T, n, n)
    B : array (T, n, m)
    c : array (T, n) or None
    Q : array (T, n, n)
    R : array (T, m, m)
    Qf : array (n, n)

    Attributes
    ----------
    P : array ((T+1) n, n)
    G : array ((T+1) n, T m)
    d : array ((T+1) n,)
    Qbar : array (T+1, n, n)
        ``Q_0 … Q_{T-1}, Q_f``.
    H : array (T m, T m)
        Hessian ``2(GᵀQ̄G + R̄)`` of the cost in ``u``.
    """

    def __init__(self, A: np.ndarray, B: np.ndarray, c: np.ndarray | None, Q: np.ndarray,
                 R: np.ndarray, Qf: np.ndarray) -> None:
        T, n, m = A.shape[0], A.shape[1], B.shape[2]
        self.T, self.n, self.m = T, n, m
        P = np.zeros((T + 1, n, n))
        G = np.zeros((T + 1, n, T * m))
        d = np.zeros((T + 1, n))
        P[0] = np.eye(n)
        for k in range(T):
            P[k + 1] = A[k] @ P[k]
            G[k + 1, :, :k * m] = A[k] @ G[k, :, :k * m]
            G[k + 1, :, k * m:(k + 1) * m] = B[k]
            d[k + 1] = A[k] @ d[k] + (0.0 if c is None else c[k])
        self.P, self.G, self.d = P.reshape(-1, n), G.reshape(-1, T * m), d.reshape(-1)
        self.Qbar = np.concatenate([Q, Qf[None]], axis=0)
        self.Rbar_blocks = np.asarray(R, dtype=np.float64)
        QG = self.apply_Q(self.G)
        Rbar = scipy.linalg.block_diag(*R)
        self.H = 2.0 * (self.G.T @ QG + Rbar)
        self.H = 0.5 * (self.H + self.H.T)

    def apply_Q(self, Y: np.ndarray) -> np.ndarray:
        """``Q̄ Y`` for ``Y`` of shape ((T+1) n, ...), block by block."""
        T1, n = self.T + 1, self.n
        Yb = Y.reshape(T1, n, -1)
        return np.einsum("kij,kjl->kil", self.Qbar, Yb).reshape(Y.shape)

    def linear_term(self, x0: np.ndarray, r: np.ndarray) -> np.ndarray:
        """``h = 2GᵀQ̄(P x_0 + d − r)`` for ``r`` of shape (T+1, n)."""
        return 2.0 * self.G.T @ self.apply_Q(self.P @ x0 + self.d - r.reshape(-1))


class ActiveSet(NamedTuple):
    """Active constraints at a plan.

    Attributes
    ----------
    J : array (p, T m)
        Constraint gradients in ``u`` (linear rows; ``u_kᵀ`` on block ``k`` for a budget).
    E : array (p, n)
        Their coefficients of ``x_0`` (zero for input constraints).
    multipliers : array (p,)
        ``λ_i > 0``.
    budget_steps : list of (row, k)
        Rows of ``J`` that are budgets ``‖u_k‖ = ρ_k``.
    families : dict
        Number of active constraints per family (``u_norm_max``, ``u_box``, ``x_box``,
        ``feature_constraints``).
    """

    J: np.ndarray
    E: np.ndarray
    multipliers: np.ndarray
    budget_steps: list
    families: dict


def _candidates(qp: CondensedQP, x0: np.ndarray, u: np.ndarray, cons: dict, scale: float):
    """Constraints within tolerance of their bound: (family, J row, E row, budget step or None)."""
    T, n, m = qp.T, qp.n, qp.m
    tol = _ACTIVE_TOL * scale
    U = u.reshape(T, m)
    x = (qp.P @ x0 + qp.G @ u + qp.d).reshape(T + 1, n)
    out = []
    rho = cons.get("u_norm_max")
    if rho is not None:
        for k in range(T):
            if np.isfinite(rho[k]) and np.linalg.norm(U[k]) >= rho[k] - tol and rho[k] > 0:
                row = np.zeros(T * m)
                row[k * m:(k + 1) * m] = U[k]
                out.append(("u_norm_max", row, np.zeros(n), k))
    if cons.get("u_box") is not None:
        lo, hi = cons["u_box"]
        for sign, bound, hit in ((-1.0, lo, U <= lo + tol), (1.0, hi, U >= hi - tol)):
            for k, i in np.argwhere(hit & np.isfinite(bound)):
                row = np.zeros(T * m)
                row[k * m + i] = sign
                out.append(("u_box", row, np.zeros(n), None))
    if cons.get("x_box") is not None:
        lo, hi = cons["x_box"]
        Xs = x[1:]
        for sign, bound, hit in ((-1.0, lo, Xs <= lo + tol), (1.0, hi, Xs >= hi - tol)):
            for k, i in np.argwhere(hit & np.isfinite(bound)):
                idx = (k + 1) * n + i
                out.append(("x_box", sign * qp.G[idx], sign * qp.P[idx], None))
    for k, a, b in cons.get("features", []):
        if k >= 1 and a @ x[k] <= b + tol * np.linalg.norm(a):
            rows = slice(k * n, (k + 1) * n)
            out.append(("feature_constraints", -(a @ qp.G[rows]), -(a @ qp.P[rows]), None))
    return out


def find_active_set(qp: CondensedQP, x0: np.ndarray, r: np.ndarray, u: np.ndarray,
                    cons: dict) -> ActiveSet:
    """Active constraints and their multipliers at the plan ``u`` (see the module docstring)."""
    N = u.size
    Hu, h = qp.H @ u, qp.linear_term(x0, r)
    grad = Hu + h
    scale = max(1.0, float(np.max(np.abs(u), initial=0.0)),
                float(np.max(np.abs(qp.P @ x0 + qp.G @ u + qp.d), initial=0.0)))
    cand = _candidates(qp, x0, u, cons, scale)
    term_scale = max(float(np.linalg.norm(Hu) + np.linalg.norm(h)), 1e-300)
    for _ in range(len(cand) + 1):
        if not cand:
            break
        Jc = np.stack([row for _, row, _, _ in cand])
        lam = np.linalg.lstsq(Jc.T, -grad, rcond=None)[0]
        keep = lam * np.linalg.norm(Jc, axis=1) > _MULTIPLIER_TOL * term_scale
        if keep.all():
            break
        cand = [c for c, kpt in zip(cand, keep) if kpt]
    if not cand:
        return ActiveSet(np.zeros((0, N)), np.zeros((0, qp.n)), np.zeros(0), [], {})
    J = np.stack([row for _, row, _, _ in cand])
    E = np.stack([e for _, _, e, _ in cand])
    budget = [(i, k) for i, (_, _, _, k) in enumerate(cand) if k is not None]
    fams: dict = {}
    for fam, *_ in cand:
        fams[fam] = fams.get(fam, 0) + 1
    return ActiveSet(J, E, lam, budget, fams)


class KKTSensitivity:
    """Vector-Jacobian product of the plan ``u(x_0, r)`` by the implicit function theorem.

    Parameters
    ----------
    qp : CondensedQP
    x0 : array (n,)
    r : array (T+1, n)
    u : array (T, m)
        The optimal plan (from any of the solution methods).
    cons : dict
        ``u_norm_max`` (T,) or None, ``u_box``/``x_box`` ``(lo, hi)`` or None, ``features``
        list of ``(k, a, b)``.

    Raises
    ------
    NumericalError
        The active constraint gradients are linearly dependent (LICQ fails): the plan is
        not differentiable there.
    """

    def __init__(self, qp: CondensedQP, x0: np.ndarray, r: np.ndarray, u: np.ndarray,
                 cons: dict) -> None:
        self.qp = qp
        uf = np.asarray(u, dtype=np.float64).reshape(-1)
        self.active = find_active_set(qp, x0, r, uf, cons)
        J, p, N = self.active.J, self.active.J.shape[0], uf.size
        if p and np.linalg.matrix_rank(J) < p:
            raise NumericalError(
                f"ConstrainedLQR gradient: the {p} active constraints ({self.active.families}) "
                "have linearly dependent gradients (LICQ fails, e.g. a box corner on a budget "
                "sphere); the plan is not differentiable at this x0/x_ref")
        self._N = N
        self._lu = None  # the KKT matrix is factored at the first vjp (forward-only use is free)

    def _factor(self) -> tuple:
        qp, act, N = self.qp, self.active, self._N
        p = act.J.shape[0]
        H = qp.H.copy()
        m = qp.m
        for i, k in act.budget_steps:
            blk = slice(k * m, (k + 1) * m)
            H[blk, blk] += act.multipliers[i] * np.eye(m)
        K = np.zeros((N + p, N + p))
        K[:N, :N], K[:N, N:], K[N:, :N] = H, act.J.T, act.J
        return scipy.linalg.lu_factor(K, check_finite=True)

    def vjp(self, grad_u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(∂u/∂x_0)ᵀ ḡ`` (n,) and ``(∂u/∂r)ᵀ ḡ`` (T+1, n) for ``ḡ`` of shape (T, m)."""
        qp, N = self.qp, self._N
        if self._lu is None:
            self._lu = self._factor()
        rhs = np.zeros(self._lu[0].shape[0])
        rhs[:N] = np.asarray(grad_u, dtype=np.float64).reshape(-1)
        w = scipy.linalg.lu_solve(self._lu, rhs)
        w_u, w_l = w[:N], w[N:]
        QGw = qp.apply_Q(qp.G @ w_u)
        g_x0 = -2.0 * qp.P.T @ QGw - self.active.E.T @ w_l
        g_r = 2.0 * QGw
        return g_x0, g_r.reshape(qp.T + 1, qp.n)


def differentiable_plan(be: Any, qp: CondensedQP, x0: Any, r: Any, u: Any) -> tuple[Any, Any]:
    """States ``x = P x_0 + G u + d`` (T+1, n) and cost ``(x−r)ᵀQ̄(x−r) + uᵀR̄u`` in ``be``'s arrays.

    ``x0`` (n,), ``r`` (T+1, n) and ``u`` (T, m) are arrays of the backend ``be`` (float64),
    so gradients flow through them (torch autograd).
    """
    like = dict(dtype=be.dtype_of(x0), device=be.device_of(x0))
    P, G, d = (be.asarray(M, **like) for M in (qp.P, qp.G, qp.d))
    x = (be.matvec(P, x0) + be.matvec(G, u.reshape(-1)) + d).reshape(qp.T + 1, qp.n)
    e = x - r
    Qbar = be.asarray(qp.Qbar, **like)
    cost = be.sum(e * be.matvec(Qbar, e))
    Rbar = be.asarray(qp.Rbar_blocks, **like)
    cost = cost + be.sum(u * be.matvec(Rbar, u))
    return x, cost
