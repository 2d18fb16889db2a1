r"""Constrained finite-horizon LQR: the whole horizon as one quadratic program.

:class:`ConstrainedLQR` solves, for a given initial state ``x_0`` and reference ``r``,

.. math::

    \min_{x,u}\; \sum_{k<T} (x_k-r_k)^\top Q_k (x_k-r_k) + u_k^\top R_k u_k
                 + (x_T-r_T)^\top Q_f (x_T-r_T)

    \text{s.t.}\; x_{k+1} = A_k x_k + B_k u_k + c_k,\quad
    \lVert u_k\rVert_2 \le \rho_k,\quad u_{lo} \le u_k \le u_{hi},\quad
    x_{lo} \le x_k \le x_{hi}\ (k \ge 1),\quad a_j^\top x_{k_j} \ge b_j .

Cost convention: no factor 1/2 (python-control / MATLAB / Drake), and the stage
``k = 0`` term ``(x_0-r_0)ᵀQ_0(x_0-r_0)`` is included, so with no active constraint the
optimal cost equals ``V_0(x_0)`` of :func:`ltv_control.tracking_lqr`
(``x_0ᵀS_0x_0`` of :func:`ltv_control.finite_horizon_lqr` for ``r = 0``).

Two solution methods share one problem definition:

``method="cvxpy"`` (default, the reference)
    A cvxpy problem built **once** in DPP form: ``x_0`` and the reference (as ``F_k r_k``)
    are cvxpy Parameters, the cost is ``sum_squares(F_k x_k - F_k r_k)`` with constant
    factors ``F_kᵀF_k = Q_k`` (Cholesky, or a symmetric square root with the null space
    dropped for singular PSD weights — a rank-one feature weight costs one parameter per
    step), so every :meth:`ConstrainedLQR.solve` re-uses the compiled problem (only the
    parameter values change).  Solver: Clarabel
    (shipped with cvxpy) unless ``solver=`` names another installed conic solver.
``method="admm"`` (fast path)
    A Riccati-factored ADMM (:mod:`ltv_control._constrained_admm`): the equality-constrained
    sub-problem is an LQR whose gains are cached across iterations and solves; the
    constraints are handled by projections onto per-step balls, boxes and half-spaces.
    Converges to the same optimum (agreement tested against the cvxpy problem); when it
    does not converge within ``max_iter`` the solve falls back to the cvxpy reference, which
    either returns the exact plan or raises :class:`InfeasibleError` with its diagnosis.

Failure is never silent: an infeasible problem or a solver failure raises
:class:`~ltv_control.InfeasibleError` carrying the solver status and the constraint
family that is likely binding (found by re-solving with one family dropped at a time, and
by an elastic relaxation that names the steps whose state constraints need slack); every
returned plan is checked against every constraint.

Batches of initial states are solved in a loop over the compiled problem (warm-started
from the previous member).  A stacked problem with one copy per member was measured
(``benchmarks/constrained.py``, T=30, r=32, batch 4 on 2 loaded cores): it compiles ~10x
slower (22 s against 2 s), must be recompiled for every batch size and its memory grows
with copies x parameters, while its re-solve time stayed within a factor of two of the
loop's either way (0.4x to 1.8x over four runs); so the loop is the implementation.

Differentiability: :meth:`ConstrainedLQR.solve` given torch ``x0`` and/or ``x_ref`` that
require grad returns torch ``x``, ``u`` and ``cost`` that carry gradients with respect to
them.  The plan comes from the usual solver (either method); its derivative from the
implicit function theorem applied to the optimality (KKT) conditions at the active set
(:mod:`ltv_control.constrained_grad`; wrapped for autograd by
``ltv_control.backends.torch_autograd``).  Checked against central finite differences with
``u_norm_max``, ``u_box``, ``x_box`` and feature constraints active (``tests/
test_constrained_grad.py``: 1e-4 relative for polyhedral constraints, 5e-4 with active
budgets, where the oracle is limited by the solver's accuracy) and against cvxpylayers.
Exact where the active set is locally constant; a weakly active constraint (zero multiplier)
is treated as inactive; linearly dependent active constraints raise
:class:`~ltv_control.NumericalError`.  First derivatives only (a backward pass with
``create_graph=True`` through the plan raises ``RuntimeError``).  Gradients with respect to
the problem data (``A``, ``B``, ``c``, weights, bounds) are not propagated: such tensors
that require grad are refused with :class:`~ltv_control.ArgumentError` rather than silently
detached.  Cost of the backward pass: one dense ``(Tm + p)``-sized KKT factorisation
(``p`` active constraints) — ~0.15 s at ``T = 30, m = 32`` on one loaded core.

cvxpy is an optional extra (``pip install ltv-control[cvxpy]``) and is imported lazily: this
module (and ``method="admm"``) works without it, except for the cvxpy method and the
infeasibility diagnosis.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, NamedTuple, Sequence

import numpy as np

from ltv_control._constrained_admm import ADMMSettings, RiccatiADMM
from ltv_control._exceptions import (
    ArgumentError,
    DimensionError,
    InfeasibleError,
    PropertyError,
)
from ltv_control._validation import (
    as_array,
    as_terminal_weight,
    as_weight,
    format_shape,
    public_api,
    require_system,
)
from ltv_control.backends import get_torch_backend, is_torch_tensor, numpy_backend
from ltv_control.constrained_grad import CondensedQP, KKTSensitivity, differentiable_plan

__all__ = ["ConstrainedLQR", "ConstrainedSolution", "CONSTRAINT_FAMILIES"]

CONSTRAINT_FAMILIES = ("u_norm_max", "u_box", "x_box", "feature_constraints")
"""Names of the constraint families, as used in :class:`InfeasibleError` messages."""

_F64 = np.dtype("float64")  # a dtype instance: _validation names dtypes by str()
_ACCEPTED = ("optimal", "optimal_inaccurate")
_DEFAULT_SOLVER = "CLARABEL"
_CONSTRAINT_RTOL = 1e-6
_CVXPY_SOLVE_KEYWORDS = {"verbose", "ignore_dpp", "canon_backend", "enforce_dpp"}
_CLARABEL_TOLERANCES = {"tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9, "tol_feas": 1e-9}


class ConstrainedSolution(NamedTuple):
    """Result of :meth:`ConstrainedLQR.solve`.

    Attributes
    ----------
    x : array, shape (T+1, n) or (batch, T+1, n)
        Planned states, ``x[0] = x0``.
    u : array, shape (T, m) or (batch, T, m)
        Planned inputs.
    cost : float or array (batch,)
        Cost of the plan (no 1/2; includes the ``k = 0`` state term), evaluated in float64
        from ``x`` and ``u``.
    status : str
        Solver status, ``"optimal"`` or ``"optimal_inaccurate"`` (the worst over a batch);
        anything else raises :class:`InfeasibleError` instead of returning.
    solve_time : float
        Wall-clock seconds spent in :meth:`~ConstrainedLQR.solve` (all members of a batch):
        parameter update, canonicalisation and solver for cvxpy; iterations for ADMM.
    """

    x: Any
    u: Any
    cost: Any
    status: str
    solve_time: float


# --------------------------------------------------------------------------- helpers
def _psd_factor(M: np.ndarray) -> np.ndarray:
    """A matrix ``F`` (p, n) with ``FᵀF = M`` for a symmetric PSD ``M`` (n, n).

    Cholesky (``F = Lᵀ``) when ``M`` is positive definite; otherwise the symmetric
    eigen-decomposition with the zero eigen-directions dropped (``F = Λ^{1/2}Vᵀ``).
    """
    try:
        L = np.linalg.cholesky(M)
        return L.T.copy()
    except np.linalg.LinAlgError:
        w, V = np.linalg.eigh(M)
        keep = w > max(1e-14 * float(np.max(np.abs(w), initial=0.0)), 0.0)
        return (np.sqrt(w[keep])[:, None] * V[:, keep].T).copy()


def _stage_weights(weight, T: int) -> np.ndarray:
    """A :class:`~ltv_control._validation.Weight` as a dense float64 stack (T, d, d)."""
    M = np.asarray(weight.value, dtype=np.float64)
    if weight.per_step:
        return M.copy()
    return np.broadcast_to(M, (T,) + M.shape).copy()


def _bound_pair(value: Any, name: str, length: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a ``(lo, hi)`` box: each a scalar, a ``(dim,)`` vector or a ``(length, dim)`` stack.

    Returns dense ``(length, dim)`` float64 arrays; ``±inf`` entries mean "no bound".
    """
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ArgumentError(f"{name}: expected a pair (lo, hi), found {type(value).__name__}"
                            + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else ""))
    out = []
    for side, v in zip(("lo", "hi"), value):
        arr = np.asarray(as_array(v, f"{name}[{side}]", numpy_backend, dtype=_F64,
                                  finite=False), dtype=np.float64)
        if np.any(np.isnan(arr)):
            raise PropertyError(f"{name}[{side}]: contains NaN values")
        if arr.ndim == 0:
            arr = np.full((length, dim), float(arr))
        elif arr.ndim == 1 and arr.shape[0] == dim:
            arr = np.broadcast_to(arr, (length, dim)).copy()
        elif arr.shape == (length, dim):
            arr = arr.copy()
        else:
            raise DimensionError(f"{name}[{side}]: expected a scalar, ({dim},) or ({length}, {dim}); "
                                 f"found shape {format_shape(arr.shape)}")
        out.append(arr)
    lo, hi = out
    if np.any(lo > hi):
        idx = tuple(int(i) for i in np.argwhere(lo > hi)[0])
        raise PropertyError(f"{name}: expected lo <= hi everywhere, found lo {lo[idx]:g} > hi "
                            f"{hi[idx]:g} at (step, component) {idx}")
    if np.any(lo == np.inf) or np.any(hi == -np.inf):
        raise PropertyError(f"{name}: a lower bound of +inf or an upper bound of -inf is infeasible")
    return lo, hi


def _like(result: np.ndarray, reference: Any) -> Any:
    """``result`` as the array type of ``reference`` (torch: same device, its float dtype)."""
    if is_torch_tensor(reference):
        be = get_torch_backend()
        dtype = be.dtype_of(reference) if be.is_floating(reference) else np.float64
        return be.asarray(result, dtype=dtype, device=be.device_of(reference))
    return result


def _refuse_grad(**values: Any) -> None:
    """Refuse tensors that require grad where no gradient is propagated (never a silent zero)."""
    for name, value in values.items():
        if getattr(value, "requires_grad", False):
            raise ArgumentError(
                f"{name}: a torch tensor that requires grad, but ConstrainedLQR propagates "
                "gradients only to solve()'s x0 and x_ref (the problem data are copied to "
                f"float64 numpy); pass {name}.detach() or use the unconstrained "
                "finite_horizon_lqr / tracking_lqr, which are differentiable in them")


def _detached(value: Any) -> Any:
    """A torch tensor without its graph (for validation into numpy); anything else as is."""
    return value.detach() if is_torch_tensor(value) else value


def _wants_grad(*values: Any) -> bool:
    """Whether a torch tensor among ``values`` requires grad (and autograd is recording)."""
    if not any(is_torch_tensor(v) for v in values):
        return False
    from ltv_control.backends.torch_autograd import requires_grad

    return requires_grad(*values)


def _solver_settings(solver: str) -> set | None:
    """Names of the settings ``solver`` accepts, when they can be listed without solving."""
    if solver == "CLARABEL":
        try:
            import clarabel
        except ImportError:  # pragma: no cover - cvxpy ships clarabel
            return None
        return {k for k in dir(clarabel.DefaultSettings()) if not k.startswith("_")}
    return None


def _require_cvxpy():
    try:
        import cvxpy as cp
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "ConstrainedLQR(method='cvxpy') needs cvxpy: pip install 'ltv-control[cvxpy]'"
        ) from exc
    return cp


# --------------------------------------------------------------------------- main class
def _refuse_problem_grads(system: Any, Q: Any, R: Any, Qf: Any, u_norm_max: Any, u_box: Any,
                          x_box: Any, feature_constraints: Any) -> None:
    """Problem data that require grad are refused: gradients flow only to ``x0`` and ``x_ref``."""
    _refuse_grad(**{"system.A": system.A, "system.B": system.B, "system.c": system.c},
                 Q=Q, R=R, Qf=Qf, u_norm_max=u_norm_max)
    for name, pair in (("u_box", u_box), ("x_box", x_box)):
        if isinstance(pair, (tuple, list)):
            _refuse_grad(**{f"{name}[{i}]": v for i, v in enumerate(pair)})
    for j, item in enumerate(feature_constraints or []):
        if isinstance(item, (tuple, list)):
            _refuse_grad(**{f"feature_constraints[{j}][{i}]": v for i, v in enumerate(item)})


def _admm_settings(admm_options: dict | None) -> ADMMSettings:
    """:class:`ADMMSettings` with the user's options (unknown names and bad values refused)."""
    settings = ADMMSettings()
    if admm_options is None:
        return settings
    if not isinstance(admm_options, dict):
        raise ArgumentError(f"admm_options: expected a dict, found {type(admm_options).__name__}")
    unknown = sorted(set(admm_options) - set(vars(settings)))
    if unknown:
        raise ArgumentError(f"admm_options: unknown option(s) {unknown}; accepted: "
                            f"{sorted(vars(settings))}")
    for key, value in admm_options.items():
        setattr(settings, key, value)
    return settings


def _box_constraints(box: Any, z: Any, slack: Any) -> list:
    """``lo <= z <= hi`` on the finite entries of the bounds, relaxed by ``slack`` when given."""
    if box is None:
        return []
    lo, hi = box
    fin_lo, fin_hi = np.isfinite(lo), np.isfinite(hi)
    cons = []
    if fin_lo.any():
        cons.append(z[fin_lo] + (0 if slack is None else slack[fin_lo]) >= lo[fin_lo])
    if fin_hi.any():
        cons.append(z[fin_hi] - (0 if slack is None else slack[fin_hi]) <= hi[fin_hi])
    return cons


class ConstrainedLQR:
    r"""One finite-horizon QP over the whole horizon, compiled once, re-solved per ``x_0``.

    Problem (see the module docstring)::

        min  Σ_{k<T} (x_k-r_k)ᵀQ_k(x_k-r_k) + u_kᵀR_k u_k + (x_T-r_T)ᵀQf(x_T-r_T)
        s.t. x_{k+1} = A_k x_k + B_k u_k + c_k,  x_0 given,
             ‖u_k‖₂ <= u_norm_max_k,  u_lo <= u_k <= u_hi,  x_lo <= x_k <= x_hi (k = 1..T),
             a_jᵀ x_{k_j} >= b_j   (feature constraints).

    Parameters
    ----------
    system : LTVSystem
        Unbatched plant (``batch_shape == ()``); ``B=None`` means ``B_k = I`` (m = n), the
        drift ``c`` is honoured.  Torch systems are copied to float64 numpy.
    Q : float, array (n, n) or (T, n, n)
        Stage state weights, symmetric PSD (a scalar ``c`` means ``c·I``).
    R : float, array (m, m) or (T, m, m)
        Input weights, symmetric positive definite.
    Qf : float, array (n, n) or None, default None
        Terminal weight; ``None`` uses ``Q`` of the last stage ``Q_{T-1}``.
    u_norm_max : float, array (T,) or None, default None
        Per-step Euclidean input budget ``‖u_k‖₂ <= u_norm_max[k]`` (``inf`` = none that step).
    u_box : (lo, hi) or None, default None
        Input box; each side a scalar, an (m,) vector or a (T, m) stack (``±inf`` allowed).
    x_box : (lo, hi) or None, default None
        State box on ``x_1..x_T`` (``x_0`` is given); scalars, (n,) or (T, n).
    feature_constraints : sequence of (k, a, b) or None, default None
        Linear feature constraints ``aᵀ x_k >= b`` with ``0 <= k <= T`` (negative ``k``
        counts from ``T``), ``a`` an (n,) non-zero vector, ``b`` a finite scalar.
    solver : str or None, default None
        cvxpy solver name for ``method="cvxpy"``; ``None`` uses Clarabel (shipped with
        cvxpy).  Must be installed and able to handle second-order cones when
        ``u_norm_max`` is given.
    method : {"cvxpy", "admm"}, default "cvxpy"
        ``"cvxpy"``: the reference QP.  ``"admm"``: the Riccati-factored ADMM fast path
        (falls back to cvxpy when it does not converge; see the module docstring).
    solver_options : dict or None, default None
        Extra keyword arguments for ``cvxpy.Problem.solve`` (e.g. tolerances).  With
        Clarabel the defaults are tightened to ``tol_gap_abs = tol_gap_rel = tol_feas =
        1e-9`` (Clarabel's own 1e-8 leaves ~1e-5 relative error in ``u``); keys given here
        override them.
    admm_options : dict or None, default None
        Fields of :class:`ltv_control._constrained_admm.ADMMSettings` (``eps_abs=1e-9``,
        ``eps_rel=1e-6``, ``max_iter=4000``, ``alpha=1.6``, ``rho=None``, ``adapt_every=50``,
        ``adapt_ratio=10``, ``check_every=1``).

    Attributes
    ----------
    horizon, n_states, n_inputs : int
    method : str
    stats : dict
        Counters: ``solves``, ``compiles`` (cvxpy canonicalisations; 1 after any number of
        re-solves), ``admm_iterations``, ``admm_refactorizations``, ``fallbacks``.

    Raises
    ------
    ArgumentError
        Unknown keyword, a system that is not an LTVSystem, unknown method or solver, an
        unknown Clarabel setting in ``solver_options`` (other solvers' unknown settings are
        reported at the first solve), or problem data given as torch tensors that require
        grad (gradients flow only to ``solve``'s ``x0`` and ``x_ref``).
    DimensionError
        Shapes that do not fit the system, or a batched system.
    PropertyError
        Non-finite data, asymmetric / indefinite weights, ``lo > hi``, negative budgets.

    Examples
    --------
    >>> import numpy as np, ltv_control as lc
    >>> from ltv_control.constrained import ConstrainedLQR
    >>> sys = lc.LTVSystem.constant(np.array([[1., 1.], [0., 1.]]), np.array([[1.], [.5]]), 4)
    >>> mpc = ConstrainedLQR(sys, 1.0, 1.0, u_box=(-1, 1), x_box=(-5, 5))
    >>> plan = mpc.solve(np.array([4., 0.]))
    >>> round(plan.cost, 3)
    32.489
    """

    @public_api
    def __init__(self, system: Any, Q: Any, R: Any, *, Qf: Any = None, u_norm_max: Any = None,
                 u_box: Any = None, x_box: Any = None,
                 feature_constraints: Sequence[tuple] | None = None, solver: str | None = None,
                 method: str = "cvxpy", solver_options: dict | None = None,
                 admm_options: dict | None = None) -> None:
        system = require_system(system)
        _refuse_problem_grads(system, Q, R, Qf, u_norm_max, u_box, x_box, feature_constraints)
        self._set_dynamics(system)
        T, n, m = self.horizon, self.n_states, self.n_inputs
        self._set_weights(Q, R, Qf)
        self.u_norm_max = self._validate_budget(u_norm_max, T)
        self.u_box = None if u_box is None else _bound_pair(u_box, "u_box", T, m)
        self.x_box = None if x_box is None else _bound_pair(x_box, "x_box", T, n)
        self.features = self._validate_features(feature_constraints, T, n)
        self._set_solver(method, solver, solver_options)
        self.admm_settings = _admm_settings(admm_options)
        self.stats = {"solves": 0, "compiles": 0, "admm_iterations": 0,
                      "admm_refactorizations": 0, "fallbacks": 0}
        self._cvx = None
        self._admm = None
        self._qp = None
        self.last_active: list = []
        if method == "cvxpy":
            self._cvx = self._build_cvxpy()
        else:
            self._admm = self._build_admm()

    # ------------------------------------------------------------------ construction steps
    def _set_dynamics(self, system: Any) -> None:
        """``A, B, c`` as float64 numpy stacks (``B = I`` spelled out), and ``T, n, m``."""
        if tuple(system.batch_shape) != ():
            raise DimensionError(
                f"system: expected an unbatched system (batch_shape ()), found batch_shape "
                f"{format_shape(tuple(system.batch_shape))}; build one ConstrainedLQR per member")
        if system.backend != "numpy":
            system = system.numpy()
        A = np.asarray(system.A, dtype=np.float64)
        T, n = A.shape[0], A.shape[1]
        self.identity_input = system.B is None
        B = np.broadcast_to(np.eye(n), (T, n, n)).copy() if system.B is None else \
            np.asarray(system.B, dtype=np.float64)
        c = None if system.c is None else np.asarray(system.c, dtype=np.float64)
        self.A, self.B, self.c = A, B, c
        self.horizon, self.n_states, self.n_inputs = T, n, B.shape[2]

    def _set_weights(self, Q: Any, R: Any, Qf: Any) -> None:
        """Per-step ``Q``, ``R`` and the terminal ``Qf`` (default ``Q_{T-1}``), validated."""
        T, n, m = self.horizon, self.n_states, self.n_inputs
        Qw = as_weight(Q, "Q", rows=n, horizon=T, backend=numpy_backend, dtype=_F64,
                       definiteness="psd")
        Rw = as_weight(R, "R", rows=m, horizon=T, backend=numpy_backend, dtype=_F64,
                       definiteness="pd")
        if Qw.batch_shape or Rw.batch_shape:
            raise DimensionError("Q, R: expected (n, n)/(T, n, n) weights without batch "
                                 "dimensions for the unbatched constrained problem")
        self.Q = _stage_weights(Qw, T)
        self.R = _stage_weights(Rw, T)
        if Qf is None:
            self.Qf = self.Q[T - 1].copy()
            return
        Qf_arr = np.asarray(as_terminal_weight(Qf, "Qf", n=n, backend=numpy_backend,
                                               dtype=_F64), dtype=np.float64)
        if Qf_arr.shape != (n, n):
            raise DimensionError(f"Qf: expected ({n}, {n}), found {format_shape(Qf_arr.shape)}")
        self.Qf = Qf_arr

    def _set_solver(self, method: str, solver: str | None, solver_options: dict | None) -> None:
        """``method``, the cvxpy solver (installed) and its options (unknown ones refused)."""
        if method not in ("cvxpy", "admm"):
            raise ArgumentError(f"method: expected 'cvxpy' or 'admm', found {method!r}")
        self.method = method
        if solver is not None and not isinstance(solver, str):
            raise ArgumentError(f"solver: expected a cvxpy solver name (str) or None, "
                                f"found {type(solver).__name__}")
        self.solver = (solver or _DEFAULT_SOLVER).upper()
        if solver_options is not None and not isinstance(solver_options, dict):
            raise ArgumentError(f"solver_options: expected a dict, found {type(solver_options).__name__}")
        self._check_solver_options(solver_options)
        defaults = dict(_CLARABEL_TOLERANCES) if self.solver == "CLARABEL" else {}
        self._user_solver_options = dict(solver_options or {})
        self.solver_options = {**defaults, **self._user_solver_options}
        if method == "cvxpy" or solver is not None:
            cp = _require_cvxpy()
            if self.solver not in cp.installed_solvers():
                raise ArgumentError(f"solver: {self.solver!r} is not installed; installed: "
                                    f"{', '.join(cp.installed_solvers())}")

    # ------------------------------------------------------------------ validation
    def _check_solver_options(self, options: dict | None) -> None:
        """Unknown settings of a solver whose settings can be listed raise ArgumentError now."""
        if not isinstance(options, dict):
            return
        known = _solver_settings(self.solver)
        if known is None:
            return
        unknown = sorted(set(options) - known - _CVXPY_SOLVE_KEYWORDS)
        if unknown:
            raise ArgumentError(f"solver_options: unknown option(s) {unknown} for solver "
                                f"{self.solver}; accepted: {sorted(known | _CVXPY_SOLVE_KEYWORDS)}")

    @staticmethod
    def _validate_budget(value: Any, T: int) -> np.ndarray | None:
        if value is None:
            return None
        arr = np.asarray(as_array(value, "u_norm_max", numpy_backend, dtype=_F64,
                                  finite=False), dtype=np.float64)
        if arr.ndim == 0:
            arr = np.full(T, float(arr))
        elif arr.shape != (T,):
            raise DimensionError(f"u_norm_max: expected a scalar or ({T},), found "
                                 f"{format_shape(arr.shape)}")
        if np.any(np.isnan(arr)) or np.any(arr < 0):
            raise PropertyError(f"u_norm_max: expected non-negative budgets (inf = none), found "
                                f"min {np.nanmin(arr) if not np.all(np.isnan(arr)) else np.nan:g}"
                                + (" and NaN" if np.any(np.isnan(arr)) else ""))
        return arr

    @staticmethod
    def _validate_features(value: Any, T: int, n: int):
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise ArgumentError(f"feature_constraints: expected a list of (k, a, b), found "
                                f"{type(value).__name__}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, (list, tuple)) or len(item) != 3:
                raise ArgumentError(f"feature_constraints[{i}]: expected a triple (k, a, b), found "
                                    f"{item!r}")
            k, a, b = item
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
                raise ArgumentError(f"feature_constraints[{i}]: step k must be an int, found "
                                    f"{type(k).__name__}")
            k = int(k)
            if not -(T + 1) <= k <= T:
                raise DimensionError(f"feature_constraints[{i}]: step k must lie in 0..{T} "
                                     f"(or -{T + 1}..-1), found {k}")
            k = k % (T + 1)
            a = np.asarray(as_array(a, f"feature_constraints[{i}] a", numpy_backend,
                                    dtype=_F64), dtype=np.float64)
            if a.shape != (n,):
                raise DimensionError(f"feature_constraints[{i}]: a must have shape ({n},), found "
                                     f"{format_shape(a.shape)}")
            if not np.any(a):
                raise PropertyError(f"feature_constraints[{i}]: a must be non-zero")
            b_arr = np.asarray(as_array(b, f"feature_constraints[{i}] b", numpy_backend,
                                        dtype=_F64))
            if b_arr.ndim != 0:
                raise DimensionError(f"feature_constraints[{i}]: b must be a scalar, found shape "
                                     f"{format_shape(b_arr.shape)}")
            out.append((k, a, float(b_arr)))
        return out

    def _validate_state(self, x0: Any, x_ref: Any) -> tuple[np.ndarray, np.ndarray, bool]:
        T, n = self.horizon, self.n_states
        x0a = np.asarray(as_array(x0, "x0", numpy_backend, dtype=_F64), dtype=np.float64)
        if x0a.ndim not in (1, 2) or x0a.shape[-1] != n:
            raise DimensionError(f"x0: expected ({n},) or (batch, {n}); found {format_shape(x0a.shape)}")
        batched = x0a.ndim == 2
        X0 = x0a if batched else x0a[None]
        if x_ref is None:
            R = np.zeros((X0.shape[0], T + 1, n))
        else:
            r = np.asarray(as_array(x_ref, "x_ref", numpy_backend, dtype=_F64), dtype=np.float64)
            if r.shape == (n,):
                R = np.broadcast_to(r, (X0.shape[0], T + 1, n))
            elif r.shape == (T + 1, n):
                R = np.broadcast_to(r, (X0.shape[0], T + 1, n))
            elif batched and r.shape == (X0.shape[0], T + 1, n):
                R = r
            else:
                forms = f"({n},), ({T + 1}, {n})" + (f" or ({X0.shape[0]}, {T + 1}, {n})" if batched else "")
                raise DimensionError(f"x_ref: expected {forms}; found {format_shape(r.shape)}")
        return X0, np.ascontiguousarray(R), batched

    # ------------------------------------------------------------------ cvxpy build
    def _build_cvxpy(self, *, drop: str | None = None, elastic: bool = False,
                     objective: str = "cost") -> dict:
        """Build the cvxpy problem (DPP) once; ``drop``/``elastic`` build diagnosis variants.

        Returns a dict with the problem, its variables and parameters.
        """
        cp = _require_cvxpy()
        T, n, m = self.horizon, self.n_states, self.n_inputs
        x = cp.Variable((T + 1, n), name="x")
        u = cp.Variable((T, m), name="u")
        x0 = cp.Parameter(n, name="x0")
        # The reference enters only through F_k r_k (one entry per row of the cost factor
        # F_k, F_kᵀF_k = Q_k): a rank-one feature weight costs one parameter per step, not n.
        factors = self._cost_factors()
        xref = cp.Parameter(max(sum(F.shape[0] for F in factors), 1), name="weighted_x_ref")
        cons = [x[0] == x0] + self._dynamics_constraints(x, u)
        slacks: dict = {}
        if drop != "u_norm_max":
            cons += self._budget_constraints(cp, u)
        if drop != "u_box":
            cons += _box_constraints(self.u_box, u, None)
        if self.x_box is not None and drop != "x_box":
            s = cp.Variable((T, n), nonneg=True, name="x_box_slack") if elastic else None
            if s is not None:
                slacks["x_box"] = s
            cons += _box_constraints(self.x_box, x[1:], s)
        if self.features and drop != "feature_constraints":
            s = cp.Variable(len(self.features), nonneg=True, name="feature_slack") if elastic else None
            if s is not None:
                slacks["feature_constraints"] = s
            cons += self._feature_constraint_list(x, s)
        problem = cp.Problem(self._objective(cp, objective, x, u, xref, factors, slacks), cons)
        if objective == "cost" and not problem.is_dpp():  # pragma: no cover - guarded by design
            raise RuntimeError("internal error: the constrained LQR problem is not DPP")
        return {"problem": problem, "x": x, "u": u, "x0": x0, "xref": xref, "slacks": slacks}

    def _dynamics_constraints(self, x: Any, u: Any) -> list:
        """``x_{k+1} = A_k x_k + B_k u_k + c_k`` for every step."""
        cons = []
        for k in range(self.horizon):
            drift = 0 if self.c is None else self.c[k]
            Bu = u[k] if self.identity_input else self.B[k] @ u[k]
            cons.append(x[k + 1] == self.A[k] @ x[k] + Bu + drift)
        return cons

    def _budget_constraints(self, cp: Any, u: Any) -> list:
        """``‖u_k‖₂ <= u_norm_max_k`` where the budget is finite."""
        if self.u_norm_max is None:
            return []
        return [cp.norm(u[k], 2) <= self.u_norm_max[k] for k in range(self.horizon)
                if np.isfinite(self.u_norm_max[k])]

    def _feature_constraint_list(self, x: Any, slack: Any) -> list:
        """``aᵀx_k >= b`` (scaled by ``‖a‖``), relaxed by ``slack`` when given."""
        cons = []
        for j, (k, a, b) in enumerate(self.features):
            scale = float(np.linalg.norm(a))
            lhs = (a / scale) @ x[k] + (0 if slack is None else slack[j])
            cons.append(lhs >= b / scale)
        return cons

    def _objective(self, cp: Any, objective: str, x: Any, u: Any, xref: Any, factors: list,
                   slacks: dict) -> Any:
        """The tracking cost (``"cost"``), the total slack (``"slack"``) or zero."""
        if objective == "slack":
            return cp.Minimize(cp.sum([cp.sum(s) for s in slacks.values()]) if slacks else 0)
        if objective != "cost":
            return cp.Minimize(0)
        terms, offset = [], 0
        for k, F in enumerate(factors):
            rows = F.shape[0]
            if rows:
                terms.append(cp.sum_squares(F @ x[k] - xref[offset:offset + rows]))
            offset += rows
            if k < self.horizon:
                terms.append(cp.sum_squares(_psd_factor(self.R[k]) @ u[k]))
        return cp.Minimize(cp.sum(terms))

    def _cost_factors(self) -> list:
        """``F_k`` with ``F_kᵀF_k = Q_k`` (k < T) and ``Q_f`` (k = T), computed once."""
        if getattr(self, "_factors", None) is None:
            self._factors = [_psd_factor(self.Q[k]) for k in range(self.horizon)] + \
                [_psd_factor(self.Qf)]
        return self._factors

    def _set_parameters(self, problem: dict, x0: np.ndarray, xref: np.ndarray) -> None:
        """Parameter values for ``x0`` and the weighted reference ``F_k r_k``."""
        problem["x0"].value = x0
        weighted = [F @ xref[k] for k, F in enumerate(self._cost_factors())]
        flat = np.concatenate(weighted) if weighted else np.zeros(0)
        problem["xref"].value = flat if flat.size else np.zeros(1)

    def _build_admm(self) -> RiccatiADMM:
        T, n = self.horizon, self.n_states
        c = np.zeros((T, n)) if self.c is None else self.c
        feats = None
        later = [(k, a, b) for (k, a, b) in self.features if k >= 1]
        if later:
            feats = (np.array([k for k, _, _ in later]), np.stack([a for _, a, _ in later]),
                     np.array([b for _, _, b in later]))
        return RiccatiADMM(self.A, self.B, c, self.Q, self.R, self.Qf, u_ball=self.u_norm_max,
                           u_box=self.u_box, x_box=self.x_box, features=feats,
                           settings=self.admm_settings)

    # ------------------------------------------------------------------ evaluation
    def plan_cost(self, x: np.ndarray, u: np.ndarray, x_ref: np.ndarray | None = None) -> float:
        """Cost of a plan ``x (T+1, n)``, ``u (T, m)`` (no 1/2, with the ``k = 0`` term)."""
        T = self.horizon
        e = x if x_ref is None else x - x_ref
        stage = np.einsum("ki,kij,kj->", e[:T], self.Q, e[:T])
        inputs = np.einsum("ki,kij,kj->", u, self.R, u)
        return float(stage + inputs + e[T] @ self.Qf @ e[T])

    def constraint_violations(self, x: np.ndarray, u: np.ndarray) -> dict:
        """Largest violation per constraint family of a plan (0 when satisfied).

        Returns ``{family: float}`` for every family present plus ``"dynamics"``: the
        largest ``|x_{k+1} - A_k x_k - B_k u_k - c_k|``.
        """
        out = {}
        pred = np.einsum("kij,kj->ki", self.A, x[:-1]) + np.einsum("kij,kj->ki", self.B, u)
        if self.c is not None:
            pred = pred + self.c
        out["dynamics"] = float(np.max(np.abs(x[1:] - pred), initial=0.0))
        if self.u_norm_max is not None:
            out["u_norm_max"] = float(np.max(np.linalg.norm(u, axis=1) - self.u_norm_max, initial=0.0))
        if self.u_box is not None:
            lo, hi = self.u_box
            out["u_box"] = float(max(np.max(lo - u, initial=0.0), np.max(u - hi, initial=0.0)))
        if self.x_box is not None:
            lo, hi = self.x_box
            out["x_box"] = float(max(np.max(lo - x[1:], initial=0.0), np.max(x[1:] - hi, initial=0.0)))
        if self.features:
            out["feature_constraints"] = float(max(
                max(b - a @ x[k], 0.0) / np.linalg.norm(a) for k, a, b in self.features))
        return {k: max(v, 0.0) for k, v in out.items()}

    def _tolerance(self, x: np.ndarray, u: np.ndarray) -> float:
        scale = max(1.0, float(np.max(np.abs(x), initial=0.0)), float(np.max(np.abs(u), initial=0.0)))
        return _CONSTRAINT_RTOL * scale

    # ------------------------------------------------------------------ solve
    @public_api
    def solve(self, x0: Any, x_ref: Any = None, *, warm_start: bool = True) -> ConstrainedSolution:
        """Solve the QP from ``x0`` (optionally towards ``x_ref``), re-using the compiled problem.

        Parameters
        ----------
        x0 : array (n,) or (batch, n)
            Initial state(s); a batch is solved member by member (warm-started).
        x_ref : array (n,), (T+1, n), (batch, T+1, n) or None, default None
            State reference ``r``; ``None`` means 0 (regulation).
        warm_start : bool, default True
            Start from the previous solution (ADMM; cvxpy solvers that support it, e.g.
            OSQP/SCS — Clarabel, an interior-point method, ignores it).

        Returns
        -------
        ConstrainedSolution
            ``x (T+1, n)``, ``u (T, m)``, ``cost``, ``status``, ``solve_time``; with a batch,
            ``x (batch, T+1, n)``, ``u (batch, T, m)``, ``cost (batch,)``.  numpy in → numpy
            out; a torch ``x0`` gives torch tensors on its device.  When ``x0`` or ``x_ref``
            is a torch tensor that requires grad (and autograd is recording), ``x``, ``u``
            and ``cost`` (a 0-d tensor when unbatched) are differentiable with respect to
            both (see "Differentiability" in the module docstring); the attribute
            ``last_active`` then lists, per batch member, the number of active constraints
            per family.

        Raises
        ------
        InfeasibleError
            The problem has no solution or the solver failed (message: status, binding family).
        DimensionError, PropertyError, ArgumentError
            Bad ``x0`` / ``x_ref``; ``ArgumentError`` also when the solver rejects
            ``solver_options``.
        NumericalError
            Differentiable solve only: the active constraints are linearly dependent, so
            the plan has no derivative there.
        """
        if not isinstance(warm_start, (bool, np.bool_)):
            raise ArgumentError(f"warm_start: expected a bool, found {type(warm_start).__name__}")
        X0, XR, batched = self._validate_state(_detached(x0), _detached(x_ref))
        if _wants_grad(x0, x_ref):
            return self._solve_differentiable(x0, x_ref, X0, XR, batched, warm_start)
        t0 = time.perf_counter()
        xs, us, costs, statuses = [], [], [], []
        for i in range(X0.shape[0]):
            self._check_initial_features(X0[i])
            if self.method == "admm":
                x, u, status = self._solve_admm(X0[i], XR[i], warm_start)
            else:
                x, u, status = self._solve_cvxpy(X0[i], XR[i], warm_start)
            self.stats["solves"] += 1
            xs.append(x)
            us.append(u)
            costs.append(self.plan_cost(x, u, XR[i]))
            statuses.append(status)
        elapsed = time.perf_counter() - t0
        status = "optimal_inaccurate" if "optimal_inaccurate" in statuses else "optimal"
        if batched:
            x_out, u_out, cost_out = np.stack(xs), np.stack(us), np.array(costs)
        else:
            x_out, u_out, cost_out = xs[0], us[0], costs[0]
        if is_torch_tensor(x0):
            x_out, u_out = _like(x_out, x0), _like(u_out, x0)
            if batched:
                cost_out = _like(cost_out, x0)
        return ConstrainedSolution(x_out, u_out, cost_out, status, elapsed)

    def _solve_member(self, x0: np.ndarray, xref: np.ndarray, warm_start: bool):
        self._check_initial_features(x0)
        if self.method == "admm":
            out = self._solve_admm(x0, xref, warm_start)
        else:
            out = self._solve_cvxpy(x0, xref, warm_start)
        self.stats["solves"] += 1
        return out

    def _solve_differentiable(self, x0: Any, x_ref: Any, X0: np.ndarray, XR: np.ndarray,
                              batched: bool, warm_start: bool) -> ConstrainedSolution:
        """Torch path: the plan joins autograd through the KKT sensitivity (implicit function).

        ``u`` comes from the usual solver; its vector-Jacobian product with respect to ``x0``
        and ``x_ref`` from :class:`ltv_control.constrained_grad.KKTSensitivity`; ``x`` and the
        cost are recomputed from ``x0``, ``u`` and ``x_ref`` with torch operations.
        """
        from ltv_control.backends.torch_autograd import implicit_apply

        be = get_torch_backend()
        ref = x0 if is_torch_tensor(x0) else x_ref
        device, f64 = be.device_of(ref), np.float64
        out_dtype = be.dtype_of(x0) if is_torch_tensor(x0) and be.is_floating(x0) else f64
        X0_t = be.asarray(x0, dtype=f64, device=device).reshape(X0.shape)
        if x_ref is None:
            R_t = be.zeros(XR.shape, dtype=f64, device=device)
        else:
            R_t = be.broadcast_to(be.asarray(x_ref, dtype=f64, device=device), XR.shape)
        if self._qp is None:
            self._qp = CondensedQP(self.A, self.B, self.c, self.Q, self.R, self.Qf)
        cons = {"u_norm_max": self.u_norm_max, "u_box": self.u_box, "x_box": self.x_box,
                "features": self.features}
        t0 = time.perf_counter()
        xs, us, costs, statuses, self.last_active = [], [], [], [], []

        def solve(x0_np: np.ndarray, r_np: np.ndarray):
            _, u, status = self._solve_member(x0_np, r_np, warm_start)
            sens = KKTSensitivity(self._qp, x0_np, r_np, u, cons)
            statuses.append(status)
            self.last_active.append(dict(sens.active.families))
            return u, sens.vjp

        for i in range(X0.shape[0]):
            u = implicit_apply(solve, X0_t[i], R_t[i])
            x, cost = differentiable_plan(be, self._qp, X0_t[i], R_t[i], u)
            xs.append(x)
            us.append(u)
            costs.append(cost)
        elapsed = time.perf_counter() - t0
        status = "optimal_inaccurate" if "optimal_inaccurate" in statuses else "optimal"
        x_out, u_out, c_out = (be.stack(v) if batched else v[0] for v in (xs, us, costs))
        x_out, u_out, c_out = (be.astype(v, out_dtype) for v in (x_out, u_out, c_out))
        return ConstrainedSolution(x_out, u_out, c_out, status, elapsed)

    def _check_initial_features(self, x0: np.ndarray) -> None:
        for j, (k, a, b) in enumerate(self.features):
            if k == 0 and a @ x0 < b - _CONSTRAINT_RTOL * max(1.0, abs(b)) * np.linalg.norm(a):
                raise InfeasibleError(
                    f"status infeasible: feature_constraints[{j}] acts on the given x_0 and fails "
                    f"(aᵀx0 = {a @ x0:.6g} < b = {b:.6g}); likely binding: feature_constraints")

    def _solve_cvxpy(self, x0: np.ndarray, xref: np.ndarray, warm_start: bool):
        _require_cvxpy()
        if self._cvx is None:
            self._cvx = self._build_cvxpy()
        prob = self._cvx["problem"]
        self._set_parameters(self._cvx, x0, xref)
        cache = getattr(prob, "_cache", None)
        compiled_before = getattr(cache, "param_prog", None) is not None
        status = self._run_solver(prob, warm_start, self.solver_options)
        if status == "optimal_inaccurate" and self.solver_options != self._user_solver_options:
            # The tightened default tolerances were out of reach: retry with the solver's own.
            status = self._run_solver(prob, warm_start, self._user_solver_options)
        if not compiled_before:
            self.stats["compiles"] += 1
        if status not in _ACCEPTED:
            raise InfeasibleError(self._diagnose(status, x0, xref))
        u = np.asarray(self._cvx["u"].value, dtype=np.float64)
        # States from the exact rollout of the solver's inputs: x_0 is the given state and the
        # dynamics hold to rounding (the solver's own x satisfies them to its tolerance).
        x = self._rollout(x0, u)
        self._verify(x, u, status)
        return x, u, status

    def _run_solver(self, prob, warm_start: bool, options: dict) -> str:
        cp = _require_cvxpy()
        try:
            with warnings.catch_warnings():
                # cvxpy's "Solution may be inaccurate" warning: the status carries it.
                warnings.filterwarnings("ignore", message="Solution may be inaccurate")
                prob.solve(solver=self.solver, warm_start=warm_start, **options)
            return prob.status
        except TypeError as exc:
            # cvxpy passes unknown keywords on to the solver, whose own TypeError names them
            raise ArgumentError(f"solver_options: solver {self.solver} rejected the options "
                                f"{sorted(options)}: {exc}") from None
        except cp.error.SolverError as exc:
            if "nrecognized setting" in str(exc) or "nknown setting" in str(exc):
                raise ArgumentError(f"solver_options: solver {self.solver} rejected the options "
                                    f"{sorted(options)}: {exc}") from None
            return f"solver_error ({exc})"

    def _solve_admm(self, x0: np.ndarray, xref: np.ndarray, warm_start: bool):
        settings = self.admm_settings
        eps_abs, eps_rel = settings.eps_abs, settings.eps_rel
        res = None
        try:
            # A converged iterate whose state constraints are still outside 1e-6 of scale
            # (inputs are projected exactly) continues, warm, with 100x tighter tolerances.
            for attempt in range(3):
                res = self._admm.solve(x0, xref, warm_start=warm_start or attempt > 0)
                self.stats["admm_iterations"] += res.iterations
                self.stats["admm_refactorizations"] += res.refactorizations
                if not res.converged:
                    break
                u = self._project_inputs(res.u)
                x = self._rollout(x0, u)
                viol = self.constraint_violations(x, u)
                if all(v <= self._tolerance(x, u) for v in viol.values()):
                    return x, u, "optimal"
                settings.eps_abs, settings.eps_rel = settings.eps_abs * 1e-2, settings.eps_rel * 1e-2
        finally:
            settings.eps_abs, settings.eps_rel = eps_abs, eps_rel
        # Not converged (or still outside tolerance): the exact reference decides.
        self._admm.reset()
        self.stats["fallbacks"] += 1
        warnings.warn(f"ConstrainedLQR(method='admm'): ADMM stopped after {res.iterations} "
                      f"iterations without meeting its tolerances (primal residual "
                      f"{res.primal_residual:.3g}, dual {res.dual_residual:.3g}); falling back to "
                      "the cvxpy reference for this solve", RuntimeWarning, stacklevel=4)
        return self._solve_cvxpy(x0, xref, warm_start)

    def _project_inputs(self, u: np.ndarray) -> np.ndarray:
        """Put ADMM's inputs exactly inside the input sets (moves them by at most the tolerance)."""
        u = u.copy()
        for _ in range(2 if (self.u_box is not None and self.u_norm_max is not None) else 1):
            if self.u_norm_max is not None:
                norms = np.linalg.norm(u, axis=1)
                scale = np.minimum(1.0, self.u_norm_max / np.maximum(norms, 1e-300))
                u *= scale[:, None]
            if self.u_box is not None:
                u = np.clip(u, self.u_box[0], self.u_box[1])
        return u

    def _rollout(self, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
        T = self.horizon
        x = np.empty((T + 1, self.n_states))
        x[0] = x0
        for k in range(T):
            x[k + 1] = self.A[k] @ x[k] + self.B[k] @ u[k] + (0 if self.c is None else self.c[k])
        return x

    def _verify(self, x: np.ndarray, u: np.ndarray, status: str) -> None:
        """Refuse a returned plan that violates a constraint beyond the solver tolerance."""
        viol = self.constraint_violations(x, u)
        tol = 100.0 * self._tolerance(x, u)
        bad = {k: v for k, v in viol.items() if v > tol}
        if bad or not (np.all(np.isfinite(x)) and np.all(np.isfinite(u))):
            raise InfeasibleError(
                f"status {status}: the solver's plan violates {', '.join(sorted(bad)) or 'finiteness'} "
                f"(largest violations {bad}, tolerance {tol:.2g}); refusing to return it")
        if status == "optimal_inaccurate":
            warnings.warn("ConstrainedLQR: solver status optimal_inaccurate; the plan satisfies "
                          "every constraint within tolerance", RuntimeWarning, stacklevel=4)

    # ------------------------------------------------------------------ diagnosis
    def _diagnose(self, status: str, x0: np.ndarray, xref: np.ndarray) -> str:
        """Message for :class:`InfeasibleError`: status plus the likely binding families."""
        present = [f for f, v in (("u_norm_max", self.u_norm_max), ("u_box", self.u_box),
                                  ("x_box", self.x_box), ("feature_constraints", self.features))
                   if v is not None and (not isinstance(v, list) or v)]
        msg = f"ConstrainedLQR: solver status {status!r} (solver {self.solver})"
        if not present:
            return msg + "; the problem has no constraint family, so the solver itself failed"
        cp = _require_cvxpy()
        freed = []
        for fam in present:
            variant = self._build_cvxpy(drop=fam, objective="feasibility")
            self._set_parameters(variant, x0, xref)
            try:
                variant["problem"].solve(solver=self.solver)
                ok = variant["problem"].status in _ACCEPTED
            except cp.error.SolverError:
                ok = False
            if ok:
                freed.append(fam)
        if freed:
            msg += ("; likely binding: " + ", ".join(freed)
                    + " (dropping that family alone makes the problem feasible)")
        elif status.startswith("infeasible"):
            msg += ("; likely binding: a combination of " + ", ".join(present)
                    + " (no single family's removal restores feasibility)")
        else:
            msg += "; the problem is feasible without each family in turn, so the solver failed"
        state_fams = [f for f in ("x_box", "feature_constraints") if f in present]
        if state_fams and status.startswith("infeasible"):
            elastic = self._build_cvxpy(elastic=True, objective="slack")
            self._set_parameters(elastic, x0, xref)
            try:
                elastic["problem"].solve(solver=self.solver)
                if elastic["problem"].status in _ACCEPTED:
                    details = []
                    for fam, var in elastic["slacks"].items():
                        val = np.asarray(var.value)
                        if val.ndim == 2:
                            steps = sorted({int(i) + 1 for i in np.argwhere(val > 1e-6)[:, 0]})
                            if steps:
                                details.append(f"{fam} needs slack at steps {steps}")
                        else:
                            idx = [int(i) for i in np.flatnonzero(val > 1e-6)]
                            if idx:
                                details.append(f"{fam} needs slack in constraints {idx} "
                                               f"(steps {[self.features[i][0] for i in idx]})")
                    if details:
                        msg += "; elastic relaxation with hard input constraints: " + "; ".join(details)
            except cp.error.SolverError:
                pass
        return msg
