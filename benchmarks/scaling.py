"""Scaling benchmarks: streamed vs dense Riccati memory, cost growth in n and T, Llama-size check.

Sections (each figure is a ratio against a baseline measured in the same run):

``streamed_memory``
    Peak traced memory (``tracemalloc``; numpy reports its buffers to it) of the dense path
    (build ``A (T, n, n)``, :func:`ltv_control.finite_horizon_lqr`, contract ``w_k = K_k v_k``)
    against :func:`ltv_control.streaming.streamed_feedback` with ``A_k`` generated on demand;
    ratio dense/streamed, and the time ratio streamed/dense.
``growth``
    Time of the dense recursion over a grid of ``n`` (fixed T) and of ``T`` (fixed n); the
    log-log slopes (≈ 3 in n, ≈ 1 in T expected) are least-squares fits of ``log t``.
``llama8b``
    Synthetic Llama-3-8B-size synthesis: T = 32, n = 4096, float32, random well-conditioned
    ``A_k = I + 0.3·G_k/√n`` generated per layer from a seed (‖A_k − I‖₂ ≤ 0.6): peak memory and
    time of the streamed path; the dense path's memory from :func:`dense_memory_bytes` (running it
    would need ~6 GiB in float32 and is not attempted).  Per-step time against one n×n×n GEMM
    measured in the same run.
``precision``
    Relative error of ``w`` between float32 and float64 recursions on the same plant at
    n = 4096 over the last few layers (float64 steps are ~2× slower; see ``precision_steps``).
``structured``
    The low-rank-plus-identity study on real Jacobians of the embedded SmolLM2 model
    (see :func:`structured_study`); needs the adapters and takes a few minutes.

Run ``python benchmarks/scaling.py [--quick] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc
from typing import Any

import numpy as np
from ltv_control.atomic import atomic_write_text

__all__ = ["run", "main", "structured_study", "low_rank_identity_feedback"]


# ------------------------------------------------------------------------------------- helpers


def _random_layer(n: int, seed: int, k: int, dtype: Any, scale: float = 0.3) -> np.ndarray:
    """``I + scale·G/√n`` with G standard normal, reproducible per (seed, k)."""
    rng = np.random.default_rng([seed, k])
    A = rng.standard_normal((n, n), dtype=np.float32)
    A *= np.float32(scale / np.sqrt(n))
    A = A.astype(dtype, copy=False)
    A[np.diag_indices(n)] += 1
    return A


def _directions(T: int, n: int, seed: int) -> np.ndarray:
    V = np.random.default_rng([seed, 10**6]).standard_normal((T, n))
    return V / np.linalg.norm(V, axis=1, keepdims=True)


def _traced(fn: Any) -> tuple[Any, int, float]:
    """Run ``fn()`` under tracemalloc: (result, peak bytes, seconds)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        out = fn()
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak, seconds


def _best_time(fn: Any, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _slope(x: list[float], y: list[float]) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def _rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# ------------------------------------------------------------------------------------- sections


def streamed_memory(T: int, n: int, *, seed: int = 0, q: float = 0.1, r: float = 1.0, qf: float = 0.1) -> dict:
    """Peak memory and time of dense vs streamed synthesis of ``w`` (float64, numpy)."""
    import ltv_control as lc
    from ltv_control.streaming import dense_memory_bytes, streamed_feedback, streamed_memory_bytes

    V = _directions(T, n, seed)

    def dense() -> np.ndarray:
        A = np.stack([_random_layer(n, seed, k, np.float64) for k in range(T)])
        K, _ = lc.finite_horizon_lqr(lc.LTVSystem(A), q, r, Qf=qf)
        return np.einsum("tmn,tn->tm", K, V)

    def streamed() -> np.ndarray:
        return streamed_feedback(lambda k: _random_layer(n, seed, k, np.float64), V, q, r, Qf=qf, horizon=T).w

    w_dense, peak_dense, t_dense = _traced(dense)
    w_stream, peak_stream, t_stream = _traced(streamed)
    return {
        "T": T,
        "n": n,
        "dtype": "float64",
        "peak_bytes_dense": peak_dense,
        "peak_bytes_streamed": peak_stream,
        "model_bytes_dense": dense_memory_bytes(T, n, 8),
        "model_bytes_streamed": streamed_memory_bytes(T, n, 8),
        "memory_ratio_dense_over_streamed": peak_dense / peak_stream,
        "seconds_dense": t_dense,
        "seconds_streamed": t_stream,
        "time_ratio_streamed_over_dense": t_stream / t_dense,
        "w_rel_diff": _rel(w_stream, w_dense),
    }


def growth(n_grid: list[int], T_fixed: int, T_grid: list[int], n_fixed: int, *, repeat: int = 2, seed: int = 0) -> dict:
    """Log-log slopes of dense and streamed synthesis time in n (T fixed) and in T (n fixed)."""
    import ltv_control as lc
    from ltv_control.streaming import streamed_feedback

    def times(T: int, n: int) -> tuple[float, float]:
        A = np.stack([_random_layer(n, seed, k, np.float64) for k in range(T)])
        V = _directions(T, n, seed)
        t_dense = _best_time(lambda: lc.finite_horizon_lqr(lc.LTVSystem(A), 0.1, 1.0, Qf=0.1), repeat)
        t_stream = _best_time(lambda: streamed_feedback(A, V, 0.1, 1.0, Qf=0.1), repeat)
        return t_dense, t_stream

    by_n = [times(T_fixed, n) for n in n_grid]
    by_T = [times(T, n_fixed) for T in T_grid]
    return {
        "n_grid": n_grid,
        "T_fixed": T_fixed,
        "seconds_dense_by_n": [t[0] for t in by_n],
        "seconds_streamed_by_n": [t[1] for t in by_n],
        "slope_n_dense": _slope(n_grid, [t[0] for t in by_n]),
        "slope_n_streamed": _slope(n_grid, [t[1] for t in by_n]),
        "T_grid": T_grid,
        "n_fixed": n_fixed,
        "seconds_dense_by_T": [t[0] for t in by_T],
        "seconds_streamed_by_T": [t[1] for t in by_T],
        "slope_T_dense": _slope(T_grid, [t[0] for t in by_T]),
        "slope_T_streamed": _slope(T_grid, [t[1] for t in by_T]),
    }


def llama_size(T: int = 32, n: int = 4096, *, seed: int = 0, progress: bool = False) -> dict:
    """Streamed float32 synthesis at Llama-3-8B size; dense memory from the analytic model."""
    from ltv_control.streaming import dense_memory_bytes, streamed_feedback, streamed_memory_bytes

    V = _directions(T, n, seed).astype(np.float32)
    G = np.random.default_rng(seed).standard_normal((n, n), dtype=np.float32)
    t_gemm = _best_time(lambda: G @ G, 2)
    G = None  # release before the traced run
    out, peak, seconds = _traced(
        lambda: streamed_feedback(
            lambda k: _random_layer(n, seed, k, np.float32), V, 0.1, 1.0, Qf=0.1, horizon=T,
            dtype="float32", progress=progress,
        )
    )
    t_gen = _best_time(lambda: _random_layer(n, seed, 0, np.float32), 1)
    per_step = seconds / T
    return {
        "T": T,
        "n": n,
        "dtype": "float32",
        "peak_bytes_streamed": peak,
        "model_bytes_streamed": streamed_memory_bytes(T, n, 4),
        "model_bytes_dense_float32": dense_memory_bytes(T, n, 4),
        "model_bytes_dense_float64": dense_memory_bytes(T, n, 8),
        "memory_ratio_dense_over_streamed": dense_memory_bytes(T, n, 4) / peak,
        "seconds_total": seconds,
        "seconds_per_step": per_step,
        "seconds_generate_A_k": t_gen,
        "seconds_one_gemm": t_gemm,
        "step_over_gemm": (per_step - t_gen) / t_gemm,
        "w_finite": bool(np.isfinite(out.w).all()),
    }


def precision(n: int = 4096, steps: int = 4, *, seed: int = 0) -> dict:
    """Relative error of float32 vs float64 ``w`` over the last ``steps`` layers (same plant)."""
    from ltv_control.streaming import streamed_feedback

    V = _directions(steps, n, seed)
    res = {}
    for name in ("float64", "float32"):
        t0 = time.perf_counter()
        out = streamed_feedback(
            lambda k: _random_layer(n, seed, k, np.float32).astype(name), V, 0.1, 1.0, Qf=0.1,
            horizon=steps, dtype=name,
        )
        res[name] = (out.w, time.perf_counter() - t0)
    w64, w32 = res["float64"][0], res["float32"][0]
    per_layer = [_rel(w32[k], w64[k]) for k in range(steps)]
    return {
        "n": n,
        "steps": steps,
        "w_rel_error_float32": _rel(w32, w64),
        "w_rel_error_per_layer": per_layer,
        "seconds_float64": res["float64"][1],
        "seconds_float32": res["float32"][1],
        "time_ratio_float64_over_float32": res["float64"][1] / res["float32"][1],
    }


# ------------------------------------------------------------------------------------- structured


def low_rank_identity_feedback(
    A: np.ndarray, V: np.ndarray, q: float, r: float, qf: float, U: np.ndarray | None
) -> np.ndarray:
    """``w_k`` of the plant restricted to ``A_k ≈ I + U Uᵀ (A_k − I) U Uᵀ`` (B = I, scalar weights).

    With ``Q = qI``, ``R = rI``, ``Q_f = q_f I`` and a common orthonormal basis ``U`` (n, p), the
    restricted plant acts as the identity on ``U⊥``, so the Riccati iterates keep the
    *low-rank-plus-identity* form ``S_k = s_k I + U M_k Uᵀ``:

    * on ``U⊥``: ``s_k = q + s_{k+1} r / (s_{k+1} + r)`` (scalar), gain ``s/(s + r)``;
    * on ``U``: a p-dimensional Riccati step with ``A_r = I_p + Uᵀ(A_k − I)U``,
      ``S_r = s I_p + M``, ``R_r = r I_p``, ``Q_r = q I_p``.

    Cost per step: the projection ``Uᵀ(A_k − I)U`` (O(n²p)) and a p×p step (O(p³)), instead of
    O(n³).  ``U = None`` (p = 0) is the identity-plant approximation ``w_k = s/(s+r) v_k``.
    """
    from ltv_control.riccati import riccati_step

    T, n, _ = A.shape
    p = 0 if U is None else U.shape[1]
    s = qf
    Sr = qf * np.eye(p)
    eye_p = np.eye(p)
    W = np.zeros((T, n))
    for k in range(T - 1, -1, -1):
        gain = s / (s + r)
        v = V[k]
        if p:
            Ar = eye_p + U.T @ (A[k] - np.eye(n)) @ U
            Kr, Sr_new = riccati_step(Sr, Ar, None, q * eye_p, r * eye_p)
            c = U.T @ v
            W[k] = gain * (v - U @ c) + U @ (Kr @ c)
        else:
            W[k] = gain * v
        s_new = q + s * r / (s + r)
        if p:
            Sr = Sr_new
        s = s_new
    return W


def _effective_ranks(A: np.ndarray) -> tuple[list[int], list[int], float]:
    """Per layer, the directions holding 90 % / 99 % of the energy of ``A_k − I``, and the mean
    spectral norm of ``A_k − I``."""
    eye = np.eye(A.shape[-1])
    ranks_90, ranks_99 = [], []
    for Ak in A:
        sv = np.linalg.svd(Ak - eye, compute_uv=False) ** 2
        cum = np.cumsum(sv) / sv.sum()
        ranks_90.append(int(np.searchsorted(cum, 0.90) + 1))
        ranks_99.append(int(np.searchsorted(cum, 0.99) + 1))
    return ranks_90, ranks_99, float(np.mean([np.linalg.norm(Ak - eye, 2) for Ak in A]))


def _common_basis(A: np.ndarray) -> np.ndarray:
    """Eigenvectors (descending) of ``Σ_k (D_k D_kᵀ + D_kᵀ D_k)``, ``D_k = A_k − I``: the common
    basis giving the low-rank method its best chance (the subspace holding most of the range and
    co-range of every residual; O(T·n³), not counted in the recursion time)."""
    eye = np.eye(A.shape[-1])
    gram = np.zeros_like(eye)
    for Ak in A:
        D = Ak - eye
        gram += D @ D.T + D.T @ D
    return np.linalg.eigh(gram)[1][:, ::-1]


def _rank_row(A: np.ndarray, V: np.ndarray, q: float, r: float, qf: float, basis: np.ndarray,
              p: int, w_dense: np.ndarray, t_dense: float) -> dict:
    """Error, time and captured energy of the rank-``p`` restricted recursion."""
    eye = np.eye(A.shape[-1])
    U = basis[:, :p].copy() if p else None
    t0 = time.perf_counter()
    w = low_rank_identity_feedback(A, V, q, r, qf, U)
    seconds = time.perf_counter() - t0
    per_layer = [_rel(w[k], w_dense[k]) for k in range(len(A)) if np.linalg.norm(w_dense[k]) > 0]
    captured = 0.0
    if p:
        captured = float(np.mean([np.linalg.norm(U.T @ (Ak - eye) @ U) ** 2
                                  / np.linalg.norm(Ak - eye) ** 2 for Ak in A]))
    return {"rank": p, "w_rel_error": _rel(w, w_dense), "w_rel_error_worst_layer": max(per_layer),
            "energy_captured": captured, "seconds": seconds,
            "time_ratio_over_dense": seconds / t_dense}


def structured_study(
    A: np.ndarray,
    V: np.ndarray,
    *,
    ranks: tuple[int, ...] = (0, 16, 64, 128, 256, 384),
    q: float = 0.1,
    r: float = 1.0,
    qf: float = 0.1,
) -> dict:
    """Error and time of the low-rank-plus-identity Riccati against the dense recursion.

    Parameters
    ----------
    A : (T, n, n) real plant (e.g. SmolLM2 Jacobian means); V : (T, n) unit directions.

    Returns a dict with, per rank p: the relative error of ``w`` (overall and worst layer), the
    time of the restricted recursion over the dense streamed recursion (basis construction not
    counted: the best case for the method), and the energy of ``A_k − I`` kept by the
    projection ``U Uᵀ D_k U Uᵀ``; plus per-layer effective ranks (directions holding 90 / 99 %
    of the energy of ``A_k − I``).
    """
    from ltv_control.streaming import streamed_feedback

    T, n, _ = A.shape
    t0 = time.perf_counter()
    w_dense = np.asarray(streamed_feedback(A, V, q, r, Qf=qf).w)
    t_dense = time.perf_counter() - t0
    ranks_90, ranks_99, residual_norm = _effective_ranks(A)
    basis = _common_basis(A)
    rows = [_rank_row(A, V, q, r, qf, basis, min(p, n), w_dense, t_dense) for p in ranks]
    return {
        "T": T,
        "n": n,
        "seconds_dense": t_dense,
        "mean_spectral_norm_residual": residual_norm,
        "rank_for_90pct_energy": ranks_90,
        "rank_for_99pct_energy": ranks_99,
        "low_rank_identity": rows,
    }


def embedded_jacobians(prompts: list[str], *, max_tokens: int = 16, progress: bool = False) -> np.ndarray:
    """SmolLM2 Jacobian means (T, n, n) float64 over ``prompts``, cached in $LTV_CONTROL_CACHE."""
    import hashlib

    import torch
    from safetensors.torch import load_file, save_file

    from ltv_control.adapters import LLMPlant, load_embedded_model

    cache = os.environ.get("LTV_CONTROL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ltv-control"))
    key = hashlib.sha256(json.dumps([prompts, max_tokens]).encode()).hexdigest()[:16]
    path = os.path.join(cache, f"bench-jacobians-{key}.safetensors")
    if os.path.exists(path):
        return load_file(path)["A"].numpy()
    model, tok = load_embedded_model(dtype=torch.float32, device="cpu")
    plant = LLMPlant(model, tok)
    A = torch.stack([A_k.detach().cpu().double() for _, A_k in plant.iter_jacobians(prompts, max_tokens=max_tokens, progress=progress)])
    os.makedirs(cache, exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    save_file({"A": A.contiguous()}, tmp)
    os.replace(tmp, path)
    return A.numpy()


STUDY_PROMPTS = [
    "The movie was",
    "I think the weather today is",
    "My favourite food is",
    "The customer service at this shop",
]


def structured_on_embedded(*, progress: bool = False, ranks: tuple[int, ...] = (0, 16, 64, 128, 256, 384)) -> dict:
    """:func:`structured_study` on SmolLM2 Jacobians, with contrastive-like random unit directions."""
    A = embedded_jacobians(STUDY_PROMPTS, progress=progress)
    V = _directions(A.shape[0], A.shape[1], 7)
    out = structured_study(A, V, ranks=ranks)
    out["prompts"] = len(STUDY_PROMPTS)
    return out


# ------------------------------------------------------------------------------------- runner


def machine() -> dict:
    """Where the numbers came from."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "numpy": np.__version__}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def run(
    *,
    quick: bool = False,
    llama: bool | None = None,
    precision_steps: int | None = None,
    structured: bool | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Run the scaling sections and return their figures.

    Parameters
    ----------
    quick : bool
        Small sizes (seconds); the Llama-size, precision and structured sections are skipped
        unless asked for explicitly.
    llama : bool, optional
        Run the T = 32, n = 4096 float32 synthesis (1–3 minutes on 2 cores); default ``not quick``.
    precision_steps : int, optional
        Layers for the float32-vs-float64 comparison at n = 4096; default 4 (0 in quick mode).
    structured : bool, optional
        Run the low-rank-plus-identity study on SmolLM2 Jacobians; default ``not quick``.
    seed : int
        Seed of the synthetic plants.
    progress : bool
        Progress bars on the long sections.
    """
    llama = (not quick) if llama is None else llama
    structured = (not quick) if structured is None else structured
    precision_steps = (0 if quick else 4) if precision_steps is None else precision_steps
    out: dict = {"benchmark": "scaling", "quick": quick, "machine": machine()}
    if quick:
        out["streamed_memory"] = streamed_memory(16, 256, seed=seed)
        out["growth"] = growth([64, 128, 256, 512], 8, [8, 16, 32, 64], 128, repeat=3, seed=seed)
    else:
        out["streamed_memory"] = streamed_memory(32, 1024, seed=seed)
        out["growth"] = growth([64, 128, 256, 512, 1024], 8, [8, 16, 32, 64, 128], 256, seed=seed)
    if llama:
        out["llama8b"] = llama_size(seed=seed, progress=progress)
    if precision_steps:
        out["precision"] = precision(4096, precision_steps, seed=seed)
    if structured:
        try:
            out["structured"] = structured_on_embedded(progress=progress)
        except Exception as exc:  # noqa: BLE001 - recorded, not hidden
            out["structured"] = {"error": f"{type(exc).__name__}: {exc}"}
    out["summary"] = summary_rows(out)
    return out


def summary_rows(res: dict) -> list[dict]:
    """One-line figures (name, value, unit, baseline) for the suite table."""
    rows = []
    m = res.get("streamed_memory")
    if m:
        rows.append({"figure": f"streamed vs dense peak memory (T={m['T']}, n={m['n']}, f64)",
                     "value": m["memory_ratio_dense_over_streamed"], "unit": "× smaller",
                     "baseline": "dense finite_horizon_lqr, same run"})
        rows.append({"figure": "streamed / dense synthesis time", "value": m["time_ratio_streamed_over_dense"],
                     "unit": "ratio", "baseline": "dense finite_horizon_lqr, same run"})
    g = res.get("growth")
    if g:
        rows.append({"figure": f"time growth in n (T={g['T_fixed']}, n={g['n_grid'][0]}..{g['n_grid'][-1]})",
                     "value": g["slope_n_dense"], "unit": "log-log slope", "baseline": "n³ expected"})
        rows.append({"figure": f"time growth in T (n={g['n_fixed']}, T={g['T_grid'][0]}..{g['T_grid'][-1]})",
                     "value": g["slope_T_dense"], "unit": "log-log slope", "baseline": "T¹ expected"})
    ll = res.get("llama8b")
    if ll:
        rows.append({"figure": "Llama-8B size (T=32, n=4096, f32) dense model / streamed peak memory",
                     "value": ll["memory_ratio_dense_over_streamed"], "unit": "× smaller",
                     "baseline": f"dense {ll['model_bytes_dense_float32'] / 2**30:.2f} GiB vs "
                                 f"streamed {ll['peak_bytes_streamed'] / 2**30:.2f} GiB"})
        rows.append({"figure": "Llama-8B size streamed Riccati step / one n³ GEMM",
                     "value": ll["step_over_gemm"], "unit": "ratio",
                     "baseline": f"GEMM {ll['seconds_one_gemm']:.2f} s; total {ll['seconds_total']:.0f} s"})
    pr = res.get("precision")
    if pr:
        rows.append({"figure": f"float32 vs float64 w error (n={pr['n']}, {pr['steps']} layers)",
                     "value": pr["w_rel_error_float32"], "unit": "relative", "baseline": "float64, same plant"})
    st = res.get("structured")
    if st and "low_rank_identity" in st:
        for row in st["low_rank_identity"]:
            rows.append({"figure": f"low-rank+identity Riccati p={row['rank']} w error (SmolLM2)",
                         "value": row["w_rel_error"], "unit": "relative",
                         "baseline": f"dense; time ×{row['time_ratio_over_dense']:.2f}"})
    elif st:
        rows.append({"figure": "low-rank+identity study", "value": float("nan"), "unit": "",
                     "baseline": st.get("error", "")})
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain-text table of :func:`summary_rows`."""
    width = max([len(r["figure"]) for r in rows] + [6])
    lines = [f"{'figure':<{width}}  {'value':>10}  {'unit':<14}  baseline"]
    for r in rows:
        lines.append(f"{r['figure']:<{width}}  {r['value']:>10.4g}  {r['unit']:<14}  {r['baseline']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python benchmarks/scaling.py [--quick] [--out FILE] [--no-llama] [--no-structured]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (seconds)")
    parser.add_argument("--out", help="write the JSON here")
    parser.add_argument("--no-llama", action="store_true", help="skip the T=32, n=4096 synthesis")
    parser.add_argument("--no-structured", action="store_true", help="skip the SmolLM2 low-rank study")
    parser.add_argument("--precision-steps", type=int, default=None)
    args = parser.parse_args(argv)
    res = run(
        quick=args.quick,
        llama=False if args.no_llama else None,
        structured=False if args.no_structured else None,
        precision_steps=args.precision_steps,
        progress=True,
    )
    print(json.dumps(res, indent=2, default=float))
    print(format_table(res["summary"]))
    if args.out:
        atomic_write_text(args.out, json.dumps(res, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
