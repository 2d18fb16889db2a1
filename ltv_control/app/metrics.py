"""Evaluation metrics for steered generation.

* Sentiment: VADER's compound score (offline lexicon, :mod:`vaderSentiment`), its mean, and the
  positive rate, the fraction of texts with compound ``>= 0.05`` (VADER's own recommended
  threshold for "positive").
* Diversity: distinct-n, unique n-grams over all n-grams, pooled over the texts.
* Fluency: perplexity of the continuation under an (unsteered) reference model, the prompt
  tokens masked out of the loss.
* Speed: generated tokens per second.

``vaderSentiment`` and ``torch`` are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ltv_control import ArgumentError, DimensionError, PropertyError

__all__ = [
    "POSITIVE_THRESHOLD",
    "check_texts",
    "continuation_perplexity",
    "distinct_n",
    "positive_rate",
    "tokens_per_second",
    "vader_compound",
    "vader_mean",
]

POSITIVE_THRESHOLD = 0.05
"""A text counts as positive when its VADER compound score is at least this value."""

_ANALYZER = None


def _analyzer():
    global _ANALYZER
    if _ANALYZER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _ANALYZER = SentimentIntensityAnalyzer()
    return _ANALYZER


def check_texts(texts, name="texts") -> list[str]:
    """``texts`` as a list of str (ArgumentError naming the argument or the bad item)."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ArgumentError(f"{name} must be a sequence of str, found {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ArgumentError(f"{name}[{i}] must be str, found {type(text).__name__}")
    return list(texts)


def vader_compound(texts: Sequence[str]) -> np.ndarray:
    """VADER compound score of every text, each in [-1, 1].

    Parameters
    ----------
    texts : sequence of str, length P

    Returns
    -------
    numpy.ndarray, shape (P,), float64
    """
    texts = check_texts(texts)
    analyzer = _analyzer()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)


def vader_mean(texts: Sequence[str]) -> float:
    """Mean VADER compound score, ``(1/P) Σ_p c_p`` (NaN for no text)."""
    scores = vader_compound(texts)
    return float(scores.mean()) if scores.size else float("nan")


def positive_rate(texts: Sequence[str], *, threshold: float = POSITIVE_THRESHOLD) -> float:
    """Fraction of texts with VADER compound ``c_p >= threshold`` (default 0.05; NaN for no text)."""
    scores = vader_compound(texts)
    return float((scores >= threshold).mean()) if scores.size else float("nan")


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n: number of unique n-grams divided by the number of n-grams, pooled over texts.

    Texts are lower-cased and split on whitespace; n-grams do not cross text boundaries.
    Returns 0.0 when no text has ``n`` words.

    Parameters
    ----------
    texts : sequence of str
    n : int, default 2
    """
    texts = check_texts(texts)
    if not isinstance(n, int) or n < 1:
        raise PropertyError(f"n must be a positive int, found {n!r}")
    total = 0
    unique: set[tuple[str, ...]] = set()
    for text in texts:
        words = text.lower().split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def tokens_per_second(n_tokens: int, seconds: float) -> float:
    """Throughput ``n_tokens / seconds`` (NaN when ``seconds <= 0``)."""
    if n_tokens < 0:
        raise PropertyError(f"n_tokens must be >= 0, found {n_tokens}")
    return float(n_tokens) / seconds if seconds > 0 else float("nan")


def continuation_perplexity(model, tokenizer, prompts: Sequence[str],
                            continuations: Sequence[str] | Sequence[Sequence[int]], *,
                            batch_size: int = 8, per_text: bool = False, progress: bool = False):
    """Perplexity of continuations given their prompts under ``model``, prompt tokens masked.

    With ``t`` running over every continuation token of every text,

        ppl = exp( -(1/N) Σ_t log p(y_t | prompt, y_<t) ),

    the token-weighted (corpus) perplexity.  Prompts are tokenized as given
    (``tokenizer(prompt)``, the tokenizer's own special tokens); a string continuation is
    tokenized without special tokens, a list of ints is used as is.  Batches are left padded with
    explicit position ids.  Empty continuations contribute nothing.

    Parameters
    ----------
    model : transformers causal LM
        The reference model; evaluate it *unsteered* (no steering hooks attached).
    tokenizer : transformers tokenizer
    prompts : sequence of str, length P
    continuations : sequence of str or of token-id lists, length P
    batch_size : int, default 8
    per_text : bool, default False
        Also return the per-text perplexities, shape (P,) (NaN for an empty continuation).
    progress : bool, default False
        Show a tqdm progress bar.

    Returns
    -------
    float, or (float, numpy.ndarray) when ``per_text``.  NaN when no continuation has a token.
    """
    prompts = check_texts(prompts, "prompts")
    if len(continuations) != len(prompts):
        raise DimensionError(
            f"continuations must have one entry per prompt: expected {len(prompts)}, "
            f"found {len(continuations)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise PropertyError(f"batch_size must be a positive int, found {batch_size!r}")
    rows = [_token_rows(tokenizer, p, c) for p, c in zip(prompts, continuations)]
    nll = np.zeros(len(rows))
    count = np.zeros(len(rows), dtype=np.int64)
    starts = range(0, len(rows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="perplexity", unit="batch")
    for start in starts:
        chunk = [(i, p, c) for i, (p, c) in enumerate(rows[start:start + batch_size], start) if c]
        if chunk:
            batch_nll, batch_count = _continuation_nll(model, tokenizer, chunk)
            for row, (i, _, _) in enumerate(chunk):
                nll[i], count[i] = batch_nll[row], batch_count[row]
    total = int(count.sum())
    corpus = math.exp(nll.sum() / total) if total else float("nan")
    if per_text:
        with np.errstate(invalid="ignore", divide="ignore"):
            each = np.where(count > 0, np.exp(nll / np.maximum(count, 1)), np.nan)
        return corpus, each
    return corpus


def _token_rows(tokenizer, prompt: str, cont) -> tuple[list[int], list[int]]:
    """Prompt ids (``tokenizer(prompt)``) and continuation ids (a string is tokenized without
    special tokens, a list of ints used as is)."""
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    if isinstance(cont, str):
        cont_ids = list(tokenizer(cont, add_special_tokens=False)["input_ids"]) if cont else []
    else:
        cont_ids = [int(t) for t in cont]
    return prompt_ids, cont_ids


def _continuation_nll(model, tokenizer, chunk) -> tuple[np.ndarray, np.ndarray]:
    """Summed negative log-likelihood ``−Σ_t log p(y_t | prompt, y_<t)`` of each row's
    continuation tokens, and their count, in one left-padded forward pass."""
    import torch

    from ltv_control.adapters import left_pad, model_device, pad_token_id

    batch = left_pad([p + c for _, p, c in chunk], pad_token_id(tokenizer),
                     device=model_device(model))
    ids = batch.input_ids.cpu()
    labels = torch.full_like(ids, -100)
    length = ids.shape[1]
    for row, (_, _, c) in enumerate(chunk):
        labels[row, length - len(c):] = ids[row, length - len(c):]
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False).logits
    logp = torch.log_softmax(logits[:, :-1].to(torch.float64), dim=-1).cpu()
    target = labels[:, 1:]
    valid = target != -100
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (-(picked * valid).sum(-1)).numpy(), valid.sum(-1).numpy()
