"""Streamed A-LQR fitting (one layer's Jacobian at a time) against the dense ALQRSteerer.fit."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ltv_control as lc  # noqa: E402
from ltv_control.app.datasets import load_sentiment_task  # noqa: E402

from _tiny_lm import tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny_plant():
    from ltv_control.adapters import LLMPlant

    torch.set_num_threads(1)
    model, tok = tiny_llama(3, layers=4, hidden=32)
    return LLMPlant(model, tok)


@pytest.fixture(scope="module")
def prompts():
    task = load_sentiment_task()
    return list(task.desired[:6]), list(task.undesired[:6]), list(task.jacobian_prompts[:5])


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_streamed_w_equals_dense_float64(tiny_plant, prompts):
    """float64 w_k = K_k v_k: streamed Jacobians + streamed Riccati vs linearize + finite_horizon_lqr."""
    from ltv_control.setpoint import feedback_directions
    from ltv_control.streaming import streamed_feedback

    _, _, jac = prompts
    T, n = tiny_plant.horizon, tiny_plant.state_dim
    V = np.random.default_rng(0).standard_normal((T, n))
    system = tiny_plant.linearize(jac, progress=False)
    K, _ = lc.finite_horizon_lqr(system, 0.1, 1.0, Qf=0.1)
    w_dense = np.asarray(feedback_directions(K, torch.as_tensor(V)))
    stream = tiny_plant.iter_jacobians(jac, layers=reversed(range(T)), progress=False)
    w_stream = streamed_feedback(stream, V, 0.1, 1.0, Qf=0.1, horizon=T).w
    assert w_stream.dtype == torch.float64
    assert _rel(w_stream.numpy(), w_dense) < 1e-6


@pytest.mark.parametrize("layers", [None, [0, 2]])
def test_fit_alqr_streamed_equals_dense_fit(tiny_plant, prompts, layers):
    from ltv_control.adapters.alqr import ALQRSteerer
    from ltv_control.adapters.streamed_fit import fit_alqr_streamed

    desired, undesired, jac = prompts
    opts = dict(q=0.2, r=0.7, qf=0.3, lam=1.5, jacobian_prompts=jac, layers=layers, progress=False)
    dense = ALQRSteerer.fit(tiny_plant, desired, undesired, **opts)
    streamed = fit_alqr_streamed(tiny_plant, desired, undesired, **opts)
    assert isinstance(streamed, ALQRSteerer)
    assert float(dense.w.norm()) > 0
    assert _rel(streamed.w, dense.w) < 1e-6
    for name in ("v", "e_norm", "beta_star"):
        np.testing.assert_allclose(getattr(streamed, name), getattr(dense, name), rtol=1e-6, atol=1e-7)
    assert streamed.layers == dense.layers
    assert (streamed.q, streamed.r, streamed.qf, streamed.lam) == (0.2, 0.7, 0.3, 1.5)
    if layers is not None:
        assert float(streamed.w[[1, 3]].abs().max()) == 0.0


def test_fit_alqr_streamed_float32_close_and_steers(tiny_plant, prompts):
    from ltv_control.adapters.streamed_fit import fit_alqr_streamed

    desired, undesired, jac = prompts
    s64 = fit_alqr_streamed(tiny_plant, desired, undesired, jacobian_prompts=jac, progress=False)
    s32 = fit_alqr_streamed(tiny_plant, desired, undesired, jacobian_prompts=jac, progress=False, dtype="float32")
    assert _rel(s32.w, s64.w) < 1e-4
    # the steerer it builds is usable: attaching changes the last-token logits
    ids = tiny_plant.tokenizer(desired[0], return_tensors="pt")["input_ids"]
    model = tiny_plant.model
    with torch.no_grad():
        plain = model(ids).logits[0, -1]
        with s64.attach(model, lam=5.0):
            steered = model(ids).logits[0, -1]
    assert float((steered - plain).abs().max()) > 1e-6


def test_fit_alqr_streamed_rejects_bad_arguments(tiny_plant, prompts):
    from ltv_control.adapters.streamed_fit import fit_alqr_streamed

    desired, undesired, _ = prompts
    with pytest.raises(lc.ArgumentError, match="bogus"):
        fit_alqr_streamed(tiny_plant, desired, undesired, bogus=1)
    with pytest.raises(lc.PropertyError, match="r"):
        fit_alqr_streamed(tiny_plant, desired, undesired, r=0.0, progress=False)
    with pytest.raises(lc.ArgumentError, match="shard"):
        fit_alqr_streamed(tiny_plant, desired, undesired, shard="rows", progress=False)
