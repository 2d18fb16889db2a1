"""form="auto": the blocks' nonlinearity at the paper law's input decides the A-LQR form.

Oracles: closed forms of the second-difference ratio on synthetic blocks (affine: 0; a
coordinate-wise quadratic: an explicit ratio), and on a real (tiny random) transformer the
first-order prediction error computed with the plant's own Jacobians, which the ratio equals to
leading order in the input size.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ltv_control import ArgumentError  # noqa: E402
from ltv_control.adapters import AffineLaw  # noqa: E402
from ltv_control.adapters.diagnostics import input_nonlinearity  # noqa: E402
from ltv_control.adapters.form_choice import AUTO_TOLERANCE, FormChoice, choose_form  # noqa: E402
from ltv_control.adapters.plant import LocalModel  # noqa: E402


class BlockPlant:
    """A plant whose block ``k`` maps the last-token state by ``blocks[k]`` (batch of states
    ``states[k]``), with the iter_local_models interface of LLMPlant (no Jacobians)."""

    def __init__(self, blocks, states):
        self.blocks, self.states = blocks, states
        self.horizon = len(blocks)
        self.calls: list[dict] = []

    def iter_local_models(self, prompts, *, layers=None, max_tokens=24, batch_size=8,
                          progress=True, jacobians=True):
        self.calls.append({"layers": list(layers), "jacobians": jacobians, "max_tokens": max_tokens})
        for k in layers:
            yield LocalModel(k, list(range(len(prompts))), None, self.states[k], self.blocks[k])


def _states(T: int, B: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, n, generator=g, dtype=torch.float64) for _ in range(T)]


def _law(w, v=None, b=0.0):
    w = torch.as_tensor(w, dtype=torch.float32)
    v = torch.zeros_like(w) if v is None else torch.as_tensor(v, dtype=torch.float32)
    return AffineLaw(U=w, V=v, b=torch.tensor(float(b)))


def test_affine_blocks_have_zero_nonlinearity():
    n, T = 4, 3
    g = torch.Generator().manual_seed(1)
    mats = [torch.randn(n, n, generator=g, dtype=torch.float64) for _ in range(T)]
    plant = BlockPlant([lambda z, M=M: z @ M.T + 1.0 for M in mats], _states(T, 5, n))
    laws = {k: _law(np.full(n, 0.3), v=np.eye(n)[0], b=2.0) for k in range(T)}  # u depends on z
    eta = input_nonlinearity(plant, ["a"] * 5, laws, progress=False)
    np.testing.assert_allclose(eta, 0.0, atol=1e-12)
    assert plant.calls[-1]["jacobians"] is False  # the check never builds a Jacobian


def test_quadratic_block_matches_the_closed_form():
    # φ(z) = z + c z⊙z: φ(z+u) − 2φ(z) + φ(z−u) = 2c u⊙u, φ(z+u) − φ(z−u) = 2u + 4c z⊙u
    n, T, B, c = 5, 2, 4, 0.7
    states = _states(T, B, n, seed=2)
    plant = BlockPlant([lambda z: z + c * z * z] * T, states)
    w = np.linspace(0.1, 0.5, n)
    laws = {0: _law(w, b=1.0), 1: _law(w, b=3.0)}  # V = 0: u = b·w at every state
    eta = input_nonlinearity(plant, ["p"] * B, laws, progress=False)
    for k, b in ((0, 1.0), (1, 3.0)):
        u = torch.as_tensor(b * w, dtype=torch.float32).double()
        z = states[k]
        expected = ((2 * c * u * u).norm() / (2 * u + 4 * c * z * u).norm(dim=-1)).mean()
        assert eta[k] == pytest.approx(float(expected), rel=1e-6)


def test_layers_without_input_are_nan_and_unknown_layers_are_refused():
    n, T = 3, 3
    plant = BlockPlant([lambda z: z * z] * T, _states(T, 2, n))
    eta = input_nonlinearity(plant, ["a", "b"], {1: _law(np.zeros(n), b=1.0)}, progress=False)
    assert np.isnan(eta).all()  # no law at 0 and 2, a zero input at 1
    assert plant.calls[-1]["layers"] == [1]
    for bad in ({5: _law(np.ones(n))}, [_law(np.ones(n))], {"0": _law(np.ones(n))}):
        with pytest.raises(ArgumentError, match="laws"):
            input_nonlinearity(plant, ["a"], bad, progress=False)


def _choice_plant(curvature: float):
    n, T = 4, 4
    return BlockPlant([lambda z: 2 * z + curvature * z ** 3] * T, _states(T, 3, n, seed=4)), n, T


def test_choose_form_keeps_the_paper_form_on_linear_blocks_only():
    laws = lambda n, T: {k: _law(np.full(n, 0.5), b=1.0) for k in range(T)}  # noqa: E731
    plant, n, T = _choice_plant(0.0)
    linear = choose_form(plant, ["p"] * 3, laws(n, T))
    assert isinstance(linear, FormChoice) and linear.form == "paper"
    assert linear.median == pytest.approx(0.0, abs=1e-12) and linear.tolerance == AUTO_TOLERANCE
    plant, n, T = _choice_plant(5.0)
    bent = choose_form(plant, ["p"] * 3, laws(n, T))
    assert bent.form == "relative" and bent.median > AUTO_TOLERANCE
    assert "relative" in bent.describe() and f"{bent.median:.3f}" in bent.describe()
    # the threshold is the only knob: above the measured median the paper form stays
    assert choose_form(plant, ["p"] * 3, laws(n, T), tolerance=bent.median + 1e-9).form == "paper"
    assert choose_form(plant, ["p"] * 3, {0: _law(np.zeros(n))}).form == "paper"  # nothing to check
    for bad in (-0.1, float("nan"), "0.1", True):
        with pytest.raises(ArgumentError, match="tolerance"):
            choose_form(plant, ["p"], laws(n, T), tolerance=bad)


_DESIRED = ["i love this great movie .", "what a wonderful happy day .", "the food was good and nice ."]
_UNDESIRED = ["i hate this awful movie .", "what a terrible sad day .", "the food was bad and cold ."]


def test_ratio_is_the_first_order_error_on_a_transformer_to_leading_order():
    pytest.importorskip("transformers")
    from _tiny_lm import tiny_llama
    from ltv_control.adapters import LLMPlant

    model, tok = tiny_llama(0, layers=3, hidden=32)
    plant = LLMPlant(model, tok)
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(32, generator=g)
    prompts = _DESIRED[:2]
    first_order, laws = {}, {}
    for local in plant.iter_local_models(prompts, progress=False):
        z = local.inputs.double()
        u = 0.02 * z.norm(dim=-1, keepdim=True).mean() * direction.double() / direction.norm()
        actual = local.evaluate((z + u).to(local.inputs.dtype)).double() - local.evaluate(local.inputs).double()
        predicted = u @ local.jacobians.double().transpose(1, 2)
        first_order[local.layer] = float(((actual - predicted).norm(dim=-1) / actual.norm(dim=-1)).mean())
        laws[local.layer] = _law((direction / direction.norm() * float(u.norm())).numpy(), b=1.0)
    eta = input_nonlinearity(plant, prompts, laws, progress=False)
    for k, error in first_order.items():  # equal to leading order in ‖u‖ (2 % of ‖z‖ here)
        assert eta[k] == pytest.approx(error, rel=0.05), (k, eta[k], error)  # measured: 0.5 %
    assert min(first_order.values()) > 1e-4  # the blocks are not affine: the check is not vacuous


def test_fit_auto_picks_by_the_tolerance_and_saves_the_chosen_form(tmp_path):
    pytest.importorskip("transformers")
    from _tiny_lm import tiny_llama
    from ltv_control.adapters import ALQRSteerer, LLMPlant, Steerer

    model, tok = tiny_llama(0, layers=3, hidden=32)
    plant = LLMPlant(model, tok)
    system = plant.linearize(_DESIRED, progress=False)
    fits = {tol: ALQRSteerer.fit(plant, _DESIRED, _UNDESIRED, lam=2.0, form="auto", tolerance=tol,
                                 system=system, progress=False)
            for tol in (float("inf"), 0.0)}
    lax, strict = fits[float("inf")], fits[0.0]
    assert lax.form == "paper" and strict.form == "relative"
    assert lax.form_choice.median == pytest.approx(strict.form_choice.median) and lax.form_choice.median > 0
    paper = ALQRSteerer.from_system(system, plant.setpoint(_DESIRED, _UNDESIRED, lam=2.0))
    relative = ALQRSteerer.from_system(system, plant.setpoint(_DESIRED, _UNDESIRED, lam=2.0),
                                       form="relative")
    assert paper.form_choice is None and relative.form_choice is None
    for chosen, reference in ((lax, paper), (strict, relative)):
        for name in reference.tensor_names:  # the chosen form, exactly
            assert torch.allclose(getattr(chosen, name), getattr(reference, name), rtol=1e-5, atol=1e-7)
        assert chosen.hyperparameters == reference.hyperparameters
        back = Steerer.load(chosen.save(tmp_path / f"{chosen.form}.safetensors"))
        assert back.form == chosen.form and back.form_choice is None
    with pytest.raises(ArgumentError, match="auto.*plant"):
        ALQRSteerer.from_system(system, plant.setpoint(_DESIRED, _UNDESIRED), form="auto")
    with pytest.raises(ArgumentError, match="form"):
        Steerer.load(lax.save(tmp_path / "x.safetensors")).__class__(
            {n: getattr(lax, n) for n in lax.tensor_names}, state_dim=32, horizon=3,
            hyperparameters={"form": "auto"})  # a file never holds "auto"


def test_auto_refuses_bad_tolerance_and_prompts_before_any_forward_pass():
    from ltv_control import DimensionError
    from ltv_control.adapters import ALQRSteerer
    from ltv_control.adapters.form_choice import check_tolerance

    class NoPlant:  # any forward pass would fail on this object
        horizon, state_dim = 3, 4

    for bad in (-1.0, float("nan"), "0.1", None):
        with pytest.raises(ArgumentError, match="tolerance"):
            ALQRSteerer.fit(NoPlant(), ["good"], ["bad"], form="auto", tolerance=bad)
    assert check_tolerance(float("inf")) == float("inf") and check_tolerance(0) == 0.0
    import ltv_control as lc
    from ltv_control.adapters.setpoint import Setpoint

    T, n = 3, 4
    e = np.ones((T, n))
    sp = Setpoint(v=e / 2.0, e=e, e_norm=np.full(T, 2.0), beta_star=np.full(T, 2.0))
    system = lc.LTVSystem(np.stack([np.eye(n)] * T))
    with pytest.raises(DimensionError, match="check_prompts"):
        ALQRSteerer.from_system(system, sp, form="auto", plant=NoPlant(), check_prompts=[])
    with pytest.raises(ArgumentError, match="check_prompts"):
        ALQRSteerer.from_system(system, sp, form="auto", plant=NoPlant(), check_prompts="one prompt")
