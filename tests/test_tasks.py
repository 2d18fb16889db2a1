"""Tasks as data: built-in tasks, user files, multi-concept specs, splits and typed errors."""

from __future__ import annotations

import json
import re

import pytest

from ltv_control import ArgumentError, DimensionError, PropertyError
from ltv_control.app import tasks
from ltv_control.app.tasks import (MIN_ITEMS, builtin_concepts, format_prompts, load_concept_files,
                                   load_task, split_for_judge)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def user_files(tmp_path):
    desired = _write(tmp_path / "jazz.txt", [f"The saxophone played jazz tune {i}." for i in range(9)])
    undesired = _write(tmp_path / "other.txt", [f"I filed report number {i} at work." for i in range(9)])
    return desired, undesired


def test_builtin_concepts_are_at_least_three_and_complete():
    names = builtin_concepts()
    assert len(names) >= 3
    for name in names:
        task = load_task(f"concept:{name}")
        assert task.kind == "concept" and task.prompt_format == "auto"
        assert task.keywords and len(task.desired) >= 40 and len(task.judge_desired) >= 20


def test_builtin_sets_are_disjoint_across_fit_judge_and_eval():
    for name in builtin_concepts():
        t = load_task(f"concept:{name}")
        fit, judge, evals = set(t.desired + t.undesired), set(t.judge_desired + t.judge_undesired), \
            set(t.eval_prompts)
        assert not fit & judge and not fit & evals and not judge & evals
        assert len(set(t.desired)) == len(t.desired)


def test_concepts_share_no_sentences_and_neutral_data_hits_no_keyword():
    names = builtin_concepts()
    sides = {n: set(load_task(f"concept:{n}").desired) for n in names}
    for a in names:
        for b in names:
            if a < b:
                assert not sides[a] & sides[b]
    t = load_task(f"concept:{names[0]}")
    neutral = t.undesired + t.judge_undesired + t.eval_prompts
    for name in names:
        words = load_task(f"concept:{name}").keywords
        pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b", re.I)
        assert [s for s in neutral if pattern.search(s)] == [], name


def test_split_for_judge_every_third():
    fit, judge = split_for_judge([str(i) for i in range(8)])
    assert judge == ("2", "5") and fit == ("0", "1", "3", "4", "6", "7")


def test_sentiment_matches_datasets():
    from ltv_control.app.datasets import load_sentiment_task

    s, t = load_sentiment_task(), load_task("sentiment")
    assert t.kind == "sentiment" and t.prompt_format == "raw"
    assert t.desired == s.desired and t.undesired == s.undesired
    assert t.eval_prompts == s.eval_prompts and t.jacobian_prompts == s.jacobian_prompts


def test_user_text_files(user_files, tmp_path):
    desired, undesired = user_files
    prompts = _write(tmp_path / "p.txt", ["Say something.", "", "  Tell me more.  "])
    keywords = _write(tmp_path / "k.txt", ["Jazz", "saxophone"])
    task = load_task("concept", desired=desired, undesired=undesired, prompts=prompts,
                     keywords=keywords)
    assert task.name == "concept:jazz"
    assert task.eval_prompts == ("Say something.", "Tell me more.")
    assert task.keywords == ("jazz", "saxophone")
    assert len(task.desired) == 6 and len(task.judge_desired) == 3
    # without --prompts: the packaged neutral prompts
    default = load_task("concept:mine", desired=desired, undesired=undesired)
    assert default.name == "concept:mine" and len(default.eval_prompts) >= 48


def test_user_jsonl_file(tmp_path):
    rows = [{"set": "desired", "text": f"Jazz {i}"} for i in range(7)] + \
        [{"set": "undesired", "text": f"Tax {i}"} for i in range(7)] + \
        [{"set": "prompt", "text": "Talk."}, {"set": "keyword", "text": "jazz"}]
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    task = load_task("concept", desired=path)
    assert task.eval_prompts == ("Talk.",) and task.keywords == ("jazz",)
    assert len(task.desired) + len(task.judge_desired) == 7


def test_multi_concept_spec():
    names = builtin_concepts()[:2]
    multi = load_task(f"concept:{names[0]}+concept:{names[1]}")
    assert multi.concepts == names and len(multi.components) == 2
    assert set(multi.desired) == set(multi.components[0].desired) | set(multi.components[1].desired)
    assert multi.desired[:2] == (multi.components[0].desired[0], multi.components[1].desired[0])
    short = load_task(f"concept:{names[0]}+{names[1]}")
    assert short.concepts == names
    sub = multi.subset(n_fit=5, n_eval=3)
    assert all(len(c.desired) == 5 for c in sub.components) and len(sub.eval_prompts) == 3


def test_format_prompts_chat_and_raw():
    class Tok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert tokenize is False and add_generation_prompt is True
            return f"<user>{messages[0]['content']}<assistant>"

    assert format_prompts(["a"], Tok(), "raw") == ["a"]
    assert format_prompts(["a", "b"], Tok(), "chat") == ["<user>a<assistant>", "<user>b<assistant>"]
    with pytest.raises(ArgumentError, match="chat template"):
        format_prompts(["a"], object(), "chat")
    # auto: the chat template of an instruct tokenizer, raw text for a base model's
    assert format_prompts(["a"], Tok(), "auto") == ["<user>a<assistant>"]
    assert format_prompts(["a"], object(), "auto") == ["a"]

    class BaseTok:
        chat_template = None

    assert format_prompts(["a", "b"], BaseTok(), "auto") == ["a", "b"]
    with pytest.raises(PropertyError, match="prompt_format"):
        format_prompts(["a"], Tok(), "markdown")


@pytest.mark.parametrize("spec, error, match", [
    ("concept:nonexistent", ArgumentError, "unknown concept"),
    ("toxicity", ArgumentError, "unknown task"),
    ("concept", ArgumentError, "--desired"),
    ("concept:+", ArgumentError, "malformed"),
    ("", ArgumentError, "non-empty"),
])
def test_bad_specs(spec, error, match):
    with pytest.raises(error, match=match):
        load_task(spec)


def test_file_errors_name_the_file(tmp_path, user_files):
    desired, undesired = user_files
    empty = _write(tmp_path / "empty.txt", ["", "   "])
    with pytest.raises(DimensionError, match="empty.txt"):
        load_task("concept", desired=empty, undesired=undesired)
    with pytest.raises(ArgumentError, match="missing.txt"):
        load_task("concept", desired=tmp_path / "missing.txt", undesired=undesired)
    with pytest.raises(ArgumentError, match="not a regular file"):
        load_task("concept", desired=tmp_path, undesired=undesired)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 8)
    with pytest.raises(PropertyError, match="latin1.txt.*UTF-8"):
        load_task("concept", desired=latin, undesired=undesired)
    with pytest.raises(ArgumentError, match="--undesired"):
        load_task("concept", desired=desired)
    with pytest.raises(ArgumentError, match="same file"):
        load_task("concept", desired=desired, undesired=desired)
    few = _write(tmp_path / "few.txt", ["a", "b"])
    with pytest.raises(DimensionError, match=f"at least {MIN_ITEMS}.*found 2"):
        load_task("concept", desired=few, undesired=undesired)
    overlap = _write(tmp_path / "ov.txt", desired.read_text().splitlines()[:1] + [f"x{i}" for i in range(8)])
    with pytest.raises(PropertyError, match="share 1"):
        load_task("concept", desired=desired, undesired=overlap)
    with pytest.raises(ArgumentError, match="sentiment"):
        load_task("sentiment", desired=desired, undesired=undesired)
    with pytest.raises(ArgumentError, match="keywords"):
        load_task("sentiment", keywords=desired)


def test_jsonl_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"set": "desired", "text": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(PropertyError, match="line 2"):
        load_concept_files(bad)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"set": "maybe", "text": "a"}\n', encoding="utf-8")
    with pytest.raises(PropertyError, match="line 1"):
        load_concept_files(wrong)
    one_side = tmp_path / "one.jsonl"
    one_side.write_text("\n".join(json.dumps({"set": "desired", "text": f"t{i}"}) for i in range(8)),
                        encoding="utf-8")
    with pytest.raises(DimensionError, match="undesired"):
        load_concept_files(one_side)
    with pytest.raises(ArgumentError, match="JSONL"):
        load_concept_files(one_side, tmp_path / "x.txt")


def test_subset_validates():
    with pytest.raises(PropertyError, match="n_fit"):
        load_task("sentiment").subset(n_fit=0)
    assert tasks.Task.__dataclass_params__.frozen
