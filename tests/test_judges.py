"""Judges: keyword hit rate, VADER, the embedding classifier and the panel's report keys."""

from __future__ import annotations

import numpy as np
import pytest

from ltv_control import ArgumentError, DimensionError
from ltv_control.app.judges import EmbeddingJudge, JudgePanel, KeywordJudge, VaderJudge
from ltv_control.app.tasks import builtin_concepts, load_task

_VOCAB = ["wave", "sea", "boat", "tide", "tax", "office", "report", "desk", "soup", "bread"]


def bag_of_words(texts):
    """A deterministic toy encoder: word counts over a fixed vocabulary, plus a bias feature."""
    rows = [[t.lower().split().count(w) for w in _VOCAB] + [1.0] for t in texts]
    return np.asarray(rows, dtype=np.float64)


SEA = [f"the {a} and the {b} today" for a in ("wave", "sea", "boat", "tide") for b in ("sea", "boat")]
WORK = [f"the {a} and the {b} today" for a in ("tax", "office", "report", "desk") for b in ("desk", "tax")]


def test_keyword_judge_oracle():
    judge = KeywordJudge(["Sea", "ocean waves", "ship"])
    texts = ["The SEA is calm.", "seashells on the shore", "Big ocean waves!", "A ship, a sea.", ""]
    result = judge(texts)
    np.testing.assert_array_equal(result.scores, [1, 0, 1, 2, 0])  # "seashells" is not "sea"
    np.testing.assert_array_equal(result.hits, [True, False, True, True, False])
    assert result.summary == {"concept_rate_keywords": 0.6}
    assert judge.describe()["keywords"] == ["ocean waves", "sea", "ship"]
    with pytest.raises(DimensionError):
        KeywordJudge(["  "])
    with pytest.raises(ArgumentError):
        judge("a single string")


def test_vader_judge_matches_metrics():
    from ltv_control.app import metrics

    texts = ["What a wonderful, lovely day!", "This is terrible and sad.", "The table is brown."]
    result = VaderJudge()(texts)
    np.testing.assert_allclose(result.scores, metrics.vader_compound(texts))
    assert result.summary["positive_rate"] == pytest.approx(metrics.positive_rate(texts))
    assert result.summary["vader_mean"] == pytest.approx(metrics.vader_mean(texts))
    assert result.hits.tolist() == [True, False, False]


def test_embedding_judge_separable_data():
    judge = EmbeddingJudge.fit(SEA, WORK, encoder=bag_of_words, c=10.0)
    assert judge.accuracy == 1.0  # linearly separable: every fold is classified correctly
    result = judge(["a boat on the sea", "my tax report", "the tide", "office desk"])
    assert result.hits.tolist() == [True, False, True, False]
    assert result.summary == {"concept_rate_embedding": 0.5,
                              "concept_rate_embedding_accuracy": 1.0}
    assert np.all((result.scores >= 0) & (result.scores <= 1))
    assert "accuracy 1.000" in judge.describe()["measures"]


def test_embedding_judge_reports_chance_accuracy_on_indistinguishable_sets():
    same = [f"text {i}" for i in range(20)]  # the toy encoder maps all of them to one vector
    judge = EmbeddingJudge.fit(same[:10], same[10:], encoder=bag_of_words)
    assert judge.accuracy <= 0.6


def test_embedding_judge_checks_inputs():
    with pytest.raises(DimensionError, match="at least 2"):
        EmbeddingJudge.fit(["a"], WORK, encoder=bag_of_words)
    with pytest.raises(DimensionError, match="encoder must return"):
        EmbeddingJudge.fit(SEA, WORK, encoder=lambda t: np.zeros((3, 2)))


def _toy_task(task):
    """Replace a built-in task's judge sets with toy-encoder-friendly texts."""
    from dataclasses import replace

    return replace(task, judge_desired=tuple(SEA), judge_undesired=tuple(WORK))


def test_panel_keys_single_concept():
    task = _toy_task(load_task(f"concept:{builtin_concepts()[0]}"))
    panel = JudgePanel.for_task(task, encoder=bag_of_words)
    out = panel(["a boat on the sea", "my tax report"])
    assert set(out) == {"concept_rate", "concept_rate_keywords", "concept_rate_embedding",
                        "concept_rate_embedding_accuracy"}
    assert out["concept_rate"] == out["concept_rate_keywords"]  # keywords given: keyword judge
    from dataclasses import replace

    no_kw = JudgePanel.for_task(replace(task, keywords=()), encoder=bag_of_words)
    out = no_kw(["a boat on the sea", "my tax report", "the tide"])
    assert out["concept_rate"] == out["concept_rate_embedding"] == pytest.approx(2 / 3)
    assert "concept_rate_keywords" not in out
    with pytest.raises(ArgumentError, match="embedding=True"):
        JudgePanel.for_task(replace(task, keywords=()), embedding=False)


def test_panel_keys_multi_concept():
    from dataclasses import replace

    a, b = builtin_concepts()[:2]
    multi = load_task(f"concept:{a}+concept:{b}")
    multi = replace(multi, components=tuple(_toy_task(c) for c in multi.components))
    panel = JudgePanel.for_task(multi, encoder=bag_of_words)
    kw = [KeywordJudge(c.keywords) for c in multi.components]
    texts = [f"{kw[0].keywords[0]} and {kw[1].keywords[0]}", kw[0].keywords[0], "nothing here"]
    out = panel(texts)
    assert out[f"concept_rate.{a}"] == pytest.approx(2 / 3)
    assert out[f"concept_rate.{b}"] == pytest.approx(1 / 3)
    assert out["concept_rate"] == pytest.approx(0.5)
    assert out["concept_rate_all"] == pytest.approx(1 / 3)
    assert f"concept_rate_embedding_accuracy.{a}" in out and "concept_rate_embedding" in out
    assert {d["concept"] for d in panel.describe()} == {a, b}


def test_panel_sentiment():
    panel = JudgePanel.for_task(load_task("sentiment"))
    assert set(panel(["I love it."])) == {"positive_rate", "vader_mean"}


@pytest.mark.slow
def test_minilm_judge_on_builtin_concepts():
    """The shipped embedding judge separates every built-in concept from the neutral sentences
    (cross-validated on the held-out judge sets) and labels obvious new sentences."""
    obvious = {"sea": "Huge waves rolled onto the sandy beach.",
               "food": "She cooked a delicious pasta dinner.",
               "space": "The astronauts orbited the distant planet.",
               "weddings": "The bride and groom exchanged their vows.",
               "music": "The band played a loud rock song at the concert."}
    for name in builtin_concepts():
        task = load_task(f"concept:{name}")
        panel = JudgePanel.for_task(task)
        embed = next(j for j in panel.judges if isinstance(j, EmbeddingJudge))
        assert embed.accuracy >= 0.9, (name, embed.accuracy)
        if name in obvious:
            hits = embed([obvious[name], "I renewed my library card on Tuesday."]).hits
            assert hits.tolist() == [True, False], name
