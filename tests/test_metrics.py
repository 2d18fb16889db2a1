"""Metrics against hand-computed and independent oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ltv_control import ArgumentError, DimensionError, PropertyError
from ltv_control.app import metrics


def test_distinct2_by_hand():
    texts = ["a b a b", "b a c"]
    # bigrams: (a,b) (b,a) (a,b) | (b,a) (a,c)  -> 5 total, 3 unique
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert metrics.distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert metrics.distinct_n(["A B", "a b"], 2) == pytest.approx(1 / 2)  # lower-cased
    assert metrics.distinct_n(["one", ""], 2) == 0.0


def test_distinct_rejects_bad_input():
    with pytest.raises(ArgumentError):
        metrics.distinct_n("a plain string")
    with pytest.raises(PropertyError):
        metrics.distinct_n(["a b"], 0)


def test_vader_scores_match_the_analyzer_and_threshold():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    texts = ["What a wonderful, happy day!", "This is awful and I hate it.", "The box is on the table."]
    oracle = np.array([SentimentIntensityAnalyzer().polarity_scores(t)["compound"] for t in texts])
    np.testing.assert_allclose(metrics.vader_compound(texts), oracle)
    assert metrics.vader_mean(texts) == pytest.approx(oracle.mean())
    assert oracle[0] >= 0.05 > oracle[2] and oracle[1] < 0
    assert metrics.positive_rate(texts) == pytest.approx(1 / 3)
    assert metrics.positive_rate(texts, threshold=-1.0) == 1.0
    assert math.isnan(metrics.vader_mean([]))


def test_left_pad_positions():
    """The adapters' left padding that perplexity and generation use (one pad rule)."""
    torch = pytest.importorskip("torch")
    from ltv_control.adapters.tokens import left_pad

    ids, mask, pos = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert ids.dtype == torch.long


def test_perplexity_matches_manual_cross_entropy():
    torch = pytest.importorskip("torch")
    from _tiny_lm import tiny_llama

    model, tok = tiny_llama(seed=3)
    prompts = ["The soup was", "I went to the store yesterday and"]
    conts = ["warm and full of flavor .", "the"]
    # Oracle: one unpadded sequence at a time, cross-entropy over continuation tokens only.
    total_nll, total_n, each = 0.0, 0, []
    for p, c in zip(prompts, conts):
        p_ids = tok(p)["input_ids"]
        c_ids = tok(c, add_special_tokens=False)["input_ids"]
        seq = torch.tensor([p_ids + c_ids])
        with torch.no_grad():
            logits = model(seq).logits[0].double()
        ce = torch.nn.functional.cross_entropy(
            logits[len(p_ids) - 1:-1], seq[0, len(p_ids):], reduction="sum").item()
        total_nll += ce
        total_n += len(c_ids)
        each.append(math.exp(ce / len(c_ids)))
    ppl, per = metrics.continuation_perplexity(model, tok, prompts, conts, batch_size=2,
                                               per_text=True)
    assert ppl == pytest.approx(math.exp(total_nll / total_n), rel=1e-4)
    np.testing.assert_allclose(per, each, rtol=1e-4)
    # token-id continuations give the same number; batching (left padding) does not change it
    ids = [tok(c, add_special_tokens=False)["input_ids"] for c in conts]
    assert metrics.continuation_perplexity(model, tok, prompts, ids, batch_size=1) == pytest.approx(
        ppl, rel=1e-4)


def test_perplexity_edge_cases():
    pytest.importorskip("torch")
    from _tiny_lm import tiny_llama

    model, tok = tiny_llama(seed=3)
    assert math.isnan(metrics.continuation_perplexity(model, tok, ["a"], [""]))
    with pytest.raises(DimensionError):
        metrics.continuation_perplexity(model, tok, ["a", "b"], ["x"])
    with pytest.raises(PropertyError):
        metrics.continuation_perplexity(model, tok, ["a"], ["x"], batch_size=0)


def test_tokens_per_second():
    assert metrics.tokens_per_second(10, 2.0) == 5.0
    assert math.isnan(metrics.tokens_per_second(10, 0.0))
    with pytest.raises(PropertyError):
        metrics.tokens_per_second(-1, 1.0)
