"""What a report shows for a task: its metric keys, its headline rate, and its figures.

Sentiment reports keep the contract's metrics record
``M = {positive_rate, vader_mean, perplexity, distinct2, tokens_per_s}``.  A concept task's
record replaces the two sentiment keys by the judges' keys (:class:`~ltv_control.app.judges.
JudgePanel`): ``concept_rate`` (the keyword judge when the task has keywords, else the embedding
judge), ``concept_rate_embedding`` with its held-out accuracy ``concept_rate_embedding_accuracy``,
``concept_rate_keywords`` when keywords are given, and, for several concepts, the same keys
suffixed ``.NAME`` plus ``concept_rate_all``.

Figures (matplotlib, Agg, written atomically):

* :func:`plot_prevalence` — the paper's prevalence-vs-λ figure: one panel per steering method,
  the judged rate against its λ (ActAdd: coeff), the unsteered rate as a dashed line, distinct-2
  on a second axis;
* :func:`plot_tradeoff` — the judged rate against perplexity along every method's sweep.
"""

from __future__ import annotations

import math
from pathlib import Path

from ltv_control import DimensionError

__all__ = [
    "COMMON_KEYS",
    "SENTIMENT_KEYS",
    "check_metrics",
    "headline_key",
    "headline_label",
    "plot_prevalence",
    "plot_tradeoff",
    "task_kind",
]

COMMON_KEYS = ("perplexity", "distinct2", "tokens_per_s")
"""Keys every metrics record holds, whatever the task."""

SENTIMENT_KEYS = ("positive_rate", "vader_mean")
"""The sentiment task's judge keys."""

_CONCEPT_REQUIRED = ("concept_rate",)
_LABELS = {"unsteered": "Unsteered", "actadd": "ActAdd", "pid": "S-PID", "alqr": "A-LQR",
           "alqr_plus": "A-LQR+", "alqr_multi": "A-LQR multi", "constrained": "Constrained"}


def task_kind(report: dict) -> str:
    """``"concept"`` when the report's settings describe a concept task, else ``"sentiment"``."""
    task = report.get("settings", {}).get("task") or {}
    return "concept" if isinstance(task, dict) and task.get("kind") == "concept" else "sentiment"


def headline_key(report: dict) -> str:
    """The metric a report is judged by: ``positive_rate`` or ``concept_rate``."""
    return "concept_rate" if task_kind(report) == "concept" else "positive_rate"


def headline_label(report: dict) -> str:
    """Axis/column label of :func:`headline_key`, saying which judge stands behind it."""
    if task_kind(report) == "sentiment":
        return "positive rate (VADER compound ≥ 0.05)"
    task = report["settings"]["task"]
    judge = "keyword judge" if task.get("n_keywords") else "embedding judge"
    names = "+".join(task.get("concepts") or []) or task.get("name", "concept")
    return f"{names} rate ({judge})"


def check_metrics(record: dict, kind: str, where: str) -> None:
    """Check one metrics record for a task kind.

    Sentiment: exactly ``positive_rate, vader_mean, perplexity, distinct2, tokens_per_s``.
    Concept: ``concept_rate`` and the common keys, every other key a ``concept_rate…`` key.

    Raises
    ------
    DimensionError
        Missing or unexpected keys, or a value that is not a number.
    """
    keys = set(record)
    if kind == "sentiment":
        expected = set(SENTIMENT_KEYS) | set(COMMON_KEYS)
        if keys != expected:
            raise DimensionError(f"{where} keys: expected {sorted(expected)}, found {sorted(keys)}")
    else:
        missing = (set(_CONCEPT_REQUIRED) | set(COMMON_KEYS)) - keys
        extra = {k for k in keys - set(COMMON_KEYS) if not k.startswith("concept_rate")}
        if missing or extra:
            raise DimensionError(f"{where} keys: missing {sorted(missing)}, unexpected "
                                 f"{sorted(extra)} (a concept record holds concept_rate… keys "
                                 f"and {list(COMMON_KEYS)})")
    bad = [k for k, v in record.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if bad:
        raise DimensionError(f"{where}: values must be numbers, found {bad}")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _methods(report: dict) -> list[str]:
    found = {p["method"] for p in report["sweep"]}
    return [m for m in _LABELS if m in found] + sorted(found - set(_LABELS))


def _concept_keys(report: dict, key: str) -> list[tuple[str, str]]:
    """(key, label) of the per-concept rates of a multi-concept report, else [(key, "")]."""
    concepts = (report.get("settings", {}).get("task") or {}).get("concepts") or []
    if key == "concept_rate" and len(concepts) > 1:
        return [(f"{key}.{c}", c) for c in concepts] + [(key, "mean")]
    return [(key, "")]


def plot_prevalence(report: dict, path: str | Path) -> Path:
    """The judged rate against λ, one panel per method (the paper's prevalence figure).

    Each panel shows the method's sweep (per concept for several concepts), the unsteered rate
    (dashed) and distinct-2 on the right axis (dotted).
    """
    from ltv_control.atomic import atomic_save_figure

    plt = _pyplot()
    key, methods = headline_key(report), _methods(report)
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(3.4 * max(1, len(methods)), 3.4),
                             squeeze=False, sharey=True)
    base = report["methods"]["unsteered"]
    for ax, method in zip(axes[0], methods):
        pts = sorted((p for p in report["sweep"] if p["method"] == method), key=lambda p: p["lam"])
        lams = [p["lam"] for p in pts]
        for sub, label in _concept_keys(report, key):
            ax.plot(lams, [p.get(sub, math.nan) for p in pts], marker="o",
                    label=label or "rate")
            ax.axhline(base.get(sub, math.nan), ls="--", lw=1, color="k", alpha=0.5)
        twin = ax.twinx()
        twin.plot(lams, [p["distinct2"] for p in pts], ls=":", color="gray", marker=".")
        twin.set_ylim(0, 1)
        twin.set_ylabel("distinct-2 (dotted)", fontsize=7, color="gray")
        ax.set_title(_LABELS.get(method, method), fontsize=9)
        ax.set_xlabel("coeff" if method == "actadd" else "λ")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if len(_concept_keys(report, key)) > 1:
            ax.legend(fontsize=7)
    axes[0][0].set_ylabel(headline_label(report), fontsize=8)
    fig.suptitle("Prevalence against steering strength (dashed: unsteered)", fontsize=10)
    fig.tight_layout()
    try:
        return atomic_save_figure(fig, Path(path), bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_tradeoff(report: dict, path: str | Path) -> Path:
    """The judged rate against perplexity (log) along every method's sweep, λ annotated."""
    from ltv_control.atomic import atomic_save_figure

    plt = _pyplot()
    key = headline_key(report)
    fig, ax = plt.subplots(figsize=(7, 4))
    base = report["methods"]["unsteered"]
    ax.scatter([base[key]], [base["perplexity"]], c="k", marker="*", s=120, label="Unsteered",
               zorder=3)
    for method in _methods(report):
        pts = sorted((p for p in report["sweep"] if p["method"] == method), key=lambda p: p["lam"])
        ax.plot([p[key] for p in pts], [p["perplexity"] for p in pts], marker="o",
                label=_LABELS.get(method, method) + (" (coeff)" if method == "actadd" else " (λ)"))
        for p in pts:
            ax.annotate(f"{p['lam']:g}", (p[key], p["perplexity"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel(headline_label(report))
    ax.set_ylabel("perplexity under the unsteered model")
    ax.set_yscale("log")
    ax.set_title("Steering / fluency trade-off (λ sweep)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    try:
        return atomic_save_figure(fig, Path(path), bbox_inches="tight")
    finally:
        plt.close(fig)
