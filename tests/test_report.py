"""report.json schema, atomic writing, figures, table, claim check (no model needed)."""

from __future__ import annotations

import json
import math

import pytest

from ltv_control import DimensionError
from ltv_control.app.experiment import METHODS, METRIC_KEYS, ExperimentSettings, claim_check
from ltv_control.app.report import REPORT_KEYS, format_table, validate_report, write_report


def _metrics(rate, ppl):
    return {"positive_rate": rate, "vader_mean": rate - 0.5, "perplexity": ppl,
            "distinct2": 0.8, "tokens_per_s": 50.0}


def _report():
    sweep = []
    for lam, rate, ppl in [(1.0, 0.3, 20.0), (2.0, 0.6, 40.0), (4.0, 0.9, 80.0)]:
        sweep.append({"method": "actadd", "lam": lam, **_metrics(rate, ppl)})
    for lam, rate, ppl in [(1.0, 0.5, 25.0), (2.0, 0.8, 35.0)]:
        sweep.append({"method": "alqr", "lam": lam, **_metrics(rate, ppl)})
    return {
        "version": "0.1.0",
        "settings": ExperimentSettings().as_dict() | {"model": "tiny"},
        "seed": 0,
        "methods": {"unsteered": _metrics(0.1, 15.0), "actadd": _metrics(0.9, 80.0),
                    "alqr": _metrics(0.5, 25.0)},
        "sweep": sweep,
    }


def test_schema_constants_match_the_contract():
    assert REPORT_KEYS == ("version", "settings", "seed", "methods", "sweep")
    assert METRIC_KEYS == ("positive_rate", "vader_mean", "perplexity", "distinct2",
                           "tokens_per_s")
    # alqr_multi: several concepts at once (multi-concept tasks only; issue 14)
    assert METHODS == ("unsteered", "actadd", "pid", "alqr", "alqr_plus", "alqr_multi",
                       "constrained")


def test_validate_report_accepts_and_rejects():
    report = _report()
    assert validate_report(report) is report
    bad = dict(report)
    bad["extra"] = 1
    with pytest.raises(DimensionError, match="report keys"):
        validate_report(bad)
    bad = json.loads(json.dumps(report))
    del bad["methods"]["alqr"]["distinct2"]
    with pytest.raises(DimensionError, match="alqr"):
        validate_report(bad)
    bad = json.loads(json.dumps(report))
    bad["sweep"][0]["coeff"] = 1.0
    with pytest.raises(DimensionError, match="sweep"):
        validate_report(bad)


def test_write_report_files_and_roundtrip(tmp_path):
    report = _report()
    details = {
        "beta": {"target": [0.0, 1.0, 2.0], "unsteered": [0.0, -0.5, -1.0],
                 "alqr": [0.0, 0.9, 1.9]},
        "examples": {"prompts": ["The day was"], "unsteered": ["fine ."], "alqr": ["great !"]},
        "claim": claim_check(report["sweep"], "alqr", "actadd", lam=1.0),
        "timings": {"fit_total_s": 1.0},
        "notes": ["constrained: not available"],
    }
    files = write_report(tmp_path / "out", report, details)
    assert set(files) == {"report.json", "report.md", "beta.png", "tradeoff.png",
                          "prevalence.png", "examples.png", "details.json"}
    for path in files.values():
        assert path.is_file() and path.stat().st_size > 0
    for name in ("beta.png", "tradeoff.png", "examples.png"):
        assert files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = json.loads(files["report.json"].read_text())
    assert loaded == json.loads(json.dumps(report))
    validate_report(loaded)
    md = files["report.md"].read_text()
    assert "A-LQR" in md and "![" in md and "holds" in md
    assert not list((tmp_path / "out").glob(".*tmp")), "temporary files left behind"


def test_non_finite_numbers_become_null(tmp_path):
    report = _report()
    report["methods"]["unsteered"]["perplexity"] = float("nan")
    files = write_report(tmp_path, report)
    text = files["report.json"].read_text()
    assert "NaN" not in text
    assert json.loads(text)["methods"]["unsteered"]["perplexity"] is None


def test_write_report_refuses_a_file_as_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        write_report(tmp_path / "f", _report())


def test_claim_check_interpolates_the_baseline():
    sweep = _report()["sweep"]
    claim = claim_check(sweep, "alqr", "actadd", lam=1.0)
    # ActAdd at positive rate 0.5 lies between (0.3, 20) and (0.6, 40): 20 + 20·(0.2/0.3)
    assert claim["baseline_perplexity"] == pytest.approx(20 + 20 * 0.2 / 0.3)
    assert claim["holds"] is True and claim["extrapolated"] is False
    claim = claim_check(sweep, "alqr", "actadd", lam=2.0)
    assert claim["baseline_perplexity"] == pytest.approx(40 + 40 * 0.2 / 0.3)
    assert claim_check(sweep, "pid", "actadd") == {"available": False}


def test_table_lists_every_method():
    table = format_table(_report())
    lines = table.splitlines()
    assert len(lines) == 2 + 3
    assert "Unsteered" in table and "ActAdd" in table and "A-LQR" in table
    md = format_table(_report(), markdown=True)
    assert md.startswith("| method") and md.count("\n") == 4
    assert not math.isnan(float(lines[2].split()[2]))


def test_to_json_is_standard_json():
    import numpy as np

    from ltv_control.app.report import clean_json, to_json

    value = {"a": float("nan"), "b": [1.0, float("inf"), (2, 3)], "c": np.float32(1.5),
             "d": np.arange(3), "e": {"f": -float("inf")}}
    assert clean_json(value)["b"][1] is None and clean_json(value)["e"]["f"] is None
    text = to_json(value)
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)
    assert back == {"a": None, "b": [1.0, None, [2, 3]], "c": 1.5, "d": [0, 1, 2],
                    "e": {"f": None}}
