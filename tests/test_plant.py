"""LLMPlant API: shapes, truncation, layer order, errors, fallbacks; SmolLM2 integration (slow)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from _tiny_families import char_tokenizer, tiny_model  # noqa: E402
from ltv_control.adapters import LLMPlant  # noqa: E402
from ltv_control.adapters._blocks import get_block_output, replace_block_input  # noqa: E402
from ltv_control.adapters._replay import (  # noqa: E402
    ReplayError,
    block_input_of,
    clean_capture,
    verify_replay,
)

from ltv_control import ArgumentError, DimensionError, LTVSystem  # noqa: E402

PROMPTS = ["The cat sat", "Hi there, friend", "ok"]


@pytest.fixture(scope="module")
def llama_plant():
    model, tok = tiny_model("llama", dtype=torch.float64, layers=4)
    return LLMPlant(model, tok)


def test_attributes_and_repr(llama_plant):
    assert llama_plant.horizon == 4 and llama_plant.state_dim == 32
    assert llama_plant.layer_path == "model.layers"
    assert isinstance(llama_plant.model_id, str) and llama_plant.model_id
    assert "horizon=4" in repr(llama_plant)


def test_linearize_returns_mean_of_per_prompt_jacobians(llama_plant):
    system = llama_plant.linearize(PROMPTS, progress=False, batch_size=2)
    assert isinstance(system, LTVSystem)
    assert system.B is None and system.horizon == 4 and system.n_states == 32
    A = system.A
    assert A.dtype == torch.float64 and A.shape == (4, 32, 32)
    per_prompt = dict(llama_plant.iter_jacobians(PROMPTS, reduce="none", progress=False))
    for k in range(4):
        assert per_prompt[k].shape == (3, 32, 32)
        torch.testing.assert_close(A[k], per_prompt[k].mean(dim=0), rtol=1e-12, atol=1e-12)
    # the prompts' Jacobians differ: the mean is not one of them
    assert (per_prompt[1][0] - per_prompt[1][1]).norm() > 1e-3


def test_iter_jacobians_follows_requested_order(llama_plant):
    order = [k for k, _ in llama_plant.iter_jacobians(PROMPTS[:1], layers=reversed(range(4)), progress=False)]
    assert order == [3, 2, 1, 0]
    assert [k for k, _ in llama_plant.iter_jacobians(PROMPTS[:1], layers=[-1], progress=False)] == [3]
    with pytest.raises(DimensionError, match="layers"):
        list(llama_plant.iter_jacobians(PROMPTS[:1], layers=[4], progress=False))


def test_max_tokens_truncates_to_the_first_tokens(llama_plant):
    long_prompt = "abcdefghijklmnop"
    # char tokenizer: BOS + one token per character, so 6 tokens = BOS + "abcde"
    cut = dict(llama_plant.iter_jacobians([long_prompt], max_tokens=6, layers=[1], progress=False))
    short = dict(llama_plant.iter_jacobians(["abcde"], max_tokens=24, layers=[1], progress=False))
    whole = dict(llama_plant.iter_jacobians([long_prompt], max_tokens=24, layers=[1], progress=False))
    torch.testing.assert_close(cut[1], short[1], rtol=0, atol=0)
    assert (whole[1] - cut[1]).norm() > 1e-6
    states_cut = llama_plant.last_token_states([long_prompt], max_tokens=6)
    torch.testing.assert_close(states_cut, llama_plant.last_token_states(["abcde"]))


def test_last_token_states_match_output_hidden_states(llama_plant):
    states = llama_plant.last_token_states(PROMPTS, batch_size=2)
    for i, prompt in enumerate(PROMPTS):
        ids = torch.tensor([llama_plant.tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            out = llama_plant.model(ids, output_hidden_states=True, use_cache=False)
        # hidden_states[k] is block k's input; the last entry is after the final norm
        for k in range(4):
            torch.testing.assert_close(states[i, k], out.hidden_states[k][0, -1].float())
        block_out = llama_plant.model.model.norm(states[i, 4].double()[None])[0].float()
        torch.testing.assert_close(block_out, out.hidden_states[4][0, -1].float(), rtol=1e-5, atol=1e-5)


def test_argument_errors(llama_plant):
    with pytest.raises(ArgumentError, match="batch_size"):
        llama_plant.last_token_states(PROMPTS, batch_size=0)
    with pytest.raises(ArgumentError, match="prompts"):
        llama_plant.last_token_states([1, 2])
    with pytest.raises(DimensionError, match="prompts"):
        llama_plant.last_token_states([])
    with pytest.raises(ArgumentError, match="method"):
        llama_plant.linearize(PROMPTS, method="fast", progress=False)
    with pytest.raises(ArgumentError, match="bogus"):
        llama_plant.linearize(PROMPTS, bogus=1)
    with pytest.raises(ArgumentError, match="model"):
        LLMPlant(object(), char_tokenizer())


def test_training_mode_is_restored_and_replay_is_exact():
    model, tok = tiny_model("gpt2", dtype=torch.float64)
    model.config.resid_pdrop = 0.5
    model.train()
    plant = LLMPlant(model, tok)
    plant.last_token_states(PROMPTS)
    assert model.training  # restored after the capture ran in eval mode


def test_captured_cache_corrupts_replay_and_plant_avoids_it():
    """TRAPS: a block re-invoked with a captured KV cache reads stale, appended keys/values."""
    from transformers import DynamicCache

    model, tok = tiny_model("llama", dtype=torch.float64)
    plant = LLMPlant(model, tok)
    ids = torch.tensor([tok("Hello there")["input_ids"]])
    calls = []
    hooks = [b.register_forward_pre_hook(lambda m, a, kw: calls.append((a, dict(kw))), with_kwargs=True)
             for b in plant.layers]
    with torch.no_grad():
        model(ids, cache=DynamicCache(config=model.config), use_cache=True)
    for h in hooks:
        h.remove()
    args, kwargs = calls[1]
    clean = clean_capture(model, plant.layers, ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None])
    verify_replay(plant.layers, clean)  # the plant's capture replays bit for bit
    assert all(v is None or "Cache" not in type(v).__name__ for v in clean[1].kwargs.values())
    perturbed = args[0].clone()
    perturbed[:, -1] += 0.5
    with torch.no_grad():
        a, kw = replace_block_input(args, kwargs, perturbed)
        stale = plant.layers[1](*a, **kw)[0, -1]
        a, kw = replace_block_input(clean[1].args, clean[1].kwargs, perturbed)
        fresh = plant.layers[1](*a, **kw)[0, -1]
    assert (stale - fresh).abs().max() > 1e-6


def test_stateful_block_is_refused():
    model, tok = tiny_model("llama", dtype=torch.float64)
    plant = LLMPlant(model, tok)
    ids = torch.tensor([tok("Hello there")["input_ids"]])
    calls = clean_capture(model, plant.layers, ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None])
    counter = {"n": 0}

    def drift(module, args, output):
        counter["n"] += 1
        return output + 1e-3 * counter["n"]

    handle = plant.layers[2].register_forward_hook(drift)
    try:
        with pytest.raises(ReplayError, match="block 2"):
            verify_replay(plant.layers, calls)
    finally:
        handle.remove()


class _ToyBlock(torch.nn.Module):
    """A causal block: mean-of-prefix mixing, then a tanh MLP, residual."""

    def __init__(self, n):
        super().__init__()
        self.mix = torch.nn.Linear(n, n)
        self.up = torch.nn.Linear(n, 2 * n)
        self.down = torch.nn.Linear(2 * n, n)

    def forward(self, hidden_states):
        counts = torch.arange(1, hidden_states.shape[1] + 1, dtype=hidden_states.dtype)[None, :, None]
        prefix_mean = hidden_states.cumsum(dim=1) / counts
        h = hidden_states + self.mix(prefix_mean)
        return h + self.down(torch.tanh(self.up(h)))


class _ToyLM(torch.nn.Module):
    def __init__(self, vocab, n, depth):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, n)
        self.stack = torch.nn.ModuleList([_ToyBlock(n) for _ in range(depth)])
        self.head = torch.nn.Linear(n, vocab)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids):
        h = self.embed(input_ids)
        for block in self.stack:
            h = block(h)
        return self.head(h)


def test_custom_model_without_cache_falls_back_to_full_replay():
    torch.manual_seed(0)
    tok = char_tokenizer()
    model = _ToyLM(len(tok), 16, 3).double().eval()
    plant = LLMPlant(model, tok, layers="stack")
    assert plant.layer_path == "stack" and plant.horizon == 3 and plant.state_dim == 16
    with pytest.warns(RuntimeWarning, match="full-sequence"):
        per_prompt = dict(plant.iter_jacobians(PROMPTS, reduce="none", progress=False))
    for i, prompt in enumerate(PROMPTS):
        ids = torch.tensor([tok(prompt)["input_ids"]])
        hidden = model.embed(ids).detach()
        for k, block in enumerate(plant.layers):
            def f(x, hidden=hidden, block=block):
                return block(torch.cat([hidden[:, :-1], x[None, None]], dim=1))[0, -1]

            reference = torch.func.jacrev(f)(hidden[0, -1])
            torch.testing.assert_close(per_prompt[k][i], reference, rtol=1e-10, atol=1e-12)
            with torch.no_grad():
                hidden = block(hidden)


def test_layers_override_with_modules_and_bad_path():
    model, tok = tiny_model("gpt_neox", dtype=torch.float64)
    plant = LLMPlant(model, tok, layers=list(model.gpt_neox.layers)[:2])
    assert plant.horizon == 2 and plant.layer_path is None
    states = plant.last_token_states(PROMPTS[:1])
    assert states.shape == (1, 3, 32)
    with pytest.raises(ValueError, match="layers"):
        LLMPlant(model, tok, layers="gpt_neox.blocks")


# --------------------------------------------------------------------------- embedded SmolLM2


@pytest.mark.slow
def test_embedded_plant_shape_and_states(embedded_plant):
    plant = embedded_plant
    assert plant.horizon == 30 and plant.state_dim == 576
    assert plant.model_id == "SmolLM2-135M-Instruct"
    prompts = ["I loved this film.", "The weather today is"]
    states = plant.last_token_states(prompts, batch_size=2)
    alone = plant.last_token_states(prompts[1:])
    assert states.shape == (2, 31, 576) and torch.isfinite(states).all()
    torch.testing.assert_close(states[1], alone[0], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_embedded_jacobians_match_full_sequence_jacrev(embedded_plant):
    plant = embedded_plant
    prompts = ["I loved this film.", "Tell me a story about"]
    layers = [0, 17, 29]
    per_prompt = dict(plant.iter_jacobians(prompts, layers=layers, reduce="none", progress=False))
    for k in layers:
        ids = torch.tensor([plant.tokenizer(prompts[0])["input_ids"]])
        calls = clean_capture(plant.model, plant.layers, ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None])
        call = calls[k]
        hidden = block_input_of(call).detach()

        def f(x, call=call, hidden=hidden, k=k):
            args, kwargs = replace_block_input(call.args, call.kwargs, torch.cat([hidden[:, :-1], x[None, None]], 1))
            return get_block_output(plant.layers[k](*args, **kwargs))[0, -1]

        reference = torch.func.jacrev(f)(hidden[0, -1]).double()
        rel = ((per_prompt[k][0] - reference).norm() / reference.norm()).item()
        assert rel < 1e-4  # float32 model: agreement to float32 rounding
        assert np.isfinite(per_prompt[k].numpy()).all()


def test_method_choice_is_reported_and_not_sticky(llama_plant):
    list(llama_plant.iter_jacobians(PROMPTS[:1], layers=[0], method="full", progress=False))
    assert llama_plant.jacobian_method == "full"
    list(llama_plant.iter_jacobians(PROMPTS[:1], layers=[0], progress=False))
    assert llama_plant.jacobian_method == "cached"  # auto still prefers the fast path



def test_public_adapters_document_parameters_and_refuse_unknown_keywords(llama_plant):
    import inspect
    import re

    from ltv_control.adapters import diagnostics, model_loading
    from ltv_control.adapters._blocks import find_decoder_layers

    public = [LLMPlant.__init__, LLMPlant.last_token_states, LLMPlant.iter_jacobians, LLMPlant.linearize,
              model_loading.load_model, model_loading.load_embedded_model, find_decoder_layers,
              diagnostics.subspace_similarity, diagnostics.similarity_matrix,
              diagnostics.linearity_diagnostics, diagnostics.plot_linearity]
    for func in public:
        owner = LLMPlant if func is LLMPlant.__init__ else func
        doc = inspect.getdoc(owner)
        section = re.split(r"\n\s*Parameters\n\s*-+\n", doc, maxsplit=1)[1]
        section = re.split(r"\n\s*(Returns|Raises|Yields|Attributes)\n\s*-+\n", section)[0]
        documented = {n.strip() for m in re.finditer(r"^([\w, ]+?) :", section, re.M)
                      for n in m.group(1).split(",")}
        params = [p for p in inspect.signature(func).parameters if p != "self"]
        assert set(params) <= documented, (func.__qualname__, set(params) - documented)
    calls = [lambda **kw: llama_plant.last_token_states(PROMPTS, **kw),
             lambda **kw: llama_plant.iter_jacobians(PROMPTS, **kw),
             lambda **kw: LLMPlant(llama_plant.model, llama_plant.tokenizer, **kw),
             lambda **kw: find_decoder_layers(llama_plant.model, **kw),
             lambda **kw: diagnostics.subspace_similarity(np.eye(3), np.eye(3), **kw),
             lambda **kw: model_loading.load_model("nowhere", **kw)]
    for call in calls:
        with pytest.raises(ArgumentError, match="not_a_parameter"):
            call(not_a_parameter=1)
