"""Tests of the tracking-error bound experiment on a language model (tiny random Llama, in-process).

Oracles: with zero gains the closed loop is the open loop (LLMPlant.last_token_states); at the first
block the closed-loop state differs from the open-loop one by exactly u_0 = −K_0 (z_0 − z̄_0); replaying
the recorded inputs open loop reproduces the closed-loop trajectory (so z_{k+1} = φ_k(z_k) + u_k with
u_k = −K_k (z_k − z̄_k) at every block).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import ltv_control as lc  # noqa: E402
from ltv_control.adapters.bound_experiment import (  # noqa: E402
    _run_controlled,
    closed_loop_states,
    llm_bound_experiment,
)

PROMPTS = [
    "I went to the store yesterday and",
    "The weather this week has been",
    "My neighbor told me that the",
    "The movie we saw last night was",
    "Our trip to the coast was",
    "The food at the new place is",
    "I think the book is",
    "The service today was",
    "The weather this week has been very",
    "My neighbor told me",
]


@pytest.fixture(scope="module")
def tiny_plant():
    from _tiny_lm import tiny_llama

    from ltv_control.adapters import LLMPlant

    torch.set_num_threads(1)
    model, tok = tiny_llama(3, layers=3, hidden=24)
    return LLMPlant(model, tok)


@pytest.fixture(scope="module")
def experiment(tiny_plant, tmp_path_factory):
    out = tmp_path_factory.mktemp("bound") / "bound.png"
    return llm_bound_experiment(tiny_plant, PROMPTS[0], PROMPTS[1:6], PROMPTS[6:] + [PROMPTS[0]],
                                q=10.0, r=1.0, figure=out, progress=False)


def test_zero_gains_reproduce_the_open_loop(tiny_plant):
    T, n = tiny_plant.horizon, tiny_plant.state_dim
    nominal = tiny_plant.last_token_states([PROMPTS[0]])[0]
    Z = closed_loop_states(tiny_plant, PROMPTS[1:5], nominal, np.zeros((T, n, n)), max_tokens=None)
    open_loop = tiny_plant.last_token_states(PROMPTS[1:5]).double().numpy()
    np.testing.assert_allclose(Z, open_loop, rtol=1e-5, atol=1e-5 * np.abs(open_loop).max())


def test_hooks_apply_the_tracking_law(tiny_plant, rng):
    T, n = tiny_plant.horizon, tiny_plant.state_dim
    nominal = tiny_plant.last_token_states([PROMPTS[0]], max_tokens=24)[0].double().numpy()
    K = 0.5 * np.eye(n) + 0.05 * rng.standard_normal((T, n, n))
    Z, U = _run_controlled(tiny_plant, PROMPTS[1:5], nominal, K, None, max_tokens=24, batch_size=3, name="p")
    # the inputs applied are -K_k (z_k - z̄_k) of the realised states
    np.testing.assert_allclose(U, -np.einsum("kij,pkj->pki", K, Z[:, :-1] - nominal[:-1]), rtol=1e-4,
                               atol=1e-5 * np.abs(U).max())
    # at block 0 the input z_0 is not affected by control: z_1 = φ_0(z_0) + u_0 exactly
    open_loop = tiny_plant.last_token_states(PROMPTS[1:5], max_tokens=24).double().numpy()
    np.testing.assert_allclose(Z[:, 0], open_loop[:, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(Z[:, 1] - open_loop[:, 1], U[:, 0], rtol=1e-4, atol=1e-5 * np.abs(U).max())
    # replaying the recorded inputs open loop gives the same trajectory
    Z2, _ = _run_controlled(tiny_plant, PROMPTS[1:5], None, None, U, max_tokens=24, batch_size=4, name="p")
    np.testing.assert_allclose(Z2, Z, rtol=1e-4, atol=1e-5 * np.abs(Z).max())
    # batch size does not matter (left padding, position ids)
    Z3 = closed_loop_states(tiny_plant, PROMPTS[1:5], nominal, K, batch_size=1)
    np.testing.assert_allclose(Z3, Z, rtol=1e-4, atol=1e-5 * np.abs(Z).max())


def test_experiment_result(experiment, tiny_plant):
    T = tiny_plant.horizon
    res = experiment
    assert 0.0 <= res.coverage <= 1.0
    assert res.n_steps == 5 * T and res.violations == round((1 - res.coverage) * res.n_steps)
    assert res.L.shape == (T,) and np.all(res.L >= 0)
    assert res.bound.shape == res.realised.shape == (5, T + 1)
    # the nominal prompt, held out, tracks itself exactly: zero deviation at every step
    np.testing.assert_allclose(res.deviations_heldout[-1], 0.0, atol=1e-5 * np.abs(res.nominal).max())
    # tracking pulls the other prompts towards the nominal trajectory
    closed = np.linalg.norm(res.deviations_heldout[:-1, -1], axis=-1)
    opened = np.linalg.norm(res.open_loop_heldout[:-1, -1], axis=-1)
    assert np.median(closed) < 0.5 * np.median(opened)
    # the closed loop is A - K with K from finite_horizon_lqr (Q = 10 I, R = I) on A
    A = res.A_cl + res.K
    np.testing.assert_allclose(res.K, lc.finite_horizon_lqr(lc.LTVSystem(A), 10.0, 1.0).K, rtol=1e-10, atol=1e-12)
    # calibration: the estimated constants reproduce the calibration ratios' maximum
    from ltv_control import bounds

    ratios = bounds.remainder_constants(res.A_cl, res.P, res.deviations_calib)
    norms = bounds.weighted_norms(res.deviations_calib[:, :-1], res.P[:-1])
    ok = norms > res.settings["min_norm"]
    assert np.allclose(res.L, np.where(ok, ratios, -np.inf).max(axis=0))
    assert res.figure is not None and res.figure.read_bytes()[:4] == b"\x89PNG"
    summary = res.to_dict()
    json.dumps(summary)
    assert len(summary["closed_loop_error_median"]) == T + 1
    assert summary["coverage"] == res.coverage


def test_experiment_with_precomputed_system_and_a_priori(tiny_plant, experiment):
    T, n = tiny_plant.horizon, tiny_plant.state_dim
    system = lc.LTVSystem(experiment.A_cl + experiment.K)  # the linearization the first run computed
    res = llm_bound_experiment(tiny_plant, PROMPTS[0], PROMPTS[1:4], PROMPTS[4:7], system=system, q=10.0,
                               mode="a_priori", safety=2.0, progress=False)
    np.testing.assert_allclose(res.A_cl, experiment.A_cl, rtol=1e-12, atol=1e-12)
    assert res.mode == "a_priori" and res.figure is None
    assert res.bound.shape == (3, T + 1) and not np.any(np.isnan(res.bound))  # finite or inf, never NaN
    # a priori from each held-out δz_0 alone
    from ltv_control import bounds

    direct = bounds.tracking_error_bound(res.A_cl, res.L, res.deviations_heldout[:, 0], P=res.P).bound
    np.testing.assert_allclose(res.bound, direct, rtol=1e-12)
    assert n == res.P.shape[-1]


def test_bad_inputs(tiny_plant):
    T, n = tiny_plant.horizon, tiny_plant.state_dim
    with pytest.raises(lc.DimensionError, match="calibration_prompts"):
        llm_bound_experiment(tiny_plant, PROMPTS[0], [], PROMPTS[1:3])
    with pytest.raises(lc.ArgumentError, match="heldout_prompts"):
        llm_bound_experiment(tiny_plant, PROMPTS[0], PROMPTS[1:3], [1, 2])
    with pytest.raises(lc.ArgumentError, match="bogus"):
        llm_bound_experiment(tiny_plant, PROMPTS[0], PROMPTS[1:3], PROMPTS[3:5], bogus=1)
    with pytest.raises(lc.PropertyError, match="r"):
        llm_bound_experiment(tiny_plant, PROMPTS[0], PROMPTS[1:3], PROMPTS[3:5], r=0.0)
    with pytest.raises(lc.DimensionError, match="system"):
        llm_bound_experiment(tiny_plant, PROMPTS[0], PROMPTS[1:3], PROMPTS[3:5],
                             system=lc.LTVSystem(np.zeros((T, n + 1, n + 1))))
    with pytest.raises(lc.DimensionError, match="K"):
        closed_loop_states(tiny_plant, PROMPTS[:2], np.zeros((T + 1, n)), np.zeros((T, n, n + 1)))
    with pytest.raises(lc.DimensionError, match="nominal"):
        closed_loop_states(tiny_plant, PROMPTS[:2], np.zeros((T, n)), np.zeros((T, n, n)))


def test_hooks_are_removed_when_the_forward_pass_raises(tiny_plant):
    T, n = tiny_plant.horizon, tiny_plant.state_dim
    last = tiny_plant.layers[-1]

    def boom(module, args, output):
        raise RuntimeError("boom")

    handle = last.register_forward_hook(boom)
    before = [(len(b._forward_hooks), len(b._forward_pre_hooks)) for b in tiny_plant.layers]
    try:
        with pytest.raises(RuntimeError, match="boom"):
            closed_loop_states(tiny_plant, PROMPTS[:2], np.zeros((T + 1, n)), np.zeros((T, n, n)))
    finally:
        handle.remove()
    after = [(len(b._forward_hooks), len(b._forward_pre_hooks)) for b in tiny_plant.layers]
    assert before[:-1] == after[:-1] and after[-1] == (before[-1][0] - 1, before[-1][1])
    assert all(len(b._forward_hooks) == 0 and len(b._forward_pre_hooks) == 0 for b in tiny_plant.layers)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*cached replay unavailable")
def test_embedded_model_tracking_and_coverage(embedded_model, tmp_path):
    """SmolLM2 (its first 6 blocks as the plant, to keep the 576-wide bound cheap): LQR tracking of
    one prompt's trajectory shrinks the other prompts' deviations; the pipeline runs end to end."""
    from ltv_control.adapters import LLMPlant

    model, tok = embedded_model
    plant = LLMPlant(model, tok, layers=list(model.model.layers[:6]))
    res = llm_bound_experiment(plant, PROMPTS[0], PROMPTS[1:3], PROMPTS[3:5] + [PROMPTS[0]],
                               q=1.0, r=1.0, jacobian_prompts=[PROMPTS[0]], max_tokens=12,
                               figure=tmp_path / "smol.png", progress=False)
    T = plant.horizon
    assert T == 6 and res.n_steps == 3 * T and 0.0 <= res.coverage <= 1.0
    assert res.nominal.shape == (T + 1, plant.state_dim)
    np.testing.assert_allclose(res.deviations_heldout[-1], 0.0, atol=1e-4 * np.abs(res.nominal).max())
    closed = np.linalg.norm(res.deviations_heldout[:-1, -1], axis=-1)
    opened = np.linalg.norm(res.open_loop_heldout[:-1, -1], axis=-1)
    assert np.all(closed < 0.5 * opened)
    assert np.all(np.isfinite(res.L)) and res.figure.stat().st_size > 1000
