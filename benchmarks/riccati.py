"""Riccati benchmark: finite_horizon_lqr against the GEMMs it cannot avoid.

For T = 30 steps and n ∈ {64, 256, 576, 1024} (B = I, R = rI, the activation-steering
plant), in float64 and float32, this times

``lqr``
    :func:`ltv_control.finite_horizon_lqr` (Cholesky solves, symmetrised S);
``gemm_bound``
    ``4·T`` dense n×n×n products on the same data, measured in the same run — the work a
    Riccati step with ``B = I`` cannot avoid (``S A``, ``Aᵀ(S A)``, the two triangular solves
    ≈ one product, ``WᵀW``);
``explicit_inverse``
    a straightforward loop ``K = inv(R + S) (S A)``, ``S = Q + AᵀSA − (SA)ᵀK``.

Reported figures are ratios from the same run: ``lqr_over_gemm_bound`` (target ≤ 2 at
n ≥ 576) and ``inverse_over_lqr`` (how much slower the naive loop is). Each timing is the
best of ``repeats`` runs, the three methods interleaved within each repeat.

Usage::

    python benchmarks/riccati.py [--quick] [--ns 64,256,576] [--dtypes float64,float32]
                                 [--repeats 3] [--backend numpy|torch] [--out FILE]

Set ``OMP_NUM_THREADS`` to control BLAS threads; the JSON records it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

import ltv_control as lc
from ltv_control.atomic import atomic_write_text

DEFAULT_NS = (64, 256, 576, 1024)
QUICK_NS = (64, 256)


def _best_time(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _plant(n: int, T: int, dtype: Any, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((T, n, n))
    return (np.eye(n) + 0.3 * G / np.sqrt(n)).astype(dtype)


def _gemm_bound(A: np.ndarray, S0: np.ndarray, xp: Any) -> Callable[[], Any]:
    T = A.shape[0]

    def run() -> Any:
        S = S0
        for k in range(T - 1, -1, -1):
            for _ in range(4):
                S = xp.matmul(S, A[k])
        return S

    return run


def _explicit_inverse_loop(A: Any, q: float, r: float, xp: Any) -> Callable[[], Any]:
    T, n = A.shape[0], A.shape[-1]
    eye = xp.eye(n, dtype=A.dtype) if xp is np else xp.eye(n, dtype=A.dtype, device=A.device)

    def run() -> Any:
        S = q * eye
        Ks = []
        for k in range(T - 1, -1, -1):
            SA = S @ A[k]
            K = xp.linalg.inv(r * eye + S) @ SA
            S = q * eye + A[k].T @ SA - SA.T @ K
            S = 0.5 * (S + S.T)
            Ks.append(K)
        return Ks

    return run


def _measure(n: int, T: int, dtype: str, backend: str, q: float, r: float, repeats: int) -> dict:
    """One result row: the three methods timed on the same plant, interleaved per repeat."""
    if backend == "torch":
        import torch as xp
    else:
        xp = np
    A_np = _plant(n, T, dtype)
    if backend == "torch":
        A = xp.as_tensor(A_np)
        S0 = xp.eye(n, dtype=A.dtype)
    else:
        A = A_np
        S0 = np.eye(n, dtype=dtype)
    system = lc.LTVSystem(A)
    methods = {
        "lqr": lambda: lc.finite_horizon_lqr(system, q, r, dtype=dtype),
        "gemm": _gemm_bound(A, S0, xp),
        "inverse": _explicit_inverse_loop(A, q, r, xp),
    }
    # Interleave the methods within each repeat so that load changes on a shared
    # machine affect all of them alike; keep the best time of each.
    best = {name: float("inf") for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            best[name] = min(best[name], _best_time(fn, 1))
    t_lqr, t_gemm, t_inv = best["lqr"], best["gemm"], best["inverse"]
    return {
        "n": n, "T": T, "dtype": dtype, "backend": backend,
        "lqr_s": t_lqr, "gemm_bound_s": t_gemm, "explicit_inverse_s": t_inv,
        "lqr_over_gemm_bound": t_lqr / t_gemm,
        "inverse_over_lqr": t_inv / t_lqr,
        "target_met": (t_lqr / t_gemm <= 2.0) if n >= 576 else None,
    }


def run(*, quick: bool = False, ns: Sequence[int] | None = None, T: int = 30,
        dtypes: Sequence[str] = ("float64", "float32"), repeats: int | None = None,
        backend: str = "numpy", q: float = 0.1, r: float = 1.0) -> dict:
    """Time the Riccati recursion against its GEMM bound and an explicit-inverse loop.

    Parameters
    ----------
    quick : bool
        Small sizes (n ∈ {64, 256}) and one repeat.
    ns : sequence of int, optional
        State sizes (default 64, 256, 576, 1024).
    T : int
        Horizon (default 30).
    dtypes : sequence of str
        Compute dtypes.
    repeats : int, optional
        Best-of repeats (default 3, quick 1).
    backend : {"numpy", "torch"}
        Array backend of the system.
    q, r : float
        ``Q = qI``, ``R = rI``.

    Returns
    -------
    dict
        ``{"benchmark": "riccati", "settings": {...}, "results": [row, ...]}`` with one row
        per (n, dtype): seconds for each method and the ratios.
    """
    ns = tuple(ns) if ns is not None else (QUICK_NS if quick else DEFAULT_NS)
    repeats = repeats if repeats is not None else (1 if quick else 3)
    rows = [_measure(n, T, dtype, backend, q, r, repeats) for n in ns for dtype in dtypes]
    return {
        "benchmark": "riccati",
        "settings": {"T": T, "ns": list(ns), "dtypes": list(dtypes), "repeats": repeats,
                     "backend": backend, "q": q, "r": r, "quick": quick,
                     "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                     "machine": platform.machine(), "processor": platform.processor(),
                     "python": sys.version.split()[0], "numpy": np.__version__},
        "results": rows,
    }


def format_table(result: dict) -> str:
    """A plain-text table of :func:`run`'s rows."""
    head = (f"{'n':>5} {'dtype':>8} {'lqr [s]':>9} {'4·T GEMM [s]':>13} {'inverse [s]':>12} "
            f"{'lqr/GEMM':>9} {'inv/lqr':>8} {'target':>7}")
    lines = [head, "-" * len(head)]
    for row in result["results"]:
        target = {True: "met", False: "MISSED", None: "-"}[row["target_met"]]
        lines.append(f"{row['n']:>5} {row['dtype']:>8} {row['lqr_s']:>9.4f} {row['gemm_bound_s']:>13.4f} "
                     f"{row['explicit_inverse_s']:>12.4f} {row['lqr_over_gemm_bound']:>9.2f} "
                     f"{row['inverse_over_lqr']:>8.2f} {target:>7}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: print the JSON, then the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ns", type=lambda s: [int(v) for v in s.split(",")], default=None)
    parser.add_argument("--dtypes", type=lambda s: s.split(","), default=["float64", "float32"])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--T", type=int, default=30)
    parser.add_argument("--backend", choices=["numpy", "torch"], default="numpy")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, ns=args.ns, T=args.T, dtypes=args.dtypes,
                 repeats=args.repeats, backend=args.backend)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
