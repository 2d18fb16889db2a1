"""A tiny random Llama model with an in-process word-level tokenizer (no downloads).

Used by the CLI / metrics / experiment tests (helper H6).  Not a test module.
"""

from __future__ import annotations

from pathlib import Path


def _vocabulary() -> list[str]:
    from ltv_control.app.datasets import load_sentiment_task

    task = load_sentiment_task()
    words: set[str] = set()
    for group in (task.desired, task.undesired, task.eval_prompts, task.jacobian_prompts):
        for sentence in group:
            words.update(sentence.lower().replace(".", " .").replace(",", " ,").split())
    return sorted(words)


def tiny_tokenizer():
    """A word-level PreTrainedTokenizerFast over the packaged sentences' words, with BOS/EOS."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + _vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    from tokenizers import decoders

    core.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<s>", eos_token="</s>")
    tok.padding_side = "left"
    return tok


def tiny_llama(seed: int = 0, *, layers: int = 3, hidden: int = 32):
    """A random LlamaForCausalLM (float32, eval mode) and its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    return model, tok


def save_tiny_llama(directory: Path, seed: int = 0, **kwargs) -> Path:
    """Save a tiny model and its tokenizer as a transformers directory; return the directory."""
    model, tok = tiny_llama(seed, **kwargs)
    directory = Path(directory)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
