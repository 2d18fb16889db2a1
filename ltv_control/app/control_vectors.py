"""llama.cpp control vectors in the app: ``ltv-control export`` and the in-process fidelity table.

:func:`compare_export` measures how much of a feedback law's effect its exported constant keeps,
on held-out prompts, with the task's judge: the same greedy decoding for every method, positive
rate and mean VADER score of the continuations, and their perplexity under the unsteered model.
The *kept* fraction is

    kept = (rate(exported constant) − rate(unsteered)) / (rate(closed loop) − rate(unsteered)).

:func:`export_command` is the body of ``ltv-control export CONTROLLER --format gguf --out FILE``
(the argparse wiring lives in :mod:`ltv_control.app.cli`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["compare_export", "format_comparison", "export_command", "add_export_arguments"]


def compare_export(model: Any, tokenizer: Any, steerer: Any, exported: Any, prompts: Sequence[str], *,
                   actadd: Any = None, decoding: Any = None, attach_options: dict | None = None,
                   progress: bool = False) -> dict:
    """Judge score and perplexity of unsteered / closed loop / exported constant (/ ActAdd).

    Parameters
    ----------
    model, tokenizer
        The transformers model the steerers act on.
    steerer : Steerer
        The feedback law, attached with its own defaults (plus ``attach_options``).
    exported : Steerer
        The exported constant, as read back by :func:`load_control_vector` (llama.cpp's
        semantics: every position).
    prompts : sequence of str
        Held-out evaluation prompts (not the calibration prompts).
    actadd : Steerer, optional
        An ActAdd baseline fitted on the same task.
    decoding : Decoding, optional
        Shared decoding rule (default: greedy, 24 tokens).

    Returns
    -------
    dict
        ``{"rows": [{"method", "positive_rate", "vader_mean", "perplexity"}], "kept": float}``.
    """
    from ltv_control.app.generation import generate_continuations
    from ltv_control.app.metrics import continuation_perplexity, positive_rate, vader_mean

    options = dict(attach_options or {})
    methods: list[tuple[str, Callable | None]] = [
        ("unsteered", None),
        ("closed loop", lambda: steerer.attach(model, **options)),
        ("exported constant", lambda: exported.attach(model)),
    ]
    if actadd is not None:
        methods.append(("actadd", lambda: actadd.attach(model)))
    rows = []
    for name, steering in methods:
        gen = generate_continuations(model, tokenizer, list(prompts), decoding=decoding,
                                     steering=steering, progress=progress, desc=name)
        rows.append({"method": name, "positive_rate": positive_rate(gen.texts),
                     "vader_mean": vader_mean(gen.texts),
                     "perplexity": continuation_perplexity(model, tokenizer, list(prompts),
                                                           gen.token_ids)})
    base, closed, const = (r["positive_rate"] for r in rows[:3])
    kept = (const - base) / (closed - base) if closed != base else math.nan
    return {"rows": rows, "kept": kept, "n_prompts": len(prompts)}


def format_comparison(result: dict) -> str:
    """A Markdown table of :func:`compare_export`'s rows, with the kept fraction."""
    lines = ["| method | positive rate | VADER mean | perplexity |", "|---|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['positive_rate']:.3f} | {r['vader_mean']:+.3f} | "
                     f"{r['perplexity']:.2f} |")
    lines.append(f"\nthe exported constant keeps {100 * result['kept']:.0f}% of the closed loop's "
                 f"gain in positive rate ({result['n_prompts']} held-out prompts)")
    return "\n".join(lines)


def add_export_arguments(p: Any) -> None:
    from ltv_control.app.cli_checks import positive_int

    """Options of ``ltv-control export`` (besides the CLI's common ones)."""
    p.add_argument("controller", type=Path, metavar="CONTROLLER", help="controller file (.safetensors)")
    p.add_argument("--format", choices=("gguf",), default="gguf", help="llama.cpp control vector")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="output .gguf file")
    p.add_argument("--prompts", type=Path, metavar="FILE",
                   help="calibration prompts, one per line (default: the packaged Jacobian prompts)")
    p.add_argument("--n-prompts", type=positive_int, default=16, help="calibration prompts used (default: 16)")
    p.add_argument("--calibration-tokens", type=positive_int, default=16,
                   help="greedy tokens generated per calibration prompt (default: 16)")
    p.add_argument("--lam", type=float, help="override λ of the law while calibrating")
    p.add_argument("--layer0", choices=("drop", "error"), default="drop",
                   help="an input on block 0 (llama.cpp cannot apply it): drop it or fail")
    p.add_argument("--no-compare", action="store_true", help="skip the in-process comparison")
    p.add_argument("--eval-prompts", type=Path, metavar="FILE",
                   help="held-out prompts of the comparison (default: the packaged eval prompts)")
    p.add_argument("--n-eval", type=positive_int, default=16, help="comparison prompts (default: 16)")
    p.add_argument("--max-new-tokens", type=positive_int, default=20, help="comparison continuation length")


def export_command(args: Any, model: Any, tokenizer: Any) -> tuple[dict, str]:
    """Body of ``ltv-control export``: write the GGUF, then compare in process.

    Returns
    -------
    (payload, text)
        The JSON payload and the human-readable text the CLI prints.
    """
    from ltv_control.adapters import Steerer
    from ltv_control.adapters.control_vector import export_gguf, load_control_vector
    from ltv_control.app.datasets import load_sentiment_task, read_lines
    from ltv_control.app.generation import Decoding

    task = load_sentiment_task()
    steerer = Steerer.load(args.controller, model=model)
    calib = list(read_lines(args.prompts) if args.prompts else task.jacobian_prompts)[:args.n_prompts]
    options = {} if args.lam is None else {"lam": args.lam}
    report = export_gguf(steerer, args.out, model=model, tokenizer=tokenizer, prompts=calib,
                         max_new_tokens=args.calibration_tokens, layer0=args.layer0, **options)
    payload = {"out": str(report.path), "kind": report.kind, "exact": report.exact,
               "layers": report.layers, "captured": report.captured_total,
               "dropped_norm": report.dropped_norm, "calibration_positions": report.positions}
    text = report.summary()
    if not args.no_compare and not report.exact:
        held_out = list(read_lines(args.eval_prompts) if args.eval_prompts else task.eval_prompts)
        exported = load_control_vector(report, model)
        result = compare_export(model, tokenizer, steerer, exported, held_out[:args.n_eval],
                                decoding=Decoding(max_new_tokens=args.max_new_tokens),
                                attach_options=options, progress=not args.quiet)
        payload["comparison"] = result
        text += "\n\n" + format_comparison(result)
    return payload, text
