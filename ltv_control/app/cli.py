"""The ``ltv-control`` command line: a thin layer over the library.

Subcommands: ``demo``, ``eval``, ``fit``, ``generate``, ``linearize``, ``bound``.  Every one of
them calls library functions (:mod:`ltv_control.app.experiment`, :mod:`ltv_control.app.report`,
:mod:`ltv_control.adapters`); this module only parses arguments, loads the model and prints.
Errors a user can cause (bad paths, bad values, mismatched controller files) end the program
with exit status 2 and a one-line message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from ltv_control import ControlError
from ltv_control.app.cli_checks import (
    check_device,
    check_out_dir,
    check_out_file,
    check_prompt_lengths,
    check_prompts,
    guard_output_folder,
    max_positions,
    os_error_message,
    positive_int,
    read_text_file,
)

__all__ = ["build_parser", "demo_settings", "main"]

_DTYPES = ("float32", "float16", "bfloat16", "float64")
_METHOD_KINDS = ("alqr", "actadd", "pid", "constrained")


class CLIError(Exception):
    """A user error reported as one line with a non-zero exit status."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise CLIError(f"{self.prog}: {message} (see --help)")


# ---------------------------------------------------------------- argument types

def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, found {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, found {text!r}")
    return value


def _pos_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, found {text!r}")
    return value


def _float_list(text: str) -> list[float]:
    return [_float(t) for t in text.split(",") if t.strip()]


def _form_options() -> tuple[str, ...]:
    """The A-LQR forms ``--alqr-form``/``--form`` accept (``FORM_OPTIONS``; torch-free import)."""
    from ltv_control.adapters.form_choice import FORM_OPTIONS

    return FORM_OPTIONS


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, found {text!r}") from None


def _existing_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return path


def _existing_model(text: str) -> Path:
    """A transformers model directory or a ``.gguf`` file (checked again when it is loaded)."""
    path = Path(text).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() == ".gguf"):
        return path
    if path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is a file but not a .gguf file; give a "
                                         "transformers model directory or a GGUF file")
    raise argparse.ArgumentTypeError(f"no such model directory or GGUF file: {text!r}")


# ---------------------------------------------------------------- parser

def _force_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="overwrite existing output files (never an input file)")


#: options naming input text files, checked as UTF-8 before any work
_INPUT_OPTIONS = ("desired", "undesired", "prompts", "keywords", "jacobian_prompts",
                  "eval_prompts")
#: files each folder-writing subcommand puts in --out (refused if present, unless --force)
_OUT_FILES = {"demo": ("report.json", "report.md", "details.json"),
              "eval": ("report.json", "report.md", "details.json"),
              "linearize": ("system.safetensors", "system.json", "diagnostics.json"),
              "bound": ("bound.json", "bound.png")}


def _preflight(args) -> None:
    """Checks before any work: input files are regular UTF-8 text, ``--out`` can be written and
    replaces nothing without ``--force`` (and never an input), ``--device`` exists."""
    inputs = []
    for name in _INPUT_OPTIONS:
        path = getattr(args, name, None)
        if path is not None:
            read_text_file(path, "--" + name.replace("_", "-"))
            inputs.append(path)
    if getattr(args, "controller", None) is not None:
        inputs.append(args.controller)
    out = getattr(args, "out", None)
    if out is not None and args.command in ("fit", "export"):
        check_out_file(out, force=args.force, inputs=inputs)
    elif out is not None:
        check_out_dir(out, _OUT_FILES[args.command], force=args.force)
    if getattr(args, "device", None) is not None:
        check_device(args.device)


def _common(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    if model:
        p.add_argument("--model", type=_existing_model, metavar="PATH",
                       help="local transformers model directory or .gguf file (converted once "
                            "and cached; default: the embedded SmolLM2-135M-Instruct)")
        p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
        p.add_argument("--dtype", default="float32", choices=_DTYPES,
                       help="model dtype (default: float32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def _eval_options(p: argparse.ArgumentParser, *, quick: bool) -> None:
    if quick:
        p.add_argument("--quick", action="store_true",
                       help="smaller run (fewer prompts, shorter continuations, short sweep)")
    p.add_argument("--out", type=Path, default=Path("ltv-control-report"), metavar="DIR",
                   help="report folder (default: ./ltv-control-report)")
    _force_option(p)
    p.add_argument("--no-bound", action="store_true",
                   help="skip the tracking-error bound experiment and figure (skipped by --quick)")
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of unsteered,actadd,pid,alqr,alqr_plus,"
                        "alqr_multi,constrained (default: all available; concept tasks: "
                        "unsteered,actadd,pid,alqr and alqr_multi for several concepts)")
    p.add_argument("--n-eval", type=positive_int, help="number of evaluation prompts")
    p.add_argument("--n-fit", type=positive_int, help="number of contrastive pairs used to fit")
    p.add_argument("--n-jacobian", type=positive_int, help="number of Jacobian prompts")
    p.add_argument("--max-new-tokens", type=positive_int, help="continuation length")
    p.add_argument("--batch-size", type=positive_int, help="generation batch size")
    p.add_argument("--sample", action="store_true",
                   help="seeded sampling instead of greedy decoding")
    p.add_argument("--no-cache", action="store_true",
                   help="generate with use_cache=False (history recomputed unsteered)")
    p.add_argument("--lam", type=_float, help="A-LQR / S-PID setpoint scale λ")
    p.add_argument("--q", type=_nonneg_float, help="A-LQR state weight q")
    p.add_argument("--r", type=_pos_float,
                   help="A-LQR input weight r (default: the form's, 0.1 relative / 1.0 paper)")
    p.add_argument("--qf", type=_nonneg_float, help="A-LQR terminal weight qf")
    p.add_argument("--alqr-form", choices=_form_options(),
                   help="A-LQR form: auto (default; the paper form where the model's blocks "
                        "answer its input linearly, else the relative form: works on both "
                        "SmolLM2 and Gemma-3, docs/transfer.md), relative (normalised gains, "
                        "massive coordinates out of the direction, one-sided law) or paper "
                        "(arXiv 2604.19018 as published)")
    p.add_argument("--coeff", type=_float, help="ActAdd coefficient")
    p.add_argument("--actadd-layers", type=_int_list, help="ActAdd layers, e.g. 10")
    p.add_argument("--sweep-alqr", type=_float_list,
                   help="λ grid of A-LQR, A-LQR+ and multi-concept A-LQR, e.g. 1,2,4")
    p.add_argument("--sweep-actadd", type=_float_list, help="coeff grid of ActAdd, e.g. 2,4,8")
    p.add_argument("--sweep-pid", type=_float_list, help="λ grid of S-PID")


def _task_options(p: argparse.ArgumentParser, *, default: str | None) -> None:
    """--task and the files of a user concept (see ltv_control.app.tasks.load_task)."""
    p.add_argument("--task", default=default, metavar="TASK",
                   help="sentiment, concept:NAME (built in: sea, food, space, weddings), "
                        "concept:A+concept:B (several at once), or concept with --desired/"
                        f"--undesired files (default: {default or 'your --desired/--undesired/--prompts files, judged by VADER'})")
    p.add_argument("--desired", type=_existing_file, metavar="FILE",
                   help="sentences showing the behaviour or concept (one per line, or one "
                        ".jsonl file holding every set)")
    p.add_argument("--undesired", type=_existing_file, metavar="FILE",
                   help="sentences not showing it (one per line)")
    p.add_argument("--prompts", type=_existing_file, metavar="FILE",
                   help="evaluation prompts (one per line; concept default: packaged neutral "
                        "requests)")
    p.add_argument("--keywords", type=_existing_file, metavar="FILE",
                   help="keywords of the keyword judge of a concept task (one per line)")
    p.add_argument("--jacobian-prompts", type=_existing_file, metavar="FILE",
                   help="linearization prompts (default: the packaged neutral prompts)")
    p.add_argument("--prompt-format", choices=("raw", "chat", "auto"), default=None,
                   help="raw prompts, the tokenizer's chat template, or auto (the chat template "
                        "when the tokenizer has one, as instruct models do; raw for a base "
                        "model) (default: raw for sentiment, auto for concepts)")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="steer the embedded model from negative to positive sentiment "
                                    "and compare with baselines",
                       description="Fit ActAdd, S-PID, A-LQR, A-LQR+ and the constrained steerer "
                                   "on the packaged sentiment data, generate on held-out prompts, "
                                   "and write report.json, report.md and PNGs.")
    _common(p)
    _task_options(p, default="sentiment")
    _eval_options(p, quick=True)
    p.set_defaults(handler=_cmd_demo)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="the demo's evaluation on a task or your own data files",
                       description="Like demo, on --task (sentiment, concept:NAME, "
                                   "concept:A+concept:B, or concept with your files); without "
                                   "--task, your --desired/--undesired/--prompts files judged "
                                   "by VADER.")
    _common(p)
    _task_options(p, default=None)
    _eval_options(p, quick=True)
    p.set_defaults(handler=_cmd_eval)


def _add_fit(sub) -> None:
    p = sub.add_parser("fit", help="fit a steering controller from contrastive files",
                       description="Fit a steerer and save it as one .safetensors controller file.")
    _common(p)
    p.add_argument("--desired", type=_existing_file, metavar="FILE",
                   help="desired sentences (default: packaged positive sentences)")
    p.add_argument("--undesired", type=_existing_file, metavar="FILE",
                   help="undesired sentences (default: packaged negative sentences)")
    p.add_argument("--jacobian-prompts", type=_existing_file, metavar="FILE",
                   help="linearization prompts (A-LQR, constrained; default: packaged "
                        "neutral prompts)")
    p.add_argument("--method", choices=_METHOD_KINDS, default="alqr", help="default: alqr")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="controller file to write (.safetensors)")
    _force_option(p)
    p.add_argument("--n-fit", type=positive_int, help="use only the first N pairs")
    p.add_argument("--n-jacobian", type=positive_int, default=8,
                   help="number of Jacobian prompts (default: 8)")
    p.add_argument("--max-tokens", type=positive_int, default=16,
                   help="Jacobian prompts are cut to this many tokens (default: 16)")
    p.add_argument("--q", type=_nonneg_float, default=0.1, help="state weight (default: 0.1)")
    p.add_argument("--r", type=_pos_float, default=None,
                   help="input weight (default: the A-LQR form's, 0.1 relative / 1.0 paper; "
                        "1.0 for the other methods)")
    p.add_argument("--qf", type=_nonneg_float, default=0.1, help="terminal weight (default: 0.1)")
    p.add_argument("--form", choices=_form_options(), default="auto",
                   help="A-LQR form (default: auto, the paper form where the model's blocks "
                        "answer its input linearly, else the relative form, which works on "
                        "both SmolLM2 and Gemma-3, docs/transfer.md; paper: arXiv 2604.19018 "
                        "as published)")
    p.add_argument("--lam", type=_float, default=1.0, help="setpoint scale λ (default: 1.0)")
    p.add_argument("--coeff", type=_float, default=4.0, help="ActAdd coefficient (default: 4)")
    p.add_argument("--layers", type=_int_list,
                   help="controlled layers (ActAdd default: one third of the depth)")
    p.add_argument("--positions", choices=("last", "all"),
                   help="default positions stored in the file")
    p.set_defaults(handler=_cmd_fit)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text, optionally steered by a controller file",
                       description="Generate continuations of prompts, with a controller file "
                                   "attached (or unsteered without --controller).")
    _common(p)
    p.add_argument("--controller", type=_existing_file, metavar="FILE",
                   help="controller file written by `ltv-control fit`")
    p.add_argument("--control-vector", type=_existing_file, metavar="FILE",
                   help="a llama.cpp / repeng control-vector GGUF, applied as a constant input "
                        "(direction.N on block N's output, every position)")
    p.add_argument("--scale", type=_float, default=1.0,
                   help="strength of --control-vector (default: 1)")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="a prompt (repeatable)")
    p.add_argument("--prompts", type=_existing_file, metavar="FILE", help="prompts, one per line")
    p.add_argument("--positions", choices=("last", "all"),
                   help="steered positions (default: the controller's)")
    p.add_argument("--lam", type=_float, help="override λ (A-LQR, S-PID, constrained)")
    p.add_argument("--coeff", type=_float, help="override coeff (ActAdd)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="default: 32")
    p.add_argument("--sample", action="store_true", help="seeded sampling instead of greedy")
    p.add_argument("--no-cache", action="store_true", help="generate with use_cache=False")
    p.set_defaults(handler=_cmd_generate)


def _steerer_for_generate(args, model):
    """The steerer ``generate`` attaches: a controller file, a control vector, or none."""
    from ltv_control.adapters import Steerer, load_control_vector

    if args.controller is not None:
        return Steerer.load(args.controller, model=model)
    if args.control_vector is not None:
        return load_control_vector(args.control_vector, model=model, scale=args.scale)
    return None


def _add_export(sub) -> None:
    from ltv_control.app.control_vectors import add_export_arguments

    p = sub.add_parser("export", help="export a controller as a llama.cpp control vector (GGUF)",
                       description="Write a controller as a llama.cpp control-vector GGUF. ActAdd "
                                   "exports exactly; feedback laws export their mean closed-loop "
                                   "input along steered calibration runs (an approximation: the "
                                   "in-process comparison says how much of the effect it keeps).")
    add_export_arguments(p)
    _common(p)
    _force_option(p)
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args) -> int:
    from ltv_control.app.control_vectors import export_command

    model, tokenizer = _load(args)
    payload, text = export_command(args, model, tokenizer)
    _emit(args, payload, text)
    return 0


def _add_linearize(sub) -> None:
    p = sub.add_parser("linearize", help="linearize the model into an LTV system file",
                       description="Average block Jacobians at the last token over prompts; write "
                                   "system.safetensors + system.json and linearity diagnostics.")
    _common(p)
    p.add_argument("--prompts", type=_existing_file, metavar="FILE",
                   help="prompts (default: the packaged Jacobian prompts)")
    p.add_argument("--n-prompts", type=positive_int, default=4, help="default: 4")
    p.add_argument("--max-tokens", type=positive_int, default=16, help="default: 16")
    p.add_argument("--out", type=Path, default=Path("ltv-control-system"), metavar="DIR",
                   help="output folder (default: ./ltv-control-system)")
    _force_option(p)
    p.add_argument("--no-diagnostics", action="store_true", help="skip the linearity diagnostics")
    p.set_defaults(handler=_cmd_linearize)


def _add_bound(sub) -> None:
    p = sub.add_parser("bound", help="tracking-error bound experiment and figure",
                       description="Run the tracking-error bound experiment on the model and "
                                   "write bound.json and bound.png.")
    _common(p)
    p.add_argument("--prompts", type=_existing_file, metavar="FILE",
                   help="prompts (default: packaged evaluation prompts)")
    p.add_argument("--n-prompts", type=positive_int, default=8,
                   help="prompts used: 1 nominal, 3 calibration, 4 held out (default: 8)")
    p.add_argument("--n-jacobian", type=positive_int, default=2,
                   help="linearization prompts (default: 2)")
    p.add_argument("--max-tokens", type=positive_int, default=16, help="default: 16")
    p.add_argument("--out", type=Path, default=Path("ltv-control-bound"), metavar="DIR",
                   help="output folder (default: ./ltv-control-bound)")
    _force_option(p)
    p.set_defaults(handler=_cmd_bound)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ltv-control`` (all subcommands)."""
    import ltv_control

    parser = _Parser(prog="ltv-control",
                     description="Finite-horizon optimal control of LTV systems, and activation "
                                 "steering of language models by LQR over the layers (A-LQR).")
    parser.add_argument("--version", action="version", version=f"ltv-control {ltv_control.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_demo(sub)
    _add_eval(sub)
    _add_fit(sub)
    _add_generate(sub)
    _add_export(sub)
    _add_linearize(sub)
    _add_bound(sub)
    return parser


# ---------------------------------------------------------------- helpers

def _log(args, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _load(args):
    import torch

    from ltv_control.adapters import load_embedded_model, load_model

    dtype = getattr(torch, args.dtype)
    check_device(args.device)
    torch.manual_seed(args.seed)
    if args.model is not None:
        _log(args, f"loading {args.model} ({args.dtype}, {args.device})")
        try:
            return load_model(args.model, dtype=dtype, device=args.device)
        except ControlError:
            raise
        except Exception as exc:  # corrupt weights (SafetensorError), bad config, ...
            raise CLIError(f"--model {str(args.model)!r}: cannot load a transformers model "
                           f"({type(exc).__name__}: {_first_line(exc)})") from None
    _log(args, f"loading the embedded SmolLM2-135M-Instruct ({args.dtype}, {args.device})")
    return load_embedded_model(dtype=dtype, device=args.device)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _emit(args, payload: dict, text: str) -> None:
    if args.json:
        from ltv_control.app.report import to_json

        print(to_json(payload))
    elif not args.quiet or text and args.command in ("generate",):
        print(text)


def demo_settings(args, *, quick: bool = False, task=None):
    """ExperimentSettings for ``demo`` / ``eval`` from parsed options (``quick``: --quick sizes;
    a concept ``task`` brings its own defaults, :func:`ltv_control.app.tasks.settings_overrides`)."""
    from ltv_control.app.experiment import METHODS, ExperimentSettings
    from ltv_control.app.generation import Decoding
    from ltv_control.app.tasks import settings_overrides

    base = ExperimentSettings()
    overrides = settings_overrides(task, quick=quick) if task is not None else {}
    if overrides:
        fields = {k: getattr(base, k) for k in base.__dataclass_fields__}
        dec = {**base.decoding.as_dict(), **overrides.pop("decoding", {})}
        fields.update(overrides, sweep={**base.sweep, **overrides.get("sweep", {})},
                      decoding=Decoding(**dec))
        base = ExperimentSettings(**fields)
    elif quick:
        base = ExperimentSettings(n_fit=32, n_eval=16, n_jacobian=1, max_jacobian_tokens=10,
                                  decoding=Decoding(max_new_tokens=12, batch_size=16),
                                  sweep={"actadd": [4.0, 6.0], "pid": [1.0], "alqr": [1.0],
                                         "alqr_plus": [1.0], "constrained": [1.0]},
                                  methods=("unsteered", "actadd", "pid", "alqr", "alqr_plus"))
    updates = {}
    if args.methods is not None:
        names = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        unknown = [m for m in names if m not in METHODS]
        if unknown:
            raise CLIError(f"--methods: unknown {unknown}; choose from {','.join(METHODS)}")
        updates["methods"] = names
    for option, field in (("n_eval", "n_eval"), ("n_fit", "n_fit"), ("n_jacobian", "n_jacobian"),
                          ("lam", "lam"), ("q", "q"), ("r", "r"), ("qf", "qf"),
                          ("coeff", "actadd_coeff"), ("alqr_form", "alqr_form")):
        if getattr(args, option) is not None:
            updates[field] = getattr(args, option)
    if args.actadd_layers is not None:
        updates["actadd_layers"] = tuple(args.actadd_layers)
    sweep = dict(base.sweep)
    for option, keys in (("sweep_alqr", ("alqr", "alqr_plus", "alqr_multi")),
                         ("sweep_actadd", ("actadd",)),
                         ("sweep_pid", ("pid",))):
        if getattr(args, option):
            for key in keys:
                sweep[key] = getattr(args, option)
    updates["sweep"] = sweep
    dec = base.decoding.as_dict()
    if args.max_new_tokens is not None:
        dec["max_new_tokens"] = args.max_new_tokens
    if args.batch_size is not None:
        dec["batch_size"] = args.batch_size
    dec["do_sample"] = bool(args.sample)
    dec["use_cache"] = not args.no_cache
    dec["seed"] = args.seed
    updates["decoding"] = Decoding(**dec)
    fields = {k: getattr(base, k) for k in base.__dataclass_fields__}
    fields.update(updates)
    return ExperimentSettings(**fields)


def _run_evaluation(args, task, *, quick: bool) -> int:
    from ltv_control.app.experiment import run_experiment
    from ltv_control.app.report import format_table, write_report

    if args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out {str(args.out)!r} exists and is not a directory")
    settings = demo_settings(args, quick=quick, task=task)
    skip_bound = args.no_bound or quick
    model, tokenizer = _load(args)
    args.out.mkdir(parents=True, exist_ok=True)
    report, details = run_experiment(model, tokenizer, task, settings, seed=args.seed,
                                     progress=not args.quiet, quiet=args.quiet,
                                     return_details=True,
                                     bound_figure=None if skip_bound else args.out / "bound.png")
    files = write_report(args.out, report, details)
    claim = details.get("claim", {})
    text = [format_table(report), ""]
    if claim.get("available"):
        text.append(
            f"A-LQR λ={claim['lam']:g}: {claim['key'].replace('_', ' ')} {claim['rate']:.2f} at "
            f"perplexity {claim['perplexity']:.1f}; ActAdd at the same rate: "
            f"{claim['baseline_perplexity']:.1f}"
            f"{' (extrapolated)' if claim['extrapolated'] else ''} -> claim "
            f"{'holds' if claim['holds'] else 'does not hold'}")
    for note in details.get("notes", []):
        text.append(f"note: {note}")
    text.append(f"report: {args.out / 'report.md'} ({len(files)} files in {args.out})")
    _emit(args, report, "\n".join(text))
    return 0


# ---------------------------------------------------------------- subcommands

def _task_from_args(args):
    """The Task named by --task and the file options (ltv_control.app.tasks.load_task)."""
    from ltv_control.app.tasks import load_task

    return load_task(args.task, desired=args.desired, undesired=args.undesired,
                     prompts=args.prompts, keywords=args.keywords,
                     jacobian_prompts=args.jacobian_prompts, prompt_format=args.prompt_format)


def _cmd_demo(args) -> int:
    return _run_evaluation(args, _task_from_args(args), quick=args.quick)


def _cmd_eval(args) -> int:
    from ltv_control.app.datasets import SentimentTask, load_sentiment_task, read_lines

    if args.task is not None:
        return _run_evaluation(args, _task_from_args(args), quick=args.quick)
    missing = [o for o, v in (("--desired", args.desired), ("--undesired", args.undesired),
                              ("--prompts", args.prompts)) if v is None]
    if missing:
        raise CLIError(f"eval needs --task TASK, or your own {', '.join(missing)} file(s)")
    if args.keywords is not None:
        raise CLIError("--keywords needs a concept task: add --task concept")
    jac = read_lines(args.jacobian_prompts) if args.jacobian_prompts else \
        load_sentiment_task().jacobian_prompts
    desired, undesired = read_lines(args.desired), read_lines(args.undesired)
    task = SentimentTask(desired=desired, undesired=undesired,
                         eval_prompts=read_lines(args.prompts), jacobian_prompts=jac)
    return _run_evaluation(args, task, quick=args.quick)


def _steerer_class(kind: str):
    from ltv_control import adapters

    return {"alqr": adapters.ALQRSteerer, "actadd": adapters.ActAddSteerer,
            "pid": adapters.PIDSteerer, "constrained": adapters.ConstrainedSteerer}[kind]


def _fit_data(args) -> tuple[list[str], list[str], list[str]]:
    """The desired, undesired and Jacobian prompts of ``fit`` (files or the packaged task)."""
    from ltv_control.app.datasets import load_sentiment_task, read_lines

    task = load_sentiment_task()
    desired = read_lines(args.desired) if args.desired else task.desired
    undesired = read_lines(args.undesired) if args.undesired else task.undesired
    if args.n_fit:
        desired, undesired = desired[:args.n_fit], undesired[:args.n_fit]
    jac = read_lines(args.jacobian_prompts) if args.jacobian_prompts else task.jacobian_prompts
    return list(desired), list(undesired), list(jac[:args.n_jacobian])


def _fit_steerer(args, plant, desired: list[str], undesired: list[str], jac: list[str]):
    """``<Steerer>.fit`` of ``--method`` with the options that apply to it."""
    cls = _steerer_class(args.method)
    common = {} if args.positions is None else {"positions": args.positions}
    weights = {"q": args.q, "qf": args.qf, "lam": args.lam}
    if args.r is not None:  # unset: the steerer's own default (A-LQR: its form's)
        weights["r"] = args.r
    if args.method == "alqr":
        return cls.fit(plant, desired, undesired, **weights, jacobian_prompts=jac,
                       layers=args.layers, max_tokens=args.max_tokens,
                       progress=not args.quiet, form=args.form, **common)
    if args.method == "actadd":
        return cls.fit(plant, desired, undesired, layers=args.layers or [plant.horizon // 3],
                       coeff=args.coeff, **common)
    if args.method == "pid":
        return cls.fit(plant, desired, undesired, lam=args.lam, **common)
    return cls.fit(plant, desired, undesired, **weights, jacobian_prompts=jac,
                   max_tokens=args.max_tokens, progress=not args.quiet, **common)


def _cmd_fit(args) -> int:
    from ltv_control.adapters import LLMPlant

    desired, undesired, jac = _fit_data(args)
    if args.out.exists() and args.out.is_dir():
        raise CLIError(f"--out {str(args.out)!r} is a directory; give a .safetensors file path")
    if not args.out.parent.exists():
        raise CLIError(f"--out: folder {str(args.out.parent)!r} does not exist")
    model, tokenizer = _load(args)
    plant = LLMPlant(model, tokenizer)
    _log(args, f"fitting {args.method} on {len(desired)} desired / {len(undesired)} undesired")
    steerer = _fit_steerer(args, plant, desired, undesired, jac)
    choice = getattr(steerer, "form_choice", None)
    if choice is not None:
        _log(args, choice.describe())
    steerer.save(args.out)
    payload = {"path": str(args.out), "method": args.method, "num_layers": plant.horizon,
               "hidden_size": plant.state_dim, "n_desired": len(desired),
               "n_undesired": len(undesired)}
    if args.method == "alqr":
        payload["form"] = steerer.form
        if choice is not None:
            payload["form_nonlinearity_median"] = choice.median
    _emit(args, payload, f"wrote {args.method} controller to {args.out}")
    return 0


def _cmd_generate(args) -> int:
    from ltv_control.app.datasets import read_lines
    from ltv_control.app.generation import Decoding, generate_continuations

    prompts = list(args.prompt) + (list(read_lines(args.prompts)) if args.prompts else [])
    if not prompts:
        raise CLIError("generate: give at least one --prompt TEXT or --prompts FILE")
    prompts = check_prompts(prompts, "--prompt")
    if args.controller is not None and args.control_vector is not None:
        raise CLIError("generate: give --controller or --control-vector, not both")
    model, tokenizer = _load(args)
    steerer = _steerer_for_generate(args, model)
    steering = None
    if steerer is not None:
        options = {}
        if args.positions is not None:
            options["positions"] = args.positions
        import inspect

        # the class's options, or the keywords of its own attach (ConstrainedSteerer: lam)
        accepted = set(getattr(type(steerer), "attach_options", ())) | set(
            inspect.signature(steerer.attach).parameters)
        if args.lam is not None:
            if "lam" not in accepted:
                raise CLIError(f"--lam does not apply to a {type(steerer).__name__}")
            options["lam"] = args.lam
        if args.coeff is not None:
            if "coeff" not in accepted:
                raise CLIError(f"--coeff does not apply to a {type(steerer).__name__}")
            options["coeff"] = args.coeff
        steering = lambda: steerer.attach(model, **options)
    check_prompt_lengths(tokenizer, prompts, max_positions(model), option="--prompt",
                         new_tokens=args.max_new_tokens)
    decoding = Decoding(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                        seed=args.seed, use_cache=not args.no_cache, batch_size=8)
    gen = generate_continuations(model, tokenizer, prompts, decoding=decoding, steering=steering,
                                 progress=not args.quiet)
    payload = {"prompts": prompts, "continuations": gen.texts,
               "controller": None if args.controller is None else str(args.controller),
               "tokens_per_s": gen.tokens_per_s}
    text = "\n".join(f"{p} {c}" for p, c in zip(prompts, gen.texts))
    _emit(args, payload, text)
    return 0


def _cmd_linearize(args) -> int:
    from ltv_control.adapters import LLMPlant
    from ltv_control.app.datasets import load_sentiment_task, read_lines
    from ltv_control.system_io import save_system

    prompts = read_lines(args.prompts) if args.prompts else load_sentiment_task().jacobian_prompts
    prompts = list(prompts[:args.n_prompts])
    if args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out {str(args.out)!r} exists and is not a directory")
    model, tokenizer = _load(args)
    plant = LLMPlant(model, tokenizer)
    _log(args, f"linearizing {plant.horizon} layers on {len(prompts)} prompts")
    system = plant.linearize(prompts, max_tokens=args.max_tokens, progress=not args.quiet)
    args.out.mkdir(parents=True, exist_ok=True)
    from ltv_control.adapters import model_id_of

    meta = {"model": model_id_of(model), "prompts": prompts, "max_tokens": args.max_tokens,
            "seed": args.seed}
    path = save_system(args.out / "system.safetensors", system, metadata=meta)
    payload = {"system": str(path), "metadata": str(path.with_suffix(".json")),
               "horizon": system.horizon, "n_states": system.n_states}
    if not args.no_diagnostics:
        payload["diagnostics"] = _diagnostics(plant, prompts, args)
    _emit(args, payload, "\n".join(f"{k}: {v}" for k, v in payload.items()
                                   if not isinstance(v, dict)))
    return 0


def _diagnostics(plant, prompts, args) -> dict:
    """Linearity diagnostics (paper Section 5) beside the system file: JSON + PNG."""
    import numpy as np

    from ltv_control.adapters import linearity_diagnostics, plot_linearity
    from ltv_control.app.report import to_json
    from ltv_control.atomic import atomic_write_text

    result = linearity_diagnostics(plant, prompts, max_tokens=args.max_tokens, seed=args.seed,
                                   progress=not args.quiet)
    figure = plot_linearity(result, args.out / "diagnostics.png")
    atomic_write_text(args.out / "diagnostics.json",
                      to_json(_plain(result)))
    similarity = result.similarity[np.isfinite(result.similarity)]
    return {
        "figure": str(figure),
        "file": str(args.out / "diagnostics.json"),
        "rank": int(result.rank),
        "mean_prediction_error": {f"{eps:g}": float(err) for eps, err in
                                  zip(result.scales, result.prediction_error.mean(axis=0))},
        "mean_subspace_similarity": float(similarity.mean()) if similarity.size else None,
    }


def _plain(result):
    if hasattr(result, "_asdict"):
        result = result._asdict()
    if isinstance(result, dict):
        return {k: _plain(v) for k, v in result.items()}
    if hasattr(result, "detach"):
        result = result.detach().cpu().numpy()
    if hasattr(result, "tolist"):
        return result.tolist()
    return result


def _cmd_bound(args) -> int:
    from ltv_control.adapters import LLMPlant
    from ltv_control.app.datasets import load_sentiment_task, read_lines
    from ltv_control.app.experiment import run_bound_figure
    from ltv_control.app.report import to_json
    from ltv_control.atomic import atomic_write_text

    if args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out {str(args.out)!r} exists and is not a directory")
    task = load_sentiment_task()
    prompts = list((read_lines(args.prompts) if args.prompts else task.eval_prompts)[:args.n_prompts])
    if len(prompts) < 3:
        raise CLIError(f"bound: needs at least 3 prompts, found {len(prompts)}")
    jac = list(task.jacobian_prompts[:args.n_jacobian])
    model, tokenizer = _load(args)
    plant = LLMPlant(model, tokenizer)
    _log(args, f"linearizing {plant.horizon} layers on {len(jac)} prompts")
    system = plant.linearize(jac, max_tokens=args.max_tokens, progress=not args.quiet)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = run_bound_figure(plant, prompts, system, args.out / "bound.png",
                               max_tokens=args.max_tokens, progress=not args.quiet)
    atomic_write_text(args.out / "bound.json",
                      to_json(summary) + "\n")
    payload = {**summary, "figure": str(args.out / "bound.png"),
               "data": str(args.out / "bound.json")}
    text = (f"bound holds on {summary['coverage']:.0%} of held-out steps "
            f"({summary['violations']} violations of {summary['n_steps']}, {summary['mode']})\n"
            f"figure: {args.out / 'bound.png'}")
    _emit(args, payload, text)
    return 0


# ---------------------------------------------------------------- entry point

def _silence() -> None:
    """--quiet: no progress bars (ours and transformers') and no library warnings."""
    os.environ["TQDM_DISABLE"] = "1"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is an optional extra
        pass


def main(argv: list[str] | None = None) -> int:
    """Run ``ltv-control`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    0 on success, 2 on a user error (one line on stderr: bad path, bad value, mismatched or
    corrupt controller file), 130 on Ctrl-C.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "handler", None) is None:
            parser.print_help()
            return 2
        if args.quiet:
            _silence()
        _preflight(args)
        folder = getattr(args, "out", None) if args.command != "fit" else None
        with guard_output_folder(folder):
            return int(args.handler(args) or 0)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `ltv-control ... | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:  # pragma: no cover
            pass
        return 0
    except (ControlError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"error: {type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a full disk while writing
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
