"""Multi-concept A-LQR on the tiny Llama: the law against single-concept A-LQR and a float64
reference, the fused path, λ per concept, and controller files read back in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ltv_control import ArgumentError, ControllerFileError, DimensionError  # noqa: E402
from ltv_control.adapters import ALQRSteerer, LLMPlant  # noqa: E402
from ltv_control.adapters.multi_concept import MultiConceptSteerer  # noqa: E402
from ltv_control.adapters import Steerer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_lm import tiny_llama  # noqa: E402

A_DESIRED = ["the movie was wonderful .", "i loved the concert .", "the room was clean ."]
A_UNDESIRED = ["the movie was dreadful .", "i hated the concert .", "the room was dirty ."]
B_DESIRED = ["the soup was warm .", "my new job makes me happy every day ."]
B_UNDESIRED = ["the soup was cold .", "my new job makes me miserable every day ."]
PROMPTS = ["the weather this week has been", "i went to the store yesterday and"]


@pytest.fixture(scope="module")
def fitted():
    model, tok = tiny_llama(seed=3, layers=3, hidden=32)
    plant = LLMPlant(model, tok)
    system = plant.linearize(PROMPTS, max_tokens=8, progress=False)
    sp = {"a": plant.setpoint(A_DESIRED, A_UNDESIRED, lam=1.5),
          "b": plant.setpoint(B_DESIRED, B_UNDESIRED, lam=0.5)}
    multi = MultiConceptSteerer.from_system(system, sp, q=0.2, r=1.0, qf=0.3)
    single = {k: ALQRSteerer.from_system(system, s, q=0.2, r=1.0, qf=0.3) for k, s in sp.items()}
    return model, tok, plant, system, sp, multi, single


def _logits(model, tok, steering=None):
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        if steering is None:
            return model(**batch).logits
        with steering:
            return model(**batch).logits


def test_feedback_directions_match_single_concept_fits(fitted):
    _, _, _, _, sp, multi, single = fitted
    assert multi.concepts == ["a", "b"] and multi.lams == [1.5, 0.5]
    for j, name in enumerate(multi.concepts):
        torch.testing.assert_close(getattr(multi, f"w_{j}"), single[name].w)
        torch.testing.assert_close(getattr(multi, f"v_{j}"), single[name].v)
        torch.testing.assert_close(getattr(multi, f"e_norm_{j}"), single[name].e_norm)


def test_law_is_the_sum_of_single_concept_laws_float64_oracle(fitted):
    _, _, _, _, _, multi, single = fitted
    gen = torch.Generator().manual_seed(0)
    lams = [0.7, -1.2]
    laws = multi.layer_laws(lams=lams)
    active = [k for k in range(multi.horizon)
              if float(multi.e_norm_0[k]) > 0 or float(multi.e_norm_1[k]) > 0]
    assert sorted(laws) == active and len(active) >= 2  # no law where no concept has a direction
    for k, law in laws.items():
        z = torch.randn(4, multi.state_dim, generator=gen) * 3
        u = law(z, {})
        ref = np.zeros((4, multi.state_dim))
        z64 = z.double().numpy()
        for lam, name in zip(lams, multi.concepts):
            s = single[name]
            v, w = s.v[k].double().numpy(), s.w[k].double().numpy()
            beta = lam * float(s.e_norm[k])
            ref += np.outer(beta - z64 @ v, w)  # u = Σ_j (β*_j − v_jᵀz) K v_j
        np.testing.assert_allclose(u.double().numpy(), ref, rtol=1e-4, atol=1e-5)
        # "all" positions (B, L, n) and the fused in-place path agree with it
        u3 = law(z.reshape(2, 2, -1), {})
        np.testing.assert_allclose(u3.reshape(4, -1).numpy(), u.numpy(), rtol=1e-5, atol=1e-6)
        target = torch.zeros_like(z)
        law.add_last_inplace(z, target)
        np.testing.assert_allclose(target.numpy(), u.numpy(), rtol=1e-5, atol=1e-5)


def test_one_concept_equals_alqr_on_the_model(fitted):
    model, tok, _, system, sp, _, single = fitted
    one = MultiConceptSteerer.from_system(system, {"a": sp["a"]}, q=0.2, r=1.0, qf=0.3)
    for positions in ("last", "all"):
        got = _logits(model, tok, one.attach(model, positions=positions, lam=2.0))
        ref = _logits(model, tok, single["a"].attach(model, positions=positions, lam=2.0))
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_lambda_per_concept_moves_its_feature(fitted):
    """Raising λ_a raises concept a's feature v_aᵀz at the last layer's input and leaves the
    unsteered model's logits untouched after the context exits."""
    model, tok, plant, _, _, multi, _ = fitted
    before = _logits(model, tok)
    v_a = multi.v_0.double()

    def strength(lams):
        with torch.no_grad(), multi.attach(model, lams=lams, positions="last"):
            z = plant.last_token_states(PROMPTS).double()
        return float((z[:, 1:multi.horizon] * v_a[1:]).sum(-1).mean())

    values = [strength([lam, 0.0]) for lam in (-2.0, 0.0, 2.0, 4.0)]
    assert all(b > a for a, b in zip(values, values[1:])), values
    torch.testing.assert_close(_logits(model, tok), before)


def test_attach_argument_errors(fitted):
    model, *_, multi, _ = fitted
    with pytest.raises(ArgumentError, match="not both"):
        multi.attach(model, lam=1.0, lams=[1.0, 1.0])
    with pytest.raises(DimensionError, match="one per concept"):
        multi.attach(model, lams=[1.0])
    with pytest.raises(ArgumentError):
        MultiConceptSteerer({}, state_dim=4, horizon=2, hyperparameters={"concepts": []})


def test_fit_end_to_end(fitted):
    model, tok, plant, system, sp, multi, _ = fitted
    again = MultiConceptSteerer.fit(plant, {"a": (A_DESIRED, A_UNDESIRED),
                                           "b": (B_DESIRED, B_UNDESIRED)},
                                    lams=[1.5, 0.5], q=0.2, qf=0.3, system=system)
    for name in multi.tensor_names:
        torch.testing.assert_close(getattr(again, name), getattr(multi, name))
    with pytest.raises(DimensionError, match="one per concept"):
        MultiConceptSteerer.fit(plant, {"a": (A_DESIRED, A_UNDESIRED)}, lams=[1.0, 2.0],
                                system=system)


def test_save_load_in_a_fresh_process(fitted, tmp_path):
    model, tok, _, _, _, multi, _ = fitted
    path = multi.save(tmp_path / "multi.safetensors")
    expected = _logits(model, tok, multi.attach(model, lams=[2.0, -1.0]))
    np.save(tmp_path / "expected.npy", expected.numpy())
    tests = Path(__file__).resolve().parent
    code = f"""
import sys, json, numpy as np, torch
sys.path.insert(0, {str(tests)!r})
from _tiny_lm import tiny_llama
from ltv_control.adapters.multi_concept import MultiConceptSteerer
model, tok = tiny_llama(seed=3, layers=3, hidden=32)
s = MultiConceptSteerer.load({str(path)!r}, model=model)
batch = tok({PROMPTS!r}, return_tensors="pt", padding=True)
with torch.no_grad(), s.attach(model, lams=[2.0, -1.0]):
    got = model(**batch).logits.numpy()
ref = np.load({str(tmp_path / 'expected.npy')!r})
print(json.dumps({{"kind": s.kind, "concepts": s.concepts, "lams": s.lams,
                  "max_err": float(np.abs(got - ref).max())}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["kind"] == "alqr_multi" and out["concepts"] == ["a", "b"]
    assert out["lams"] == [1.5, 0.5] and out["max_err"] <= 1e-5


def test_load_refuses_other_models_and_kinds(fitted, tmp_path):
    _, _, _, _, _, multi, single = fitted
    path = multi.save(tmp_path / "m.safetensors")
    big, _ = tiny_llama(seed=0, layers=4, hidden=32)
    with pytest.raises(DimensionError, match="4"):
        MultiConceptSteerer.load(path, model=big)
    assert type(Steerer.load(path)) is MultiConceptSteerer  # the kind is registered
    with pytest.raises(ControllerFileError):
        ALQRSteerer.load(path)
    other = single["a"].save(tmp_path / "a.safetensors")
    with pytest.raises(ControllerFileError):
        MultiConceptSteerer.load(other)
