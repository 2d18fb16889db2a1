"""The benchmark-suite runner: discovery, honest reporting of absent/failed modules, table rows."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("ltv_run_all_under_test", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_discover_lists_expected_modules_first(run_all):
    names = run_all.discover()
    assert names[: len(run_all.MODULES)] == list(run_all.MODULES)
    assert "run_all" not in names
    for extra in names[len(run_all.MODULES):]:
        assert (BENCH / f"{extra}.py").exists()


def test_absent_module_is_recorded_not_hidden(run_all):
    record = run_all.run_module("no_such_benchmark", quick=True, timeout=5)
    assert record["status"] == "absent"
    rows = run_all.table_rows("no_such_benchmark", record)
    assert rows[0]["figure"] == "absent" and math.isnan(rows[0]["value"])
    assert "no_such_benchmark" in run_all.format_table(rows)


def test_rows_from_summary_or_ratio_leaves(run_all):
    ok = {"status": "ok", "result": {"summary": [{"figure": "x", "value": 2.0, "unit": "ratio", "baseline": "b"}]}}
    assert run_all.table_rows("m", ok) == [{"benchmark": "m", "figure": "x", "value": 2.0, "unit": "ratio",
                                            "baseline": "b"}]
    leaves = {"status": "ok", "result": {"cases": [{"n": 64, "speedup": 3.0, "seconds": 1.0}], "ratio_a": 0.5,
                                         "flag": True, "admm_iterations": 7, "targets": {"speedup_min": 10}}}
    rows = run_all.table_rows("m", leaves)
    assert {r["figure"]: r["value"] for r in rows} == {"cases[n=64].speedup": 3.0, "ratio_a": 0.5}
    md = run_all.format_table(rows, markdown=True)
    assert md.splitlines()[0].startswith("| benchmark") and md.count("\n") == 3


def test_scaling_module_quick_sections_have_expected_physics(run_all):
    """A tiny direct call of the scaling sections: memory ratio > 1 and the streamed w equals dense."""
    scaling = run_all.load_module("scaling")
    res = scaling.streamed_memory(12, 64)
    assert res["w_rel_diff"] < 1e-12
    assert res["peak_bytes_dense"] > 2 * res["peak_bytes_streamed"]
    A = scaling.np.stack([scaling._random_layer(48, 0, k, scaling.np.float64) for k in range(4)])
    V = scaling._directions(4, 48, 0)
    study = scaling.structured_study(A, V, ranks=(0, 48))
    rows = {r["rank"]: r for r in study["low_rank_identity"]}
    assert rows[48]["w_rel_error"] < 1e-10  # full-rank basis: the restriction is exact
    assert rows[0]["w_rel_error"] > 1e-3
