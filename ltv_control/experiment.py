"""The steering evaluation behind ``ltv-control demo`` and ``ltv-control eval``.

Every method is fitted on the same contrastive data and evaluated on the same prompts with the
same decoding, KV-cache mode and batching (:mod:`ltv_control.generation`):

``unsteered``   the model alone;
``actadd``      ActAdd, ``coeff·e_k`` added at fixed layers (its sweep variable is ``coeff``);
``pid``         S-PID on the LFS error (positions ``"last"``);
``alqr``        A-LQR, ``u_k = (β*_k − v_kᵀz_k) K_k v_k``, positions ``"last"``;
``alqr_plus``   the same controller applied at every position (``"all"``);
``constrained`` the constrained steerer, when ``ltv_control.adapters`` provides it.

For each method a λ sweep (``coeff`` for ActAdd) gives the sentiment / perplexity trade-off;
the ``methods`` entry is the sweep point at the method's default λ.  Metrics
(:mod:`ltv_control.metrics`) are computed on the continuations only; perplexity is always taken
under the unsteered model.  The returned report follows the contract's ``report.json`` schema;
figures' data (feature strengths β_k, examples, timings, the claim check) go into ``details``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import asdict, dataclass, field

import numpy as np

from ltv_control._exceptions import ArgumentError, PropertyError
from ltv_control.datasets import SentimentTask
from ltv_control.generation import Decoding, Generation, generate_continuations

__all__ = [
    "METHODS",
    "METRIC_KEYS",
    "ExperimentSettings",
    "claim_check",
    "evaluate_generation",
    "feature_strengths",
    "run_bound_figure",
    "run_experiment",
]

METHODS = ("unsteered", "actadd", "pid", "alqr", "alqr_plus", "constrained")
"""Every method name a report may hold, in report order."""

METRIC_KEYS = ("positive_rate", "vader_mean", "perplexity", "distinct2", "tokens_per_s")
"""The keys of a metrics record M."""


@dataclass
class ExperimentSettings:
    """Every knob of the evaluation, each with its default.

    Attributes
    ----------
    methods : tuple of str
        Methods to run (subset of :data:`METHODS`); ``constrained`` is skipped with a note when
        its steerer is not available.
    n_fit, n_eval, n_jacobian : int or None
        How many fitting pairs, evaluation prompts and Jacobian prompts to use (None: all).
    decoding : Decoding
        Shared decoding rule (greedy by default).
    q, r, qf, lam : float
        A-LQR weights (state, input, terminal) and setpoint scale β*_k = lam·‖e_k‖.
    max_jacobian_tokens : int
        Jacobian prompts are cut to this many tokens.
    actadd_layers : tuple of int or None
        ActAdd layers (None: the layer at one third of the depth).
    actadd_coeff : float
        ActAdd default coefficient.
    pid : dict
        S-PID gains (kp, ki, kd) and reset_every.
    constrained : dict
        Keyword arguments of ``ConstrainedSteerer.fit`` (rank, budget, ...).
    sweep : dict of str to list of float
        λ grid per method (``coeff`` grid for ActAdd); each must contain the default.
    perplexity_batch_size : int
    """

    methods: tuple[str, ...] = ("unsteered", "actadd", "pid", "alqr", "alqr_plus", "constrained")
    n_fit: int | None = 64
    n_eval: int | None = 48
    n_jacobian: int | None = 2
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=20))
    q: float = 0.1
    r: float = 1.0
    qf: float = 0.1
    lam: float = 1.0
    max_jacobian_tokens: int = 12
    actadd_layers: tuple[int, ...] | None = None
    actadd_coeff: float = 4.0
    pid: dict = field(default_factory=lambda: {"kp": 0.5, "ki": 0.5, "kd": 0.0, "reset_every": 10})
    constrained: dict = field(default_factory=dict)
    sweep: dict = field(default_factory=lambda: {
        "actadd": [2.0, 4.0, 6.0, 8.0],
        "pid": [1.0],
        "alqr": [0.5, 1.0, 1.5],
        "alqr_plus": [1.0],
        "constrained": [1.0],
    })
    perplexity_batch_size: int = 16

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise PropertyError(f"methods: unknown {unknown}; expected names from {list(METHODS)}")
        if "unsteered" not in self.methods:
            self.methods = ("unsteered",) + tuple(self.methods)
        for name in ("q", "qf"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) >= 0):
                raise PropertyError(f"{name} must be a float >= 0, found {getattr(self, name)!r}")
        if not (isinstance(self.r, (int, float)) and self.r > 0):
            raise PropertyError(f"r must be a float > 0, found {self.r!r}")
        for key, grid in self.sweep.items():
            if key not in METHODS:
                raise PropertyError(f"sweep: unknown method {key!r}")
            if not grid or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in grid):
                raise PropertyError(f"sweep[{key!r}] must be a non-empty list of finite floats")

    def default_lam(self, method: str) -> float:
        """λ (ActAdd: coeff) at which a method's headline numbers are reported."""
        return self.actadd_coeff if method == "actadd" else self.lam

    def as_dict(self) -> dict:
        """JSON-serializable form, recorded as ``settings`` in the report."""
        out = asdict(self)
        out["methods"] = list(self.methods)
        out["decoding"] = self.decoding.as_dict()
        out["actadd_layers"] = None if self.actadd_layers is None else list(self.actadd_layers)
        return out


def evaluate_generation(model, tokenizer, generation: Generation, *, batch_size: int = 16,
                        progress: bool = False) -> dict:
    """Metrics record M of one set of continuations.

    Returns
    -------
    dict with keys :data:`METRIC_KEYS`: positive rate (VADER compound ≥ 0.05), mean compound,
    corpus perplexity of the continuations under ``model`` (pass the unsteered model), distinct-2,
    tokens per second of the generation.
    """
    from ltv_control import metrics

    ppl = metrics.continuation_perplexity(model, tokenizer, generation.prompts,
                                          generation.token_ids, batch_size=batch_size,
                                          progress=progress)
    return {
        "positive_rate": metrics.positive_rate(generation.texts),
        "vader_mean": metrics.vader_mean(generation.texts),
        "perplexity": float(ppl),
        "distinct2": metrics.distinct_n(generation.texts, 2),
        "tokens_per_s": float(generation.tokens_per_s),
    }


def feature_strengths(plant, prompts: Sequence[str], v, *, steering=None,
                      batch_size: int = 16) -> np.ndarray:
    """Per-layer feature strength β_k = v_kᵀ z_k at the last prompt token, averaged over prompts.

    Parameters
    ----------
    plant : LLMPlant
    prompts : sequence of str
    v : array-like, shape (T, n)
        Unit feature directions (zero rows for uncontrolled layers).
    steering : callable returning a context manager, optional
        Attach a steerer while the states are recorded (β of the steered run).

    Returns
    -------
    numpy.ndarray, shape (T,)
    """
    import contextlib

    import torch

    context = steering() if steering is not None else contextlib.nullcontext()
    with torch.no_grad(), context:
        states = plant.last_token_states(list(prompts), batch_size=batch_size)
    z = states[:, : np.asarray(v).shape[0], :].double().numpy()
    beta = np.einsum("ptn,tn->pt", z, np.asarray(v, dtype=np.float64))
    return beta.mean(axis=0)


def claim_check(sweep: list[dict], method: str = "alqr", baseline: str = "actadd",
                lam: float | None = None) -> dict:
    """Compare a method's perplexity with the baseline's at the same positive rate.

    The baseline needs at least two sweep points (otherwise ``{"available": False}``).  Its
    perplexity at the method's positive rate is read off its sweep by linear
    interpolation in positive rate (its points sorted by positive rate; outside their range the
    nearest point is used and ``extrapolated`` is set).

    Returns
    -------
    dict: ``positive_rate``, ``perplexity`` (the method at ``lam``, default its first point with
    the largest positive rate), ``baseline_perplexity``, ``extrapolated``, ``holds``
    (method perplexity ≤ baseline perplexity).
    """
    mine = [p for p in sweep if p["method"] == method]
    base = sorted((p for p in sweep if p["method"] == baseline), key=lambda p: p["positive_rate"])
    if not mine or len(base) < 2:
        return {"available": False}  # one baseline point gives no curve to compare against
    point = (next((p for p in mine if p["lam"] == lam), None) if lam is not None else None) or \
        max(mine, key=lambda p: p["positive_rate"])
    rates = np.array([p["positive_rate"] for p in base])
    ppls = np.array([p["perplexity"] for p in base])
    target = point["positive_rate"]
    base_ppl = float(np.interp(target, rates, ppls))
    return {
        "available": True,
        "method": method,
        "baseline": baseline,
        "lam": point["lam"],
        "positive_rate": target,
        "perplexity": point["perplexity"],
        "baseline_perplexity": base_ppl,
        "extrapolated": bool(target < rates.min() or target > rates.max()),
        "holds": bool(point["perplexity"] <= base_ppl),
    }


class _StateCachingPlant:
    """A plant whose ``last_token_states`` is memoised per prompt list and options.

    Every steerer's fit computes the same setpoint states from the same contrastive prompts;
    within one experiment they are computed once. Everything else is the wrapped plant's.
    """

    def __init__(self, plant: Any) -> None:
        self._plant = plant
        self._states: dict = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._plant, name)

    def last_token_states(self, prompts: Sequence[str], **options: Any) -> Any:
        key = (tuple(prompts), tuple(sorted(options.items())))
        if key not in self._states:
            self._states[key] = self._plant.last_token_states(list(prompts), **options)
        return self._states[key]


def _steerer_classes() -> dict:
    from ltv_control import adapters

    found = {}
    for name in ("ALQRSteerer", "ActAddSteerer", "PIDSteerer", "ConstrainedSteerer"):
        try:
            found[name] = getattr(adapters, name)
        except (AttributeError, ImportError):
            found[name] = None
    return found


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        import sys

        print(message, file=sys.stderr, flush=True)


def run_experiment(model, tokenizer, task: SentimentTask, settings: ExperimentSettings | None = None,
                   *, seed: int = 0, progress: bool = True, quiet: bool = False,
                   return_details: bool = False, bound_figure=None, **kwargs):
    """Fit every method, generate, measure, sweep λ; return the report (and the figure data).

    Parameters
    ----------
    model, tokenizer : a transformers causal LM and its tokenizer (left padding is done here).
    task : SentimentTask
        Fitting pairs (desired/undesired), evaluation prompts, Jacobian prompts.
    settings : ExperimentSettings, optional
    seed : int, default 0
        Seeds torch (fits and sampling); recorded in the report.
    progress : bool, default True
        tqdm bars on fitting, generation and scoring.
    quiet : bool, default False
        Suppress the step-by-step log on stderr.
    return_details : bool, default False
        Also return the details dict (β_k profiles, examples, claim check, timings, notes).
    bound_figure : path-like, optional
        Run the tracking-error bound experiment
        (:func:`ltv_control.adapters.bound_experiment.llm_bound_experiment`, on the shared
        linearization, a few evaluation prompts) and write its figure there; its summary goes
        into ``details["bound"]``.  A failure is reported in ``details["notes"]``.

    Returns
    -------
    dict, or (dict, dict) with ``return_details``
        ``{"version", "settings", "seed", "methods": {name: M}, "sweep": [{"method", "lam", **M}]}``
        with M = ``{positive_rate, vader_mean, perplexity, distinct2, tokens_per_s}``.
    """
    import torch

    import ltv_control
    from ltv_control.adapters import LLMPlant

    if kwargs:
        raise ArgumentError(f"run_experiment() got unknown keyword(s) {sorted(kwargs)}")
    settings = settings or ExperimentSettings()
    if not isinstance(settings, ExperimentSettings):
        raise ArgumentError(f"settings must be ExperimentSettings, found {type(settings).__name__}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ArgumentError(f"seed must be an int, found {type(seed).__name__}")
    task = task.subset(n_fit=settings.n_fit, n_eval=settings.n_eval,
                       n_jacobian=settings.n_jacobian)
    decoding = Decoding(**{**settings.decoding.as_dict(), "seed": seed})
    desired, undesired = list(task.desired), list(task.undesired)
    prompts = list(task.eval_prompts)
    classes = _steerer_classes()
    notes: list[str] = []
    timings: dict[str, float] = {}
    torch.manual_seed(seed)
    model.eval()

    plant = _StateCachingPlant(LLMPlant(model, tokenizer))
    T = plant.horizon
    actadd_layers = list(settings.actadd_layers) if settings.actadd_layers is not None \
        else [max(0, T // 3)]
    bad = [k for k in actadd_layers if not 0 <= k < T]
    if bad:
        raise PropertyError(f"actadd_layers must lie in [0, {T - 1}], found {bad}")

    steerers: dict[str, object] = {}
    system = None
    began = time.perf_counter()
    if {"alqr", "alqr_plus", "constrained"} & set(settings.methods) or bound_figure is not None:
        _log(f"linearizing {T} layers on {len(task.jacobian_prompts)} prompts", quiet)
        system = plant.linearize(list(task.jacobian_prompts),
                                 max_tokens=settings.max_jacobian_tokens, progress=progress)
    timings["linearize_shared_s"] = time.perf_counter() - began
    # steering(method, lam) -> context-manager factory
    attachers: dict[str, Callable[[float], Callable]] = {}

    began = time.perf_counter()
    if {"alqr", "alqr_plus"} & set(settings.methods):
        if classes["ALQRSteerer"] is None:
            raise ArgumentError("ALQRSteerer is not available in ltv_control.adapters")
        _log("fitting A-LQR on the shared linearization", quiet)
        alqr = classes["ALQRSteerer"].fit(
            plant, desired, undesired, q=settings.q, r=settings.r, qf=settings.qf,
            lam=settings.lam, jacobian_prompts=list(task.jacobian_prompts), positions="last",
            **_maybe(classes["ALQRSteerer"].fit, max_tokens=settings.max_jacobian_tokens,
                     progress=progress, system=system))
        steerers["alqr"] = alqr
        attachers["alqr"] = lambda lam, s=alqr: (lambda: s.attach(model, positions="last", lam=lam))
        attachers["alqr_plus"] = lambda lam, s=alqr: (lambda: s.attach(model, positions="all",
                                                                       lam=lam))
    timings["fit_alqr_s"] = time.perf_counter() - began
    baselines = [m for m in ("actadd", "pid", "constrained") if m in settings.methods]
    fit_bar = None
    if progress and baselines:
        from tqdm.auto import tqdm

        fit_bar = tqdm(total=len(baselines), desc="fitting baselines", unit="steerer")
    if "actadd" in settings.methods:
        _log("fitting ActAdd", quiet)
        act = classes["ActAddSteerer"].fit(plant, desired, undesired, layers=actadd_layers,
                                           coeff=settings.actadd_coeff, positions="all")
        steerers["actadd"] = act
        attachers["actadd"] = lambda c, s=act: (lambda: s.attach(model, coeff=c))
        if fit_bar is not None:
            fit_bar.update(1)
    if "pid" in settings.methods:
        _log("fitting S-PID", quiet)
        pid = classes["PIDSteerer"].fit(plant, desired, undesired, lam=settings.lam,
                                        positions="last", **settings.pid)
        steerers["pid"] = pid
        attachers["pid"] = lambda lam, s=pid: (lambda: s.attach(model, lam=lam))
        if fit_bar is not None:
            fit_bar.update(1)
    if "constrained" in settings.methods:
        _log("fitting the constrained steerer", quiet)
        if classes["ConstrainedSteerer"] is None:
            notes.append("constrained: ConstrainedSteerer not available; skipped")
        else:
            try:
                fit_kwargs = {"q": settings.q, "r": settings.r, "qf": settings.qf,
                              "lam": settings.lam,
                              **_maybe(classes["ConstrainedSteerer"].fit, system=system,
                                       progress=progress,
                                       jacobian_prompts=list(task.jacobian_prompts),
                                       max_tokens=settings.max_jacobian_tokens),
                              **settings.constrained}
                con = classes["ConstrainedSteerer"].fit(plant, desired, undesired, **fit_kwargs)
                steerers["constrained"] = con
                attachers["constrained"] = lambda lam, s=con: (lambda: s.attach(model, lam=lam))
            except Exception as exc:  # report, do not lose the other methods
                notes.append(f"constrained: fit failed ({type(exc).__name__}: {exc}); skipped")
    if fit_bar is not None:
        fit_bar.update(fit_bar.total - fit_bar.n)
        fit_bar.close()
    timings["fit_total_s"] = time.perf_counter() - began
    for note in notes:
        _log(note, quiet)

    methods_run = [m for m in settings.methods if m == "unsteered" or m in attachers]
    plan: list[tuple[str, float | None]] = [("unsteered", None)]
    for method in methods_run[1:]:
        grid = sorted(set(float(x) for x in settings.sweep.get(method, [])) |
                      {float(settings.default_lam(method))})
        plan.extend((method, lam) for lam in grid)

    results: dict[tuple[str, float | None], dict] = {}
    gens: dict[tuple[str, float | None], Generation] = {}
    began = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), desc="methods × λ", unit="run")
    for method, lam in plan:
        if bar is not None:
            bar.set_postfix_str(f"{method} λ={lam}" if lam is not None else method)
        steering = attachers[method](lam) if lam is not None else None
        gen = generate_continuations(model, tokenizer, prompts, decoding=decoding,
                                     steering=steering, progress=progress,
                                     desc=f"{method}" + (f" λ={lam:g}" if lam is not None else ""))
        results[(method, lam)] = evaluate_generation(
            model, tokenizer, gen, batch_size=settings.perplexity_batch_size)
        gens[(method, lam)] = gen
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    timings["generate_and_score_s"] = time.perf_counter() - began

    report_methods = {"unsteered": results[("unsteered", None)]}
    sweep = []
    for method in methods_run[1:]:
        report_methods[method] = results[(method, float(settings.default_lam(method)))]
        for (m, lam), record in results.items():
            if m == method:
                sweep.append({"method": method, "lam": lam, **record})
    report = {
        "version": ltv_control.__version__,
        "settings": {**settings.as_dict(), "model": _model_id(model),
                     "num_layers": T, "hidden_size": plant.state_dim,
                     "actadd_layers": actadd_layers,
                     "positive_threshold": 0.05,
                     "n_fit_used": len(desired), "n_eval_used": len(prompts),
                     "n_jacobian_used": len(task.jacobian_prompts),
                     "decoding": decoding.as_dict()},
        "seed": seed,
        "methods": report_methods,
        "sweep": sweep,
    }
    if not return_details:
        return report

    began = time.perf_counter()
    details: dict = {"notes": notes, "timings": timings}
    if "alqr" in steerers:
        alqr = steerers["alqr"]
        v = alqr.v.detach().cpu().double().numpy()
        beta_prompts = prompts[: min(len(prompts), 16)]
        profiles = {"target": alqr.beta_star.detach().cpu().double().numpy().tolist(),
                    "unsteered": feature_strengths(plant, beta_prompts, v).tolist()}
        for method in methods_run[1:]:
            lam = float(settings.default_lam(method))
            profiles[method] = feature_strengths(plant, beta_prompts, v,
                                                 steering=attachers[method](lam)).tolist()
        details["beta"] = profiles
    details["claim"] = claim_check(sweep, "alqr", "actadd", lam=float(settings.lam))
    details["examples"] = {
        "prompts": prompts[:4],
        **{m: gens[(m, None if m == "unsteered" else float(settings.default_lam(m)))].texts[:4]
           for m in methods_run},
    }
    timings["feature_strengths_s"] = time.perf_counter() - began
    if bound_figure is not None and system is not None:
        began = time.perf_counter()
        _log("tracking-error bound experiment", quiet)
        try:
            details["bound"] = run_bound_figure(plant, prompts, system, bound_figure,
                                                max_tokens=settings.max_jacobian_tokens,
                                                progress=progress)
        except Exception as exc:  # the figure is optional; keep the rest of the report
            notes.append(f"bound figure skipped ({type(exc).__name__}: {exc})")
        timings["bound_s"] = time.perf_counter() - began
    details["steerers"] = steerers
    details["plant"] = plant
    return report, details


def run_bound_figure(plant, prompts: Sequence[str], system, figure, *, max_tokens: int = 16,
                     progress: bool = False) -> dict:
    """Tracking-error bound of LQR tracking on the model, with its figure written to ``figure``.

    The nominal trajectory is that of ``prompts[0]``; ``prompts[1:4]`` calibrate the remainder
    constants, ``prompts[4:8]`` are held out (fewer prompts are split in half).  Uses the
    linearization ``system`` (B = I).  Returns the experiment's JSON-ready summary.
    """
    import importlib

    module = importlib.import_module("ltv_control.adapters.bound_experiment")
    prompts = list(prompts)
    if len(prompts) < 3:
        raise PropertyError(f"the bound experiment needs at least 3 prompts, found {len(prompts)}")
    if len(prompts) >= 8:
        calib, held = prompts[1:4], prompts[4:8]
    else:
        half = 1 + (len(prompts) - 1) // 2
        calib, held = prompts[1:half], prompts[half:]
    result = module.llm_bound_experiment(plant, prompts[0], calib, held, system=system,
                                         max_tokens=max_tokens, figure=figure,
                                         progress=progress)
    return result.to_dict()


def _maybe(function, **candidates) -> dict:
    """Keep only the keyword arguments ``function`` accepts (optional extras of a fit)."""
    import inspect

    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return {}
    named = {k for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return {k: v for k, v in candidates.items() if k in named}


def _model_id(model) -> str:
    try:
        from ltv_control.adapters import model_id_of

        return model_id_of(model)
    except (AttributeError, ImportError):
        return type(model).__name__
