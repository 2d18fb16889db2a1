"""``ltv-control demo/eval --task``: concept tasks from files, multi-concept steering, report keys
and figures, on a tiny random Llama (``--model``).  The embedding judge's encoder is replaced by
a bag-of-words encoder (the real MiniLM judge is tested in tests/test_judges.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sklearn")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ltv_control.app import judges  # noqa: E402
from ltv_control.app.cli import main  # noqa: E402
from ltv_control.app.tasks import load_task, settings_overrides  # noqa: E402

# words the tiny tokenizer knows (they come from the packaged sentiment sentences)
DESIRED = [f"the soup was warm and the bread was {w} ." for w in
           ("fresh", "good", "lovely", "great", "nice", "warm", "perfect", "wonderful", "tasty")]
UNDESIRED = [f"my new job makes me {w} every day ." for w in
             ("tired", "busy", "late", "sad", "angry", "bored", "anxious", "miserable", "upset")]


def _encoder(texts):
    vocab = ["soup", "bread", "warm", "job", "day", "tired", "fresh"]
    return np.asarray([[t.lower().count(w) for w in vocab] + [1.0] for t in texts], float)


@pytest.fixture(autouse=True)
def _fast_encoder(monkeypatch):
    monkeypatch.setattr(judges, "minilm_encoder", lambda: _encoder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from _tiny_lm import save_tiny_llama

    root = tmp_path_factory.mktemp("tiny-concept")
    model = save_tiny_llama(root / "model", seed=0, layers=3, hidden=32)
    files = {}
    for name, lines in (("desired", DESIRED), ("undesired", UNDESIRED),
                        ("keywords", ["soup", "bread"]),
                        ("prompts", ["the weather this week has been", "my neighbor told me that the",
                                     "when i opened the letter , i"])):
        files[name] = root / f"{name}.txt"
        files[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return model, files


def _common(model, out):
    return ["--model", str(model), "--out", str(out), "--quiet", "--prompt-format", "raw",
            "--quick", "--max-new-tokens", "4", "--batch-size", "4"]


def test_user_concept_from_three_files(tiny, tmp_path):
    model, f = tiny
    out = tmp_path / "report"
    code = main(["eval", "--task", "concept", "--desired", str(f["desired"]), "--undesired",
                 str(f["undesired"]), "--keywords", str(f["keywords"]), "--prompts",
                 str(f["prompts"]), *_common(model, out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"version", "settings", "seed", "methods", "sweep"}
    assert report["settings"]["task"]["name"] == "concept:desired"
    assert [p["lam"] for p in report["sweep"] if p["method"] == "alqr"] == [1.0, 2.0]
    for record in [*report["methods"].values(), *report["sweep"]]:
        assert {"concept_rate", "concept_rate_keywords", "concept_rate_embedding",
                "concept_rate_embedding_accuracy", "perplexity", "distinct2",
                "tokens_per_s"} <= set(record)
        assert record["concept_rate"] == record["concept_rate_keywords"]  # keywords given
        assert "positive_rate" not in record
    assert (out / "prevalence.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "tradeoff.png").is_file()
    md = (out / "report.md").read_text()
    assert "keyword judge" in md and "cross-validated accuracy" in md and "prevalence.png" in md


def test_multi_concept_task_runs_alqr_multi(tiny, tmp_path):
    model, _ = tiny
    out = tmp_path / "multi"
    code = main(["demo", "--task", "concept:sea+concept:food", "--methods",
                 "unsteered,alqr,alqr_multi", *_common(model, out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == {"unsteered", "alqr", "alqr_multi"}
    multi = [p for p in report["sweep"] if p["method"] == "alqr_multi"]
    assert [p["lam"] for p in multi] == [1.0, 2.0]
    for p in multi:
        assert {"concept_rate.sea", "concept_rate.food", "concept_rate_all"} <= set(p)
        assert p["concept_rate"] == pytest.approx((p["concept_rate.sea"] + p["concept_rate.food"]) / 2)


def test_sentiment_task_keeps_the_contract_keys(tiny, tmp_path):
    model, _ = tiny
    out = tmp_path / "sentiment"
    assert main(["demo", "--task", "sentiment", "--methods", "unsteered,alqr",
                 *_common(model, out)]) == 0
    report = json.loads((out / "report.json").read_text())
    for record in report["methods"].values():
        assert set(record) == {"positive_rate", "vader_mean", "perplexity", "distinct2",
                               "tokens_per_s"}


@pytest.mark.parametrize("args, message", [
    (["--task", "concept:unknown"], "unknown concept"),
    (["--task", "concept"], "--desired"),
    ([], "--task"),
])
def test_task_errors_exit_2(tiny, tmp_path, capsys, args, message):
    model, _ = tiny
    assert main(["eval", *args, *_common(model, tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err


def test_empty_file_is_named(tiny, tmp_path, capsys):
    model, f = tiny
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    assert main(["eval", "--task", "concept", "--desired", str(empty), "--undesired",
                 str(f["undesired"]), *_common(model, tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "DimensionError" in err and "empty.txt" in err


def test_concept_defaults_are_a_monotone_sweep():
    over = settings_overrides(load_task("concept:sea"))
    assert over["sweep"]["alqr"] == sorted(over["sweep"]["alqr"]) and over["lam"] in \
        over["sweep"]["alqr"]
    assert {"actadd", "pid", "alqr"} <= set(over["methods"])
    assert "alqr_multi" in settings_overrides(load_task("concept:sea+concept:food"))["methods"]
    assert settings_overrides(load_task("sentiment")) == {}
