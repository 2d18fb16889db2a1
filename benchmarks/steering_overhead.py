"""Steering overhead: tokens/s of greedy generation with A-LQR hooks against unsteered.

Greedy generation of ``new_tokens`` (default 64, forced with ``min_new_tokens``) with the KV
cache on, at batch sizes 1 and 8 (left-padded prompts of mixed lengths), on the embedded
SmolLM2-135M-Instruct (or ``--model PATH``).  Three variants are timed in the same run,
interleaved round by round so that machine drift hits them alike:

``unsteered``
    plain ``model.generate``.
``alqr``
    :class:`ltv_control.adapters.ALQRSteerer` attached with ``positions="last"``: one fused
    hook per layer computing ``u_k = (β*_k − v_kᵀz_k) w_k`` (one dot product, one axpy).
``full_gain``
    the same law written with the full gains kept, as a naive implementation would:
    ``x_k = (v_kᵀz_k − β*_k) v_k``, ``u_k = −K_k x_k`` with ``K_k`` an ``n × n`` matrix per
    layer (memory ``T·n²``, one matrix–vector product per layer and position).

Reported ratios: ``alqr_over_unsteered`` (target ≥ 0.95; the paper lost 22 % on a GPU) and
``alqr_over_full_gain``, from wall-clock time; ``single_step.alqr_over_unsteered``, from
single-token forward passes alternated with and without the hooks (robust to drift; see
:func:`_paired_step_times`), with the hook overhead per layer in microseconds; and the same from the CPU time of this process
(``*_cpu``; on a shared CPU machine wall-clock rates swing with the other processes' load, CPU
time much less — run with ``OMP_NUM_THREADS=1`` there).  The gains do not change the cost of a hook, so by default the
setpoint is fitted on a few sentiment prompts and the gains come from
:func:`ltv_control.finite_horizon_lqr` on an identity plant (``A_k = I``: no Jacobians, the
benchmark starts in seconds); ``--fit`` linearizes the model instead (slow on a CPU).

Run ``python benchmarks/steering_overhead.py [--quick] [--device cuda] [--dtype bfloat16]
[--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any
from ltv_control.atomic import atomic_write_text

DESIRED = [
    "I loved this film, it was wonderful.",
    "What a happy and beautiful day!",
    "The staff were kind and the food was delicious.",
    "This is the best book I have read in years.",
]
UNDESIRED = [
    "I hated this film, it was awful.",
    "What a sad and miserable day!",
    "The staff were rude and the food was disgusting.",
    "This is the worst book I have read in years.",
]
PROMPTS = [
    "Tell me about your day.",
    "The restaurant on the corner",
    "Write a short review of the movie you saw last night, please.",
    "My neighbour's dog",
    "Here is what I think about the new phone:",
    "Once upon a time, in a small village by the sea,",
    "The weather today",
    "Describe the museum in three sentences.",
]


def _full_gain_hooks(model: Any, blocks: list, K: Any, v: Any, beta: Any) -> list:
    """Naive A-LQR hooks keeping the full gains ``K (T, n, n)``; returns the hook handles."""
    import torch

    from ltv_control.adapters._blocks import get_block_input, get_block_output, replace_block_output

    handles = []
    for k, block in enumerate(blocks):
        Kk, vk, bk = K[k], v[k], beta[k]

        def hook(module, args, kwargs, output, Kk=Kk, vk=vk, bk=bk):
            z = get_block_input(args, kwargs)[:, -1].to(torch.float32)
            x = (z @ vk - bk).unsqueeze(-1) * vk
            u = -(x @ Kk.T)
            hidden = get_block_output(output).clone()
            hidden[:, -1] = (hidden[:, -1].to(torch.float32) + u).to(hidden.dtype)
            return replace_block_output(output, hidden)

        handles.append(block.register_forward_hook(hook, with_kwargs=True))
    return handles


def _build(plant: Any, fit: bool, quick: bool) -> tuple[Any, Any]:
    """The A-LQR steerer and its full gains ``K (T, n, n)`` (float32, CPU)."""
    import numpy as np
    import torch

    from ltv_control import LTVSystem, finite_horizon_lqr
    from ltv_control.adapters import ALQRSteerer
    from ltv_control.setpoint import feedback_directions, linear_feature_setpoint

    T, n = plant.horizon, plant.state_dim
    if fit:
        system = plant.linearize(DESIRED[:2], max_tokens=8 if quick else 24, progress=True)
    else:
        system = LTVSystem(np.broadcast_to(np.eye(n), (T, n, n)).copy())
    K, _ = finite_horizon_lqr(system, 0.1, 1.0, Qf=0.1)
    K = np.asarray(K.detach().cpu().numpy() if hasattr(K, "detach") else K, dtype=np.float64)
    zd = plant.last_token_states(DESIRED)[:, :T].double().numpy()
    zu = plant.last_token_states(UNDESIRED)[:, :T].double().numpy()
    sp = linear_feature_setpoint(zd, zu, lam=1.0)
    w = feedback_directions(K, sp.v)
    steerer = ALQRSteerer(
        {"w": w, "v": sp.v, "e_norm": sp.e_norm, "beta_star": sp.beta_star},
        hidden_size=n,
        num_layers=T,
        hyperparameters={"q": 0.1, "r": 1.0, "qf": 0.1, "lam": 1.0},
        layer_path=plant.layer_path,
        model_id=plant.model_id,
    )
    return steerer, torch.as_tensor(K, dtype=torch.float32)


def _time_generate(model: Any, batch: dict, new_tokens: int) -> tuple[float, float]:
    """``(tokens per wall-clock second, tokens per CPU second of this process)``."""
    import torch

    sync = getattr(torch, model.device.type, None)
    cpu_start = time.process_time()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
        )
    if sync is not None and hasattr(sync, "synchronize"):
        sync.synchronize()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    generated = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    return generated / elapsed, generated / cpu


def _paired_step_times(model: Any, steerer: Any, input_ids: Any, iters: int) -> dict:
    """Median time of one single-token forward pass, unsteered vs A-LQR, alternated per iteration.

    Alternating the two variants at every iteration cancels machine drift, so the ratio is far
    less noisy than whole-generation timings on a shared machine.  The single-token pass (no
    cache, so no attention over a history) is the cheapest decode-like step: the ratio is a
    conservative estimate of the per-token throughput ratio.
    """
    import torch

    sync = getattr(torch, model.device.type, None)
    times: dict[str, list[float]] = {"unsteered": [], "alqr": []}
    with torch.no_grad():
        for i in range(iters + 3):
            for variant in ("unsteered", "alqr") if i % 2 == 0 else ("alqr", "unsteered"):
                handle = steerer.attach(model) if variant == "alqr" else None
                start = time.perf_counter()
                model(input_ids=input_ids, use_cache=False)
                if sync is not None and hasattr(sync, "synchronize"):
                    sync.synchronize()
                elapsed = time.perf_counter() - start
                if handle is not None:
                    handle.remove()
                if i >= 3:  # warm-up
                    times[variant].append(elapsed)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "median_s": med,
        "alqr_over_unsteered": med["unsteered"] / med["alqr"],
        "hook_overhead_per_layer_us": (med["alqr"] - med["unsteered"]) / len(steerer.w) * 1e6,
    }


def run(
    *,
    quick: bool = False,
    batch_sizes: tuple[int, ...] = (1, 8),
    new_tokens: int = 64,
    repeats: int | None = None,
    model: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    fit: bool = False,
) -> dict:
    """Time unsteered, A-LQR and full-gain generation; return the figures as a dict.

    Parameters
    ----------
    quick : bool, default False
        Fewer repeats (2 instead of 5) and 32 new tokens.
    batch_sizes : tuple of int, default (1, 8)
    new_tokens : int, default 64
    repeats : int or None
        Timed rounds per variant (the median is reported); ``None``: 2 (quick) or 5.
    model : str or None
        A local transformers model folder; ``None``: the embedded SmolLM2.
    device, dtype : str
        Where and in which dtype the model runs (the law is always float32).
    fit : bool, default False
        Linearize the model for the gains (slow) instead of an identity plant.
    """
    import torch

    from ltv_control.adapters import LLMPlant, load_embedded_model, load_model

    if quick:
        new_tokens = min(new_tokens, 32)
    repeats = repeats or (2 if quick else 5)
    torch_dtype = getattr(torch, dtype)
    if model is None:
        lm, tok = load_embedded_model(dtype=torch_dtype, device=device)
    else:
        lm, tok = load_model(model, dtype=torch_dtype, device=device)
    lm.eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lm.generation_config.pad_token_id = tok.pad_token_id
    plant = LLMPlant(lm, tok)
    steerer, K = _build(plant, fit, quick)
    K = K.to(lm.device)
    v, beta = steerer.v.to(lm.device), steerer.beta_star.to(lm.device)

    results: dict[str, Any] = {
        "model": plant.model_id,
        "device": str(lm.device),
        "device_name": torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else platform.processor() or platform.machine(),
        "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "gains": "fitted" if fit else "identity plant",
        "batches": {},
    }
    for bs in batch_sizes:
        prompts = (PROMPTS * ((bs + len(PROMPTS) - 1) // len(PROMPTS)))[:bs]
        batch = {k: t.to(lm.device) for k, t in tok(prompts, return_tensors="pt", padding=True).items()}
        rates: dict[str, list[float]] = {"unsteered": [], "alqr": [], "full_gain": []}
        cpu_rates: dict[str, list[float]] = {"unsteered": [], "alqr": [], "full_gain": []}

        def once(variant: str) -> tuple[float, float]:
            if variant == "alqr":
                with steerer.attach(lm, positions="last"):
                    return _time_generate(lm, batch, new_tokens)
            if variant == "full_gain":
                handles = _full_gain_hooks(lm, plant.layers, K, v, beta)
                try:
                    return _time_generate(lm, batch, new_tokens)
                finally:
                    for h in handles:
                        h.remove()
            return _time_generate(lm, batch, new_tokens)

        for variant in rates:  # warm-up
            once(variant)
        for r in range(repeats):
            order = list(rates) if r % 2 == 0 else list(reversed(rates))
            for variant in order:
                wall, cpu = once(variant)
                rates[variant].append(wall)
                cpu_rates[variant].append(cpu)
            print(f"batch {bs}, round {r + 1}/{repeats} done", file=sys.stderr)
        med = {k: statistics.median(v) for k, v in rates.items()}
        cpu_med = {k: statistics.median(v) for k, v in cpu_rates.items()}
        step = _paired_step_times(lm, steerer, batch["input_ids"][:, -1:], 30 if quick else 150)
        results["batches"][str(bs)] = {
            "single_step": step,
            "tokens_per_s": med,
            "alqr_over_unsteered": med["alqr"] / med["unsteered"],
            "full_gain_over_unsteered": med["full_gain"] / med["unsteered"],
            "alqr_over_full_gain": med["alqr"] / med["full_gain"],
            "tokens_per_cpu_s": cpu_med,
            "alqr_over_unsteered_cpu": cpu_med["alqr"] / cpu_med["unsteered"],
            "alqr_over_full_gain_cpu": cpu_med["alqr"] / cpu_med["full_gain"],
            "all_rates": rates,
            "all_cpu_rates": cpu_rates,
        }
    return results


def table(results: dict) -> str:
    """A plain-text table of :func:`run`'s figures."""
    lines = [
        f"steering overhead: {results['model']} on {results['device']} ({results['device_name']}), "
        f"{results['dtype']}, {results['new_tokens']} new tokens, median of {results['repeats']}",
        f"{'batch':>5} {'unsteered tok/s':>16} {'A-LQR tok/s':>12} {'full-K tok/s':>13} "
        f"{'A-LQR/unst.':>12} {'A-LQR/full-K':>13} {'A-LQR/unst. (CPU s)':>20} "
        f"{'A-LQR/unst. (paired step)':>26}",
    ]
    for bs, r in results["batches"].items():
        t = r["tokens_per_s"]
        lines.append(
            f"{bs:>5} {t['unsteered']:>16.1f} {t['alqr']:>12.1f} {t['full_gain']:>13.1f} "
            f"{r['alqr_over_unsteered']:>12.3f} {r['alqr_over_full_gain']:>13.3f} "
            f"{r['alqr_over_unsteered_cpu']:>20.3f} {r['single_step']['alqr_over_unsteered']:>26.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default=None, help="local transformers model folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--fit", action="store_true", help="linearize the model for the gains")
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    results = run(
        quick=args.quick,
        batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        fit=args.fit,
    )
    text = json.dumps(results, indent=2)
    print(text)
    print(table(results), file=sys.stderr)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
