"""Hardening of steering hooks and generation (issue 13).

Regression tests of the probe's hook cases: attaching one steerer twice (nested) is refused
instead of steering twice, the refusal leaves the outer attachment working and removes nothing
else, hooks are removed after exceptions, two different steerers may be stacked, and
``generate_continuations`` refuses empty prompts before the model sees them.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ltv_control import ControlError, PropertyError  # noqa: E402
from ltv_control.adapters import ActAddSteerer  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    from _tiny_lm import tiny_llama

    return tiny_llama(seed=0, layers=3, hidden=32)


def _actadd(seed: int, coeff: float = 3.0) -> ActAddSteerer:
    rng = np.random.default_rng(seed)
    return ActAddSteerer({"e": rng.standard_normal((3, 32))}, state_dim=32, horizon=3,
                         hyperparameters={"coeff": coeff}, layers=[1])


def _logits(model, tok, text="the soup was good"):
    batch = tok([text], return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits[0, -1].clone()


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_nested_attach_of_one_steerer_is_refused(tiny):
    model, tok = tiny
    steerer = _actadd(0)
    base, hooks = _logits(model, tok), _hook_count(model)
    with steerer.attach(model):
        once = _logits(model, tok)
        with pytest.raises(ControlError, match="already attached"):
            steerer.attach(model)
        # the refused attach removed nothing and added nothing: still steered exactly once
        assert torch.equal(_logits(model, tok), once)
    assert _hook_count(model) == hooks and torch.equal(_logits(model, tok), base)
    assert not torch.equal(once, base)
    with steerer.attach(model):  # the claim is released on exit
        assert torch.equal(_logits(model, tok), once)


def test_attach_after_an_exception_inside_the_block(tiny):
    model, tok = tiny
    steerer, hooks = _actadd(1), _hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with steerer.attach(model):
            raise RuntimeError("boom")
    assert _hook_count(model) == hooks
    handle = steerer.attach(model)  # attachable again
    handle.remove()
    handle.remove()  # idempotent
    assert _hook_count(model) == hooks


def test_two_different_steerers_stack(tiny):
    model, tok = tiny
    a, b = _actadd(2, coeff=1.0), _actadd(3, coeff=1.0)
    with a.attach(model):
        only_a = _logits(model, tok)
        with b.attach(model):
            both = _logits(model, tok)
    assert not torch.equal(only_a, both)


def test_failed_attach_leaves_no_hook(tiny):
    from _tiny_lm import tiny_llama

    model, _ = tiny
    other, _ = tiny_llama(seed=1, layers=2, hidden=32)
    steerer, hooks = _actadd(4), _hook_count(other)
    with pytest.raises(ControlError):  # DimensionError: 3 layers fitted, model has 2
        steerer.attach(other)
    assert _hook_count(other) == hooks


@pytest.mark.parametrize("prompts", [[""], ["ok", ""], ["   "], ["\n"]])
def test_generate_continuations_refuses_empty_prompts(tiny, prompts):
    from ltv_control.app.generation import Decoding, generate_continuations

    model, tok = tiny
    with pytest.raises(PropertyError, match=r"prompts\[\d\]: empty prompt"):
        generate_continuations(model, tok, prompts, decoding=Decoding(max_new_tokens=2),
                               progress=False)


def test_generate_continuations_still_works_after_a_refusal(tiny):
    from ltv_control.app.generation import Decoding, generate_continuations

    model, tok = tiny
    gen = generate_continuations(model, tok, ["the soup was"], decoding=Decoding(max_new_tokens=2),
                                 progress=False)
    assert len(gen.texts) == 1
