"""Export fidelity: how much of A-LQR's closed-loop effect its llama.cpp control vector keeps.

On the embedded SmolLM2-135M-Instruct and the packaged sentiment task, fit A-LQR (the demo's
hyper-parameters: q=0.1, r=1, qf=0.1, λ=1, ``positions="last"``) and ActAdd (the demo's layer
T//3 and coeff 4), export A-LQR with :func:`ltv_control.adapters.export_gguf` (mean closed-loop
input over greedy trajectories of the calibration prompts, every position steered), read the
file back with :func:`~ltv_control.adapters.load_control_vector`, and compare, on held-out
evaluation prompts with the same greedy decoding: unsteered, A-LQR closed loop, the exported
constant (llama.cpp's semantics: every position) and ActAdd — positive rate (VADER judge), mean
VADER score and perplexity under the unsteered model.

Calibration uses the packaged Jacobian prompts, evaluation the packaged evaluation prompts
(disjoint sets).  Run ``python benchmarks/export_fidelity.py [--quick] [--out FILE]``; it prints
the export summary and a Markdown table and writes JSON to ``--out`` (default
``export_fidelity.json``) and the fitted controller and the control vector beside it;
``--controller FILE`` exports a saved A-LQR controller instead of fitting one (the fit
linearizes the model: minutes on a CPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ltv_control.atomic import atomic_write_text


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer prompts and tokens")
    p.add_argument("--out", type=Path, default=Path("export_fidelity.json"))
    p.add_argument("--n-fit", type=int, default=64)
    p.add_argument("--n-eval", type=int, default=48)
    p.add_argument("--n-calibration", type=int, default=24)
    p.add_argument("--n-jacobian", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--actadd-coeff", type=float, default=4.0)
    p.add_argument("--controller", type=Path, default=None,
                   help="a saved A-LQR controller file to export instead of fitting one")
    args = p.parse_args(argv)
    if args.quick:
        args.n_fit, args.n_eval, args.n_calibration, args.n_jacobian = 32, 16, 8, 1
        args.max_new_tokens = 12
    return args


def main(argv=None) -> dict:
    from ltv_control.adapters import ActAddSteerer, ALQRSteerer, LLMPlant, load_embedded_model
    from ltv_control.adapters.control_vector import export_gguf, load_control_vector
    from ltv_control.app.control_vectors import compare_export, format_comparison
    from ltv_control.app.datasets import load_sentiment_task
    from ltv_control.app.generation import Decoding

    args = _parse(argv)
    started = time.perf_counter()
    task = load_sentiment_task()
    model, tokenizer = load_embedded_model()
    plant = LLMPlant(model, tokenizer)
    desired, undesired = list(task.desired[:args.n_fit]), list(task.undesired[:args.n_fit])
    if args.controller is not None:
        alqr = ALQRSteerer.load(args.controller, model=model)
    else:
        alqr = ALQRSteerer.fit(plant, desired, undesired, q=0.1, r=1.0, qf=0.1, lam=args.lam,
                               jacobian_prompts=list(task.jacobian_prompts[:args.n_jacobian]),
                               max_tokens=12, positions="last", progress=False)
    actadd = ActAddSteerer.fit(plant, desired, undesired, layers=[plant.horizon // 3],
                               coeff=args.actadd_coeff, positions="all")
    fitted = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.controller is None:
        alqr.save(args.out.with_name(args.out.stem + "_alqr.safetensors"))
    calib = list(task.jacobian_prompts[:args.n_calibration])
    report = export_gguf(alqr, args.out.with_name(args.out.stem + "_alqr.gguf"), model=model,
                         tokenizer=tokenizer, prompts=calib, max_new_tokens=args.max_new_tokens)
    exported = load_control_vector(report, model)
    result = compare_export(model, tokenizer, alqr, exported, list(task.eval_prompts[:args.n_eval]),
                            actadd=actadd, decoding=Decoding(max_new_tokens=args.max_new_tokens))
    print(report.summary())
    print()
    print(format_comparison(result))
    payload = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "export": {"path": str(report.path), "layers": report.layers,
                          "captured_total": report.captured_total,
                          "captured": [None if x != x else float(x) for x in report.captured],
                          "dropped_norm": report.dropped_norm,
                          "calibration_positions": report.positions},
               "comparison": result,
               "seconds": {"fit": fitted - started, "total": time.perf_counter() - started}}
    atomic_write_text(args.out, json.dumps(payload, indent=2))
    return payload


if __name__ == "__main__":
    main()
