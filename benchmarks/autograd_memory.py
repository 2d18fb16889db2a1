"""Autograd memory of the Riccati recursion: saved tensors against the forward's result.

For ``finite_horizon_lqr`` on a torch float64 system (B = I, Q = qI, R = rI — the
activation-steering plant; default T = 30, n = 576) with ``A`` requiring grad, this measures

``forward_result_bytes``
    bytes of the result ``K (T, n, n)`` and ``S (T+1, n, n)``;
``saved_bytes``
    bytes of the tensors autograd saves for the backward pass, counted with
    ``torch.autograd.graph.saved_tensors_hooks`` once per distinct storage (views of the
    same storage — e.g. the slices ``A[k]`` of the input — are counted once); the input
    ``A`` itself is reported separately as ``saved_input_bytes``;
``saved_bytes_naive``
    the same, counting every saved tensor's own size (views included);
``ratio``
    ``saved_bytes / forward_result_bytes``;

plus the forward and backward wall times (``L = Σ K`` + ``Σ S[0]`` as the loss).

Usage::

    python benchmarks/autograd_memory.py [--n 576] [--horizon 30] [--out FILE]

Prints a JSON object and a small table; ``--out`` writes the JSON atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import ltv_control as lc
from ltv_control.atomic import atomic_write_text


def measure(n: int, horizon: int, seed: int = 0) -> dict:
    """Saved-tensor bytes and timings of one forward/backward pass (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.eye(n, dtype=torch.float64) + 0.5 / n ** 0.5 * torch.randn(
        horizon, n, n, generator=gen, dtype=torch.float64)
    A.requires_grad_()
    storages: dict = {}
    naive = [0]
    input_ptr = A.untyped_storage().data_ptr()

    def pack(t: torch.Tensor) -> torch.Tensor:
        naive[0] += t.numel() * t.element_size()
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        K, S = lc.finite_horizon_lqr(lc.LTVSystem(A), 0.1, 1.0)
    t_fwd = time.perf_counter() - t0
    result = K.numel() * K.element_size() + S.numel() * S.element_size()
    saved_input = storages.pop(input_ptr, 0)
    saved = sum(storages.values())
    t0 = time.perf_counter()
    (K.sum() + S[0].sum()).backward()
    t_bwd = time.perf_counter() - t0
    return {"n": n, "horizon": horizon, "dtype": "float64",
            "forward_result_bytes": result, "saved_bytes": saved,
            "saved_input_bytes": saved_input, "saved_bytes_naive": naive[0],
            "ratio": saved / result, "ratio_naive": naive[0] / result,
            "forward_s": t_fwd, "backward_s": t_bwd,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=576)
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    res = measure(args.n, args.horizon)
    text = json.dumps(res, indent=2)
    print(text)
    mib = 2.0 ** 20
    print("\n| T | n | forward result | saved (distinct) | ratio | saved (naive) | fwd s | bwd s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {res['horizon']} | {res['n']} | {res['forward_result_bytes'] / mib:.0f} MiB | "
          f"{res['saved_bytes'] / mib:.0f} MiB | {res['ratio']:.2f}x | "
          f"{res['saved_bytes_naive'] / mib:.0f} MiB | {res['forward_s']:.1f} | "
          f"{res['backward_s']:.1f} |")
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
