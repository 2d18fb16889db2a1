"""Riccati-factored ADMM for the stage-structured constrained LQR: the private fast path of
:class:`ltv_control.constrained.ConstrainedLQR` (``method="admm"``); the algorithm is described
in :class:`RiccatiADMM`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numbers
from typing import Any

import numpy as np

from ltv_control._exceptions import ArgumentError, PropertyError
from ltv_control.backends import numpy_backend
from ltv_control.riccati import Stage, backward_recursion

__all__ = ["ADMMSettings", "RiccatiADMM", "ADMMResult", "validate_admm_option"]


@dataclass
class ADMMSettings:
    """Options of the ADMM fast path (every one with its default).

    Attributes
    ----------
    eps_abs, eps_rel : float
        Absolute / relative residual tolerances (∞-norm); defaults 1e-9 and 1e-6.
    max_iter : int
        Iteration cap per solve (default 4000); on reaching it the solve is reported as
        not converged.
    alpha : float
        Over-relaxation ``α ∈ (0, 2)`` (default 1.6).
    rho : float or None
        Initial penalty; ``None`` (default) uses ``½·sqrt(λ_min λ_max)`` of the condensed
        input Hessian (see :meth:`RiccatiADMM._initial_rho`).
    adapt_every : int
        Check the residual balance every this many iterations (default 50; 0 disables);
        ``ρ`` is rescaled (one refactorisation) when the relative primal and dual residuals
        differ by more than a factor ``adapt_ratio²`` (default ``adapt_ratio = 10``): a rescue
        for badly scaled problems, not a tuning loop.
    check_every : int
        Evaluate the termination test every this many iterations (default 1).
    """

    eps_abs: float = 1e-9
    eps_rel: float = 1e-6
    max_iter: int = 4000
    alpha: float = 1.6
    rho: Optional[float] = None
    adapt_every: int = 50
    adapt_ratio: float = 10.0
    check_every: int = 1

    def __setattr__(self, name: str, value: Any) -> None:
        # every assignment is checked (construction, ``admm_options`` and later updates)
        super().__setattr__(name, validate_admm_option(name, value))


# name -> (kind, lower bound, lower bound inclusive, upper bound, expected (for messages))
_OPTION_RULES = {
    "eps_abs": ("real", 0.0, True, None, "a finite number >= 0"),
    "eps_rel": ("real", 0.0, True, None, "a finite number >= 0"),
    "max_iter": ("int", 1, True, None, "an integer >= 1"),
    "alpha": ("real", 0.0, False, 2.0, "a number in (0, 2)"),
    "rho": ("real", 0.0, False, None, "a finite number > 0 or None"),
    "adapt_every": ("int", 0, True, None, "an integer >= 0 (0 disables)"),
    "adapt_ratio": ("real", 1.0, False, None, "a finite number > 1"),
    "check_every": ("int", 1, True, None, "an integer >= 1"),
}


def validate_admm_option(name: str, value: Any) -> Any:
    """Check one ADMM option and return it normalised (``int`` / ``float``).

    Parameters
    ----------
    name : str
        A field of :class:`ADMMSettings`.
    value : object
        Its value.

    Returns
    -------
    int, float or None
        ``value`` as a Python number (``rho`` may be None).

    Raises
    ------
    ArgumentError
        Unknown option, or a value of the wrong type (``max_iter='x'``, a float iteration count).
    PropertyError
        A value out of range or not finite (``rho=-1``, ``check_every=0``, ``alpha=2``).
    """
    if name not in _OPTION_RULES:
        raise ArgumentError(f"admm_options: unknown option {name!r}; accepted: {sorted(_OPTION_RULES)}")
    kind, low, inclusive, high, expected = _OPTION_RULES[name]
    if name == "rho" and value is None:
        return None
    number = numbers.Integral if kind == "int" else numbers.Real
    if isinstance(value, bool) or not isinstance(value, number):
        raise ArgumentError(f"admm_options[{name!r}]: expected {expected}, found "
                            f"{type(value).__name__} {value!r}")
    value = int(value) if kind == "int" else float(value)
    ok = np.isfinite(value) and (value >= low if inclusive else value > low)
    if not ok or (high is not None and not value < high):
        raise PropertyError(f"admm_options[{name!r}]: expected {expected}, found {value!r}")
    return value


@dataclass
class ADMMResult:
    """Outcome of one ADMM solve: plan ``x (T+1, n)``, ``u (T, m)``, iterations, convergence."""

    x: np.ndarray
    u: np.ndarray
    iterations: int
    converged: bool
    primal_residual: float
    dual_residual: float
    refactorizations: int = 0


@dataclass
class _Blocks:
    """Constraint blocks of the splitting (all optional)."""

    u_ball: Optional[np.ndarray] = None          # (T,) radii, inf = no budget
    u_box: Optional[tuple] = None                # (lo (T, m), hi (T, m))
    x_box: Optional[tuple] = None                # (lo (T, n), hi (T, n)) for x_1..x_T
    feat_step: Optional[np.ndarray] = None       # (p,) steps in 1..T
    feat_a: Optional[np.ndarray] = None          # (p, n) unit rows
    feat_b: Optional[np.ndarray] = None          # (p,)
    names: list = field(default_factory=list)


class RiccatiADMM:
    """ADMM solver for one fixed constrained LQR, reused across solves (warm-startable).

    Problem (cost without 1/2, as everywhere in ltv-control)::

        minimise   sum_{k<T} (x_k - r_k)ᵀQ_k(x_k - r_k) + u_kᵀR_k u_k + (x_T - r_T)ᵀQ_f(x_T - r_T)
        subject to x_{k+1} = A_k x_k + B_k u_k + c_k,   x_0 given,
                   C_j v_{k_j} ∈ 𝒞_j  for every constraint block j,

    where each block acts on one stage variable (``u_k`` or ``x_k``, ``k >= 1``) and its set
    𝒞_j has a cheap projection: a Euclidean ball (``‖u_k‖₂ <= ρ_k``), a box, or a half-line
    (``aᵀx_k >= b`` with ``‖a‖ = 1``).

    ADMM splitting (scaled form, relaxation ``α``)::

        v⁺ = argmin_v  f(v) + ρ ‖C v - z + w‖²        (dynamics kept exactly)
        ẑ  = α C v⁺ + (1 - α) z
        z⁺ = Π_𝒞(ẑ + w)
        w⁺ = w + ẑ - z⁺

    The v-update is an LQR problem whose Hessians ``Q_k + ρ C_xᵀC_x`` and ``R_k + ρ C_uᵀC_u``
    do not change between iterations: the Riccati gains ``K_k`` and matrices ``S_k`` are
    computed once per ``ρ`` (Cholesky of ``R̃_k + B_kᵀS_{k+1}B_k``), and every iteration runs
    only the affine backward pass ``s_k = d_k + (A_k - B_kK_k)ᵀ s_{k+1}`` and the forward
    rollout (``O(T n²)`` work, ``2T`` small mat-vecs).  ``ρ`` is re-balanced from the primal
    and dual residuals (as in OSQP), which costs one refactorisation.  Warm starts keep
    ``z``, ``w``, ``ρ`` and the factorisation of the previous solve.

    Termination (∞-norms, OSQP-style)::

        ‖C v - z‖ <= eps_abs + eps_rel · max(‖C v‖, ‖z‖)
        2ρ‖Cᵀ(z⁺ - z)‖ <= eps_abs + eps_rel · 2ρ‖Cᵀ w‖

    Parameters
    ----------
    A : ndarray (T, n, n)
    B : ndarray (T, n, m)
    c : ndarray (T, n)
        Affine drift (zeros when absent).
    Q : ndarray (T, n, n)
        Stage weights (PSD); ``Q[0]`` only enters the reported cost since ``x_0`` is fixed.
    R : ndarray (T, m, m)
        Input weights (PD).
    Qf : ndarray (n, n)
        Terminal weight (PSD).
    u_ball : ndarray (T,) or None
        Per-step budgets ``‖u_k‖₂ <= u_ball[k]`` (``inf`` = none).
    u_box, x_box : tuple of ndarray or None
        ``(lo, hi)`` of shapes ``(T, m)`` and ``(T, n)`` (``x_box`` for ``x_1..x_T``).
    features : tuple (steps (p,), a (p, n), b (p,)) or None
        Half-spaces ``a_jᵀ x_{steps_j} >= b_j`` with ``steps_j >= 1``.
    settings : ADMMSettings
    """

    def __init__(self, A, B, c, Q, R, Qf, *, u_ball=None, u_box=None, x_box=None,
                 features=None, settings: ADMMSettings | None = None) -> None:
        self.A, self.B, self.c = A, B, c
        self.Q, self.R, self.Qf = Q, R, Qf
        self.T, self.n = A.shape[0], A.shape[1]
        self.m = B.shape[2]
        self._identity_B = self.m == self.n and bool(np.all(B == np.eye(self.n)))
        self.settings = settings or ADMMSettings()
        blocks = _Blocks()
        if u_ball is not None and np.any(np.isfinite(u_ball)):
            blocks.u_ball = np.asarray(u_ball, dtype=np.float64)
        if u_box is not None:
            blocks.u_box = u_box
        if x_box is not None:
            blocks.x_box = x_box
        if features is not None and len(features[0]):
            steps, a, b = features
            scale = np.linalg.norm(a, axis=1)
            blocks.feat_step = np.asarray(steps, dtype=np.intp)
            blocks.feat_a = a / scale[:, None]
            blocks.feat_b = b / scale
        self.blocks = blocks
        self.n_u_copies = int(blocks.u_ball is not None) + int(blocks.u_box is not None)
        # Q_k r_k enters the linear term; precompute the stacked weights on x_1..x_T.
        self._Qx = np.concatenate([Q[1:], Qf[None]], axis=0)            # (T, n, n) for x_1..x_T
        self._feat_gram = None
        if blocks.feat_a is not None:
            gram = np.zeros((self.T, self.n, self.n))
            np.add.at(gram, blocks.feat_step - 1,
                      np.einsum("pi,pj->pij", blocks.feat_a, blocks.feat_a))
            self._feat_gram = gram
        self.rho = self._initial_rho()
        self._factor(self.rho)
        self._state: Optional[dict] = None
        self.refactorizations = 0

    # ------------------------------------------------------------------ set-up
    def _initial_rho(self) -> float:
        """``ρ₀ = ½·sqrt(λ_min·λ_max)`` of the condensed input Hessian ``R̄ + ΓᵀQ̄Γ``.

        ``λ_min`` is bounded below by ``min_k λ_min(R_k)``; ``λ_max`` comes from a short power
        iteration with Hessian-vector products (a rollout and an adjoint pass).  The factor ½
        was the fastest setting on every problem family measured (steering-like rank-one
        feature weights with norm budgets, the MPT3 regulation example, random boxes).
        """
        if self.settings.rho is not None:
            return float(self.settings.rho)
        lam_min = float(min(np.linalg.eigvalsh(R)[0] for R in self.R))
        lam_max = self._hessian_max_eig()
        return max(0.5 * np.sqrt(max(lam_min, 1e-12) * max(lam_max, lam_min)), 1e-10)

    def _hessian_vec(self, v: np.ndarray) -> np.ndarray:
        """``(R̄ + ΓᵀQ̄Γ) v`` for inputs ``v (T, m)``: rollout from 0, then the adjoint pass."""
        T = self.T
        x = np.zeros((T + 1, self.n))
        for k in range(T):
            x[k + 1] = self.A[k] @ x[k] + self.B[k] @ v[k]
        y = np.matmul(self._Qx, x[1:, :, None])[:, :, 0]         # Q_k x_k for k = 1..T
        lam = y[T - 1]
        out = np.empty_like(v)
        for k in range(T - 1, -1, -1):
            out[k] = self.R[k] @ v[k] + self.B[k].T @ lam
            if k > 0:
                lam = y[k - 1] + self.A[k].T @ lam
        return out

    def _hessian_max_eig(self, iterations: int = 30) -> float:
        v = np.random.default_rng(0).standard_normal((self.T, self.m))
        v /= np.linalg.norm(v)
        estimate = 0.0
        for _ in range(iterations):
            hv = self._hessian_vec(v)
            estimate = float(np.sum(v * hv))
            norm = np.linalg.norm(hv)
            if norm == 0:
                break
            v = hv / norm
        return estimate

    def _factor(self, rho: float) -> None:
        """Riccati factorisation of the augmented Hessians for penalty ``rho``.

        :func:`ltv_control.riccati.backward_recursion` with ``Q̃`` (``Q`` plus the ``ρ`` terms of
        the state blocks) and ``R̃ = R + ρ·(number of input copies)·I``: ``S_T = Q̃_T``,
        ``H_k = R̃_k + B_kᵀS_{k+1}B_k = L_kL_kᵀ``, ``K_k = H_k⁻¹B_kᵀS_{k+1}A_k``,
        ``S_k = Q̃_k + A_kᵀS_{k+1}A_k − K_kᵀH_kK_k``.  ``H_k⁻¹`` (the per-iteration map
        ``g -> H_k⁻¹g``) comes from Cholesky solves with ``L_k``.
        """
        T, n, m = self.T, self.n, self.m
        Qt = self._Qx.copy()                       # Q̃ for x_1..x_T (index k-1)
        if self.blocks.x_box is not None:
            Qt += rho * np.eye(n)
        if self._feat_gram is not None:
            Qt += rho * self._feat_gram
        Rt = self.R + (rho * self.n_u_copies) * np.eye(m)
        be = numpy_backend
        # S_0 is not needed (x_0 is given); stage 0 takes Q_0 only to keep the loop uniform.
        stages = (Stage(k, self.A[k], None if self._identity_B else self.B[k],
                        Qt[k - 1] if k > 0 else self.Q[0], Rt[k]) for k in range(T - 1, -1, -1))
        K = np.empty((T, m, n))
        S_next = np.empty((T, n, n))               # S_{k+1} for k = 0..T-1
        H_inv = np.empty((T, m, m))
        S_next[T - 1] = Qt[T - 1]
        eye_m = np.eye(m)
        for k, step in backward_recursion(stages, Qt[T - 1], backend=be):
            K[k] = step.K
            H_inv[k] = be.cholesky_solve(step.L, eye_m)
            if k > 0:
                S_next[k - 1] = step.S
        A, B = self.A, self.B
        self.K = K
        self.Acl = A - B @ K                                   # (T, n, n)
        self.AclT = np.ascontiguousarray(np.swapaxes(self.Acl, 1, 2))
        self.S_next = S_next
        self.H_inv = H_inv
        self.HinvBt = H_inv @ np.swapaxes(B, 1, 2)             # (T, m, n)
        self.KT = np.swapaxes(K, 1, 2)
        # Constant parts of the affine recursion coming from the drift c.
        Sc = np.einsum("kij,kj->ki", S_next, self.c)           # S_{k+1} c_k
        self._Sc = Sc
        self._AclT_Sc = np.einsum("kij,kj->ki", self.AclT, Sc)
        self._HinvBt_Sc = np.einsum("kij,kj->ki", self.HinvBt, Sc)
        # Layouts for the per-iteration passes (lists avoid per-step indexing overhead).
        self._KT_tail = np.ascontiguousarray(self.KT[1:])
        self._AclT_Sc_tail = np.ascontiguousarray(self._AclT_Sc[1:])
        self._AclT_list = list(self.AclT)
        self._Acl_list = list(np.ascontiguousarray(self.Acl))
        self._Hinv_HinvBt = np.ascontiguousarray(np.concatenate((H_inv, self.HinvBt), axis=2))
        self.rho = rho

    # ------------------------------------------------------------------ pieces
    def _lqr(self, x0, gx, gu):
        """Solve the augmented LQR given linear terms ``gx (T, n)`` on ``x_1..x_T``, ``gu (T, m)``.

        Backward: ``s_T = gx_T``, ``s_k = gx_k - K_kᵀ gu_k + Acl_kᵀ(S_{k+1}c_k + s_{k+1})``;
        feed-forward ``kff_k = H_k⁻¹(gu_k + B_kᵀ(S_{k+1}c_k + s_{k+1}))``; forward
        ``x_{k+1} = Acl_k x_k + c_k - B_k kff_k``, ``u_k = -K_k x_k - kff_k``.
        """
        T = self.T
        d = gx[:-1] - np.matmul(self._KT_tail, gu[1:, :, None])[:, :, 0] + self._AclT_Sc_tail
        s_next = np.empty((T, self.n))
        s = gx[T - 1]
        s_next[T - 1] = s
        AclT = self._AclT_list
        for k in range(T - 1, 0, -1):
            s = d[k - 1] + AclT[k] @ s
            s_next[k - 1] = s
        stacked = np.concatenate((gu, s_next), axis=1)[:, :, None]
        kff = np.matmul(self._Hinv_HinvBt, stacked)[:, :, 0] + self._HinvBt_Sc
        if self._identity_B:
            f = self.c - kff
        else:
            f = self.c - np.matmul(self.B, kff[:, :, None])[:, :, 0]
        x = np.empty((T + 1, self.n))
        x[0] = x0
        Acl = self._Acl_list
        xk = x0
        for k in range(T):
            xk = Acl[k] @ xk + f[k]
            x[k + 1] = xk
        u = -np.matmul(self.K, x[:-1, :, None])[:, :, 0] - kff
        return x, u

    def _apply_C(self, x, u):
        """Stacked ``C v`` for every block, as a list of arrays (same order as ``_project``)."""
        out = []
        b = self.blocks
        if b.u_ball is not None:
            out.append(u)
        if b.u_box is not None:
            out.append(u)
        if b.x_box is not None:
            out.append(x[1:])
        if b.feat_a is not None:
            out.append(np.einsum("pi,pi->p", b.feat_a, x[b.feat_step]))
        return out

    def _project(self, values):
        b = self.blocks
        out = []
        i = 0
        if b.u_ball is not None:
            v = values[i]
            norms = np.linalg.norm(v, axis=1)
            scale = np.minimum(1.0, b.u_ball / np.maximum(norms, 1e-300))
            out.append(v * scale[:, None])
            i += 1
        if b.u_box is not None:
            out.append(np.clip(values[i], b.u_box[0], b.u_box[1]))
            i += 1
        if b.x_box is not None:
            out.append(np.clip(values[i], b.x_box[0], b.x_box[1]))
            i += 1
        if b.feat_a is not None:
            out.append(np.maximum(values[i], b.feat_b))
            i += 1
        return out

    def _linear_terms(self, xref, z, w):
        """Linear terms of the augmented cost: ``gx = -Q̃r - ρ C_xᵀ(z - w)``, ``gu = -ρ C_uᵀ(z - w)``."""
        b = self.blocks
        rho = self.rho
        gx = -np.einsum("kij,kj->ki", self._Qx, xref[1:])
        gu = np.zeros((self.T, self.m))
        i = 0
        if b.u_ball is not None:
            gu -= rho * (z[i] - w[i])
            i += 1
        if b.u_box is not None:
            gu -= rho * (z[i] - w[i])
            i += 1
        if b.x_box is not None:
            gx -= rho * (z[i] - w[i])
            i += 1
        if b.feat_a is not None:
            coef = rho * (z[i] - w[i])
            np.add.at(gx, b.feat_step - 1, -coef[:, None] * b.feat_a)
            i += 1
        return gx, gu

    def _CT_norm(self, parts):
        """∞-norm of ``Cᵀ y`` for block-wise values ``parts`` (summing the u copies)."""
        b = self.blocks
        i = 0
        acc_u = np.zeros((self.T, self.m))
        acc_x = np.zeros((self.T, self.n))
        if b.u_ball is not None:
            acc_u += parts[i]
            i += 1
        if b.u_box is not None:
            acc_u += parts[i]
            i += 1
        if b.x_box is not None:
            acc_x += parts[i]
            i += 1
        if b.feat_a is not None:
            np.add.at(acc_x, b.feat_step - 1, parts[i][:, None] * b.feat_a)
        return max(float(np.max(np.abs(acc_u), initial=0.0)), float(np.max(np.abs(acc_x), initial=0.0)))

    # ------------------------------------------------------------------ solve
    @property
    def has_constraints(self) -> bool:
        b = self.blocks
        return any(v is not None for v in (b.u_ball, b.u_box, b.x_box, b.feat_a))

    def reset(self) -> None:
        """Forget the warm-start state (iterates and dual variables)."""
        self._state = None

    def solve(self, x0: np.ndarray, xref: np.ndarray, *, warm_start: bool = True) -> ADMMResult:
        """Run ADMM from ``x0`` (n,) towards ``xref`` (T+1, n); see the module docstring."""
        st = self.settings
        if not self.has_constraints:
            gx, gu = self._linear_terms(xref, [], [])
            x, u = self._lqr(x0, gx, gu)
            return ADMMResult(x, u, 0, True, 0.0, 0.0)
        if warm_start and self._state is not None:
            z, w = self._state["z"], self._state["w"]
        else:
            gx, gu = self._linear_terms(xref, [np.zeros_like(v) for v in self._zero_parts()],
                                        [np.zeros_like(v) for v in self._zero_parts()])
            # Cold start: project the plan that ignores the constraints' penalties' pull to 0.
            x, u = self._lqr(x0, gx, gu)
            z = self._project(self._apply_C(x, u))
            w = [np.zeros_like(v) for v in z]
        alpha = st.alpha
        refactor = 0
        converged = False
        r_prim = r_dual = np.inf
        it = 0
        for it in range(1, st.max_iter + 1):
            gx, gu = self._linear_terms(xref, z, w)
            x, u = self._lqr(x0, gx, gu)
            Cv = self._apply_C(x, u)
            z_hat = [alpha * cv + (1.0 - alpha) * zi for cv, zi in zip(Cv, z)]
            z_new = self._project([zh + wi for zh, wi in zip(z_hat, w)])
            w = [wi + zh - zn for wi, zh, zn in zip(w, z_hat, z_new)]
            dz = [zn - zi for zn, zi in zip(z_new, z)]
            z = z_new
            if it % st.check_every == 0 or it == st.max_iter:
                r_prim = max(float(np.max(np.abs(cv - zi), initial=0.0)) for cv, zi in zip(Cv, z))
                r_dual = 2.0 * self.rho * self._CT_norm(dz)
                scale_p = max(max(float(np.max(np.abs(cv), initial=0.0)) for cv in Cv),
                              max(float(np.max(np.abs(zi), initial=0.0)) for zi in z))
                y_norm = 2.0 * self.rho * self._CT_norm(w)
                eps_p = st.eps_abs + st.eps_rel * scale_p
                eps_d = st.eps_abs + st.eps_rel * y_norm
                if r_prim <= eps_p and r_dual <= eps_d:
                    converged = True
                    break
                if st.adapt_every and it % st.adapt_every == 0:
                    ratio = np.sqrt((r_prim / max(scale_p, 1e-300))
                                    / max(r_dual / max(y_norm, 1e-300), 1e-300))
                    if ratio > st.adapt_ratio or ratio < 1.0 / st.adapt_ratio:
                        ratio = float(np.clip(ratio, 1e-3, 1e3))
                        new_rho = self.rho * ratio
                        w = [wi / ratio for wi in w]          # keep y = 2ρw fixed
                        self._factor(new_rho)
                        refactor += 1
        self.refactorizations += refactor
        self._state = {"z": z, "w": w}
        # Report the projected plan's own feasibility (v, not z): the caller checks it.
        return ADMMResult(x, u, it, converged, r_prim, r_dual, refactor)

    def _zero_parts(self):
        b = self.blocks
        parts = []
        if b.u_ball is not None:
            parts.append(np.zeros((self.T, self.m)))
        if b.u_box is not None:
            parts.append(np.zeros((self.T, self.m)))
        if b.x_box is not None:
            parts.append(np.zeros((self.T, self.n)))
        if b.feat_a is not None:
            parts.append(np.zeros(len(b.feat_b)))
        return parts
