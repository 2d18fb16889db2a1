"""benchmarks/families_tradeoff.py: the points, gains and ActAdd comparison it reports, from
synthetic demo reports (the demo runs themselves are the benchmark, not a unit test)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "families_tradeoff.py"


@pytest.fixture(scope="module")
def tradeoff():
    spec = importlib.util.spec_from_file_location("ltv_families_tradeoff_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _point(method, lam, rate, ppl, d2=0.7):
    return {"method": method, "lam": lam, "positive_rate": rate, "perplexity": ppl, "distinct2": d2}


def _reports():
    unsteered = {"positive_rate": 0.5, "perplexity": 3.0, "distinct2": 0.8}
    relative = {"methods": {"unsteered": unsteered},
                "sweep": [_point("actadd", 2.0, 0.6, 3.5), _point("actadd", 4.0, 0.8, 4.5),
                          _point("pid", 1.0, 0.7, 9.0), _point("alqr", 0.5, 0.7, 3.6),
                          _point("alqr", 1.0, 0.9, 5.0)]}
    paper = {"methods": {"unsteered": unsteered},
             "sweep": [_point("alqr", 0.5, 0.1, 400.0, 0.1), _point("alqr", 1.0, 0.0, 500.0, 0.1)]}
    return relative, paper


def test_points_gains_and_actadd_interpolation(tradeoff):
    relative, paper = _reports()
    data = tradeoff.family_points(relative, paper, "relative")
    assert data["chosen_form"] == "relative"
    assert data["unsteered"] == {"positive_rate": 0.5, "perplexity": 3.0, "distinct2": 0.8}
    by = {(p["label"], p["lam"]): p for p in data["points"]}
    assert set(by) == {("ActAdd", 2.0), ("ActAdd", 4.0), ("S-PID", 1.0), ("A-LQR relative", 0.5),
                       ("A-LQR relative", 1.0), ("A-LQR paper", 0.5), ("A-LQR paper", 1.0)}
    half = by[("A-LQR relative", 0.5)]
    assert half["gain"] == pytest.approx(0.2)
    # ActAdd's perplexity at rate 0.7, linearly between (0.6, 3.5) and (0.8, 4.5)
    assert half["actadd_perplexity"] == pytest.approx(np.interp(0.7, [0.6, 0.8], [3.5, 4.5]))
    assert half["extrapolated"] is False
    top = by[("A-LQR relative", 1.0)]
    assert top["gain"] == pytest.approx(0.4) and top["extrapolated"] is True
    assert top["actadd_perplexity"] == pytest.approx(4.5)  # nearest ActAdd point outside its range
    assert by[("A-LQR paper", 1.0)]["gain"] == pytest.approx(-0.5)
    assert by[("ActAdd", 2.0)]["gain"] is None and by[("S-PID", 1.0)]["gain"] is None


def test_chosen_form_is_read_from_the_notes(tradeoff):
    note = "A-LQR form auto -> paper: the blocks' median nonlinearity at the paper law's input is 0.030 <= 0.1"
    assert tradeoff.chosen_form(["bound figure skipped", note]) == "paper"
    with pytest.raises(ValueError, match="auto"):
        tradeoff.chosen_form(["nothing here"])


def test_reuse_writes_json_table_and_figure(tradeoff, tmp_path, capsys):
    relative, paper = _reports()
    note = "A-LQR form auto -> relative: the blocks' median nonlinearity at the paper law's input is 0.600 > 0.1"
    for family in ("smollm2", "gemma3"):
        for name, report in (("default", relative), ("paper", paper)):
            folder = tmp_path / f"{family}-{name}"
            folder.mkdir()
            (folder / "report.json").write_text(json.dumps(report))
        (tmp_path / f"{family}-default" / "details.json").write_text(json.dumps({"notes": [note]}))
    assert tradeoff.main(["--out", str(tmp_path), "--reuse"]) == 0
    saved = json.loads((tmp_path / "tradeoff.json").read_text())
    assert set(saved) == {"smollm2", "gemma3"} and saved["gemma3"]["chosen_form"] == "relative"
    table = (tmp_path / "tradeoff.md").read_text()
    assert "| A-LQR relative (default) | 1 | 0.90 | +0.40 | 5.00 | 4.50 (outside its range) | 0.70 |" in table
    assert "| A-LQR paper | 1 | 0.00 |" in table
    assert (tmp_path / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "A-LQR paper" in capsys.readouterr().out


def test_families_benchmark_draws_the_form_check(tmp_path):
    """benchmarks/families.py --figure: η_k per family against the tolerance (synthetic data;
    layers without an input (None) are left out)."""
    spec = importlib.util.spec_from_file_location(
        "ltv_families_under_test", BENCH.parent / "families.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    families = [{"family": "a", "horizon": 3, "form_check": {"nonlinearity": [None, 0.02, 0.04],
                                                             "median": 0.03, "tolerance": 0.1,
                                                             "form": "paper"}},
                {"family": "b", "horizon": 2, "form_check": {"nonlinearity": [0.5, 0.9],
                                                             "median": 0.7, "tolerance": 0.1,
                                                             "form": "relative"}}]
    path = tmp_path / "check.png"
    module.plot_form_check(families, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
