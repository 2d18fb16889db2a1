"""Writing an evaluation report: ``report.json``, ``report.md``, PNG figures, a terminal table.

Every file is written atomically (a temporary file in the same folder, then :func:`os.replace`),
so a reader never sees a half-written report.  matplotlib (Agg backend) is imported lazily.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path

from ltv_control import ArgumentError, DimensionError
from ltv_control.atomic import atomic_save_figure, atomic_write_text

__all__ = ["REPORT_KEYS", "clean_json", "format_table", "json_default", "to_json", "validate_report",
           "write_report"]

REPORT_KEYS = ("version", "settings", "seed", "methods", "sweep")
"""Top-level keys of ``report.json``."""

_LABELS = {"unsteered": "Unsteered", "actadd": "ActAdd", "pid": "S-PID", "alqr": "A-LQR",
           "alqr_plus": "A-LQR+", "alqr_multi": "A-LQR multi", "constrained": "Constrained"}


def validate_report(report: dict) -> dict:
    """Check ``report`` against the report.json schema; return it unchanged.

    Raises
    ------
    DimensionError
        A key is missing or extra, a metrics record lacks a metric, or a value has the wrong type.
    """
    if not isinstance(report, dict):
        raise ArgumentError(f"report must be a dict, found {type(report).__name__}")
    if set(report) != set(REPORT_KEYS):
        raise DimensionError(f"report keys: expected {sorted(REPORT_KEYS)}, found {sorted(report)}")
    if not isinstance(report["version"], str) or not isinstance(report["settings"], dict) \
            or not isinstance(report["seed"], int) or not isinstance(report["sweep"], list):
        raise DimensionError("report: version str, settings dict, seed int, sweep list expected")
    if "unsteered" not in report["methods"]:
        raise DimensionError("report['methods'] must hold 'unsteered'")
    from ltv_control.app.task_report import check_metrics, task_kind

    kind = task_kind(report)  # sentiment: exactly METRIC_KEYS; concept: concept_rate… keys
    for name, record in report["methods"].items():
        check_metrics(record, kind, f"report['methods'][{name!r}]")
    for i, point in enumerate(report["sweep"]):
        if not isinstance(point, dict) or {"method", "lam"} - set(point):
            raise DimensionError(f"report['sweep'][{i}] keys: found {sorted(point)}")
        check_metrics({k: v for k, v in point.items() if k not in ("method", "lam")}, kind,
                      f"report['sweep'][{i}]")
    return report


def json_default(value):
    """``json.dumps`` fallback: numpy scalars and arrays as Python values, sets and tuples as
    lists, anything else as its ``str``."""
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def clean_json(value):
    """``value`` with every non-finite float (at any depth) replaced by None: standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def to_json(value, *, indent: int = 2) -> str:
    """Standard JSON text of ``value``: :func:`clean_json`, then ``json.dumps`` with
    :func:`json_default`."""
    return json.dumps(clean_json(value), indent=indent, default=json_default)


def _save_figure(fig, path: Path) -> Path:
    return atomic_save_figure(fig, path, bbox_inches="tight")


def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"


def _judge_columns(report: dict) -> list[tuple[str, str, int]]:
    """(key, column label, digits) of the task's judge scores shown in tables."""
    from ltv_control.app.task_report import task_kind

    if task_kind(report) == "sentiment":
        return [("positive_rate", "positive rate", 2), ("vader_mean", "VADER mean", 3)]
    task = report["settings"]["task"]
    concepts = task.get("concepts") or []
    cols = [("concept_rate", "concept rate", 2)]
    if len(concepts) > 1:
        cols += [(f"concept_rate.{c}", f"{c} rate", 2) for c in concepts]
        cols.append(("concept_rate_all", "all concepts", 2))
    cols.append(("concept_rate_embedding", "embedding judge", 2))
    if task.get("n_keywords"):
        cols.append(("concept_rate_keywords", "keyword judge", 2))
    return cols


def format_table(report: dict, *, markdown: bool = False) -> str:
    """The methods table (one row per method at its default λ) as plain or Markdown text."""
    judged = _judge_columns(report)
    header = ["method", "λ", *(label for _, label, _ in judged), "perplexity", "distinct-2",
              "tokens/s"]
    rows = []
    settings = report.get("settings", {})
    for name, m in report["methods"].items():
        lam = "—" if name == "unsteered" else _fmt(
            settings.get("actadd_coeff") if name == "actadd" else settings.get("lam"), 2)
        rows.append([_LABELS.get(name, name), lam,
                     *(_fmt(m.get(key), digits) for key, _, digits in judged),
                     _fmt(m["perplexity"], 1), _fmt(m["distinct2"]), _fmt(m["tokens_per_s"], 1)])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _plot_beta(beta: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    layers = range(len(beta["target"]))
    ax.plot(layers, beta["target"], "k--", lw=2, label="target β*_k")
    for name, values in beta.items():
        if name != "target":
            ax.plot(layers, values, marker="o", ms=3, label=_LABELS.get(name, name))
    ax.set_xlabel("layer k")
    ax.set_ylabel("feature strength β_k = v_kᵀ z_k")
    ax.set_title("Per-layer feature strength at the last prompt token")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    try:
        return _save_figure(fig, path)
    finally:
        plt.close(fig)


def _plot_tradeoff(report: dict, path: Path) -> Path:
    from ltv_control.app.task_report import plot_tradeoff

    return plot_tradeoff(report, path)


def _plot_examples(examples: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    prompts = examples["prompts"]
    methods = [m for m in examples if m != "prompts"]
    fig, axes = plt.subplots(len(prompts), 1, figsize=(11, 2.1 * len(prompts) + 0.3))
    axes = [axes] if len(prompts) == 1 else list(axes)
    for ax, (i, prompt) in zip(axes, enumerate(prompts)):
        ax.axis("off")
        lines = [f"Prompt: {prompt} …"]
        for m in methods:
            text = " ".join(examples[m][i].split())
            lines.append(textwrap.shorten(f"{_LABELS.get(m, m):>11}: {text}", 150,
                                          placeholder=" …"))
        ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8)
    fig.suptitle("Example continuations (same prompt, same decoding)")
    try:
        return _save_figure(fig, path)
    finally:
        plt.close(fig)


def write_report(out_dir: str | os.PathLike, report: dict, details: dict | None = None, *,
                 bound_figure=None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the figures into ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Created if missing.
    report : dict
        A report as returned by :func:`ltv_control.app.experiment.run_experiment` (validated).
    details : dict, optional
        The details returned with ``return_details=True``: ``beta`` (β_k profiles),
        ``examples``, ``claim``, ``timings``, ``notes``, optional ``bound`` (a summary dict).
        Figures whose data are missing are skipped.
    bound_figure : matplotlib Figure, optional
        The tracking-error bound figure, saved as ``bound.png``.

    Returns
    -------
    dict of str to Path
        Every file written, by short name.
    """
    validate_report(report)
    details = details or {}
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["report.json"] = atomic_write_text(
        out / "report.json", to_json(report) + "\n")
    if "beta" in details:
        files["beta.png"] = _plot_beta(details["beta"], out / "beta.png")
    if report["sweep"]:
        from ltv_control.app.task_report import plot_prevalence

        files["tradeoff.png"] = _plot_tradeoff(report, out / "tradeoff.png")
        files["prevalence.png"] = plot_prevalence(report, out / "prevalence.png")
    if bound_figure is not None:
        import matplotlib.pyplot as plt

        files["bound.png"] = _save_figure(bound_figure, out / "bound.png")
        plt.close(bound_figure)
    elif (out / "bound.png").is_file() and details.get("bound"):
        files["bound.png"] = out / "bound.png"  # written by the bound experiment itself
    if "examples" in details:
        files["examples.png"] = _plot_examples(details["examples"], out / "examples.png")
    plain = {k: v for k, v in details.items() if k in ("beta", "examples", "claim", "timings",
                                                        "notes", "bound")}
    if plain:
        files["details.json"] = atomic_write_text(
            out / "details.json", to_json(plain) + "\n")
    files["report.md"] = atomic_write_text(out / "report.md", _markdown(report, details, files))
    return files


def _markdown(report: dict, details: dict, files: dict) -> str:
    """report.md: header, methods table, claim check, sweep, figures, examples, bound, notes."""
    parts = _md_header(report) + _md_claim(details.get("claim", {})) + _md_sweep(report)
    captions = {"beta.png": "Per-layer feature strength β_k against the target β*_k",
                "tradeoff.png": "Judged rate against perplexity along each method's λ sweep",
                "prevalence.png": "Judged rate against λ (ActAdd: coeff), one panel per method",
                "bound.png": "Tracking-error bound against the realized deviations",
                "examples.png": "Example continuations side by side"}
    figs = [n for n in captions if n in files]
    if figs:
        parts += ["## Figures", ""]
        parts += [f"![{captions[n]}]({n})\n\n*{captions[n]}.*\n" for n in figs]
    if "examples" in details:
        parts += _md_examples(details["examples"])
    parts += _md_bound(details.get("bound"))
    if details.get("notes"):
        parts += ["## Notes", ""] + [f"- {n}" for n in details["notes"]] + [""]
    if details.get("timings"):
        parts += ["## Timings (s)", ""] + [f"- {k}: {v:.1f}" for k, v in details["timings"].items()]
        parts.append("")
    return "\n".join(parts)


def _md_header(report: dict) -> list[str]:
    s = report["settings"]
    dec = s.get("decoding", {})
    return [
        "# ltv-control steering report",
        "",
        f"ltv-control {report['version']}, model `{s.get('model', '?')}`, seed {report['seed']}. "
        f"{s.get('n_fit_used', '?')} contrastive pairs, {s.get('n_eval_used', '?')} evaluation "
        f"prompts, {s.get('n_jacobian_used', '?')} Jacobian prompts; "
        f"{'sampling' if dec.get('do_sample') else 'greedy'} decoding, "
        f"{dec.get('max_new_tokens', '?')} new tokens, KV cache "
        f"{'on' if dec.get('use_cache', True) else 'off'}.",
        "",
        _md_judges(report) + " Perplexity: of the continuation under the unsteered model "
        "(prompt tokens masked).",
        "",
        "## Methods (default λ)",
        "",
        format_table(report, markdown=True),
        "",
    ]


def _md_judges(report: dict) -> str:
    """One sentence per judge saying what it measures."""
    judges = report["settings"].get("judges")
    if not judges:
        return "Positive rate: fraction of continuations with VADER compound ≥ 0.05."
    task = report["settings"].get("task", {})
    lines = [f"Task `{task.get('name', '?')}` ({task.get('prompt_format', 'raw')} prompts)."]
    for j in judges:
        concept = f" [{j['concept']}]" if j.get("concept") else ""
        lines.append(f"{j.get('judge', 'judge')}{concept}: {j.get('measures', '')}.")
    if task.get("kind") == "concept":
        lines.append("`concept_rate` is the keyword judge when keywords are given, else the "
                     "embedding judge.")
    return " ".join(lines)


def _md_claim(claim: dict) -> list[str]:
    if not claim.get("available"):
        return []
    verdict = "holds" if claim["holds"] else "does NOT hold"
    return [
        "## Claim check",
        "",
        f"A-LQR (λ={claim['lam']:g}) reaches {_rate_name(claim)} {claim['rate']:.2f} at "
        f"perplexity {claim['perplexity']:.1f}; ActAdd interpolated to the same rate "
        f"has perplexity {claim['baseline_perplexity']:.1f}"
        f"{' (extrapolated: outside ActAdd sweep range)' if claim['extrapolated'] else ''}. "
        f"The claim (A-LQR no worse than ActAdd at equal {_rate_name(claim)}) {verdict} here.",
        "",
    ]


def _rate_name(claim: dict) -> str:
    return claim.get("key", "positive_rate").replace("_", " ")


def _md_sweep(report: dict) -> list[str]:
    judged = _judge_columns(report)
    header = ["method", "λ", *(label for _, label, _ in judged), "perplexity", "distinct-2",
              "tokens/s"]
    parts = ["## λ sweep", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in report["sweep"]:
        cells = [_LABELS.get(p["method"], p["method"]), f"{p['lam']:g}",
                 *(_fmt(p.get(key), digits) for key, _, digits in judged),
                 _fmt(p["perplexity"], 1), _fmt(p["distinct2"]), _fmt(p["tokens_per_s"], 1)]
        parts.append("| " + " | ".join(cells) + " |")
    return parts + [""]


def _md_examples(ex: dict) -> list[str]:
    parts = ["## Examples", ""]
    for i, prompt in enumerate(ex["prompts"]):
        parts.append(f"**{prompt} …**\n")
        for m in ex:
            if m != "prompts":
                parts.append(f"- *{_LABELS.get(m, m)}*: {' '.join(ex[m][i].split())}")
        parts.append("")
    return parts


def _md_bound(bound: dict | None) -> list[str]:
    if not bound:
        return []
    return ["## Tracking-error bound", "",
            f"LQR tracking of one prompt's last-token trajectory while the model reads "
            f"other prompts; the {bound.get('mode', '?')} bound holds on "
            f"{_fmt(100 * bound.get('coverage', float('nan')), 1)} % of held-out steps "
            f"({bound.get('violations', '?')} violations of {bound.get('n_steps', '?')}). "
            "Per-step data: `details.json`.", ""]
