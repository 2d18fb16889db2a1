"""Tiny random causal LMs of seven families, built from configs in-process (no downloads).

Used by the plant / family / diagnostics tests (helper H3); importable by other tests as
``from _tiny_families import tiny_model, FAMILIES, char_tokenizer``. Not a test module.
"""

from __future__ import annotations

import string

#: family name -> (expected dotted path of the decoder blocks, uses RMSNorm computed in float32)
FAMILIES = {
    "llama": ("model.layers", True),
    "qwen2": ("model.layers", True),
    "gemma2": ("model.layers", True),
    "mistral": ("model.layers", True),
    "gpt2": ("transformer.h", False),
    "gpt_neox": ("gpt_neox.layers", False),
    "phi3": ("model.layers", True),
}

_CHARS = string.ascii_letters + string.digits + string.punctuation + " "


def char_tokenizer():
    """A character-level PreTrainedTokenizerFast (BOS prepended, pad id 0, left padding)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(_CHARS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tok.padding_side = "left"
    return tok


def tiny_model(family: str, *, dtype=None, seed: int = 0, layers: int = 3, hidden: int = 32):
    """A random model of ``family`` (see :data:`FAMILIES`) in eval mode, and a char tokenizer."""
    import torch
    import transformers as tf

    tok = char_tokenizer()
    common = dict(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    heads = dict(num_attention_heads=4, num_key_value_heads=2)
    size = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers)
    if family == "llama":
        config = tf.LlamaConfig(**size, **heads, **common)
        cls = tf.LlamaForCausalLM
    elif family == "qwen2":
        config = tf.Qwen2Config(**size, **heads, **common)
        cls = tf.Qwen2ForCausalLM
    elif family == "gemma2":
        config = tf.Gemma2Config(
            **size, **heads, **common, head_dim=hidden // 4, attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0, query_pre_attn_scalar=hidden // 4, sliding_window=4,
        )
        cls = tf.Gemma2ForCausalLM
    elif family == "mistral":
        config = tf.MistralConfig(**size, **heads, **common, sliding_window=6)
        cls = tf.MistralForCausalLM
    elif family == "gpt2":
        config = tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=128, **common)
        cls = tf.GPT2LMHeadModel
    elif family == "gpt_neox":
        config = tf.GPTNeoXConfig(
            **size, num_attention_heads=4, use_parallel_residual=True, rotary_pct=0.5, **common
        )
        cls = tf.GPTNeoXForCausalLM
    elif family == "phi3":
        config = tf.Phi3Config(**size, **heads, **common)
        cls = tf.Phi3ForCausalLM
    else:
        raise ValueError(f"unknown family {family!r}")
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # random init is tiny; larger weights make the blocks visibly nonlinear
        for name, param in model.named_parameters():
            if param.dim() == 2 and "emb" not in name and "wte" not in name and "wpe" not in name:
                param.mul_(3.0)
    if dtype is not None:
        model = model.to(dtype)
    return model, tok
