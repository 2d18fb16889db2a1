"""Jacobian benchmark: LLMPlant's one-token cached replay against per-prompt full-sequence jacrev.

On the embedded SmolLM2-135M-Instruct (30 blocks, n = 576), for the same prompts and
the same blocks, in the same run, this times

``plant``
    :meth:`ltv_control.adapters.LLMPlant.iter_jacobians` with ``reduce="none"`` (per-prompt
    Jacobians, prompts batched, clean capture and cached-step preparation included);
``baseline``
    the straightforward loop: per prompt, one ``use_cache=False`` forward pass capturing the
    block arguments, then per block ``torch.func.jacrev`` of
    ``x ↦ block(concat(h_{<L}, x))[last]`` over the whole sequence.

The baseline is slow (≈ 25 s per prompt for all 30 blocks in float32 on 2 cores), so by default
it runs on a subset of blocks (``--layers``); both methods run on exactly that subset and the
ratio is per (prompt, block). ``full_linearize_s`` additionally times the plant on all blocks
(skip with ``--no-full``) and ``baseline_all_blocks_est_s`` extrapolates the baseline linearly in the
number of blocks (the per-block cost is roughly constant along the stack; the JSON keeps the
per-block times so the extrapolation can be checked).

Agreement: max over prompts and blocks of ``‖J_plant − J_jacrev‖_F / ‖J_jacrev‖_F``
(target ≤ 1e-5 in float64). Target speed-up ≥ 10×.

Usage::

    python benchmarks/jacobians.py [--prompts 4] [--layers 0,10,20,29] [--dtype float64]
                                   [--batch-size 8] [--max-tokens 24] [--no-full] [--quick]
                                   [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any
from ltv_control.atomic import atomic_write_text

# Prompts of at least 24 tokens: the plant's default max_tokens=24 cuts them to 24, the
# setting the paper and the contract use (the speed-up grows with the sequence length).
PROMPTS = [
    "The movie was surprisingly good, and the actors gave performances that I will remember for a "
    "long time, especially the scene in the old train station",
    "Write a short story about a dragon who lives in a library, reads every book it can find, and "
    "one day discovers a book about itself",
    "My favourite food is a warm bowl of noodle soup with fresh herbs, a little chili, and plenty "
    "of vegetables from the market",
    "In the morning the city was quiet and the streets were empty, except for a baker carrying "
    "bread to the small cafe on the corner",
    "Explain in simple terms why the sky is blue during the day and turns orange and red when the "
    "sun goes down in the evening",
    "I was so disappointed by the service at this restaurant because we waited for an hour and the "
    "food arrived cold and without any apology",
    "Here is a list of things to pack for a hiking trip in the mountains: water, a map, warm "
    "clothes, snacks, and a first aid kit",
    "The results of the experiment suggest that the new material conducts heat much better than "
    "copper at low temperatures, which could matter for",
]


def _baseline(plant: Any, prompt: str, layers: list[int], max_tokens: int) -> tuple[dict, list]:
    """Per-prompt full-sequence jacrev for each block in ``layers``; returns Jacobians and times."""
    import torch
    from ltv_control.adapters._blocks import get_block_output, replace_block_input
    from ltv_control.adapters._replay import block_input_of, clean_capture

    t0 = time.perf_counter()
    ids = torch.tensor([plant.tokenizer(prompt)["input_ids"][:max_tokens]])
    calls = clean_capture(plant.model, plant.layers, ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None])
    capture_s = time.perf_counter() - t0
    jacobians, times = {}, []
    for k in layers:
        t0 = time.perf_counter()
        call = calls[k]
        hidden = block_input_of(call).detach()

        def f(x: Any, call: Any = call, hidden: Any = hidden, k: int = k) -> Any:
            full = torch.cat([hidden[:, :-1], x[None, None]], dim=1)
            args, kwargs = replace_block_input(call.args, call.kwargs, full)
            return get_block_output(plant.layers[k](*args, **kwargs))[0, -1]

        jacobians[k] = torch.func.jacrev(f)(hidden[0, -1]).detach().double()
        times.append(time.perf_counter() - t0 + capture_s / len(layers))
    return jacobians, times


def run(
    *,
    prompts: int = 4,
    layers: tuple[int, ...] | list[int] = (0, 10, 20, 29),
    dtype: str = "float64",
    batch_size: int = 8,
    max_tokens: int = 24,
    full: bool = True,
    quick: bool = False,
    plant: Any = None,
) -> dict:
    """Time both methods on the same prompts and blocks; return the JSON-able result.

    ``quick=True`` uses 2 prompts, the first and last block, and skips the all-blocks run.
    """
    if quick:
        prompts, layers, full = min(prompts, 2), (layers[0], layers[-1]), False
    import warnings

    import torch
    from ltv_control.adapters import LLMPlant, load_embedded_model

    if not 1 <= prompts <= len(PROMPTS):
        raise ValueError(f"prompts: expected 1..{len(PROMPTS)}, found {prompts}")
    torch_dtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    if plant is None:
        t0 = time.perf_counter()
        model, tokenizer = load_embedded_model(dtype=torch_dtype)
        plant = LLMPlant(model, tokenizer)
        load_s = time.perf_counter() - t0
    else:
        load_s = 0.0
    chosen = PROMPTS[:prompts]
    layers = [int(k) % plant.horizon for k in layers]

    t0 = time.perf_counter()
    ours = dict(plant.iter_jacobians(chosen, layers=layers, reduce="none", batch_size=batch_size,
                                     max_tokens=max_tokens, progress=False))
    plant_s = time.perf_counter() - t0

    baseline_s, per_block, max_rel = 0.0, {k: 0.0 for k in layers}, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "batching rule not implemented"
        for i, prompt in enumerate(chosen):
            t0 = time.perf_counter()
            reference, times = _baseline(plant, prompt, layers, max_tokens)
            baseline_s += time.perf_counter() - t0
            for k, t in zip(layers, times, strict=True):
                per_block[k] += t
                rel = ((ours[k][i] - reference[k]).norm() / reference[k].norm()).item()
                max_rel = max(max_rel, rel)

    pairs = len(chosen) * len(layers)
    tokens = [min(len(plant.tokenizer(p)["input_ids"]), max_tokens) for p in chosen]
    result = {
        "benchmark": "jacobians",
        "model": plant.model_id,
        "dtype": dtype,
        "prompts": len(chosen),
        "layers": layers,
        "horizon": plant.horizon,
        "state_dim": plant.state_dim,
        "batch_size": batch_size,
        "max_tokens": max_tokens,
        "tokens_per_prompt": tokens,
        "method": plant.jacobian_method,
        "load_s": load_s,
        "plant_s": plant_s,
        "baseline_s": baseline_s,
        "plant_per_prompt_block_s": plant_s / pairs,
        "baseline_per_prompt_block_s": baseline_s / pairs,
        "baseline_per_block_s": {str(k): v / len(chosen) for k, v in per_block.items()},
        "speedup": baseline_s / plant_s,
        "max_rel_error": max_rel,
        "targets": {"speedup_min": 10.0, "max_rel_error": 1e-5},
        "baseline_all_blocks_est_s": baseline_s / len(layers) * plant.horizon,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    if full:
        t0 = time.perf_counter()
        plant.linearize(chosen, batch_size=batch_size, max_tokens=max_tokens, progress=False)
        result["full_linearize_s"] = time.perf_counter() - t0
        result["full_speedup_est"] = result["baseline_all_blocks_est_s"] / result["full_linearize_s"]
    result["meets_targets"] = bool(result["speedup"] >= 10.0 and max_rel <= 1e-5)
    return result


def _table(result: dict) -> str:
    rows = [
        ("model / dtype", f"{result['model']} / {result['dtype']}"),
        ("prompts x blocks", f"{result['prompts']} x {len(result['layers'])} {result['layers']}"),
        ("plant (s per prompt-block)", f"{result['plant_per_prompt_block_s']:.3f}"),
        ("jacrev baseline (s per prompt-block)", f"{result['baseline_per_prompt_block_s']:.3f}"),
        ("speed-up (target >= 10)", f"{result['speedup']:.1f}x"),
        ("max relative difference (target <= 1e-5)", f"{result['max_rel_error']:.2e}"),
    ]
    if "full_linearize_s" in result:
        rows.append(("plant, all blocks (s)", f"{result['full_linearize_s']:.1f}"))
        rows.append(("baseline, all blocks, extrapolated (s)", f"{result['baseline_all_blocks_est_s']:.1f}"))
        rows.append(("speed-up, all blocks (est.)", f"{result['full_speedup_est']:.1f}x"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--layers", default="0,10,20,29")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--no-full", action="store_true", help="skip timing the plant on all blocks")
    parser.add_argument("--quick", action="store_true", help="2 prompts, 2 blocks")
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    layers = [int(k) for k in args.layers.split(",") if k.strip()]
    result = run(prompts=args.prompts, layers=layers, dtype=args.dtype, batch_size=args.batch_size,
                 max_tokens=args.max_tokens, full=not args.no_full, quick=args.quick)
    text = json.dumps(result, indent=2)
    print(text)
    print(_table(result), file=sys.stderr)
    if args.out:
        atomic_write_text(args.out, text)
    return result


if __name__ == "__main__":
    main()
