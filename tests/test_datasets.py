"""The packaged sentiment task: sizes, disjointness, parallel structure."""

from __future__ import annotations

import pytest

from ltv_control import ArgumentError, PropertyError
from ltv_control.app.datasets import SentimentTask, load_sentiment_task, read_lines


def test_sizes_and_types():
    task = load_sentiment_task()
    assert isinstance(task, SentimentTask)
    assert len(task.desired) >= 200 and len(task.undesired) >= 200
    assert len(task.desired) == len(task.undesired)  # parallel pairs
    assert len(task.eval_prompts) >= 60
    assert len(task.jacobian_prompts) >= 20
    for group in (task.desired, task.undesired, task.eval_prompts, task.jacobian_prompts):
        assert all(isinstance(s, str) and s == s.strip() and s for s in group)
        assert len(set(group)) == len(group), "duplicates inside a set"


def test_sets_are_disjoint():
    task = load_sentiment_task()
    fit = set(task.desired) | set(task.undesired) | set(task.jacobian_prompts)
    assert not set(task.desired) & set(task.undesired)
    assert not set(task.eval_prompts) & fit
    # an evaluation opening is not the beginning of any fitting sentence either
    lowered = [s.lower() for s in fit]
    for prompt in task.eval_prompts:
        assert not any(s.startswith(prompt.lower()) for s in lowered), prompt


def test_sentiment_polarity_of_the_sets():
    from ltv_control.app.metrics import positive_rate, vader_mean

    task = load_sentiment_task()
    assert positive_rate(list(task.desired)) > 0.8
    assert positive_rate(list(task.undesired)) < 0.1
    assert abs(vader_mean(list(task.eval_prompts))) < 0.1  # neutral openings


def test_pairs_are_roughly_parallel_in_length():
    task = load_sentiment_task()
    for pos, neg in zip(task.desired, task.undesired):
        assert abs(len(pos.split()) - len(neg.split())) <= 4, (pos, neg)


def test_subset_and_errors(tmp_path):
    task = load_sentiment_task().subset(n_fit=5, n_eval=3)
    assert len(task.desired) == len(task.undesired) == 5 and len(task.eval_prompts) == 3
    with pytest.raises(PropertyError):
        load_sentiment_task().subset(n_fit=0)
    with pytest.raises(ArgumentError):
        load_sentiment_task(lang="en")
    path = tmp_path / "x.txt"
    path.write_text("  one \n\n two\n", encoding="utf-8")
    assert read_lines(path) == ("one", "two")
    with pytest.raises(FileNotFoundError):
        read_lines(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(PropertyError):
        read_lines(tmp_path / "empty.txt")
