"""The steering evaluation behind ``ltv-control demo`` and ``ltv-control eval``.

Every method is fitted on the same contrastive data (:mod:`ltv_control.app.methods`) and
evaluated on the same prompts with the same decoding, KV-cache mode and batching
(:mod:`ltv_control.app.generation`):

``unsteered``   the model alone;
``actadd``      ActAdd, ``coeff·e_k`` added at fixed layers (its sweep variable is ``coeff``);
``pid``         S-PID on the LFS error (positions ``"last"``);
``alqr``        A-LQR, ``u_k = (β*_k − v_kᵀz_k) K_k v_k``, positions ``"last"``;
``alqr_plus``   the same controller applied at every position (``"all"``);
``constrained`` the constrained steerer.

:func:`run_experiment` runs four steps: fit the methods, generate and score every point of the
λ sweep (``coeff`` for ActAdd), build the report, and (optionally) the figures' data.  The
``methods`` entry is the sweep point at the method's default λ.  Metrics
(:mod:`ltv_control.app.metrics`) are computed on the continuations only; perplexity is always
taken under the unsteered model.  The report follows the contract's ``report.json`` schema;
the figures' data (feature strengths β_k, examples, timings, the claim check) go into
``details``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import ltv_control
from ltv_control import ArgumentError, PropertyError
from ltv_control.app import metrics
from ltv_control.app.datasets import SentimentTask
from ltv_control.app.generation import Decoding, Generation, generate_continuations
from ltv_control.app.methods import FittedMethods, fit_methods
from ltv_control.app.profiles import beta_profiles, feature_strengths
from ltv_control.app.settings import METHODS, METRIC_KEYS, ExperimentSettings

__all__ = [
    "METHODS",
    "METRIC_KEYS",
    "ExperimentSettings",
    "Run",
    "build_details",
    "build_report",
    "claim_check",
    "evaluate_generation",
    "feature_strengths",
    "generate_and_score",
    "run_bound_figure",
    "run_experiment",
    "sweep_plan",
    "task_prompts_and_judge",
]


@dataclass
class Run:
    """One evaluated point: a method at a strength λ (None for ``unsteered``)."""

    method: str
    lam: float | None
    metrics: dict
    generation: Generation


def evaluate_generation(model, tokenizer, generation: Generation, *, batch_size: int = 16,
                        progress: bool = False, judge=None) -> dict:
    """Metrics record M of one set of continuations.

    ``judge`` (a callable on the texts returning a dict of scores, e.g. a
    :class:`~ltv_control.app.judges.JudgePanel`) replaces the default sentiment judge: its keys
    come first, then ``perplexity``, ``distinct2``, ``tokens_per_s``.

    Returns
    -------
    dict with keys :data:`METRIC_KEYS` without a judge: positive rate (VADER compound ≥ 0.05),
    mean compound, corpus perplexity of the continuations under ``model`` (pass the unsteered
    model), distinct-2, tokens per second of the generation.
    """
    ppl = metrics.continuation_perplexity(model, tokenizer, generation.prompts,
                                          generation.token_ids, batch_size=batch_size,
                                          progress=progress)
    scores = judge(generation.texts) if judge is not None else {
        "positive_rate": metrics.positive_rate(generation.texts),
        "vader_mean": metrics.vader_mean(generation.texts)}
    return {
        **scores,
        "perplexity": float(ppl),
        "distinct2": metrics.distinct_n(generation.texts, 2),
        "tokens_per_s": float(generation.tokens_per_s),
    }


def claim_check(sweep: list[dict], method: str = "alqr", baseline: str = "actadd",
                lam: float | None = None, key: str = "positive_rate") -> dict:
    """Compare a method's perplexity with the baseline's at the same positive rate.

    The baseline needs at least two sweep points (otherwise ``{"available": False}``).  Its
    perplexity at the method's positive rate is read off its sweep by linear
    interpolation in positive rate (its points sorted by positive rate; outside their range the
    nearest point is used and ``extrapolated`` is set).

    Returns
    -------
    dict: ``positive_rate``, ``perplexity`` (the method at ``lam``, default its first point with
    the largest positive rate), ``baseline_perplexity``, ``extrapolated``, ``holds``
    (method perplexity ≤ baseline perplexity); ``rate`` and ``key`` name the rate compared
    (``key``, default ``positive_rate``; a concept task passes ``concept_rate``).
    """
    mine = [p for p in sweep if p["method"] == method]
    base = sorted((p for p in sweep if p["method"] == baseline), key=lambda p: p[key])
    if not mine or len(base) < 2:
        return {"available": False}  # one baseline point gives no curve to compare against
    point = (next((p for p in mine if p["lam"] == lam), None) if lam is not None else None) or \
        max(mine, key=lambda p: p[key])
    rates = np.array([p[key] for p in base])
    ppls = np.array([p["perplexity"] for p in base])
    target = point[key]
    base_ppl = float(np.interp(target, rates, ppls))
    return {
        "available": True,
        "method": method,
        "baseline": baseline,
        "lam": point["lam"],
        "key": key,
        "rate": target,
        key: target,
        "perplexity": point["perplexity"],
        "baseline_perplexity": base_ppl,
        "extrapolated": bool(target < rates.min() or target > rates.max()),
        "holds": bool(point["perplexity"] <= base_ppl),
    }

def sweep_plan(settings: ExperimentSettings, methods: Sequence[str]) -> list[tuple[str, float | None]]:
    """Every (method, λ) to evaluate: ``("unsteered", None)``, then each method's
    :meth:`ExperimentSettings.grid`."""
    plan: list[tuple[str, float | None]] = [("unsteered", None)]
    for method in methods:
        if method != "unsteered":
            plan.extend((method, lam) for lam in settings.grid(method))
    return plan


def generate_and_score(model, tokenizer, prompts: Sequence[str],
                       plan: Sequence[tuple[str, float | None]], fitted: FittedMethods,
                       decoding: Decoding, *, batch_size: int = 16,
                       progress: bool = True, judge=None) -> dict[tuple[str, float | None], Run]:
    """Generate the continuations of ``prompts`` for every point of ``plan`` and score them.

    Each point attaches its own steerer (:meth:`FittedMethods.steering`) during generation;
    perplexity is scored with nothing attached; ``judge`` scores the texts
    (:func:`evaluate_generation`).  Returns the runs keyed by (method, λ).
    """
    runs: dict[tuple[str, float | None], Run] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), desc="methods × λ", unit="run")
    for method, lam in plan:
        label = method if lam is None else f"{method} λ={lam:g}"
        if bar is not None:
            bar.set_postfix_str(label)
        gen = generate_continuations(model, tokenizer, prompts, decoding=decoding,
                                     steering=fitted.steering(model, method, lam),
                                     progress=progress, desc=label)
        record = evaluate_generation(model, tokenizer, gen, batch_size=batch_size, judge=judge)
        runs[(method, lam)] = Run(method, lam, record, gen)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return runs


def _headline(runs: dict, settings: ExperimentSettings, method: str) -> Run:
    return runs[(method, None if method == "unsteered" else float(settings.default_lam(method)))]


def build_report(model, plant, task: SentimentTask, settings: ExperimentSettings,
                 decoding: Decoding, seed: int, fitted: FittedMethods, runs: dict, *,
                 judge=None) -> dict:
    """The ``report.json`` dict: version, settings (with what was used, the task and what its
    judges measure), seed, the methods at their default λ, and every sweep point."""
    from ltv_control.adapters import model_id_of

    methods = fitted.methods
    sweep = [{"method": run.method, "lam": run.lam, **run.metrics}
             for method in methods[1:] for run in runs.values() if run.method == method]
    return {
        "version": ltv_control.__version__,
        "settings": {**settings.as_dict(), "model": model_id_of(model),
                     "num_layers": plant.horizon, "hidden_size": plant.state_dim,
                     "actadd_layers": fitted.actadd_layers,
                     "positive_threshold": metrics.POSITIVE_THRESHOLD,
                     "n_fit_used": len(task.desired), "n_eval_used": len(task.eval_prompts),
                     "n_jacobian_used": len(task.jacobian_prompts),
                     "decoding": decoding.as_dict(),
                     **_task_settings(task, judge)},
        "seed": seed,
        "methods": {m: _headline(runs, settings, m).metrics for m in methods},
        "sweep": sweep,
    }


def _task_settings(task, judge) -> dict:
    """``task`` and ``judges`` entries of the report's settings (when known)."""
    out = {}
    if hasattr(task, "describe"):
        out["task"] = task.describe()
    if judge is not None and hasattr(judge, "describe"):
        out["judges"] = judge.describe()
    return out


def build_details(model, plant, task: SentimentTask, settings: ExperimentSettings,
                  fitted: FittedMethods, runs: dict, report: dict) -> dict:
    """The figures' data: β_k profiles along the shared setpoint's directions (each method
    measured with its own steerer attached, at its default λ, on the first 16 evaluation
    prompts; the target is ``β*_k`` at ``settings.lam``), the claim check, four examples per
    method, notes and timings; plus the live ``steerers`` and ``plant``."""
    details: dict = {"notes": fitted.notes, "timings": dict(fitted.timings)}
    began = time.perf_counter()
    if fitted.setpoint is not None:
        steerings = {m: fitted.steering(model, m, None if m == "unsteered"
                                        else float(settings.default_lam(m)))
                     for m in fitted.methods}
        details["beta"] = beta_profiles(plant, list(task.eval_prompts[:16]), fitted.setpoint.v,
                                        fitted.setpoint.beta_star, steerings)
    details["timings"]["feature_strengths_s"] = time.perf_counter() - began
    from ltv_control.app.task_report import headline_key

    details["claim"] = claim_check(report["sweep"], "alqr", "actadd", lam=float(settings.lam),
                                   key=headline_key(report))
    details["examples"] = {"prompts": list(task.eval_prompts[:4]),
                           **{m: _headline(runs, settings, m).generation.texts[:4]
                              for m in fitted.methods}}
    details["steerers"] = fitted.steerers
    details["plant"] = plant
    return details


def _add_bound(details: dict, plant, prompts: Sequence[str], fitted: FittedMethods, figure,
               settings: ExperimentSettings, *, progress: bool, quiet: bool) -> None:
    began = time.perf_counter()
    _log("tracking-error bound experiment", quiet)
    try:
        details["bound"] = run_bound_figure(plant, prompts, fitted.system, figure,
                                            max_tokens=settings.max_jacobian_tokens,
                                            progress=progress)
    except Exception as exc:  # the figure is optional; keep the rest of the report
        details["notes"].append(f"bound figure skipped ({type(exc).__name__}: {exc})")
    details["timings"]["bound_s"] = time.perf_counter() - began


def task_prompts_and_judge(task, tokenizer, *, quiet: bool = True, encoder=None):
    """The evaluation prompts as the model sees them, and the task's judge.

    A :class:`~ltv_control.app.tasks.Task` renders its prompts in its format (raw, or the
    tokenizer's chat template) and brings a :class:`~ltv_control.app.judges.JudgePanel` (its
    embedding judges trained here on the task's held-out sets); a plain ``SentimentTask`` gives
    its prompts as they are and ``None`` (the default VADER scoring).
    """
    if not hasattr(task, "formatted_prompts"):
        return list(task.eval_prompts), None
    from ltv_control.app.judges import JudgePanel

    if task.kind == "concept":
        _log(f"training the concept judge(s) of {task.name} on held-out sentences", quiet)
    return task.formatted_prompts(tokenizer), JudgePanel.for_task(task, encoder=encoder)


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _checked(settings, seed, unknown: dict) -> ExperimentSettings:
    if unknown:
        raise ArgumentError(f"run_experiment() got unknown keyword(s) {sorted(unknown)}")
    settings = settings or ExperimentSettings()
    if not isinstance(settings, ExperimentSettings):
        raise ArgumentError(f"settings must be ExperimentSettings, found {type(settings).__name__}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ArgumentError(f"seed must be an int, found {type(seed).__name__}")
    return settings


def run_experiment(model, tokenizer, task: SentimentTask, settings: ExperimentSettings | None = None,
                   *, seed: int = 0, progress: bool = True, quiet: bool = False,
                   return_details: bool = False, bound_figure=None, **kwargs):
    """Fit every method, generate, measure, sweep λ; return the report (and the figure data).

    Parameters
    ----------
    model, tokenizer : a transformers causal LM and its tokenizer (left padding is done here).
    task : Task or SentimentTask
        Fitting sets (desired/undesired), evaluation prompts, Jacobian prompts; a
        :class:`~ltv_control.app.tasks.Task` also brings its prompt format and judges
        (:func:`task_prompts_and_judge`), a concept task's report holding ``concept_rate…`` keys
        instead of ``positive_rate``/``vader_mean``.
    settings : ExperimentSettings, optional
    seed : int, default 0
        Seeds torch (fits and sampling); recorded in the report.
    progress : bool, default True
        tqdm bars on fitting, generation and scoring.
    quiet : bool, default False
        Suppress the step-by-step log on stderr.
    return_details : bool, default False
        Also return the details dict (:func:`build_details`).
    bound_figure : path-like, optional
        Run the tracking-error bound experiment (:func:`run_bound_figure`, on the shared
        linearization, a few evaluation prompts) and write its figure there; its summary goes
        into ``details["bound"]`` (needs ``return_details``).  A failure is reported in
        ``details["notes"]``.

    Returns
    -------
    dict, or (dict, dict) with ``return_details``
        ``{"version", "settings", "seed", "methods": {name: M}, "sweep": [{"method", "lam", **M}]}``
        with M = ``{positive_rate, vader_mean, perplexity, distinct2, tokens_per_s}``.
    """
    import torch

    from ltv_control.adapters import LLMPlant

    settings = _checked(settings, seed, kwargs)
    task = task.subset(n_fit=settings.n_fit, n_eval=settings.n_eval,
                       n_jacobian=settings.n_jacobian)
    decoding = Decoding(**{**settings.decoding.as_dict(), "seed": seed})
    torch.manual_seed(seed)
    model.eval()
    plant = LLMPlant(model, tokenizer)
    bound = bound_figure is not None and return_details
    fitted = fit_methods(plant, task, settings, linearize=bound, progress=progress,
                         log=None if quiet else (lambda message: _log(message, False)))
    began = time.perf_counter()
    prompts, judge = task_prompts_and_judge(task, tokenizer, quiet=quiet)
    runs = generate_and_score(model, tokenizer, prompts,
                              sweep_plan(settings, fitted.methods), fitted, decoding,
                              batch_size=settings.perplexity_batch_size, progress=progress,
                              judge=judge)
    fitted.timings["generate_and_score_s"] = time.perf_counter() - began
    report = build_report(model, plant, task, settings, decoding, seed, fitted, runs, judge=judge)
    if not return_details:
        return report
    details = build_details(model, plant, task, settings, fitted, runs, report)
    if bound:
        _add_bound(details, plant, task.eval_prompts, fitted, bound_figure, settings,
                   progress=progress, quiet=quiet)
    return report, details


def run_bound_figure(plant, prompts: Sequence[str], system, figure, *, max_tokens: int = 16,
                     progress: bool = False) -> dict:
    """Tracking-error bound of LQR tracking on the model, with its figure written to ``figure``.

    The nominal trajectory is that of ``prompts[0]``; ``prompts[1:4]`` calibrate the remainder
    constants, ``prompts[4:8]`` are held out (fewer prompts are split in half).  Uses the
    linearization ``system`` (B = I).  Returns the experiment's JSON-ready summary.
    """
    from ltv_control.adapters import llm_bound_experiment

    prompts = list(prompts)
    if len(prompts) < 3:
        raise PropertyError(f"the bound experiment needs at least 3 prompts, found {len(prompts)}")
    if len(prompts) >= 8:
        calib, held = prompts[1:4], prompts[4:8]
    else:
        half = 1 + (len(prompts) - 1) // 2
        calib, held = prompts[1:half], prompts[half:]
    result = llm_bound_experiment(plant, prompts[0], calib, held, system=system,
                                         max_tokens=max_tokens, figure=figure,
                                         progress=progress)
    return result.to_dict()
