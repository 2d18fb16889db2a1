"""Benchmark: the constrained variant (ltv_control.constrained, ConstrainedSteerer).

Part 1, synthetic projected plant (T=30, r=32, rank-one feature weights, per-step norm budgets,
the shape of the steering QP):

* compile time of the cvxpy problem (first solve) and re-solve latency (median over new
  initial states) for cvxpy+Clarabel (baseline) and the Riccati-factored ADMM fast path,
  their ratio, and their agreement (max |Δu| relative, cost relative);
* a batch of initial states: the loop over the compiled problem against one stacked cvxpy
  problem with a copy per member (compile and re-solve).  Measured (2 loaded cores, batch 4):
  the stacked problem compiles in ~10x the time of the single one and must be recompiled for
  every batch size, its memory grows with copies x parameters, and its re-solve time was within
  a factor of two of the loop's, either way (0.4x to 1.8x over four runs); hence the loop.

Part 2, the embedded SmolLM2 (skipped with ``llm=False``):

* tokens/s of greedy generation unsteered (baseline), with A-LQR and with the constrained
  steerer (ADMM);
* the feature score ``v_Tᵀz_T`` (last block's output, last token) on evaluation prompts at equal
  mean total input energy ``Σ_k‖u_k‖²``: the constrained steerer at ``lam`` (with and without the
  LFS feedback correction), then A-LQR with its ``lam`` bisected until its mean energy matches
  the constrained steerer's; A-LQR at the same ``lam`` is reported too.  Every applied input of
  the constrained steerer is checked against its budget ``ρ_k``.

    python benchmarks/constrained.py [--quick] [--no-llm]

Prints a table and a JSON object; ``run(**options) -> dict`` for the suite runner.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np


# --------------------------------------------------------------------------- part 1
def _steering_like_problem(T: int, r: int, seed: int = 0):
    import ltv_control as lc

    rng = np.random.default_rng(seed)
    A = np.eye(r) + 0.3 * rng.standard_normal((T, r, r)) / np.sqrt(r)
    v = rng.standard_normal((T + 1, r))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    Q = np.einsum("ki,kj->kij", v[:T], v[:T])
    Qf = np.outer(v[T], v[T])
    return lc.LTVSystem(A), Q, Qf, 5.0 * v, rng


def _stacked_cvxpy(system, Q, Qf, budget, copies, xref):
    """One cvxpy problem holding ``copies`` independent members (the alternative to the loop)."""
    import cvxpy as cp

    from ltv_control.constrained import _psd_factor

    A = np.asarray(system.A)
    T, n = A.shape[0], A.shape[1]
    x0 = cp.Parameter((copies, n))
    terms, cons = [], []
    for b in range(copies):
        x = cp.Variable((T + 1, n))
        u = cp.Variable((T, n))
        cons.append(x[0] == x0[b])
        for k in range(T):
            cons += [x[k + 1] == A[k] @ x[k] + u[k], cp.norm(u[k], 2) <= budget]
            terms += [cp.sum_squares(_psd_factor(Q[k]) @ (x[k] - xref[k])), cp.sum_squares(u[k])]
        terms.append(cp.sum_squares(_psd_factor(Qf) @ (x[T] - xref[T])))
    return cp.Problem(cp.Minimize(cp.sum(terms)), cons), x0


def solver_figures(*, horizon: int = 30, rank: int = 32, solves: int = 40, budget: float = 0.5,
                   batch: int = 4) -> dict:
    """Part 1 (see the module docstring)."""
    from ltv_control.constrained import ConstrainedLQR

    system, Q, Qf, x_ref, rng = _steering_like_problem(horizon, rank)
    X0 = rng.standard_normal((solves + 1, rank))
    out: dict[str, Any] = {"horizon": horizon, "rank": rank, "solves": solves, "budget": budget}
    plans = {}
    for method in ("cvxpy", "admm"):
        t0 = time.perf_counter()
        mpc = ConstrainedLQR(system, Q, 1.0, Qf=Qf, u_norm_max=budget, method=method)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        mpc.solve(X0[0], x_ref)
        first = time.perf_counter() - t0
        times, cpu, sols = [], [], []
        for x0 in X0[1:]:
            t0, c0 = time.perf_counter(), time.process_time()
            sols.append(mpc.solve(x0, x_ref))
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        plans[method] = sols
        # process (CPU) time as well: on a shared machine wall time includes waiting for a core
        out[method] = {"build_s": build, "first_solve_s": first, "resolve_median_s": float(np.median(times)),
                       "resolve_p90_s": float(np.percentile(times, 90)),
                       "resolve_median_cpu_s": float(np.median(cpu)), "stats": dict(mpc.stats)}
    out["resolve_speedup_admm_vs_cvxpy"] = out["cvxpy"]["resolve_median_s"] / out["admm"]["resolve_median_s"]
    out["resolve_cpu_speedup_admm_vs_cvxpy"] = (out["cvxpy"]["resolve_median_cpu_s"]
                                                / out["admm"]["resolve_median_cpu_s"])
    out["compile_vs_resolve_cvxpy"] = out["cvxpy"]["first_solve_s"] / out["cvxpy"]["resolve_median_s"]
    out["max_rel_u_diff"] = float(max(np.abs(a.u - b.u).max() / np.abs(a.u).max()
                                      for a, b in zip(plans["cvxpy"], plans["admm"])))
    out["max_rel_cost_diff"] = float(max(abs(a.cost - b.cost) / a.cost
                                         for a, b in zip(plans["cvxpy"], plans["admm"])))
    out["admm_iterations_per_solve"] = out["admm"]["stats"]["admm_iterations"] / (solves + 1)

    # batch: loop over the compiled problem vs one stacked problem
    Xb = rng.standard_normal((batch, rank))
    mpc = ConstrainedLQR(system, Q, 1.0, Qf=Qf, u_norm_max=budget)
    mpc.solve(X0[0], x_ref)
    t0 = time.perf_counter()
    loop = mpc.solve(Xb, x_ref)
    loop_s = time.perf_counter() - t0
    # the reference is a constant here (only x0 is a parameter): the stacked problem's DPP
    # tensors grow with copies x parameters, and memory is the first limit it hits
    problem, x0p = _stacked_cvxpy(system, Q, Qf, budget, batch, x_ref)
    x0p.value = Xb
    t0 = time.perf_counter()
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9)
    stacked_first = time.perf_counter() - t0
    first_value = problem.value
    x0p.value = Xb.copy()
    t0 = time.perf_counter()
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9)
    stacked_resolve = time.perf_counter() - t0
    out["batch"] = {"members": batch, "loop_s": loop_s, "stacked_first_s": stacked_first,
                    "stacked_resolve_s": stacked_resolve,
                    "stacked_vs_loop_resolve": stacked_resolve / loop_s,
                    "cost_agreement": float(abs(problem.value - loop.cost.sum()) / loop.cost.sum()),
                    "first_value_agreement": float(abs(first_value - loop.cost.sum()) / loop.cost.sum())}
    return out


# --------------------------------------------------------------------------- part 2
def _feature_scores(model, tok, plant, steerer, prompts, attach_kw, v_T):
    """Mean terminal feature, mean total energy, worst budget ratio for one attachment."""
    import torch

    from ltv_control.adapters import Law

    record: list = []
    layer_laws = steerer.layer_laws

    class Recording(Law):
        """The steerer's law at layer ``k``, also keeping every input it applies."""

        def __init__(self, law, k):
            self.law, self.k, self.dtype = law, k, law.dtype

        def to(self, device):
            return Recording(self.law.to(device), self.k)

        def __call__(self, z, state):
            u = self.law(z, state)
            if u is not None:
                record.append((self.k, u.detach().double().reshape(-1, u.shape[-1])))
            return u

    steerer.layer_laws = lambda **o: {k: Recording(law, k) for k, law in layer_laws(**o).items()}
    captured = {}

    def grab(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        captured["z"] = hidden[:, -1].detach().double()

    hook = plant.layers[-1].register_forward_hook(grab)
    try:
        enc = tok(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            if steerer is None or attach_kw is None:
                model(**enc)
            else:
                with steerer.attach(model, **attach_kw):
                    model(**enc)
    finally:
        hook.remove()
        steerer.__dict__.pop("layer_laws", None)
    energy = torch.zeros(len(prompts), dtype=torch.float64)
    worst = 0.0
    rho = steerer.budgets(budget=attach_kw.get("budget")) if hasattr(steerer, "budgets") and attach_kw else None
    for k, u in record:
        energy += (u ** 2).sum(-1)
        if rho is not None and rho[k] > 0:
            worst = max(worst, float(u.norm(dim=-1).max()) / rho[k])
    score = captured["z"] @ v_T
    return float(score.mean()), float(energy.mean()), worst


def llm_figures(*, quick: bool = False, new_tokens: int = 32, rank: int = 32) -> dict:
    """Part 2 (see the module docstring)."""
    import torch

    from ltv_control import finite_horizon_lqr
    from ltv_control.adapters import ALQRSteerer, ConstrainedSteerer, LLMPlant, load_embedded_model
    from ltv_control.app.datasets import load_sentiment_task
    from ltv_control.setpoint import feedback_directions, linear_feature_setpoint

    task = load_sentiment_task()
    n_fit = 8 if quick else 32
    desired, undesired = task.desired[:n_fit], task.undesired[:n_fit]
    evals = task.eval_prompts[: (6 if quick else 16)]
    model, tok = load_embedded_model(dtype=torch.float32, device="cpu")
    model.eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    plant = LLMPlant(model, tok)
    T, n = plant.horizon, plant.state_dim
    t0 = time.perf_counter()
    system = plant.linearize(task.jacobian_prompts[: (2 if quick else 8)], max_tokens=16,
                             progress=False)
    linearize_s = time.perf_counter() - t0
    # A-LQR on the same linearisation (as ALQRSteerer.fit computes it)
    zd = plant.last_token_states(desired)[:, :T].double().numpy()
    zu = plant.last_token_states(undesired)[:, :T].double().numpy()
    sp = linear_feature_setpoint(zd, zu, lam=1.0)
    K, _ = finite_horizon_lqr(system, 0.1, 1.0, Qf=0.1)
    w = feedback_directions(np.asarray(K), sp.v)
    alqr = ALQRSteerer({"w": w, "v": sp.v, "e_norm": sp.e_norm, "beta_star": sp.beta_star},
                       hidden_size=n, num_layers=T,
                       hyperparameters={"q": 0.1, "r": 1.0, "qf": 0.1, "lam": 1.0},
                       layer_path=plant.layer_path, model_id=plant.model_id)
    del K
    t0 = time.perf_counter()
    cons = ConstrainedSteerer.fit(plant, desired, undesired, rank=rank, budget=0.1, q=0.0, qf=1.0,
                                  r=1e-2, system=system, progress=False)
    fit_s = time.perf_counter() - t0
    v_T = cons.v_all[T].double()

    # feature score at equal energy: the constrained steerer at (lam, its budget), with and
    # without the LFS feedback correction; A-LQR with its lam bisected to the same mean energy
    lam = 4.0
    free_score, _, _ = _feature_scores(model, tok, plant, cons, evals, None, v_T)
    cons_score, cons_energy, worst = _feature_scores(model, tok, plant, cons, evals,
                                                     {"lam": lam}, v_T)
    fb_score, fb_energy, fb_worst = _feature_scores(model, tok, plant, cons, evals,
                                                    {"lam": lam, "feedback": True}, v_T)
    worst = max(worst, fb_worst)

    def alqr_at(lam_a):
        from ltv_control.adapters.laws import RecordedLaw

        store: dict = {}
        layer_laws = alqr.layer_laws
        # record every layer's input (RecordedLaw takes the generic path, not the in-place one)
        alqr.layer_laws = lambda **o: {k: RecordedLaw(law, k, store) for k, law in layer_laws(**o).items()}
        captured = {}
        hook = plant.layers[-1].register_forward_hook(
            lambda m, a, o: captured.__setitem__("z", (o[0] if isinstance(o, tuple) else o)[:, -1].detach().double()))
        try:
            with torch.no_grad(), alqr.attach(model, lam=lam_a):
                model(**tok(evals, return_tensors="pt", padding=True))
        finally:
            hook.remove()
            alqr.__dict__.pop("layer_laws", None)
        record_alqr = [u.double() for key, u in store.items() if key[0] == "u"]
        energy = float(sum((u ** 2).sum(-1) for u in record_alqr).mean())
        return float((captured["z"] @ v_T).mean()), energy

    alqr_full_score, alqr_full_energy = alqr_at(lam)
    lo, hi = 0.0, lam
    alqr_lam, alqr_score, alqr_energy = lam, alqr_full_score, alqr_full_energy
    for _ in range(6 if quick else 10):
        mid = 0.5 * (lo + hi)
        score, energy = alqr_at(mid)
        alqr_lam, alqr_score, alqr_energy = mid, score, energy
        if energy > cons_energy:
            hi = mid
        else:
            lo = mid
    budget = cons.budget

    # tokens/s
    prompt = tok([evals[0]], return_tensors="pt")
    rates = {}
    for name, ctx in (("unsteered", None), ("alqr", (alqr, {"lam": lam})),
                      ("constrained", (cons, {"lam": lam, "budget": budget}))):
        runs = []
        for _ in range(1 if quick else 3):
            t0 = time.perf_counter()
            with torch.no_grad():
                if ctx is None:
                    out = model.generate(**prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         do_sample=False, pad_token_id=tok.pad_token_id)
                else:
                    with ctx[0].attach(model, **ctx[1]):
                        out = model.generate(**prompt, max_new_tokens=new_tokens,
                                             min_new_tokens=new_tokens, do_sample=False,
                                             pad_token_id=tok.pad_token_id)
            runs.append((out.shape[1] - prompt["input_ids"].shape[1]) / (time.perf_counter() - t0))
        rates[name] = float(np.median(runs))
    return {
        "model": plant.model_id, "T": T, "n": n, "rank": rank, "linearize_s": linearize_s,
        "constrained_fit_s": fit_s, "lam": lam,
        "feature_score": {"unsteered": free_score, "alqr_equal_energy": alqr_score,
                          "constrained": cons_score, "constrained_feedback": fb_score,
                          "alqr_at_lam": alqr_full_score},
        "target_beta_T": lam * float(cons.e_norm_all[T]),
        "mean_energy": {"alqr_equal_energy": alqr_energy, "constrained": cons_energy,
                        "constrained_feedback": fb_energy, "alqr_at_lam": alqr_full_energy},
        "alqr_lam_at_equal_energy": alqr_lam, "constrained_budget": budget,
        "worst_input_over_budget": worst, "budgets_respected": worst <= 1 + 1e-5,
        "tokens_per_s": rates,
        "tokens_per_s_ratio": {k: v / rates["unsteered"] for k, v in rates.items()},
    }


# --------------------------------------------------------------------------- entry points
def run(*, quick: bool = False, llm: bool = True, horizon: int = 30, rank: int = 32,
        solves: int | None = None, new_tokens: int | None = None) -> dict:
    """Run both parts; return the figures as a dict (see the module docstring).

    Parameters
    ----------
    quick : bool, default False
        Fewer solves (15), prompts and repeats.
    llm : bool, default True
        Run part 2 on the embedded SmolLM2.
    horizon, rank : int, defaults 30, 32
        Size of the synthetic projected problem.
    solves : int or None
        Re-solves timed per method (``None``: 15 quick, 40 otherwise).
    new_tokens : int or None
        Generated tokens for tokens/s (``None``: 16 quick, 32 otherwise).
    """
    import os
    import platform

    solves = solves or (15 if quick else 40)
    new_tokens = new_tokens or (16 if quick else 32)
    result: dict[str, Any] = {
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "solver": solver_figures(horizon=horizon, rank=rank, solves=solves),
    }
    if llm:
        result["llm"] = llm_figures(quick=quick, new_tokens=new_tokens, rank=rank)
    return result


def _table(result: dict) -> str:
    s = result["solver"]
    rows = [
        ("cvxpy compile (first solve)", f"{s['cvxpy']['first_solve_s'] * 1e3:.0f} ms"),
        ("cvxpy re-solve median", f"{s['cvxpy']['resolve_median_s'] * 1e3:.1f} ms"),
        ("ADMM re-solve median", f"{s['admm']['resolve_median_s'] * 1e3:.1f} ms"),
        ("ADMM speed-up vs cvxpy (re-solve)", f"{s['resolve_speedup_admm_vs_cvxpy']:.1f}x"),
        ("cvxpy / ADMM re-solve median CPU time",
         f"{s['cvxpy']['resolve_median_cpu_s'] * 1e3:.1f} / {s['admm']['resolve_median_cpu_s'] * 1e3:.1f} ms"),
        ("ADMM iterations / solve", f"{s['admm_iterations_per_solve']:.0f}"),
        ("ADMM vs cvxpy max rel |du|, cost", f"{s['max_rel_u_diff']:.1e}, {s['max_rel_cost_diff']:.1e}"),
        (f"batch {s['batch']['members']}: stacked / loop re-solve", f"{s['batch']['stacked_vs_loop_resolve']:.2f}"),
    ]
    if "llm" in result:
        m = result["llm"]
        rows += [
            ("tokens/s ratio alqr / unsteered", f"{m['tokens_per_s_ratio']['alqr']:.2f}"),
            ("tokens/s ratio constrained / unsteered", f"{m['tokens_per_s_ratio']['constrained']:.2f}"),
            ("feature score unsteered / alqr@equal energy / constrained",
             "{unsteered:.1f} / {alqr_equal_energy:.1f} / {constrained:.1f}".format(**m["feature_score"])),
            ("mean energy alqr@equal / constrained",
             f"{m['mean_energy']['alqr_equal_energy']:.3g} / {m['mean_energy']['constrained']:.3g}"),
            ("constrained+feedback: score, energy",
             f"{m['feature_score']['constrained_feedback']:.1f}, "
             f"{m['mean_energy']['constrained_feedback']:.3g}"),
            ("alqr at the same lam: score, energy",
             f"{m['feature_score']['alqr_at_lam']:.1f}, {m['mean_energy']['alqr_at_lam']:.3g}"),
            ("target beta*_T", f"{m['target_beta_T']:.1f}"),
            ("budgets respected", str(m["budgets_respected"])),
        ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-llm", action="store_true", help="skip the embedded-model part")
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args(argv)
    result = run(quick=args.quick, llm=not args.no_llm, horizon=args.horizon, rank=args.rank)
    print(_table(result))
    print(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
