"""The evaluation's steps: fitting the methods once, the λ plan, and the β figure's data.

The β profiles must be measured with each method's own steerer attached: a steered profile
equal to the unsteered one means the measurement ignored the hooks (the bug of issue 11).
"""

from __future__ import annotations

import numpy as np
import pytest

from ltv_control.app.datasets import load_sentiment_task
from ltv_control.app.experiment import ExperimentSettings, sweep_plan
from ltv_control.app.generation import Decoding

ALL = ("unsteered", "actadd", "pid", "alqr", "alqr_plus", "constrained")


def _settings(**changes) -> ExperimentSettings:
    base = dict(n_fit=8, n_eval=4, n_jacobian=1, max_jacobian_tokens=6,
                decoding=Decoding(max_new_tokens=4),
                sweep={"actadd": [1.0, 2.0], "pid": [1.0], "alqr": [0.5, 1.0],
                       "alqr_plus": [1.0], "constrained": [1.0]},
                constrained={"rank": 4}, actadd_coeff=2.0)
    return ExperimentSettings(**{**base, **changes})


def test_sweep_plan_holds_every_default_once():
    settings = _settings(lam=2.0)
    plan = sweep_plan(settings, ["unsteered", "actadd", "alqr"])
    assert plan[0] == ("unsteered", None)
    assert plan[1:] == [("actadd", 1.0), ("actadd", 2.0), ("alqr", 0.5), ("alqr", 1.0),
                        ("alqr", 2.0)]


@pytest.fixture(scope="module")
def tiny_fit():
    pytest.importorskip("torch")
    from _tiny_lm import tiny_llama

    from ltv_control.adapters import LLMPlant
    from ltv_control.app.methods import fit_methods

    model, tokenizer = tiny_llama(0)
    plant = LLMPlant(model, tokenizer)
    task = load_sentiment_task().subset(n_fit=8, n_eval=6, n_jacobian=1)
    measured = []  # prompt counts of every last_token_states call during the fit
    original = plant.last_token_states
    plant.last_token_states = lambda prompts, **kw: (measured.append(len(prompts)),
                                                     original(prompts, **kw))[1]
    try:
        fitted = fit_methods(plant, task, _settings(methods=ALL), progress=False, log=None)
    finally:
        del plant.last_token_states
    fitted.measured = measured
    return model, plant, task, fitted


def test_fit_methods_shares_one_setpoint_and_one_linearization(tiny_fit):
    model, plant, task, fitted = tiny_fit
    assert fitted.methods == list(ALL)
    assert fitted.measured == [8, 8]  # desired and undesired states, once for all four fits
    # every steerer holds the shared setpoint's numbers (no steerer measured its own)
    reference = plant.setpoint(list(task.desired), list(task.undesired), lam=1.0)
    assert np.allclose(fitted.setpoint.e, reference.e, atol=1e-6)
    assert np.allclose(fitted.steerers["alqr"].v.double().numpy(), fitted.setpoint.v, atol=1e-6)
    assert np.allclose(fitted.steerers["pid"].beta_star.double().numpy(),
                       fitted.setpoint.beta_star, atol=1e-5)
    assert np.allclose(fitted.steerers["actadd"].e.double().numpy(), fitted.setpoint.e,
                       atol=1e-6)
    assert set(fitted.steerers) == {"alqr", "actadd", "pid", "constrained"}
    assert fitted.system.A.shape == (plant.horizon, plant.state_dim, plant.state_dim)
    assert fitted.actadd_layers == [plant.horizon // 3]
    assert fitted.steering(model, "unsteered", None) is None
    # the default alqr_form "auto" probes the blocks once and says what it chose (a tiny
    # random Llama answers the paper law's small input almost linearly: the paper form)
    choice = fitted.steerers["alqr"].form_choice
    assert choice.form == fitted.steerers["alqr"].form == "paper"
    assert fitted.notes == [choice.describe()]


def test_steered_beta_profiles_differ_from_the_unsteered_one(tiny_fit):
    from ltv_control.app.profiles import beta_profiles

    model, plant, task, fitted = tiny_fit
    setpoint = fitted.setpoint
    steerings = {m: fitted.steering(model, m, None if m == "unsteered" else 4.0)
                 for m in fitted.methods}
    profiles = beta_profiles(plant, list(task.eval_prompts), setpoint.v, setpoint.beta_star,
                             steerings)
    assert list(profiles) == ["target", *ALL]
    base = np.array(profiles["unsteered"])
    assert np.allclose(profiles["target"], setpoint.beta_star)
    for method in ALL[1:]:
        steered = np.array(profiles[method])
        assert steered.shape == base.shape
        # the first block's input is upstream of every steered output: unchanged
        assert steered[0] == pytest.approx(base[0], abs=1e-5)
        assert np.max(np.abs(steered - base)) > 1e-4, f"{method}: steering was not measured"
    # unsteered measurement again: the same (no hooks left behind by the steered runs)
    again = beta_profiles(plant, list(task.eval_prompts), setpoint.v, setpoint.beta_star,
                          {"unsteered": None})["unsteered"]
    assert np.allclose(again, base, atol=1e-6)


@pytest.mark.slow
def test_alqr_moves_the_last_layer_toward_its_target_on_the_embedded_model(embedded_plant):
    """β_k = v_kᵀz_k at the last block input: steered much closer to β*_k than unsteered."""
    from ltv_control.app.methods import fit_methods
    from ltv_control.app.profiles import beta_profiles

    plant = embedded_plant
    task = load_sentiment_task().subset(n_fit=32, n_eval=8, n_jacobian=1)
    settings = ExperimentSettings(methods=("unsteered", "alqr"), n_fit=32, n_eval=8,
                                  n_jacobian=1, max_jacobian_tokens=10)
    fitted = fit_methods(plant, task, settings, progress=False, log=None)
    profiles = beta_profiles(plant, list(task.eval_prompts), fitted.setpoint.v,
                             fitted.setpoint.beta_star,
                             {m: fitted.steering(plant.model, m, 1.0 if m != "unsteered" else None)
                              for m in ("unsteered", "alqr")})
    target, base, steered = (np.array(profiles[k]) for k in ("target", "unsteered", "alqr"))
    last = plant.horizon - 1
    assert abs(steered[last] - target[last]) < 0.5 * abs(base[last] - target[last])
    assert steered[last] > base[last]  # moved in the direction of the target
    assert np.mean(np.abs(steered - target)) < np.mean(np.abs(base - target))
