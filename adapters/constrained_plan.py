"""The constrained steerer's runtime: per-step bases, the budgeted plan and the law that applies it.

:func:`build_bases` builds the orthonormal bases ``U_k`` (``d = rank`` columns);
:class:`ConstrainedPlanner` holds the QP of one attachment
(:class:`ltv_control.constrained.ConstrainedLQR` on the projected plant, built once) and plans at
the first controlled layer of every forward pass; :class:`ConstrainedLaw` is the per-layer law
that reads that plan (and the optional budget-clipped LFS correction).  The equations are in
:mod:`ltv_control.adapters.constrained_steerer`.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ltv_control._exceptions import InfeasibleError
from ltv_control.adapters._checks import to_numpy64
from ltv_control.adapters.laws import Law

__all__ = ["build_bases", "ConstrainedPlanner", "ConstrainedLaw"]


# --------------------------------------------------------------------------- bases
def build_bases(A: np.ndarray, v: np.ndarray, rank: int, *, tol: float = 1e-8) -> np.ndarray:
    """Per-step orthonormal bases from feature directions, adjoint directions and singular vectors.

    Parameters
    ----------
    A : ndarray (T, n, n)
        Plant matrices ``A_k`` (float64).
    v : ndarray (T+1, n)
        Feature directions ``v_0..v_T`` (zero rows allowed).
    rank : int
        ``d``, columns per step (``1 <= d <= n``).
    tol : float
        Relative norm below which a candidate (after Gram–Schmidt) is dropped.

    Returns
    -------
    U : ndarray (T+1, n, d)
        ``U_kᵀU_k = I_d``.  Column order at step ``k``: ``v_k``, ``ψ_k`` (adjoint of ``v_T``),
        then leading left singular vectors of ``A_{k-1}`` and right singular vectors of
        ``A_k`` interleaved; a standard basis completes the set if needed.
    """
    T, n = A.shape[0], A.shape[1]
    psi = np.zeros((T + 1, n))
    psi[T] = v[T]
    for k in range(T - 1, -1, -1):
        p = A[k].T @ psi[k + 1]
        nrm = np.linalg.norm(p)
        psi[k] = p / nrm if nrm > 0 else 0.0
    left = [None] * (T + 1)   # left singular vectors of A_{k-1}, for step k
    right = [None] * (T + 1)  # right singular vectors of A_k, for step k
    for k in range(T):
        W, _, Vt = np.linalg.svd(A[k])
        left[k + 1] = W[:, :rank].T
        right[k] = Vt[:rank]
    U = np.empty((T + 1, n, rank))
    for k in range(T + 1):
        cands = [v[k], psi[k]]
        lists = [x for x in (left[k], right[k]) if x is not None]
        for pair in itertools.zip_longest(*lists):
            cands.extend(c for c in pair if c is not None)
        cols: list[np.ndarray] = []
        for c in itertools.chain(cands, np.eye(n)):
            if len(cols) == rank:
                break
            nrm0 = np.linalg.norm(c)
            if nrm0 == 0:
                continue
            w = c / nrm0
            for _ in range(2):  # re-orthogonalise once (classical Gram–Schmidt twice)
                for q in cols:
                    w = w - (q @ w) * q
            nrm = np.linalg.norm(w)
            if nrm > tol:
                cols.append(w / nrm)
        U[k] = np.stack(cols, axis=1)
    return U


# --------------------------------------------------------------------------- planner
class ConstrainedPlanner:
    """Everything one attachment needs to plan: the QP (built once) and its data."""

    def __init__(self, steerer: Any, controlled: list[int], lam: float,
                 budget: float, terminal_feature: bool, feedback: bool, method: str,
                 on_infeasible: str) -> None:
        from ltv_control import LTVSystem
        from ltv_control.constrained import ConstrainedLQR

        T = steerer.horizon
        self.controlled = list(controlled)
        self.start = controlled[0] if controlled else T
        self.feedback = feedback
        self.on_infeasible = on_infeasible
        self.stats = {"plans": 0, "relaxed": 0}
        k0 = self.start
        if k0 >= T:
            self.qp = None
            return
        U = to_numpy64(steerer.bases)                      # (T+1, n, d)
        self.U = U
        self.U_t = steerer.bases                       # torch float32 CPU
        A_r = to_numpy64(steerer.A_r)[k0:]                 # (T-k0, d, d)
        zbar = to_numpy64(steerer.z_mean)
        v = to_numpy64(steerer.v_all)
        e = to_numpy64(steerer.e_norm_all)
        a = to_numpy64(steerer.act_norm)
        self.zbar_t = steerer.z_mean
        d = U.shape[2]
        Tk = T - k0
        vt = np.einsum("kni,kn->ki", U, v)            # ṽ_k = U_kᵀ v_k   (T+1, d)
        beta_tilde = lam * e - np.einsum("kn,kn->k", v, zbar)
        active_feature = e > 0
        x_ref = np.where(active_feature[:, None], vt * beta_tilde[:, None], 0.0)[k0:]
        q, qf, rr = steerer.q, steerer.qf, steerer.r
        Q = q * np.einsum("ki,kj->kij", vt[k0:T], vt[k0:T])
        Qf = qf * np.outer(vt[T], vt[T])
        rho = np.zeros(Tk)
        for k in controlled:
            rho[k - k0] = budget * a[k + 1]
        self.rho = rho
        features = None
        self.terminal = None
        if terminal_feature and active_feature[T]:
            features = [(Tk, vt[T], float(beta_tilde[T]))]
            # adjoint of the terminal feature for the closed-form feasibility test
            g = np.zeros((Tk + 1, d))
            g[Tk] = vt[T]
            for j in range(Tk - 1, -1, -1):
                g[j] = A_r[j].T @ g[j + 1]
            self.terminal = (g, float(beta_tilde[T]))
        system = LTVSystem(A_r)
        self.x_ref = x_ref
        self.qp = ConstrainedLQR(system, Q, rr, Qf=Qf, u_norm_max=rho,
                                 feature_constraints=features, method=method)
        self.qp_relaxed = None
        if features is not None:
            self.qp_relaxed = ConstrainedLQR(system, Q, rr, Qf=Qf, u_norm_max=rho, method=method)
        self.v_t = steerer.v_all
        self.w_t = steerer.w

    def plan(self, z: Any):
        """Plan for block inputs ``z (N, n)`` (float32 torch) at ``k₀``: lifted inputs and features."""
        import torch

        k0 = self.start
        z64 = z.detach().to("cpu", torch.float64).numpy()
        x0 = (z64 - to_numpy64(self.zbar_t[k0])) @ self.U[k0]          # (N, d)
        qp = self.qp
        if self.terminal is not None:
            g, b = self.terminal
            best = x0 @ g[0] + float(np.sum(self.rho * np.linalg.norm(g[1:], axis=1)))
            infeasible = best < b
            if np.any(infeasible):
                if self.on_infeasible == "raise":
                    raise InfeasibleError(
                        f"status infeasible: the terminal feature constraint v_Tᵀz_T >= β*_T cannot "
                        f"be met within the per-layer budgets for row(s) "
                        f"{np.flatnonzero(infeasible).tolist()} (best reachable "
                        f"{np.min(best):.4g} < {b:.4g} in deviation coordinates); likely binding: "
                        "u_norm_max, feature_constraints")
        nus = np.empty((x0.shape[0], len(self.rho), x0.shape[1]))
        xs = np.empty((x0.shape[0], len(self.rho) + 1, x0.shape[1]))
        for i in range(x0.shape[0]):
            use = qp
            if self.terminal is not None and infeasible[i]:
                use = self.qp_relaxed
                self.stats["relaxed"] += 1
            sol = use.solve(x0[i], self.x_ref)
            nus[i], xs[i] = sol.u, sol.x
            self.stats["plans"] += 1
        U_next = self.U[k0 + 1:]                                      # (Tk, n, d)
        u = np.einsum("kni,bki->bkn", U_next, nus)                    # (N, Tk, n)
        feat = None
        if self.feedback:
            zhat = to_numpy64(self.zbar_t[k0:-1])[None] + np.einsum("kni,bki->bkn", self.U[k0:-1], xs[:, :-1])
            feat = np.einsum("bkn,kn->bk", zhat, to_numpy64(self.v_t[k0:-1]))
        return u, feat


class ConstrainedLaw(Law):
    """Layer ``k`` of a plan: ``u_k = U_{k+1} ν̂_k`` planned at ``k₀`` for this forward pass, plus
    (``feedback``) ``(f̂_k − v_kᵀz) w_k`` clipped to the budget ``ρ_k``.

    The plan is made by the first controlled layer's call and kept in the pass's ``state``.
    """

    def __init__(self, planner: ConstrainedPlanner, k: int, w: Any, v: Any, rho: Any) -> None:
        self.planner, self.k, self.w, self.v, self.rho = planner, k, w, v, rho

    def to(self, device: Any) -> ConstrainedLaw:
        return ConstrainedLaw(self.planner, self.k, self.w.to(device), self.v.to(device), self.rho.to(device))

    def __call__(self, z: Any, state: dict) -> Any:
        import torch

        planner, k = self.planner, self.k
        shape = z.shape
        flat = z.reshape(-1, shape[-1])
        if "plan" not in state:
            if k != planner.start:
                return None  # the pass did not reach the planning layer first (layers masked)
            u, feat = planner.plan(flat)
            state["plan"] = torch.as_tensor(u, dtype=torch.float32)
            state["feat"] = None if feat is None else torch.as_tensor(feat, dtype=torch.float32)
        j = k - planner.start
        u = state["plan"][:, j].to(z.device)
        if planner.feedback and state["feat"] is not None:
            alpha = state["feat"][:, j].to(z.device) - flat @ self.v
            u = u + alpha.unsqueeze(-1) * self.w
            nrm = u.norm(dim=-1, keepdim=True)
            u = u * torch.clamp(self.rho / torch.clamp(nrm, min=1e-30), max=1.0)
        return u.reshape(shape)
