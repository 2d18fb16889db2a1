r"""The tracking-error bound on a language model: LQR tracking of one prompt's residual stream.

Details: the Notes of :func:`llm_bound_experiment`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltv_control._exceptions import ArgumentError, DimensionError, PropertyError
from ltv_control._validation import public_api
from ltv_control.adapters._blocks import get_block_output, replace_block_output
from ltv_control.adapters._checks import to_numpy64
from ltv_control.adapters._replay import forward_kwargs
from ltv_control.adapters.hooks import attach_laws
from ltv_control.adapters.laws import AffineLaw, RecordedLaw
from ltv_control.adapters.tokens import left_pad, model_device, pad_token_id, token_ids

__all__ = ["BoundExperimentResult", "llm_bound_experiment", "closed_loop_states"]


@dataclass
class BoundExperimentResult:
    """What :func:`llm_bound_experiment` measured.

    Attributes
    ----------
    coverage : float
        Fraction of held-out steps ``k = 1 … T`` where the bound holds.
    violations, n_steps : int
    mode : str
        ``"a_posteriori"`` or ``"a_priori"``.
    L : ndarray (T,)
        Remainder constants estimated on the calibration prompts (times ``safety``).
    nominal : ndarray (T+1, n)
        Nominal trajectory ``z̄``.
    deviations_calib, deviations_heldout : ndarray (R, T+1, n)
        Closed-loop deviations ``δz = z − z̄`` of the calibration / held-out prompts.
    open_loop_heldout : ndarray (R_h, T+1, n)
        Uncontrolled deviations of the held-out prompts (for comparison).
    bound, euclidean_bound, realised : ndarray (R_h, T+1)
        P-norm bound, Euclidean bound, realised ``‖δz_k‖_{P_k}`` of each held-out prompt.
    per_step_coverage : ndarray (T,)
    A_cl : ndarray (T, n, n)
        Closed loop ``A_k − K_k`` (float64).
    K : ndarray (T, n, n)
        LQR gains (float64).
    P : ndarray (T+1, n, n)
        Lyapunov weights of the closed loop.
    G : ndarray (T+1, T+1)
        Transition norms.
    figure : pathlib.Path or None
        The PNG written (when ``figure=`` was given).
    settings : dict
        The experiment's parameters.
    """

    coverage: float
    violations: int
    n_steps: int
    mode: str
    L: np.ndarray
    nominal: np.ndarray
    deviations_calib: np.ndarray
    deviations_heldout: np.ndarray
    open_loop_heldout: np.ndarray
    bound: np.ndarray
    euclidean_bound: np.ndarray
    realised: np.ndarray
    per_step_coverage: np.ndarray
    A_cl: np.ndarray = field(repr=False)
    K: np.ndarray = field(repr=False)
    P: np.ndarray = field(repr=False)
    G: np.ndarray = field(repr=False)
    figure: Path | None = None
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary: coverage, constants and per-step statistics (no n×n arrays).

        Per step ``k`` (lists of length ``T+1``): the median and maximum over held-out prompts of the
        realised Euclidean closed-loop error, of the open-loop error, and of the Euclidean bound.
        """
        closed = np.linalg.norm(self.deviations_heldout, axis=-1)
        opened = np.linalg.norm(self.open_loop_heldout, axis=-1)

        def finite(values: np.ndarray) -> list:
            return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=float)]

        return {
            "coverage": float(self.coverage),
            "violations": int(self.violations),
            "n_steps": int(self.n_steps),
            "mode": self.mode,
            "L": finite(self.L),
            "per_step_coverage": finite(self.per_step_coverage),
            "closed_loop_error_median": finite(np.median(closed, axis=0)),
            "closed_loop_error_max": finite(closed.max(axis=0)),
            "open_loop_error_median": finite(np.median(opened, axis=0)),
            "open_loop_error_max": finite(opened.max(axis=0)),
            "bound_euclidean_median": finite(np.median(self.euclidean_bound, axis=0)),
            "bound_euclidean_max": finite(self.euclidean_bound.max(axis=0)),
            "figure": None if self.figure is None else str(self.figure),
            "settings": dict(self.settings),
        }


# --------------------------------------------------------------------------- closed-loop runs


def _encode(plant: Any, prompts: Sequence[str], max_tokens: int | None, name: str) -> list[list[int]]:
    return token_ids(plant.tokenizer, prompts, max_tokens, name)


def _zero_pad_rows(blocks: list, pad: Any) -> list:
    """Forward hooks zeroing the pad rows of every block output (eager float64 attention would
    make them NaN, which then spreads); returns the hook handles."""

    def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        hidden = get_block_output(output)
        if hidden.dim() == 3 and hidden.shape[:2] == pad.shape:
            return replace_block_output(output, hidden.masked_fill(pad.unsqueeze(-1), 0))
        return None

    return [block.register_forward_hook(hook, with_kwargs=True, prepend=True) for block in blocks]


def _last_output(block: Any, store: dict) -> Any:
    """A forward hook storing ``block``'s (steered) output at the last position as ``store["out"]``."""

    def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        store["out"] = get_block_output(output)[:, -1, :].detach()

    return block.register_forward_hook(hook, with_kwargs=True)


def _run_batch(plant: Any, sequences: list, laws: dict, cdt: Any, accepts_mask: bool) -> Any:
    """One ``use_cache=False`` forward pass with ``laws`` attached; states ``(B, T+1, n)`` in ``cdt``."""
    import torch

    model, blocks, T = plant.model, plant.layers, plant.horizon
    device = model_device(model)
    ids, mask, positions = left_pad(sequences, pad_token_id(plant.tokenizer), device=device)
    store = laws[0].store
    pad = mask == 0
    extra = _zero_pad_rows(blocks, pad) if bool(pad.any()) else []
    extra.append(_last_output(blocks[-1], store))
    try:
        with attach_laws(model, blocks, laws, positions="last", width=plant.state_dim), torch.no_grad():
            model(input_ids=ids, **forward_kwargs(model, attention_mask=mask if accepts_mask else None,
                                                  position_ids=positions, use_cache=False, logits_to_keep=1))
    finally:
        for handle in extra:
            handle.remove()
    if any(("z", k) not in store for k in range(T)):
        raise RuntimeError("a decoder block was not called during the forward pass")
    return torch.stack([store[("z", k)] for k in range(T)] + [store["out"].to(cdt)], dim=1)


def _laws(K: Any, nominal: Any, inputs: Any, rows: slice, T: int, store: dict, cdt: Any) -> dict:
    """Recorded per-layer laws: feedback ``K_k (z̄_k − z_k)`` (an :class:`AffineLaw` with
    ``U = K_k``, ``V = I``, ``b = z̄_k``), open loop ``inputs[rows, k]`` (``c``), or none."""
    if K is not None:
        return {k: RecordedLaw(AffineLaw(U=K[k], b=nominal[k], dtype=cdt), k, store) for k in range(T)}
    if inputs is not None:
        return {k: RecordedLaw(AffineLaw(c=inputs[rows, k], dtype=cdt), k, store) for k in range(T)}
    return {k: RecordedLaw(None, k, store, dtype=cdt) for k in range(T)}


def _run_controlled(plant: Any, prompts: Sequence[str], nominal: np.ndarray | None, K: np.ndarray | None,
                    inputs: np.ndarray | None, *, max_tokens: int | None, batch_size: int,
                    name: str) -> tuple[np.ndarray, np.ndarray]:
    """One ``use_cache=False`` forward pass per batch under a law at the last token.

    Block ``k``'s output gets ``u_k = −K_k (z_k − z̄_k)`` (``K`` given), ``u_k = inputs[p, k]``
    (open loop), or nothing; the law is attached by :func:`~ltv_control.adapters.hooks.attach_laws`
    and computed in float64 for float64 models, float32 otherwise.  Returns the realised states
    ``z`` (P, T+1, n) and the applied inputs (P, T, n), float64.
    """
    import torch

    model, T, n = plant.model, plant.horizon, plant.state_dim
    encoded = _encode(plant, prompts, max_tokens, name)
    accepts_mask = "attention_mask" in forward_kwargs(model, attention_mask=True)
    batch_size = batch_size if accepts_mask else 1
    cdt = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    as_t = (lambda x: None if x is None else torch.as_tensor(x, dtype=cdt))  # noqa: E731
    Kt, zbar, u_open = as_t(K), as_t(nominal), as_t(inputs)
    states, applied = np.empty((len(encoded), T + 1, n)), np.zeros((len(encoded), T, n))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(encoded), batch_size):
            rows, store = slice(start, min(start + batch_size, len(encoded))), {}
            laws = _laws(Kt, zbar, u_open, rows, T, store, cdt)
            states[rows] = _run_batch(plant, encoded[rows], laws, cdt, accepts_mask).to("cpu", torch.float64).numpy()
            for k in range(T):
                if ("u", k) in store:
                    applied[rows, k] = store[("u", k)].to("cpu", torch.float64).numpy()
    finally:
        model.train(was_training)
    return states, applied


@public_api
def closed_loop_states(
    plant: Any,
    prompts: Sequence[str],
    nominal: Any,
    K: Any,
    *,
    max_tokens: int | None = 24,
    batch_size: int = 8,
) -> np.ndarray:
    r"""Residual-stream states of prompts run under the tracking law ``u_k = −K_k (z_k − z̄_k)``.

    Forward hooks read ``z_k`` (block ``k``'s input at the last token) and add ``u_k`` to block
    ``k``'s output at the last token, in one ``use_cache=False`` forward pass per batch (left
    padding, explicit position ids); hooks are removed also when the forward pass raises.
    ``u`` is computed in float32 (float64 for float64 models) and added in the model's dtype.

    Parameters
    ----------
    plant : ltv_control.adapters.LLMPlant
    prompts : list of str
    nominal : array (T+1, n)
        The trajectory ``z̄`` to track (e.g. ``plant.last_token_states([prompt])[0]``).
    K : array (T, n, n)
        Feedback gains (e.g. ``finite_horizon_lqr(plant.linearize(...), q, r).K``).
    max_tokens : int or None, default 24
        Prompts keep their first ``max_tokens`` tokens (use the same value as for ``nominal``).
    batch_size : int, default 8

    Returns
    -------
    ndarray (P, T+1, n), float64
        ``z_0 … z_T`` (``z_{k+1}`` includes ``u_k``).
    """
    T, n = plant.horizon, plant.state_dim
    zbar = to_numpy64(nominal, "nominal", finite=True)
    if zbar.shape != (T + 1, n):
        raise DimensionError(f"nominal: expected shape (T+1, n) = {(T + 1, n)}, found {zbar.shape}")
    Km = to_numpy64(K, "K", finite=True)
    if Km.shape != (T, n, n):
        raise DimensionError(f"K: expected shape (T, n, n) = {(T, n, n)}, found {Km.shape}")
    states, _ = _run_controlled(plant, prompts, zbar, Km, None, max_tokens=max_tokens,
                                batch_size=batch_size, name="prompts")
    return states


# --------------------------------------------------------------------------- the experiment


@public_api
def llm_bound_experiment(
    plant: Any,
    nominal_prompt: str,
    calibration_prompts: Sequence[str],
    heldout_prompts: Sequence[str],
    *,
    q: float = 1.0,
    r: float = 1.0,
    qf: float | None = None,
    jacobian_prompts: Sequence[str] | None = None,
    system: Any = None,
    max_tokens: int | None = 24,
    safety: float = 1.0,
    quantile: float = 1.0,
    mode: str = "a_posteriori",
    min_norm: float | None = None,
    figure: str | Path | None = None,
    norm: str = "euclidean",
    batch_size: int = 8,
    progress: bool = True,
) -> BoundExperimentResult:
    r"""Tracking-error bound and its held-out coverage on a language model.

    Tracks the uncontrolled last-token trajectory ``z̄`` of ``nominal_prompt`` with the LQR law
    ``u_k = −K_k (z_k − z̄_k)`` (gains from :func:`ltv_control.finite_horizon_lqr` on the
    linearization, ``B = I``) while the model reads *other* prompts; estimates the remainder
    constants ``L_k`` from the calibration prompts' closed-loop deviations
    (:func:`ltv_control.bounds.bound_coverage`) and reports the fraction of held-out steps where
    ``‖δz_k‖_{P_k} <= b_k`` (``P``: Lyapunov weights of ``Â_k = A_k − K_k``).  The CLI's
    ``ltv-control bound`` calls this function.

    Parameters
    ----------
    plant : ltv_control.adapters.LLMPlant
    nominal_prompt : str
        Prompt whose uncontrolled trajectory is tracked.
    calibration_prompts : list of str
        Prompts whose closed-loop deviations calibrate ``L``.
    heldout_prompts : list of str
        Prompts on which the coverage is measured.
    q, r : float, default 1.0
        ``Q = q·I`` and ``R = r·I`` (``R`` positive definite, ``Q`` positive semidefinite).
    qf : float or None, default None
        ``Qf = qf·I``; ``None`` means ``Q`` (the library-wide default).
    jacobian_prompts : list of str or None, default None
        Prompts the Jacobians are averaged over; ``None`` means the nominal prompt plus the
        calibration prompts (never the held-out ones).
    system : ltv_control.LTVSystem or None, default None
        A linearization computed beforehand (``A``: (T, n, n), ``B`` identity); skips
        :meth:`LLMPlant.linearize`.
    max_tokens : int or None, default 24
        Every prompt keeps its first ``max_tokens`` tokens (states, closed loop and Jacobians).
    safety : float, default 1.0
        Factor applied to the estimated ``L``.
    quantile : float in (0, 1], default 1.0
        Per-step quantile of the calibration ratios (1.0 = maximum).
    mode : {"a_posteriori", "a_priori"}, default "a_posteriori"
        Form of the bound checked on the held-out prompts.
    min_norm : float or None, default None
        Calibration steps with ``‖δz_i‖_{P_i} <= min_norm`` are ignored; ``None`` means
        ``1e-4 · max_k ‖z̄_k‖ · sqrt(λ_max(P_k))`` (float32 rounding of the states is ~1e-7 of their size).
    figure : str, Path or None, default None
        Write the envelope-vs-bound PNG there (:func:`ltv_control.bound_plots.plot_tracking_bound`).
    norm : {"euclidean", "P"}, default "euclidean"
        Norm of the figure.
    batch_size : int, default 8
    progress : bool, default True
        Progress bar of the linearization.

    Returns
    -------
    BoundExperimentResult
        Coverage, constants, deviations, bounds, the closed loop, and ``to_dict()`` for reports.

    Notes
    -----
    The plant is the model over its decoder blocks, ``z_{k+1} = φ_k(z_k) + u_k`` with ``z_k`` the input
    of block ``k`` at the last token and ``u_k`` added to block ``k``'s output at the last token
    (``B = I``).  The experiment

    1. records the nominal trajectory ``z̄`` of one prompt (no control),
    2. linearizes the model (``A_k``: prompt-averaged last-token Jacobians,
       :meth:`~ltv_control.adapters.LLMPlant.linearize`) and computes LQR gains ``K_k`` with
       :func:`ltv_control.finite_horizon_lqr` (``Q = q·I``, ``R = r·I``, ``Qf = qf·I``),
    3. runs *other* prompts in closed loop: forward hooks read ``z_k`` entering block ``k`` and add
       ``u_k = −K_k (z_k − z̄_k)`` to block ``k``'s output at the last token, in one ``use_cache=False``
       forward pass (the earlier positions are untouched, as in the paper's last-token plant),
    4. measures the realised deviations ``δz_k = z_k − z̄_k``; with ``Â_k = A_k − K_k`` the remainder
       ``r_k = δz_{k+1} − Â_k δz_k`` lumps the nonlinearity of the blocks *and* the prompt mismatch
       (each prompt's blocks see a different prefix, so ``φ_k`` differs between prompts),
    5. estimates ``L_k`` on calibration prompts and reports on held-out prompts the coverage of the
       bound of :func:`ltv_control.bounds.tracking_error_bound` (an estimate, not a certificate).

    Cost on SmolLM2-135M (T = 30, n = 576): one Jacobian pass per linearization prompt, one forward pass
    per batch of prompts, and the transition norms of the bound (``T(T+1)/2`` spectral norms of
    576 × 576 matrices, several seconds).
    """
    from ltv_control.bounds import bound_coverage, lyapunov_weights

    _check_arguments(plant, nominal_prompt, calibration_prompts, heldout_prompts, q=q, r=r, qf=qf,
                     safety=safety, norm=norm, max_tokens=max_tokens)
    nominal = to_numpy64(plant.last_token_states([nominal_prompt], max_tokens=max_tokens)[0], "nominal",
                         finite=True)
    if system is None:
        prompts = list(jacobian_prompts) if jacobian_prompts is not None else [nominal_prompt, *calibration_prompts]
        system = plant.linearize(prompts, max_tokens=max_tokens if max_tokens is not None else 24,
                                 batch_size=batch_size, progress=progress)
    K, A_cl = _tracking_gains(system, plant.horizon, plant.state_dim, q, r, qf)
    run = {"max_tokens": max_tokens, "batch_size": batch_size}
    D_cal = _run_controlled(plant, calibration_prompts, nominal, K, None, **run, name="calibration_prompts")[0] - nominal
    D_held = _run_controlled(plant, heldout_prompts, nominal, K, None, **run, name="heldout_prompts")[0] - nominal
    D_open = to_numpy64(plant.last_token_states(list(heldout_prompts), max_tokens=max_tokens), "states",
                        finite=True) - nominal
    P = lyapunov_weights(A_cl)
    if min_norm is None:
        lam_max = np.array([np.linalg.eigvalsh(Pk)[-1] for Pk in P])
        min_norm = float(1e-4 * np.max(np.linalg.norm(nominal, axis=-1) * np.sqrt(lam_max)))
    cov = bound_coverage(A_cl, D_cal, D_held, P=P, safety=safety, quantile=quantile, mode=mode,
                         min_norm=min_norm)
    settings = {
        "nominal_prompt": nominal_prompt, "n_calibration": len(calibration_prompts),
        "n_heldout": len(heldout_prompts), "q": float(q), "r": float(r), "qf": None if qf is None else float(qf),
        "max_tokens": max_tokens, "safety": float(safety), "quantile": float(quantile),
        "mode": mode, "min_norm": float(min_norm), "horizon": plant.horizon, "state_dim": plant.state_dim,
        "model_id": getattr(plant, "model_id", None),
    }
    result = BoundExperimentResult(
        coverage=cov.coverage, violations=cov.violations, n_steps=cov.n_steps, mode=mode, L=cov.L,
        nominal=nominal, deviations_calib=D_cal, deviations_heldout=D_held, open_loop_heldout=D_open,
        bound=np.asarray(cov.bound), euclidean_bound=np.asarray(cov.tracking.euclidean),
        realised=cov.realised, per_step_coverage=cov.per_step_coverage, A_cl=A_cl, K=K, P=P,
        G=np.asarray(cov.tracking.G), settings=settings,
    )
    if figure is not None:
        result.figure = _figure(figure, result, cov.tracking, norm, getattr(plant, "model_id", "the model"))
    return result


def _check_arguments(plant: Any, nominal_prompt: Any, calibration_prompts: Any, heldout_prompts: Any, *,
                     q: Any, r: Any, qf: Any, safety: Any, norm: Any, max_tokens: Any) -> None:
    """Refuse bad arguments of :func:`llm_bound_experiment` before any forward pass."""
    if not isinstance(nominal_prompt, str):
        raise ArgumentError(f"nominal_prompt: expected a string, found {type(nominal_prompt).__name__}")
    for value, name in ((q, "q"), (r, "r"), (safety, "safety")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ArgumentError(f"{name}: expected a finite number, found {value!r}")
    if r <= 0:
        raise PropertyError(f"r: expected a positive number (R = r·I positive definite), found {r}")
    if q < 0 or (qf is not None and qf < 0):
        raise PropertyError("q, qf: expected nonnegative numbers (Q, Qf positive semidefinite)")
    if norm not in ("euclidean", "P"):
        raise ArgumentError(f"norm: expected 'euclidean' or 'P', found {norm!r}")
    _encode(plant, calibration_prompts, max_tokens, "calibration_prompts")
    _encode(plant, heldout_prompts, max_tokens, "heldout_prompts")


def _tracking_gains(system: Any, T: int, n: int, q: float, r: float, qf: float | None) -> tuple:
    """LQR gains ``K`` (``Q = q·I``, ``R = r·I``, ``Q_f = qf·I`` or ``Q``) and ``Â_k = A_k − K_k``."""
    from ltv_control.lqr import finite_horizon_lqr
    from ltv_control.system import LTVSystem

    A = to_numpy64(system.A, "system.A", finite=True)
    if A.shape != (T, n, n) or system.B is not None:
        raise DimensionError(
            f"system: expected A of shape (T, n, n) = {(T, n, n)} with B = identity, found A {A.shape}"
            + ("" if system.B is None else " and an explicit B")
        )
    lin = LTVSystem(A)
    gains = finite_horizon_lqr(lin, float(q), float(r), Qf=None if qf is None else float(qf) * np.eye(n))
    K = np.asarray(gains.K, dtype=np.float64)
    return K, np.asarray(lin.closed_loop(K), dtype=np.float64)


def _figure(path: Any, result: BoundExperimentResult, tracking: Any, norm: str, model_id: str) -> Path:
    """The envelope-vs-bound PNG (:func:`ltv_control.bound_plots.plot_tracking_bound`)."""
    from ltv_control.bound_plots import plot_tracking_bound

    return plot_tracking_bound(
        path, result.deviations_heldout, tracking, norm=norm, xlabel="layer k",
        title=f"LQR tracking on {model_id} ({result.mode.replace('_', ' ')})",
        annotation=f"held-out coverage {result.coverage:.3f}\n({result.violations}/{result.n_steps} steps violated)",
    )
