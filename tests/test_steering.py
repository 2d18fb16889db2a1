"""Steering hooks (A-LQR, A-LQR+, ActAdd, S-PID) on tiny random transformers built in-process.

Oracles: the float64 reference law ``ltv_control.setpoint.steering_input`` applied to block
inputs recorded by probe hooks; an independent reference hook implementation for the
KV-cache semantics; an independent Riccati recursion for the fit.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ltv_control import ArgumentError, DimensionError, LTVSystem  # noqa: E402
from ltv_control.adapters import ActAddSteerer, ALQRSteerer, PIDSteerer  # noqa: E402
from ltv_control.adapters._blocks import find_decoder_layers, get_block_input, get_block_output  # noqa: E402
from ltv_control.adapters.laws import AffineLaw  # noqa: E402
from ltv_control.setpoint import steering_input  # noqa: E402

T, N, VOCAB = 3, 16, 40
PAD = 0


# --------------------------------------------------------------------------- tiny models


class _TupleBlock(torch.nn.Module):
    """A block returning ``(hidden, None)`` (pre-transformers-5 / Falcon convention)."""

    def __init__(self, n):
        super().__init__()
        self.lin = torch.nn.Linear(n, n)

    def forward(self, hidden_states, attention_mask=None):
        return (hidden_states + torch.tanh(self.lin(hidden_states)), None)


class _TupleLM(torch.nn.Module):
    """Toy causal-LM-like model (position-wise blocks, attention mask positional)."""

    def __init__(self, n=N, layers=T):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, n)
        self.blocks = torch.nn.ModuleList(_TupleBlock(n) for _ in range(layers))
        self.head = torch.nn.Linear(n, VOCAB)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h, attention_mask)[0]
        return self.head(h)


def _hf_model(family: str, dtype=torch.float32):
    torch.manual_seed(1234)
    common = dict(vocab_size=VOCAB, pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
    if family == "llama":
        cfg = transformers.LlamaConfig(hidden_size=N, intermediate_size=32, num_hidden_layers=T,
                                       num_attention_heads=2, num_key_value_heads=1, **common)
        model = transformers.LlamaForCausalLM(cfg)
    elif family == "gpt2":
        cfg = transformers.GPT2Config(n_embd=N, n_layer=T, n_head=2, n_positions=64, **common)
        model = transformers.GPT2LMHeadModel(cfg)
    elif family == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(hidden_size=N, intermediate_size=32, num_hidden_layers=T,
                                         num_attention_heads=2, use_parallel_residual=True, **common)
        model = transformers.GPTNeoXForCausalLM(cfg)
    elif family in ("qwen2", "mistral", "gemma2", "phi3"):
        config_cls = {"qwen2": transformers.Qwen2Config, "mistral": transformers.MistralConfig,
                      "gemma2": transformers.Gemma2Config, "phi3": transformers.Phi3Config}[family]
        extra = {"head_dim": 8} if family == "gemma2" else {}
        cfg = config_cls(hidden_size=N, intermediate_size=32, num_hidden_layers=T, num_attention_heads=2,
                         num_key_value_heads=1, **extra, **common)
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    elif family == "tuple":
        return _TupleLM().to(dtype).eval()
    else:  # pragma: no cover
        raise ValueError(family)
    model.generation_config.pad_token_id = PAD
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def llama():
    return _hf_model("llama")


def _steerer(seed=0, cls=ALQRSteerer, **kw):
    g = np.random.default_rng(seed)
    v = g.standard_normal((T, N))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    e_norm = g.uniform(0.5, 1.5, T)
    if cls is ALQRSteerer:
        tensors = {"w": 0.3 * g.standard_normal((T, N)), "v": v, "e_norm": e_norm, "beta_star": 2.0 * e_norm}
        hyper = {"q": 0.1, "r": 1.0, "qf": 0.1, "lam": 2.0}
    elif cls is PIDSteerer:
        tensors = {"v": v, "e_norm": e_norm, "beta_star": 2.0 * e_norm}
        hyper = {"kp": 0.4, "ki": 0.3, "kd": 0.2, "lam": 2.0, "reset_every": 2}
    else:
        tensors = {"e": g.standard_normal((T, N))}
        hyper = {"coeff": 1.5}
    return cls(tensors, hidden_size=N, num_layers=T, hyperparameters=hyper, **kw)


def _batch(seed=0, lengths=(6, 4, 2), left=True):
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.full((len(lengths), L), PAD, dtype=torch.long)
    mask = torch.zeros((len(lengths), L), dtype=torch.long)
    for i, n in enumerate(lengths):
        sl = slice(L - n, L) if left else slice(0, n)
        ids[i, sl] = torch.randint(3, VOCAB, (n,), generator=g)
        mask[i, sl] = 1
    return ids, mask


class _Probe:
    """Records, at every block, its input and its output before and after the steering hook."""

    def __init__(self, blocks):
        self.z, self.raw, self.steered, self.handles = {}, {}, {}, []
        for k, block in enumerate(blocks):
            def before(mod, args, kwargs, out, k=k):
                self.z[k] = get_block_input(args, kwargs).detach().clone()
                self.raw[k] = get_block_output(out).detach().clone()

            def after(mod, args, kwargs, out, k=k):
                self.steered[k] = get_block_output(out).detach().clone()

            self.handles.append(block.register_forward_hook(before, with_kwargs=True, prepend=True))
            self.handles.append(block.register_forward_hook(after, with_kwargs=True))

    def remove(self):
        for h in self.handles:
            h.remove()


def _hook_counts(model):
    blocks, _ = find_decoder_layers(model)
    return [len(b._forward_hooks) + len(b._forward_pre_hooks) for b in blocks] + [
        len(model._forward_hooks), len(model._forward_pre_hooks)]


def _steered_cols(mask, positions):
    cols = mask.bool().clone()
    if positions == "last":
        cols[:, :-1] = False
    return cols


# --------------------------------------------------------------------------- the law, exactly


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "tuple"])
@pytest.mark.parametrize("positions", ["last", "all"])
def test_hook_adds_exactly_the_law_at_the_right_positions(family, positions):
    model = _hf_model(family)
    blocks, _ = find_decoder_layers(model)
    st = _steerer()
    ids, mask = _batch(left=(positions == "last"))  # "all" also sees right padding
    lam = 0.7
    with torch.no_grad(), st.attach(model, positions=positions, layers=[0, 2], lam=lam) as handle:
        probe = _Probe(blocks)
        model(ids, attention_mask=mask)
        probe.remove()
    assert handle.layers == [0, 2] and not handle.active
    cols = _steered_cols(mask, positions)
    beta = lam * st.e_norm.double().numpy()
    for k in range(T):
        diff = (probe.steered[k].double() - probe.raw[k].double()).numpy()
        if k == 1:
            assert np.all(diff == 0.0), "uncontrolled layer was modified"
            continue
        z = probe.z[k].double().numpy()[:, :, None, :]  # (B, L, 1, n): one step k
        u_ref = steering_input(z, st.v[k : k + 1].double().numpy(), beta[k : k + 1],
                               st.w[k : k + 1].double().numpy())[:, :, 0, :]
        sel = cols.numpy()
        assert np.all(diff[~sel] == 0.0), "a pad or non-steered position was modified"
        scale = np.abs(u_ref).max() + np.abs(probe.raw[k].numpy()).max()
        np.testing.assert_allclose(diff[sel], u_ref[sel], rtol=0, atol=1e-5 * scale)
        assert np.abs(u_ref[sel]).min() > 0  # the check is not vacuous


def test_no_mask_steers_every_position_and_lam_zero_drives_feature_to_zero(llama):
    blocks, _ = find_decoder_layers(llama)
    st = _steerer()
    ids, _ = _batch(lengths=(5, 5))
    with torch.no_grad(), st.attach(llama, positions="all", lam=0.0):
        probe = _Probe(blocks)
        llama(ids)
        probe.remove()
    for k in range(T):
        z = probe.z[k].double()
        alpha = -(z @ st.v[k].double())  # β = 0
        expected = alpha[..., None] * st.w[k].double()
        torch.testing.assert_close(probe.steered[k].double() - probe.raw[k].double(), expected,
                                   rtol=0, atol=1e-5 * float(expected.abs().max() + probe.raw[k].abs().max()))


def test_actadd_adds_scaled_mean_difference_at_chosen_layers(llama):
    blocks, _ = find_decoder_layers(llama)
    st = _steerer(cls=ActAddSteerer, layers=[1])
    ids, mask = _batch()
    with torch.no_grad(), st.attach(llama, coeff=-2.0):
        probe = _Probe(blocks)
        llama(ids, attention_mask=mask)
        probe.remove()
    for k in range(T):
        diff = probe.steered[k] - probe.raw[k]
        if k != 1:
            assert torch.all(diff == 0)
            continue
        expected = -2.0 * st.e[1] * mask[..., None]  # default positions "all", pads untouched
        torch.testing.assert_close(diff, expected.float(), rtol=0, atol=1e-5)


def test_pid_law_matches_reference_with_integral_reset(llama):
    blocks, _ = find_decoder_layers(llama)
    st = _steerer(cls=PIDSteerer)  # reset_every=2: windows {0, 1}, {2}
    ids, mask = _batch()
    with torch.no_grad(), st.attach(llama, positions="last"):
        probe = _Probe(blocks)
        llama(ids, attention_mask=mask)
        probe.remove()
    v, beta = st.v.double(), st.beta_star.double()
    errors = {k: beta[k] - probe.z[k][:, -1].double() @ v[k] for k in range(T)}
    integral = {0: errors[0], 1: errors[0] + errors[1], 2: errors[2]}
    derivative = {0: 0 * errors[0], 1: errors[1] - errors[0], 2: 0 * errors[2]}
    for k in range(T):
        gain = st.kp * errors[k] + st.ki * integral[k] + st.kd * derivative[k]
        diff = (probe.steered[k] - probe.raw[k])[:, -1].double()
        torch.testing.assert_close(diff, gain[:, None] * v[k], rtol=0, atol=1e-5)
        assert torch.all(probe.steered[k][:, :-1] == probe.raw[k][:, :-1])


# --------------------------------------------------------------------------- generation


FAMILIES = ["llama", "qwen2", "mistral", "gemma2", "phi3", "gpt2", "gpt_neox"]


@pytest.mark.parametrize("family", FAMILIES)
def test_families_steer_only_where_asked_with_cache_on_and_off(family):
    model = _hf_model(family)
    blocks, _ = find_decoder_layers(model)
    st = _steerer()
    ids, mask = _batch(lengths=(5, 3))
    before = _hook_counts(model)
    with torch.no_grad():
        with st.attach(model, positions="last", layers=[1]):
            probe = _Probe(blocks)
            model(ids, attention_mask=mask)
            probe.remove()
            last_cached, _ = _generate(model, ids, mask, use_cache=True)
            last_plain, _ = _generate(model, ids, mask, use_cache=False)
        with st.attach(model, positions="all"):
            all_cached, s_cached = _generate(model, ids, mask, use_cache=True)
            all_plain, s_plain = _generate(model, ids, mask, use_cache=False)
    for k in (0, 2):
        assert torch.equal(probe.steered[k], probe.raw[k])
    diff = probe.steered[1] - probe.raw[1]
    assert torch.all(diff[:, :-1] == 0) and torch.all(diff[:, -1].abs().sum(-1) > 0)
    assert last_cached.shape == last_plain.shape == (2, 4)
    assert torch.equal(all_cached, all_plain)
    torch.testing.assert_close(s_cached, s_plain, rtol=1e-4, atol=1e-4)
    assert _hook_counts(model) == before


def _generate(model, ids, mask, **kw):
    out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                         pad_token_id=PAD, output_scores=True, return_dict_in_generate=True, **kw)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.scores, 1)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("positions", ["last", "all"])
def test_batched_left_padded_generation_equals_unbatched(family, positions):
    model = _hf_model(family)
    st = _steerer()
    ids, mask = _batch(lengths=(6, 3))
    with torch.no_grad(), st.attach(model, positions=positions):
        batched, scores = _generate(model, ids, mask)
        for i in range(2):
            keep = mask[i].bool()
            single, single_scores = _generate(model, ids[i : i + 1, keep], mask[i : i + 1, keep])
            assert torch.equal(batched[i], single[0])
            torch.testing.assert_close(scores[i], single_scores[0], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        plain, plain_scores = _generate(model, ids, mask)
    assert not torch.allclose(plain_scores, scores, atol=1e-3)  # steering did act


def _reference_logits(model, seq, steered_from, st):
    """Independent float64 implementation: steer columns >= steered_from, no cache."""
    blocks, _ = find_decoder_layers(model)
    handles = []
    for k, block in enumerate(blocks):
        def hook(mod, args, kwargs, out, k=k):
            z = get_block_input(args, kwargs).double()
            alpha = st.beta_star[k].double() - z @ st.v[k].double()
            u = alpha[..., None] * st.w[k].double()
            u[:, :steered_from] = 0
            return (out.double() + u).to(out.dtype)
        handles.append(block.register_forward_hook(hook, with_kwargs=True))
    try:
        return model(seq, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()


def test_kv_cache_semantics(llama):
    st = _steerer()
    ids, mask = _batch(lengths=(5,))
    P = ids.shape[1]
    with torch.no_grad():
        with st.attach(llama, positions="last"):
            cached, cached_scores = _generate(llama, ids, mask, use_cache=True)
            recomputed, recomputed_scores = _generate(llama, ids, mask, use_cache=False)
        # cache on: each token steered once when newest, its steered K/V kept
        seq = torch.cat([ids, cached], 1)
        ref = _reference_logits(llama, seq, P - 1, st)
        assert torch.equal(ref[0, P - 1 : -1].argmax(-1), cached[0])
        torch.testing.assert_close(ref[0, P - 1 : -1].float(), cached_scores[0], rtol=1e-4, atol=1e-4)
        # cache off: history recomputed unsteered, only the newest position steered
        seq = torch.cat([ids, recomputed], 1)
        for i in range(recomputed.shape[1]):
            prefix = seq[:, : P + i]
            ref = _reference_logits(llama, prefix, prefix.shape[1] - 1, st)
            torch.testing.assert_close(ref[0, -1].float(), recomputed_scores[0, i], rtol=1e-4, atol=1e-4)
        assert not torch.allclose(cached_scores[0, 1:], recomputed_scores[0, 1:], atol=1e-4)
        # "all": steering every position is the same with and without the cache
        with st.attach(llama, positions="all"):
            a_cached, a_scores = _generate(llama, ids, mask, use_cache=True)
            a_plain, a_plain_scores = _generate(llama, ids, mask, use_cache=False)
        assert torch.equal(a_cached, a_plain)
        torch.testing.assert_close(a_scores, a_plain_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_compute_the_law_in_float32(dtype):
    model = _hf_model("llama", dtype)
    blocks, _ = find_decoder_layers(model)
    seen = []

    class RecordingLaw(AffineLaw):
        def __call__(self, z, state):
            seen.append((z.dtype, self.U.dtype))
            return super().__call__(z, state)

        def to(self, device):
            moved = super().to(device)
            return RecordingLaw(c=moved.c, U=moved.U, V=moved.V, b=moved.b)

    class Recording(ALQRSteerer):
        def layer_laws(self, **options):
            return {k: RecordingLaw(U=law.U, V=law.V, b=law.b)
                    for k, law in super().layer_laws(**options).items()}

    base = _steerer()
    st = Recording({n: getattr(base, n) for n in base.tensor_names}, hidden_size=N, num_layers=T,
                   hyperparameters=base.hyperparameters)
    ids, mask = _batch()
    with torch.no_grad(), st.attach(model, positions="all"):
        probe = _Probe(blocks)
        logits = model(ids, attention_mask=mask).logits
        probe.remove()
        generated, _ = _generate(model, ids, mask)
    assert seen and all(s == (torch.float32, torch.float32) for s in seen)
    assert logits.dtype == dtype and torch.isfinite(logits).all() and generated.shape == (3, 4)
    for k in range(T):
        assert probe.steered[k].dtype == dtype
        z = probe.z[k].float()
        u = (st.beta_star[k] - z @ st.v[k])[..., None] * st.w[k] * mask[..., None]
        expected = (probe.raw[k].float() + u).to(dtype)
        assert torch.equal(probe.steered[k], expected)


# --------------------------------------------------------------------------- hooks and refusals


def test_hooks_removed_on_exit_and_when_generate_raises(llama):
    st = _steerer()
    ids, mask = _batch()
    before = _hook_counts(llama)
    with torch.no_grad(), st.attach(llama) as handle:
        during = _hook_counts(llama)
        _generate(llama, ids, mask)
        assert handle.calls > 0
    assert during[:T] == [c + 1 for c in before[:T]]  # one fused hook per layer
    assert during[T:] == [c + 1 for c in before[T:]]  # one mask pre-hook and one post-hook
    assert _hook_counts(llama) == before

    class Boom(transformers.LogitsProcessor):
        def __init__(self):
            self.calls = 0

        def __call__(self, input_ids, scores):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("boom in generate")
            return scores

    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), st.attach(llama, positions="all"):
        llama.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                       logits_processor=transformers.LogitsProcessorList([Boom()]))
    assert _hook_counts(llama) == before
    # the handle also works without a with-block
    handle = st.attach(llama)
    handle.remove()
    handle.remove()
    assert _hook_counts(llama) == before


def test_attaching_the_same_steerer_twice_is_refused(llama):
    """Nested attach of one steerer would steer twice: refused, first attachment intact (issue 13)."""
    from ltv_control import ControlError

    st, other = _steerer(), _steerer(seed=1)
    before = _hook_counts(llama)
    with st.attach(llama):
        during = _hook_counts(llama)
        with pytest.raises(ControlError, match="already attached"):
            st.attach(llama, positions="all")
        assert _hook_counts(llama) == during  # the refused attach left nothing behind
        with other.attach(llama):  # a different steerer composes
            assert _hook_counts(llama)[:T] == [c + 1 for c in during[:T]]
    assert _hook_counts(llama) == before
    with st.attach(llama):  # after removal it attaches again
        pass


@pytest.mark.parametrize("method", ["ALQRSteerer.from_system", "ActAddSteerer.from_setpoint",
                                    "PIDSteerer.from_setpoint", "LLMPlant.setpoint"])
def test_pipeline_parameters_are_documented(method):
    import inspect

    import ltv_control.adapters as adapters

    owner, name = method.split(".")
    func = getattr(getattr(adapters, owner), name)
    params = [p.name for p in inspect.signature(func).parameters.values() if p.name not in ("self", "cls")]
    missing = set(params) - _documented(inspect.getdoc(func) or "")
    assert not missing, f"{method}: {sorted(missing)} undocumented"


@pytest.mark.parametrize(("layers", "hidden", "match"), [(4, N, "4 decoder layers"), (T, 12, "hidden size 12")])
def test_mismatched_steerer_refused_before_any_forward_pass(llama, layers, hidden, match):
    g = np.random.default_rng(0)
    st = ALQRSteerer({"w": g.standard_normal((layers, hidden)), "v": g.standard_normal((layers, hidden)),
                      "e_norm": np.ones(layers), "beta_star": np.ones(layers)},
                     hidden_size=hidden, num_layers=layers, hyperparameters={})
    calls = []
    before = _hook_counts(llama)
    counter = llama.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(DimensionError, match=match):
            with st.attach(llama):
                llama(torch.ones(1, 3, dtype=torch.long))
    finally:
        counter.remove()
    assert calls == [] and _hook_counts(llama) == before


def test_bad_arguments_rejected(llama):
    st = _steerer()
    with pytest.raises(ArgumentError, match="positions"):
        st.attach(llama, positions="first")
    with pytest.raises(ArgumentError, match="coeff"):
        st.attach(llama, coeff=1.0)
    with pytest.raises(DimensionError, match="layer index 7"):
        st.attach(llama, layers=[7])
    with pytest.raises(ArgumentError, match="tensors"):
        ALQRSteerer({"w": np.zeros((T, N))}, hidden_size=N, num_layers=T)


def test_zero_direction_layers_get_no_hook(llama):
    base = _steerer()
    e_norm = base.e_norm.clone()
    e_norm[1] = 0.0
    v = base.v.clone()
    v[1] = 0.0
    st = ALQRSteerer({"w": base.w, "v": v, "e_norm": e_norm, "beta_star": 2 * e_norm},
                     hidden_size=N, num_layers=T, hyperparameters={})
    with st.attach(llama) as handle:
        assert handle.layers == [0, 2]


# --------------------------------------------------------------------------- fitting


class _FakePlant:
    """Duck-typed plant with known last-token states and Jacobians (independent of any model)."""

    def __init__(self, T=4, n=5, seed=0):
        g = np.random.default_rng(seed)
        self.horizon, self.state_dim = T, n
        self.A = np.eye(n) + 0.3 * g.standard_normal((T, n, n))
        self.layer_path, self.model_id = "model.layers", "fake"
        self.states = {}
        self.linearized = None
        self._g = g

    def last_token_states(self, prompts, batch_size=8):
        out = []
        for p in prompts:
            if p not in self.states:
                shift = 1.0 if p.startswith("good") else 0.0
                self.states[p] = self._g.standard_normal((self.horizon + 1, self.state_dim)) + shift
            out.append(self.states[p])
        return torch.as_tensor(np.stack(out), dtype=torch.float32)

    def linearize(self, prompts, max_tokens=24, batch_size=8, progress=True):
        self.linearized = list(prompts)
        return LTVSystem(self.A)


def _riccati_oracle(A, B, q, r, qf):
    """Independent backward Riccati recursion (u = -K x, cost without 1/2)."""
    T, n = A.shape[0], A.shape[1]
    S = qf * np.eye(n)
    K = np.zeros((T, B.shape[2], n))
    for k in reversed(range(T)):
        G = r * np.eye(B.shape[2]) + B[k].T @ S @ B[k]
        K[k] = np.linalg.solve(G, B[k].T @ S @ A[k])
        S = q * np.eye(n) + A[k].T @ S @ (A[k] - B[k] @ K[k])
        S = 0.5 * (S + S.T)
    return K


def test_alqr_fit_matches_independent_riccati():
    plant = _FakePlant()
    desired = [f"good {i}" for i in range(60)]
    undesired = [f"bad {i}" for i in range(7)]
    st = ALQRSteerer.fit(plant, desired, undesired, q=0.2, r=0.5, qf=0.3, lam=1.5, progress=False)
    assert plant.linearized == desired[:50]
    zd = plant.last_token_states(desired).double().numpy()[:, :4]
    zu = plant.last_token_states(undesired).double().numpy()[:, :4]
    e = zd.mean(0) - zu.mean(0)
    v = e / np.linalg.norm(e, axis=1, keepdims=True)
    K = _riccati_oracle(plant.A, np.broadcast_to(np.eye(5), (4, 5, 5)), 0.2, 0.5, 0.3)
    np.testing.assert_allclose(st.v.numpy(), v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.e_norm.numpy(), np.linalg.norm(e, axis=1), rtol=1e-5)
    np.testing.assert_allclose(st.beta_star.numpy(), 1.5 * np.linalg.norm(e, axis=1), rtol=1e-5)
    np.testing.assert_allclose(st.w.numpy(), np.einsum("tmn,tn->tm", K, v), rtol=1e-4, atol=1e-6)
    for name in st.tensor_names:  # runtime memory T·n: no n×n array kept
        t = getattr(st, name)
        assert t.dtype == torch.float32 and t.shape in ((4, 5), (4,))
    assert not any(isinstance(x, torch.Tensor | np.ndarray) and x.ndim >= 3 for x in vars(st).values())
    assert st.hyperparameters == {"q": 0.2, "r": 0.5, "qf": 0.3, "lam": 1.5}
    assert st.layer_path == "model.layers" and st.model_id == "fake" and st.positions == "last"


def test_alqr_fit_restricted_layers_and_options():
    plant = _FakePlant()
    desired, undesired = ["good a", "good b"], ["bad a", "bad b"]
    st = ALQRSteerer.fit(plant, desired, undesired, layers=[1, 3], jacobian_prompts=["x"],
                         positions="all", progress=False)
    assert plant.linearized == ["x"] and st.positions == "all" and st.layers == [1, 3]
    B = np.zeros((4, 5, 5))
    B[[1, 3]] = np.eye(5)
    K = _riccati_oracle(plant.A, B, 0.1, 1.0, 0.1)
    np.testing.assert_allclose(st.w.numpy(), np.einsum("tmn,tn->tm", K, st.v.double().numpy()), rtol=1e-4, atol=1e-6)
    assert torch.all(st.w[[0, 2]] == 0)
    with pytest.raises(ArgumentError, match="unknown keyword"):
        ALQRSteerer.fit(plant, desired, undesired, gamma=1.0)
    with pytest.raises(ArgumentError, match="undesired"):
        ALQRSteerer.fit(plant, desired, "bad a")


def test_alqr_fit_reuses_a_precomputed_linearization():
    plant = _FakePlant()
    desired, undesired = ["good a", "good b"], ["bad a", "bad b"]
    reference = ALQRSteerer.fit(plant, desired, undesired, jacobian_prompts=["x"], progress=False)
    system = LTVSystem(np.asarray(plant.A) * 1.0)
    plant.linearized = None
    reused = ALQRSteerer.fit(plant, desired, undesired, system=system, progress=False)
    assert plant.linearized is None  # the plant was not linearized again
    torch.testing.assert_close(reused.w, reference.w, rtol=1e-6, atol=1e-7)
    with pytest.raises(DimensionError, match=r"system: expected A of shape \(4, 5, 5\)"):
        ALQRSteerer.fit(plant, desired, undesired, system=LTVSystem(np.zeros((3, 5, 5))),
                        progress=False)
    with pytest.raises(ArgumentError, match="system: expected an LTVSystem"):
        ALQRSteerer.fit(plant, desired, undesired, system=np.zeros((4, 5, 5)), progress=False)


def test_baseline_fits():
    plant = _FakePlant()
    desired, undesired = ["good a", "good b"], ["bad a", "bad b", "bad c"]
    e = (plant.last_token_states(desired).double().mean(0) - plant.last_token_states(undesired).double().mean(0))[:4]
    act = ActAddSteerer.fit(plant, desired, undesired, layers=[2], coeff=3.0)
    torch.testing.assert_close(act.e, e.float())
    assert act.layers == [2] and act.coeff == 3.0 and act.positions == "all"
    with pytest.raises(ArgumentError, match="layers is required"):
        ActAddSteerer.fit(plant, desired, undesired)
    pid = PIDSteerer.fit(plant, desired, undesired, kp=1.0, ki=0.0, lam=2.0)
    torch.testing.assert_close(pid.beta_star, 2.0 * e.norm(dim=1).float())
    assert pid.reset_every == 10 and pid.positions == "last"


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = "the movie film was is great good wonderful bad awful terrible i love hate it so very".split()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {w: i + 4 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                                bos_token="<s>", eos_token="</s>", padding_side="left")


def test_fit_on_a_real_plant_and_steer(llama):
    from ltv_control.adapters import LLMPlant

    plant = LLMPlant(llama, _tiny_tokenizer())
    desired = ["the movie was great", "i love it so", "very good film"]
    undesired = ["the movie was awful", "i hate it", "very bad film"]
    st = ALQRSteerer.fit(plant, desired, undesired, progress=False)
    ref = plant.last_token_states(desired)[:, :T].double().mean(0) - plant.last_token_states(undesired)[:, :T].double().mean(0)
    torch.testing.assert_close(st.e_norm.double(), ref.norm(dim=1), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(st.w).all() and st.w.abs().sum() > 0
    tok = plant.tokenizer
    batch = tok(undesired, return_tensors="pt", padding=True)
    with torch.no_grad(), st.attach(llama, lam=4.0):
        out = llama.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (3, batch["input_ids"].shape[1] + 3)


# --------------------------------------------------------------------------- embedded SmolLM2


@pytest.mark.slow
def test_embedded_alqr_moves_feature_towards_setpoint(embedded_plant):
    plant = embedded_plant
    desired = ["I loved this movie, it was wonderful.", "What a great and happy day!",
               "The food was delicious and the staff were kind."]
    undesired = ["I hated this movie, it was awful.", "What a terrible and sad day!",
                 "The food was disgusting and the staff were rude."]
    st = ALQRSteerer.fit(plant, desired, undesired, jacobian_prompts=desired[:1], max_tokens=6,
                         lam=1.0, progress=False)
    assert st.w.shape == (plant.horizon, plant.state_dim) and torch.isfinite(st.w).all()
    tests = ["The service at this hotel was", "My week has been"]
    plain = plant.last_token_states(tests)[:, : plant.horizon].double()
    with st.attach(plant.model):
        steered = plant.last_token_states(tests)[:, : plant.horizon].double()
    beta, v = st.beta_star.double(), st.v.double()
    gap_plain = (beta - torch.einsum("ptn,tn->pt", plain, v)).abs()
    gap_steered = (beta - torch.einsum("ptn,tn->pt", steered, v)).abs()
    late = slice(plant.horizon // 2, plant.horizon)  # the effect accumulates over the layers
    assert gap_steered[:, late].mean() < 0.8 * gap_plain[:, late].mean()


# --------------------------------------------------------------------------- API meta-tests


def _documented(doc: str) -> set[str]:
    import re

    section = re.split(r"\n\s*Parameters\n\s*-+\n", doc, maxsplit=1)
    assert len(section) == 2, "no numpydoc 'Parameters' section"
    body = re.split(r"\n\s*(Returns|Raises|Notes|Examples|Yields)\n\s*-+\n", section[1])[0]
    names = set()
    for match in re.finditer(r"^\s*([\w*, ]+?) :", body, re.M):
        names.update(n.strip().lstrip("*") for n in match.group(1).split(","))
    return names


@pytest.mark.parametrize("cls", [ALQRSteerer, ActAddSteerer, PIDSteerer])
@pytest.mark.parametrize("method", ["fit", "attach", "save", "load"])
def test_every_parameter_is_documented(cls, method):
    import inspect

    func = getattr(cls, method)
    params = [p.name for p in inspect.signature(func).parameters.values()
              if p.name not in ("self", "cls") and p.kind is not p.VAR_KEYWORD]
    missing = set(params) - _documented(inspect.getdoc(func) or "")
    assert not missing, f"{cls.__name__}.{method}: {sorted(missing)} undocumented"


@pytest.mark.parametrize("cls", [ALQRSteerer, ActAddSteerer, PIDSteerer])
def test_unknown_keywords_raise_argument_error(cls, llama):
    plant = _FakePlant()
    with pytest.raises(ArgumentError, match="not_a_parameter"):
        cls.fit(plant, ["good"], ["bad"], layers=[0], not_a_parameter=1)
    st = _steerer(cls=cls, layers=[0]) if cls is ActAddSteerer else _steerer(cls=cls)
    with pytest.raises(ArgumentError, match="not_a_parameter"):
        st.attach(llama, not_a_parameter=1)


def test_float64_model_keeps_float64_outputs():
    model = _hf_model("llama", torch.float64)
    blocks, _ = find_decoder_layers(model)
    st = _steerer()
    ids, _ = _batch(lengths=(4, 4))
    with torch.no_grad(), st.attach(model, positions="all"):
        probe = _Probe(blocks)
        model(ids)
        probe.remove()
    for k in range(T):
        assert probe.steered[k].dtype == torch.float64
        z = probe.z[k].float()
        u = ((st.beta_star[k] - z @ st.v[k])[..., None] * st.w[k]).double()
        assert torch.equal(probe.steered[k], probe.raw[k] + u)  # float32 law, exact widening


def test_last_position_that_is_padding_is_not_steered(llama):
    blocks, _ = find_decoder_layers(llama)
    st = _steerer()
    ids, mask = _batch(lengths=(6, 4), left=False)  # row 1 ends in padding
    with torch.no_grad(), st.attach(llama, positions="last"):
        probe = _Probe(blocks)
        llama(ids, attention_mask=mask)
        probe.remove()
    for k in range(T):
        diff = probe.steered[k] - probe.raw[k]
        assert torch.all(diff[1] == 0) and torch.all(diff[0, :-1] == 0)
        z = probe.z[k][0, -1]
        expected = (st.beta_star[k] - z @ st.v[k]) * st.w[k]
        torch.testing.assert_close(diff[0, -1], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("form", ["actadd", "alqr", "multi", "full_gain", "per_row"])
def test_affine_law_inplace_path_equals_its_definition(form):
    """u = c + U(b − Vᵀz): the generic call, the in-place fast path and a float64 oracle agree."""
    g = torch.Generator().manual_seed(3)
    B, n, r = 5, 7, 3
    z = torch.randn(B, n, generator=g)
    vec, mat = torch.randn(n, generator=g), torch.randn(n, r, generator=g)
    forms = {
        "actadd": dict(c=vec),
        "alqr": dict(U=torch.randn(n, generator=g), V=vec / vec.norm(), b=torch.tensor(1.5)),
        "multi": dict(U=torch.randn(n, r, generator=g), V=mat, b=torch.randn(r, generator=g)),
        "full_gain": dict(U=torch.randn(n, n, generator=g), b=torch.randn(n, generator=g)),
        "per_row": dict(c=torch.randn(B, n, generator=g)),
    }
    law = AffineLaw(**forms[form])
    p = {k: t.double() for k, t in forms[form].items()}
    expected = torch.zeros(B, n, dtype=torch.float64)
    if "U" in p:
        V = p.get("V")
        alpha = p["b"] - (z.double() if V is None else z.double() @ V)
        U = p["U"][:, None] if p["U"].ndim == 1 else p["U"]
        expected += (alpha[:, None] if alpha.ndim == 1 else alpha) @ U.T
    if "c" in p:
        expected += p["c"]
    torch.testing.assert_close(law(z, {}).double(), expected, rtol=1e-5, atol=1e-5)
    target = torch.zeros(B, n)
    law.add_last_inplace(z, target)
    torch.testing.assert_close(target.double(), expected, rtol=1e-5, atol=1e-5)
    # "all" positions: (B, L, n) inputs broadcast the same law over L
    if form != "per_row":
        zz = torch.stack([z, 2 * z], dim=1)
        torch.testing.assert_close(law(zz, {})[:, 0], law(z, {}))
