"""The adapters' contract on more transformers families: tiny random models built in-process.

Covers conventions the seven families of ``test_families.py`` do not: tuple block outputs and
parallel attention (Falcon), ALiBi without position ids (Bloom, MPT), learned absolute
positions (OPT, BioGPT, a BART decoder), multi-query attention (GPTBigCode), local attention
(GPT-Neo), partial rotary (GPT-J, CodeGen, StableLM, Phi), sliding windows (Gemma-3), QK-norm
(Qwen3, OLMo-2), MoE blocks (Mixtral, Qwen2-MoE), logit/residual scalings (Cohere, Granite),
a hybrid Mamba/attention stack of mixed block classes (Jamba) and a model without a KV cache
object (RecurrentGemma).

Oracles: ``torch.autograd.functional.jacobian`` of the straightforward full-sequence block
function (float64); each prompt alone vs in a left-padded batch; steered generation of each
prompt alone vs batched; cache on vs off for ``positions="all"``; a saved-and-loaded steerer
vs the original. Families whose own unsteered generation is not padding-invariant (the BART
decoder: no position ids) are left out of the generation test.
"""

from __future__ import annotations

import functools
import warnings

import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

from _tiny_families import char_tokenizer
from ltv_control.adapters import ActAddSteerer, ALQRSteerer, LLMPlant, PIDSteerer
from ltv_control.adapters._blocks import get_block_output, replace_block_input
from ltv_control.adapters._replay import ReplayError, block_input_of, clean_capture

# the hybrid / recurrent families use the full-sequence replay and say so once
pytestmark = pytest.mark.filterwarnings("ignore:.*cached replay unavailable:RuntimeWarning")

H, L = 32, 3
PROMPTS = ["Hello world, this", "Hi", "abc def!"]
DESIRED = ["good great nice", "lovely day", "happy!"]
UNDESIRED = ["bad awful", "terrible day here", "sad."]


def _config(family: str, tok) -> tuple:
    """(config, expected layer path, replay method the plant should pick)."""
    c = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
         "eos_token_id": tok.eos_token_id}
    std = dict(hidden_size=H, intermediate_size=2 * H, num_hidden_layers=L, num_attention_heads=4,
               num_key_value_heads=2, **c)
    if family == "opt":
        return tf.OPTConfig(hidden_size=H, ffn_dim=2 * H, num_hidden_layers=L, num_attention_heads=4,
                            word_embed_proj_dim=H, max_position_embeddings=128, **c), "model.decoder.layers", "cached"
    if family == "bloom":
        return tf.BloomConfig(hidden_size=H, n_layer=L, n_head=4, **c), "transformer.h", "cached"
    if family == "falcon":
        return tf.FalconConfig(hidden_size=H, num_hidden_layers=L, num_attention_heads=4, **c), "transformer.h", "cached"
    if family == "falcon_alibi":
        return (tf.FalconConfig(hidden_size=H, num_hidden_layers=L, num_attention_heads=4, alibi=True,
                                multi_query=False, **c), "transformer.h", "cached")
    if family == "gptj":
        return tf.GPTJConfig(n_embd=H, n_layer=L, n_head=4, rotary_dim=4, n_positions=128, **c), "transformer.h", "cached"
    if family == "codegen":
        return (tf.CodeGenConfig(n_embd=H, n_layer=L, n_head=4, rotary_dim=4, n_positions=128, n_ctx=128, **c),
                "transformer.h", "cached")
    if family == "gpt_bigcode":
        return tf.GPTBigCodeConfig(n_embd=H, n_layer=L, n_head=4, n_positions=128, **c), "transformer.h", "cached"
    if family == "gpt_neo":
        return (tf.GPTNeoConfig(hidden_size=H, num_layers=L, num_heads=4, window_size=4, max_position_embeddings=128,
                                attention_types=[[["global", "local"], 1], [["global"], 1]], **c),
                "transformer.h", "cached")
    if family == "mpt":
        return tf.MptConfig(d_model=H, n_layers=L, n_heads=4, max_seq_len=128, **c), "transformer.blocks", "cached"
    if family == "gemma":
        return tf.GemmaConfig(**std, head_dim=8), "model.layers", "cached"
    if family == "gemma3":
        return (tf.Gemma3TextConfig(**std, head_dim=8, sliding_window=4,
                                    layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
                "model.layers", "cached")
    if family == "qwen3":
        return tf.Qwen3Config(**std, head_dim=8), "model.layers", "cached"
    if family == "olmo2":
        return tf.Olmo2Config(**std), "model.layers", "cached"
    if family == "stablelm":
        return tf.StableLmConfig(**std), "model.layers", "cached"
    if family == "phi":
        return (tf.PhiConfig(hidden_size=H, intermediate_size=2 * H, num_hidden_layers=L, num_attention_heads=4, **c),
                "model.layers", "cached")
    if family == "mixtral":
        return tf.MixtralConfig(**std, num_local_experts=4, num_experts_per_tok=2), "model.layers", "cached"
    if family == "qwen2_moe":
        return (tf.Qwen2MoeConfig(**std, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=H,
                                  shared_expert_intermediate_size=H), "model.layers", "cached")
    if family == "cohere":
        return tf.CohereConfig(**std), "model.layers", "cached"
    if family == "granite":
        return tf.GraniteConfig(**std), "model.layers", "cached"
    if family == "biogpt":
        return (tf.BioGptConfig(hidden_size=H, intermediate_size=2 * H, num_hidden_layers=L, num_attention_heads=4,
                                max_position_embeddings=128, **c), "biogpt.layers", "cached")
    if family == "bart_decoder":
        return (tf.BartConfig(d_model=H, encoder_layers=L, decoder_layers=L, encoder_attention_heads=4,
                              decoder_attention_heads=4, encoder_ffn_dim=2 * H, decoder_ffn_dim=2 * H,
                              max_position_embeddings=128, is_decoder=True, is_encoder_decoder=False, **c),
                "model.decoder.layers", "cached")
    if family == "jamba":
        return (tf.JambaConfig(**std, num_experts=2, num_experts_per_tok=1, expert_layer_period=2,
                               expert_layer_offset=1, attn_layer_period=2, attn_layer_offset=1, mamba_d_state=4,
                               mamba_dt_rank=4), "model.layers", "full")
    if family == "recurrent_gemma":
        return (tf.RecurrentGemmaConfig(hidden_size=H, intermediate_size=2 * H, num_hidden_layers=L,
                                        num_attention_heads=4, num_key_value_heads=2, lru_width=H,
                                        attention_window_size=4,
                                        block_types=["recurrent", "attention", "recurrent"], **c),
                "model.layers", "full")
    raise ValueError(f"unknown family {family!r}")


FAMILIES = [
    "opt", "bloom", "falcon", "falcon_alibi", "gptj", "codegen", "gpt_bigcode", "gpt_neo", "mpt", "gemma",
    "gemma3", "qwen3", "olmo2", "stablelm", "phi", "mixtral", "qwen2_moe", "cohere", "granite", "biogpt",
    "bart_decoder", "jamba", "recurrent_gemma",
]
#: the model's own unsteered batched generation differs from each prompt alone (no position ids)
NOT_PADDING_INVARIANT = {"bart_decoder"}


@functools.cache
def _model(family: str, dtype: torch.dtype = torch.float32):
    tok = char_tokenizer()
    config, path, method = _config(family, tok)
    # the default grouped_mm MoE kernels take no float64; the eager loop does
    moe = ("mixtral", "qwen2_moe", "jamba")
    extra = {"experts_implementation": "eager"} if dtype == torch.float64 and family in moe else {}
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tf.AutoModelForCausalLM.from_config(config, **extra).eval()
    with torch.no_grad():  # random init is tiny; larger weights make the blocks visibly nonlinear
        for name, param in model.named_parameters():
            if param.dim() == 2 and "emb" not in name and "wte" not in name and "wpe" not in name:
                param.mul_(3.0)
    return model.to(dtype), tok, path, method


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _generate(model, ids, mask, **kwargs):
    out = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0,
                         output_scores=True, return_dict_in_generate=True, **kwargs)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.scores, 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_plant_states_and_layers(family):
    model, tok, path, _ = _model(family)
    plant = LLMPlant(model, tok)
    assert plant.layer_path == path
    assert plant.horizon == model.config.num_hidden_layers == L
    assert plant.state_dim == H
    states = plant.last_token_states(PROMPTS, batch_size=3)
    assert states.dtype == torch.float32 and states.shape == (len(PROMPTS), L + 1, H)
    assert torch.isfinite(states).all()
    alone = torch.cat([plant.last_token_states([p]) for p in PROMPTS])
    torch.testing.assert_close(states, alone, rtol=1e-4, atol=1e-4)
    # the states are the blocks' inputs: consecutive states differ (the blocks act)
    assert (states[:, 1:] - states[:, :-1]).norm(dim=-1).min() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_jacobians_match_autograd_float64(family):
    model, tok, _, method = _model(family, torch.float64)
    plant = LLMPlant(model, tok)
    with warnings.catch_warnings():
        # the one-token replay must work where the model decodes through a KV cache
        warnings.simplefilter("error" if method == "cached" else "ignore", RuntimeWarning)
        batched = dict(plant.iter_jacobians(PROMPTS, reduce="none", batch_size=3, progress=False))
    assert plant.jacobian_method == method
    ids = torch.tensor([tok(PROMPTS[0])["input_ids"]])
    calls = clean_capture(model, plant.layers, ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None])
    alone = dict(plant.iter_jacobians(PROMPTS[1:2], reduce="none", batch_size=1, progress=False))
    for k in range(L):
        call = calls[k]
        hidden = block_input_of(call).detach()

        def block_last(x, call=call, hidden=hidden, k=k):
            full = torch.cat([hidden[:, :-1], x[None, None]], dim=1)
            args, kwargs = replace_block_input(call.args, call.kwargs, full)
            return get_block_output(plant.layers[k](*args, **kwargs))[0, -1]

        reference = torch.autograd.functional.jacobian(block_last, hidden[0, -1].clone())
        err = (batched[k][0] - reference).norm() / reference.norm()
        assert err < 1e-6, f"layer {k}: relative error {err:.3g}"
        assert (reference - torch.eye(H, dtype=reference.dtype)).norm() > 0.1  # not vacuous
        err = (batched[k][1] - alone[k][0]).norm() / alone[k][0].norm()  # padded row == alone
        assert err < 1e-6, f"layer {k}: padded vs alone {err:.3g}"


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in NOT_PADDING_INVARIANT])
def test_alqr_generate_batched_cache_on_off(family):
    model, tok, _, _ = _model(family)
    plant = LLMPlant(model, tok)
    steerer = ALQRSteerer.fit(plant, DESIRED, UNDESIRED, lam=2.0, progress=False)
    enc = tok(["Hello there, friend", "Hi"], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert not bool(mask.all())  # left padding in the batch
    before = _hook_count(model)
    with torch.no_grad():
        _, plain = _generate(model, ids, mask)
        for positions in ("last", "all"):
            with steerer.attach(model, positions=positions) as handle:
                cached, cached_scores = _generate(model, ids, mask, use_cache=True)
                recomputed, recomputed_scores = _generate(model, ids, mask, use_cache=False)
                for i in range(2):
                    keep = mask[i].bool()
                    single, single_scores = _generate(model, ids[i : i + 1, keep], mask[i : i + 1, keep],
                                                      use_cache=True)
                    m = single.shape[1]  # a prompt alone may stop early at EOS
                    assert torch.equal(cached[i, :m], single[0])
                    torch.testing.assert_close(cached_scores[i, :m], single_scores[0], rtol=1e-4, atol=1e-4)
            assert handle.calls > 0 and not handle.active
            m = min(cached.shape[1], recomputed.shape[1], plain.shape[1])
            if positions == "all":  # every position steered: the cache changes nothing
                assert torch.equal(cached[:, :m], recomputed[:, :m])
                torch.testing.assert_close(cached_scores[:, :m], recomputed_scores[:, :m], rtol=1e-4, atol=1e-4)
            assert not torch.allclose(cached_scores[:, :m], plain[:, :m], atol=1e-3)  # steering acts
    assert _hook_count(model) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_baselines_attach_and_files_round_trip(family, tmp_path):
    model, tok, _, _ = _model(family)
    plant = LLMPlant(model, tok)
    actadd = ActAddSteerer.fit(plant, DESIRED, UNDESIRED, layers=[1], coeff=2.0)
    pid = PIDSteerer.fit(plant, DESIRED, UNDESIRED)
    ids = torch.tensor([tok("Hello there")["input_ids"]])
    before = _hook_count(model)
    with torch.no_grad():
        plain = model(ids).logits
        for steerer in (actadd, pid):
            path = steerer.save(tmp_path / f"{steerer.kind}.safetensors")
            loaded = type(steerer).load(path, model=model)
            with steerer.attach(model):
                steered = model(ids).logits
            with loaded.attach(model):
                again = model(ids).logits
            assert torch.equal(steered, again)
            assert not torch.allclose(steered, plain, atol=1e-4)
    assert _hook_count(model) == before


def test_multi_stream_blocks_are_refused_naming_layers():
    """Gemma-3n blocks carry several residual streams (B-leading axis is not the batch)."""
    tok = char_tokenizer()
    config = tf.Gemma3nTextConfig(
        hidden_size=H, intermediate_size=[2 * H] * L, num_hidden_layers=L, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, hidden_size_per_layer_input=8, vocab_size_per_layer_input=len(tok),
        laurel_rank=4, altup_num_inputs=2, num_kv_shared_layers=0, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        activation_sparsity_pattern=[0.0] * L, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    plant = LLMPlant(model, tok)
    with pytest.raises(ReplayError, match="layers="):
        plant.last_token_states(PROMPTS[:1])
