"""Task-aware report helpers: metric keys per task kind, headline key, prevalence and
trade-off figures (written as PNG files)."""

from __future__ import annotations

import pytest

from ltv_control import DimensionError
from ltv_control.app.task_report import (check_metrics, headline_key, headline_label,
                                         plot_prevalence, plot_tradeoff, task_kind)

_COMMON = {"perplexity": 5.0, "distinct2": 0.7, "tokens_per_s": 40.0}


def _concept_report(concepts=("sea",), keywords=3):
    def record(rate):
        r = {"concept_rate": rate, "concept_rate_embedding": rate,
             "concept_rate_embedding_accuracy": 0.99, **_COMMON}
        for c in concepts if len(concepts) > 1 else ():
            r[f"concept_rate.{c}"] = rate
        return r

    sweep = [{"method": m, "lam": lam, **record(min(1.0, 0.2 * lam))}
             for m in ("alqr", "actadd") for lam in (1.0, 2.0, 3.0)]
    return {"version": "0", "seed": 0, "sweep": sweep,
            "settings": {"task": {"kind": "concept", "name": "concept:" + "+".join(concepts),
                                  "concepts": list(concepts), "n_keywords": keywords}},
            "methods": {"unsteered": record(0.0), "alqr": record(0.4)}}


def test_kinds_and_headline_keys():
    assert task_kind({"settings": {}}) == "sentiment"
    assert headline_key({"settings": {}}) == "positive_rate"
    report = _concept_report()
    assert task_kind(report) == "concept" and headline_key(report) == "concept_rate"
    assert "keyword judge" in headline_label(report)
    assert "embedding judge" in headline_label(_concept_report(keywords=0))


def test_check_metrics():
    check_metrics({"positive_rate": 0.1, "vader_mean": 0.0, **_COMMON}, "sentiment", "M")
    with pytest.raises(DimensionError, match="expected"):
        check_metrics({"concept_rate": 0.1, **_COMMON}, "sentiment", "M")
    check_metrics({"concept_rate": 0.1, "concept_rate.sea": 0.2, **_COMMON}, "concept", "M")
    with pytest.raises(DimensionError, match="missing"):
        check_metrics({"concept_rate_keywords": 0.1, **_COMMON}, "concept", "M")
    with pytest.raises(DimensionError, match="unexpected"):
        check_metrics({"concept_rate": 0.1, "positive_rate": 0.3, **_COMMON}, "concept", "M")
    with pytest.raises(DimensionError, match="numbers"):
        check_metrics({"concept_rate": "high", **_COMMON}, "concept", "M")


@pytest.mark.parametrize("concepts", [("sea",), ("sea", "food")])
def test_figures_are_written(tmp_path, concepts):
    pytest.importorskip("matplotlib")
    report = _concept_report(concepts)
    for plot, name in ((plot_prevalence, "prevalence.png"), (plot_tradeoff, "tradeoff.png")):
        path = plot(report, tmp_path / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
