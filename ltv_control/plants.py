r"""Synthetic nonlinear plants with known remainder constants, for testing the tracking bounds.

Two discrete-time families, both ``x_{k+1} = f_k(x_k) + B_k u_k`` (``B_k = I`` by default, the
activation-steering plant) over a horizon of ``T`` steps:

* :class:`QuadraticResidualPlant` — ``f_k(x) = A_k x + ½ H_k[x, x]`` with
  ``H_k[x, y]_j = Σ_ab H_k[j, a, b] x_a y_b`` (``H_k`` symmetric in ``a, b``).  The second-order
  Taylor expansion is exact: ``f_k(x̄ + δ) = f_k(x̄) + J_k(x̄) δ + ½ H_k[δ, δ]``.
* :class:`ResidualMLPPlant` — ``f_k(x) = x + W2_k tanh(W1_k x + b1_k)`` (a transformer-like
  residual block).  Its second derivative is
  ``D²f_k(x)[δ, δ] = W2_k diag(tanh''(s)) (W1_k δ)∘(W1_k δ)`` with ``s = W1_k x + b1_k`` and
  ``|tanh''| <= 4 / (3√3)``.

Under the tracking policy ``u_k = ū_k − K_k (x_k − x̄_k)`` around a trajectory ``x̄`` of the plant
driven by ``ū``, the deviation obeys ``δ_{k+1} = Â_k δ_k + r_k`` with ``Â_k = J_k(x̄_k) − B_k K_k``
and the Taylor remainder ``r_k``.  Each plant's :meth:`remainder_constants` returns constants
``L_k`` with ``‖r_k‖_{P_{k+1}} <= (L_k/2) ‖δ_k‖²_{P_k}`` valid for every ``δ`` (a certificate,
not an estimate), in any positive definite weights ``P``.

Everything here is numpy float64; torch tensors passed in are converted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg as sla

from ltv_control._validation import (
    as_bool,
    as_host_float64,
    as_int,
    as_real,
    batch_member,
    format_shape,
    public_api,
)
from ltv_control._exceptions import ArgumentError, DimensionError, NumericalError, PropertyError

__all__ = ["QuadraticResidualPlant", "ResidualMLPPlant", "TANH_SECOND_DERIVATIVE_MAX"]

#: ``max_s |tanh''(s)| = 4 / (3√3)``, attained at ``tanh(s) = ±1/√3``.
TANH_SECOND_DERIVATIVE_MAX = 4.0 / (3.0 * np.sqrt(3.0))


def _f64(x: Any, name: str) -> np.ndarray:
    """A finite float64 array; complex input is refused, never truncated to its real part."""
    return as_host_float64(x, name)


def _refuse_overflow(x: np.ndarray, what: str, *, layout: str = "batch") -> np.ndarray:
    """Return ``x`` if finite, else raise NumericalError naming the step and batch member.

    ``layout``: ``"batch"`` for ``(*batch, n)``, ``"steps"`` for ``(T, n)`` (one row per step),
    ``"rollout"`` for ``(*batch, T+1, n)`` (states ``x_0 … x_T``).
    """
    if np.all(np.isfinite(x)):
        return x
    bad = ~np.all(np.isfinite(x), axis=-1)  # (*batch), (T,) or (*batch, T+1)
    if layout == "steps":
        where = f" at step {int(np.argmax(bad))}"
    elif layout == "rollout":
        step = int(np.argmax(bad.reshape(-1, bad.shape[-1]).any(axis=0)))
        member = tuple(int(i) for i in np.argwhere(bad[..., step])[0])
        where = f" at step {step - 1} (x_{step} is not finite)" + (f", {batch_member(member)}" if member else "")
    else:
        where = f", {batch_member(tuple(int(i) for i in np.argwhere(bad)[0]))}" if bad.ndim else ""
    raise NumericalError(f"{what} overflowed float64 (inf/NaN from finite input){where}; the state "
                         "grows beyond the range of float64")


def _broadcast_batches(batches: dict) -> tuple:
    """The broadcast of the named batch shapes; DimensionError naming the one that does not fit."""
    batch: tuple = ()
    for name, shape in batches.items():
        try:
            batch = tuple(np.broadcast_shapes(batch, tuple(shape)))
        except ValueError:
            raise DimensionError(f"{name}: batch dimensions {format_shape(tuple(shape))} do not "
                                 f"broadcast with {format_shape(batch)}") from None
    return batch


def _input_matrix(B: Any, T: int, n: int) -> np.ndarray | None:
    """Validate an optional input stack ``B (T, n, m)`` (``None`` means ``B_k = I``)."""
    if B is None:
        return None
    Bm = _f64(B, "B")
    if Bm.ndim != 3 or Bm.shape[:2] != (T, n) or Bm.shape[2] < 1:
        raise DimensionError(f"B must have shape (T, n, m) = ({T}, {n}, m) with m >= 1, found {Bm.shape}")
    return Bm

_MAX_ELEMENTS = 2 ** 28
"""Largest coefficient array a random plant draws (2 GiB of float64): refused before allocating."""


def _sizes(n: Any, T: Any, m: Any, per_step: Any = None) -> tuple[int, int, int | None]:
    """Validate the sizes of a random plant: ints ``n, T >= 1`` and ``m`` None or ``>= 1``.

    ``per_step(n)`` is the number of coefficients drawn per step (``n³`` for ``H``); a draw of
    more than ``2**28`` coefficients raises :class:`DimensionError` before anything is allocated.
    """
    n = as_int(n, "n", low=1, error=DimensionError)
    T = as_int(T, "T", low=1, error=DimensionError)
    m = None if m is None else as_int(m, "m", low=1, error=DimensionError)
    size = T * (per_step(n) if per_step is not None else n * n)
    if size > _MAX_ELEMENTS or (m is not None and T * n * m > _MAX_ELEMENTS):
        raise DimensionError(f"n, T: a random plant with n = {n}, T = {T} would draw {size} "
                             f"coefficients per array (more than 2**28 = {_MAX_ELEMENTS})")
    return n, T, m


def _seed(seed: Any) -> int | None:
    """``None`` or a nonnegative int (numpy's ``default_rng`` refuses negative seeds)."""
    return None if seed is None else as_int(seed, "seed", low=0)


def _refuse_scale_overflow(values: np.ndarray, name: str, scale: float) -> None:
    """PropertyError naming the scale parameter whose random weights overflowed float64."""
    if not np.all(np.isfinite(values)):
        raise PropertyError(f"{name}: {scale:g} is too large: the random weights it scales "
                            "overflow float64")


def _cholesky_weights(P: Any, T: int, n: int) -> np.ndarray:
    from ltv_control.bounds import _check_weights, _cholesky_stack

    return _cholesky_stack(_check_weights(P, T, n))


class _PlantBase:
    """Shared rollout / linearisation logic; subclasses define ``_f`` and ``_jac``."""

    horizon: int
    n_states: int
    B: np.ndarray | None

    # ---------------------------------------------------------------- subclass interface
    def _f(self, k: int, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _jac(self, k: int, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---------------------------------------------------------------- helpers
    @property
    def n_inputs(self) -> int:
        """Number of inputs ``m`` (``n`` when ``B`` is the identity)."""
        return self.n_states if self.B is None else self.B.shape[-1]

    def _check_k(self, k: Any) -> int:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise ArgumentError(f"k must be an int, found {type(k).__name__}")
        if not 0 <= k < self.horizon:
            raise DimensionError(f"k must lie in [0, T-1] = [0, {self.horizon - 1}], found {k}")
        return int(k)

    def _check_x(self, x: Any, name: str = "x") -> np.ndarray:
        arr = _f64(x, name)
        if arr.ndim < 1 or arr.shape[-1] != self.n_states:
            raise DimensionError(f"{name} must have shape (*batch, n) with n = {self.n_states}, found {arr.shape}")
        return arr

    def _input_term(self, k: int, u: Any) -> np.ndarray | float:
        if u is None:
            return 0.0
        ua = _f64(u, "u")
        if ua.ndim < 1 or ua.shape[-1] != self.n_inputs:
            raise DimensionError(f"u must have shape (*batch, m) with m = {self.n_inputs}, found {ua.shape}")
        return ua if self.B is None else ua @ self.B[k].T

    # ---------------------------------------------------------------- public API
    @public_api
    def step(self, k: int, x: Any, u: Any = None) -> np.ndarray:
        """One step ``x_{k+1} = f_k(x) + B_k u``.

        Parameters
        ----------
        k : int, 0 <= k < T
        x : array (*batch, n)
        u : array (*batch, m), optional (zero)

        Returns
        -------
        array (*batch, n)
        """
        k = self._check_k(k)
        xa = self._check_x(x)
        inp = self._input_term(k, u)
        _broadcast_batches({"x": xa.shape[:-1], "u": np.shape(inp)[:-1]})
        with np.errstate(over="ignore", invalid="ignore"):
            out = self._f(k, xa) + inp
        return _refuse_overflow(out, f"step({k}): x_{k + 1} = f_{k}(x) + B_{k} u")

    @public_api
    def jacobian(self, k: int, x: Any) -> np.ndarray:
        """State Jacobian ``J_k(x) = ∂f_k/∂x``.

        Parameters
        ----------
        k : int, 0 <= k < T
        x : array (*batch, n)

        Returns
        -------
        array (*batch, n, n)
        """
        k = self._check_k(k)
        with np.errstate(over="ignore", invalid="ignore"):
            J = self._jac(k, self._check_x(x))
        _refuse_overflow(J.reshape(J.shape[:-2] + (-1,)), f"jacobian({k}): J_{k}(x)")
        return J

    @public_api
    def rollout(
        self,
        x0: Any,
        u: Any = None,
        *,
        K: Any = None,
        x_ref: Any = None,
        u_ref: Any = None,
        ) -> np.ndarray:
        r"""Simulate the plant, open loop or under the tracking policy, vectorised over a batch.

        The input at step ``k`` is ``u_k = u_ff_k − K_k (x_k − x_ref_k)``, where ``u_ff`` is ``u``
        plus ``u_ref`` (each optional, zero when absent), and the feedback term is present only
        when ``K`` is given (``x_ref`` defaults to zero).

        Parameters
        ----------
        x0 : array (*batch, n)
        u : array (T, m) or (*batch, T, m), optional
            Open-loop (feed-forward) inputs.
        K : array (T, m, n), optional
            Feedback gains (e.g. ``finite_horizon_lqr(...).K``).
        x_ref : array (T+1, n) or (T, n), optional
            Reference states for the feedback term (e.g. the nominal trajectory).
        u_ref : array (T, m), optional
            Nominal inputs added to the feed-forward.

        Returns
        -------
        x : array (*batch, T+1, n)
        """
        T, n, m = self.horizon, self.n_states, self.n_inputs
        x = self._check_x(x0, "x0")
        batches = {"x0": x.shape[:-1]}
        uff = None
        for name, val in (("u", u), ("u_ref", u_ref)):
            if val is None:
                continue
            arr = _f64(val, name)
            if arr.ndim < 2 or arr.shape[-2:] != (T, m):
                raise DimensionError(f"{name} must have shape (*batch, T, m) = (*batch, {T}, {m}), found {arr.shape}")
            batches[name] = arr.shape[:-2]
            uff = arr if uff is None else uff + arr
        batch = _broadcast_batches(batches)
        x = np.broadcast_to(x, batch + (n,))
        Km = None
        if K is not None:
            Km = _f64(K, "K")
            if Km.shape != (T, m, n):
                raise DimensionError(f"K must have shape (T, m, n) = {(T, m, n)}, found {Km.shape}")
        xr = None
        if x_ref is not None:
            if Km is None:
                raise ArgumentError("x_ref is only used with feedback gains K")
            xr = _f64(x_ref, "x_ref")
            if xr.shape not in ((T + 1, n), (T, n)):
                raise DimensionError(f"x_ref must have shape (T+1, n) or (T, n) = ({T + 1}, {n}), found {xr.shape}")
        out = np.empty(batch + (T + 1, n))
        out[..., 0, :] = x
        with np.errstate(over="ignore", invalid="ignore"):
            for k in range(T):
                uk = 0.0 if uff is None else uff[..., k, :]
                if Km is not None:
                    e = x if xr is None else x - xr[k]
                    uk = uk - e @ Km[k].T
                inp = 0.0 if (uff is None and Km is None) else (uk if self.B is None else uk @ self.B[k].T)
                x = self._f(k, x) + inp
                out[..., k + 1, :] = x
        return _refuse_overflow(out, "rollout(): the state", layout="rollout")

    @public_api
    def linearize(self, nominal_trajectory: Any, *, affine: bool = True):
        r"""LTV model of the plant along a nominal trajectory.

        ``x_{k+1} ≈ f_k(x̄_k) + J_k(x̄_k)(x_k − x̄_k) + B_k u_k``, i.e. ``A_k = J_k(x̄_k)`` and,
        with ``affine=True``, the drift ``c_k = f_k(x̄_k) − J_k(x̄_k) x̄_k``.

        Parameters
        ----------
        nominal_trajectory : array (T+1, n) or (T, n)
            States ``x̄_k`` (only ``x̄_0 … x̄_{T−1}`` enter).
        affine : bool, default True
            Include the drift ``c``; ``False`` gives the deviation model ``δ_{k+1} = A_k δ_k + B_k δu_k``.

        Returns
        -------
        LTVSystem
            ``A: (T, n, n)``, ``B`` (``None`` for the identity), ``c: (T, n)`` or ``None``.
        """
        from ltv_control.system import LTVSystem

        affine = as_bool(affine, "affine")
        T, n = self.horizon, self.n_states
        xb = _f64(nominal_trajectory, "nominal_trajectory")
        if xb.shape not in ((T + 1, n), (T, n)):
            raise DimensionError(
                f"nominal_trajectory must have shape (T+1, n) or (T, n) = ({T + 1}, {n}), found {xb.shape}"
            )
        with np.errstate(over="ignore", invalid="ignore"):
            A = np.stack([self._jac(k, xb[k]) for k in range(T)])
            c = np.stack([self._f(k, xb[k]) - A[k] @ xb[k] for k in range(T)]) if affine else None
        _refuse_overflow(A.reshape(T, -1), "linearize(): the Jacobian A_k", layout="steps")
        if c is not None:
            _refuse_overflow(c, "linearize(): the drift c_k = f_k(x̄_k) − A_k x̄_k", layout="steps")
        return LTVSystem(A, None if self.B is None else self.B.copy(), c)

    # ---------------------------------------------------------------- remainder constants
    @public_api
    def remainder_constants(self, P: Any = None) -> np.ndarray:
        r"""Certified remainder constants in the weights ``P``.

        Returns ``L_k`` such that, for every nominal state and every deviation ``δ``,
        ``‖r_k‖_{P_{k+1}} <= (L_k/2) ‖δ‖²_{P_k}`` with ``r_k`` the Taylor remainder of ``f_k``
        (``B_k u`` is affine and leaves no remainder).

        Parameters
        ----------
        P : array (T+1, n, n), optional
            Positive definite weights (e.g. :func:`ltv_control.bounds.lyapunov_weights` of the
            closed loop); ``None`` gives the Euclidean constants (``P_k = I``).

        Returns
        -------
        L : ndarray (T,)
        """
        T, n = self.horizon, self.n_states
        if P is None:
            C = np.broadcast_to(np.eye(n), (T + 1, n, n))
        else:
            C = _cholesky_weights(P, T, n)
        with np.errstate(over="ignore", invalid="ignore"):
            L = np.array([self._weighted_constant(k, C[k], C[k + 1]) for k in range(T)])
        if not np.all(np.isfinite(L)):
            k = int(np.argmax(~np.isfinite(L)))
            raise NumericalError(f"remainder_constants(): L_{k} overflowed float64 at step {k} (the "
                                 "weights P are nearly singular or the plant's coefficients huge)")
        return L

    def _weighted_constant(self, k: int, C_from: np.ndarray, C_to: np.ndarray) -> float:  # pragma: no cover
        raise NotImplementedError


class QuadraticResidualPlant(_PlantBase):
    r"""``x_{k+1} = A_k x + ½ H_k[x, x] + B_k u`` with an exact quadratic remainder.

    Parameters
    ----------
    A : array (T, n, n)
        Linear parts.
    H : array (T, n, n, n)
        Quadratic parts, ``H[k, j, a, b]``, symmetrised in ``(a, b)`` on construction.
    B : array (T, n, m), optional
        Input matrices; ``None`` means ``B_k = I`` (m = n).

    Notes
    -----
    ``J_k(x) = A_k + H_k[·, x]`` (``J[j, a] = A[j, a] + Σ_b H[j, a, b] x_b``) and the remainder
    is exactly ``r = ½ H_k[δ, δ]``.  The certified constant in weights ``P_k = C_k C_kᵀ`` is
    ``L_k = sup_{‖y‖=1} ‖H̃_k[y, y]‖`` with the whitened tensor
    ``H̃_k[y, y] = C_{k+1}ᵀ H_k[C_k^{-T} y, C_k^{-T} y]``, bounded above by
    ``min(σ_max(H̃_(1)), sqrt(Σ_j ‖H̃_j‖₂²))`` (``H̃_(1)``: the n × n² unfolding, ``H̃_j`` its
    symmetric n × n slices) — both are valid, so is their minimum.
    """

    @public_api
    def __init__(self, A: Any, H: Any, B: Any = None) -> None:
        A = _f64(A, "A")
        if A.ndim != 3 or A.shape[1] != A.shape[2] or A.shape[0] < 1 or A.shape[1] < 1:
            raise DimensionError(f"A must have shape (T, n, n) with T >= 1 and n >= 1, found {A.shape}")
        T, n, _ = A.shape
        H = _f64(H, "H")
        if H.shape != (T, n, n, n):
            raise DimensionError(f"H must have shape (T, n, n, n) = {(T, n, n, n)}, found {H.shape}")
        self.A = A
        self.H = 0.5 * (H + np.swapaxes(H, -1, -2))
        self.horizon, self.n_states = T, n
        self.B = _input_matrix(B, T, n)

    @classmethod
    @public_api
    def random(
        cls,
        n: int,
        T: int,
        *,
        seed: int | None = None,
        spectral_radius: float = 1.0,
        quadratic_scale: float = 0.1,
        m: int | None = None,
    ) -> "QuadraticResidualPlant":
        """A random plant: ``A_k`` Gaussian scaled to spectral norm ``spectral_radius`` (times a
        random factor in [0.8, 1.2]); ``H_k`` Gaussian with ``‖H_k‖`` (unfolding) ≈ ``quadratic_scale``.

        Parameters
        ----------
        n, T : int
            State dimension and horizon.
        seed : int, optional
        spectral_radius : float, default 1.0
            Typical spectral norm of ``A_k``.
        quadratic_scale : float, default 0.1
            Typical Euclidean remainder constant.
        m : int, optional
            Number of inputs; ``None`` means ``B = I`` (m = n), else a Gaussian ``B_k`` (n × m).
        """
        n, T, m = _sizes(n, T, m, per_step=lambda k: k ** 3)
        spectral_radius = as_real(spectral_radius, "spectral_radius", low=0.0)
        quadratic_scale = as_real(quadratic_scale, "quadratic_scale", low=0.0)
        rng = np.random.default_rng(_seed(seed))
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below
            A = rng.standard_normal((T, n, n)) / np.sqrt(n)
            A *= (spectral_radius * rng.uniform(0.8, 1.2, size=(T, 1, 1))) / np.linalg.norm(A, 2, axis=(1, 2))[:, None, None]
            H = rng.standard_normal((T, n, n, n))
            H = 0.5 * (H + np.swapaxes(H, -1, -2))
            unf = np.linalg.norm(H.reshape(T, n, n * n), 2, axis=(1, 2))
            H *= quadratic_scale / unf[:, None, None, None]
        B = None if m is None else rng.standard_normal((T, n, m)) / np.sqrt(m)
        _refuse_scale_overflow(A, "spectral_radius", spectral_radius)
        _refuse_scale_overflow(H, "quadratic_scale", quadratic_scale)
        return cls(A, H, B)

    def _f(self, k: int, x: np.ndarray) -> np.ndarray:
        quad = np.einsum("jab,...a,...b->...j", self.H[k], x, x)
        return x @ self.A[k].T + 0.5 * quad

    def _jac(self, k: int, x: np.ndarray) -> np.ndarray:
        return self.A[k] + np.einsum("jab,...b->...ja", self.H[k], x)

    def _weighted_constant(self, k: int, C_from: np.ndarray, C_to: np.ndarray) -> float:
        n = self.n_states
        # M = C_from^{-T}: solve C_fromᵀ M = I
        M = sla.solve_triangular(C_from, np.eye(n), lower=True, trans="T")
        Ht = np.einsum("cj,cab,ax,by->jxy", C_to, self.H[k], M, M, optimize=True)
        unfold = np.linalg.norm(Ht.reshape(n, n * n), 2)
        slices = np.sqrt(np.sum(np.linalg.norm(Ht, 2, axis=(1, 2)) ** 2))
        return float(min(unfold, slices))


class ResidualMLPPlant(_PlantBase):
    r"""``x_{k+1} = x + W2_k tanh(W1_k x + b1_k) + B_k u`` — a transformer-like residual block.

    Parameters
    ----------
    W1 : array (T, d, n)
    W2 : array (T, n, d)
    b1 : array (T, d), optional (zero)
    B : array (T, n, m), optional; ``None`` means ``B_k = I``.

    Notes
    -----
    ``J_k(x) = I + W2_k diag(1 − tanh²(s)) W1_k`` with ``s = W1_k x + b1_k``.  With
    ``v = W1_k δ`` and ``c = tanh''`` on the segment, the integral form of the Taylor remainder
    gives ``‖r‖_{P_{k+1}} <= ½ sup ‖W2_k diag(c) (v∘v)‖_{P_{k+1}}``, and
    ``‖v∘v‖₂ = ‖v‖₄² <= ‖v‖_∞ ‖v‖₂``, so in weights ``P_k = C_k C_kᵀ``::

        L_k = (4 / 3√3) · ‖C_{k+1}ᵀ W2_k‖₂ · ‖W1_k C_k^{-T}‖₂ · max_i ‖(W1_k C_k^{-T})_{i,:}‖₂
    """

    @public_api
    def __init__(self, W1: Any, W2: Any, b1: Any = None, B: Any = None) -> None:
        W1 = _f64(W1, "W1")
        if W1.ndim != 3 or 0 in W1.shape:
            raise DimensionError(f"W1 must have shape (T, d, n) with T, d, n >= 1, found {W1.shape}")
        T, d, n = W1.shape
        W2 = _f64(W2, "W2")
        if W2.shape != (T, n, d):
            raise DimensionError(f"W2 must have shape (T, n, d) = {(T, n, d)}, found {W2.shape}")
        b = np.zeros((T, d)) if b1 is None else _f64(b1, "b1")
        if b.shape != (T, d):
            raise DimensionError(f"b1 must have shape (T, d) = {(T, d)}, found {b.shape}")
        self.W1, self.W2, self.b1 = W1, W2, b
        self.horizon, self.n_states, self.hidden = T, n, d
        self.B = _input_matrix(B, T, n)

    @classmethod
    @public_api
    def random(
        cls,
        n: int,
        T: int,
        *,
        seed: int | None = None,
        hidden: int | None = None,
        gain: float = 0.5,
        input_scale: float = 1.0,
        m: int | None = None,
    ) -> "ResidualMLPPlant":
        """A random residual MLP: ``W1 ~ N(0, input_scale²/n)``, ``W2 ~ N(0, gain²/d)``, ``b1 ~ N(0, 0.25)``.

        Parameters
        ----------
        n, T : int
        seed : int, optional
        hidden : int, optional
            Width ``d`` (default ``2n``).
        gain : float, default 0.5
            Scale of the residual branch.
        input_scale : float, default 1.0
            Scale of the pre-activations.
        m : int, optional
            Number of inputs; ``None`` means ``B = I``.
        """
        n, T, m = _sizes(n, T, m)
        d = 2 * n if hidden is None else as_int(hidden, "hidden", low=1, high=_MAX_ELEMENTS,
                                                error=DimensionError)
        if T * d * n > _MAX_ELEMENTS:
            raise DimensionError(f"hidden: a random plant with d = {d}, n = {n}, T = {T} would draw "
                                 f"{T * d * n} coefficients per array (more than 2**28)")
        gain = as_real(gain, "gain")
        input_scale = as_real(input_scale, "input_scale")
        rng = np.random.default_rng(_seed(seed))
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below
            W1 = rng.standard_normal((T, d, n)) * input_scale / np.sqrt(n)
            W2 = rng.standard_normal((T, n, d)) * gain / np.sqrt(d)
        b1 = 0.5 * rng.standard_normal((T, d))
        B = None if m is None else rng.standard_normal((T, n, m)) / np.sqrt(m)
        _refuse_scale_overflow(W1, "input_scale", input_scale)
        _refuse_scale_overflow(W2, "gain", gain)
        return cls(W1, W2, b1, B)

    def _f(self, k: int, x: np.ndarray) -> np.ndarray:
        s = x @ self.W1[k].T + self.b1[k]
        return x + np.tanh(s) @ self.W2[k].T

    def _jac(self, k: int, x: np.ndarray) -> np.ndarray:
        s = x @ self.W1[k].T + self.b1[k]
        g = 1.0 - np.tanh(s) ** 2  # (*batch, d)
        return np.eye(self.n_states) + np.einsum("nd,...d,dm->...nm", self.W2[k], g, self.W1[k])

    def _weighted_constant(self, k: int, C_from: np.ndarray, C_to: np.ndarray) -> float:
        # W1 C_from^{-T}: (C_from^{-1} W1ᵀ)ᵀ
        W1w = sla.solve_triangular(C_from, self.W1[k].T, lower=True).T
        W2w = C_to.T @ self.W2[k]
        row_max = float(np.max(np.linalg.norm(W1w, axis=1)))
        return float(TANH_SECOND_DERIVATIVE_MAX * np.linalg.norm(W2w, 2) * np.linalg.norm(W1w, 2) * row_max)
