"""Benchmark: transition norms of the tracking-error bound (ltv_control.bounds).

``transition_norms`` needs ``T(T+1)/2`` weighted spectral norms ``‖Φ(k,i)‖_{P_i→P_k}``.  It
propagates whitened factors (one n×n×n product per pair) and takes each norm from a partial
symmetric eigensolve of a Gram matrix.  The baseline, timed in the same run, is the
straightforward method: for every pair form ``Φ(k,i)`` from scratch (``k − i`` products), whiten it
with explicit inverses of the Cholesky factors and take a full SVD.  Both must agree to 1e-9.

    python benchmarks/bounds.py [--quick] [--sizes 64,256,576] [--horizon 30]

Prints a table and a JSON object; ``run(**options) -> dict`` for the suite runner.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _closed_loop(n: int, T: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 0.95 * (np.eye(n) + 0.3 * rng.standard_normal((T, n, n)) / np.sqrt(n))


def _naive_transition_norms(A: np.ndarray, P: np.ndarray) -> np.ndarray:
    T = A.shape[0]
    C = np.linalg.cholesky(P)
    Cinv = np.linalg.inv(C)
    G = np.eye(T + 1)
    for k in range(T + 1):
        for i in range(k):
            Phi = np.eye(A.shape[1])
            for j in range(i, k):
                Phi = A[j] @ Phi
            G[k, i] = np.linalg.norm(C[k].T @ Phi @ Cinv[i].T, 2)
    return G


def run(quick: bool = False, sizes: tuple[int, ...] | None = None, horizon: int = 30) -> dict:
    """Time ``transition_norms`` against the from-scratch baseline for each state dimension.

    Parameters
    ----------
    quick : bool, default False
        Sizes (64, 128) instead of (64, 256, 576).
    sizes : tuple of int, optional
        State dimensions to time (overrides ``quick``).
    horizon : int, default 30

    Returns
    -------
    dict
        ``{"horizon": T, "cases": [{"n", "seconds", "baseline_seconds", "speedup",
        "bound_seconds", "max_relative_error"}, ...]}``.
    """
    from ltv_control import bounds

    if sizes is None:
        sizes = (64, 128) if quick else (64, 256, 576)
    cases = []
    for n in sizes:
        A = _closed_loop(n, horizon)
        P = bounds.lyapunov_weights(A)
        t0 = time.perf_counter()
        G = bounds.transition_norms(A, P)
        t1 = time.perf_counter()
        G_ref = _naive_transition_norms(A, P)
        t2 = time.perf_counter()
        bounds.tracking_error_bound(A, 1.0, np.ones(n) * 1e-3, P=P)
        t3 = time.perf_counter()
        mask = G_ref > 0
        err = float(np.max(np.abs(G[mask] - G_ref[mask]) / G_ref[mask]))
        cases.append({
            "n": n,
            "seconds": t1 - t0,
            "baseline_seconds": t2 - t1,
            "speedup": (t2 - t1) / (t1 - t0),
            "bound_seconds": t3 - t2,
            "max_relative_error": err,
        })
    return {"horizon": horizon, "cases": cases}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: print a table and the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=lambda s: tuple(int(v) for v in s.split(",")), default=None)
    parser.add_argument("--horizon", type=int, default=30)
    args = parser.parse_args(argv)
    result = run(quick=args.quick, sizes=args.sizes, horizon=args.horizon)
    print(f"{'n':>6} {'T':>4} {'recurrence s':>13} {'baseline s':>11} {'speedup':>8} {'bound s':>8} {'rel.err':>9}")
    for c in result["cases"]:
        print(f"{c['n']:>6} {result['horizon']:>4} {c['seconds']:>13.3f} {c['baseline_seconds']:>11.3f} "
              f"{c['speedup']:>8.2f} {c['bound_seconds']:>8.3f} {c['max_relative_error']:>9.1e}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
