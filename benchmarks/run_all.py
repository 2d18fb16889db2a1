"""Run every benchmark of ltv-control, print one table and write one JSON file.

Usage::

    python benchmarks/run_all.py [--quick] [--out results.json] [--only riccati,scaling]
                                 [--timeout SECONDS] [--markdown TABLE.md]

Each module ``benchmarks/<name>.py`` of :func:`discover` (the expected :data:`MODULES`, then any
other benchmark script with a ``run`` function) is imported in its own child
process (so one failing or memory-hungry benchmark cannot disturb the others) and its
``run(**options)`` is called (``quick=True`` with ``--quick`` when ``run`` accepts it).  A module
that is absent, raises or times out is recorded as such in the JSON and the table: nothing is
hidden.  Every figure in the table is a ratio (or a log-log slope) against a baseline measured in
the same run, as each module reports it.

On a shared machine set ``OMP_NUM_THREADS`` (e.g. 1): OpenBLAS threads spinning against other
processes make timings erratic.  The JSON records the machine and the thread settings.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from ltv_control.atomic import atomic_write_text

HERE = Path(__file__).resolve().parent

MODULES = ("riccati", "jacobians", "steering_overhead", "constrained", "scaling")
"""Benchmark modules the suite expects, in the order they run (absent ones are reported)."""


def discover() -> list[str]:
    """:data:`MODULES` plus any other ``benchmarks/*.py`` exposing ``run`` (not ``_*``/run_all)."""
    extra = sorted(
        p.stem for p in HERE.glob("*.py")
        if p.stem not in MODULES and p.stem != "run_all" and not p.stem.startswith("_")
        and "def run(" in p.read_text(encoding="utf-8", errors="replace")
    )
    return list(MODULES) + extra

RATIO_WORDS = ("ratio", "speedup", "slope", "over", "vs", "relative", "error")
"""Tokens (of a ``_``/``.``-split key path) that mark a figure worth a table row."""

SKIP_WORDS = ("target", "targets", "seconds", "iterations")
"""Tokens that mark settings or raw counts rather than figures."""

LABEL_KEYS = ("name", "case", "method", "label", "n", "T", "dtype", "batch", "batch_size")
"""Keys whose values name an entry of a list of result dicts."""


def load_module(name: str) -> Any:
    """Import ``benchmarks/<name>.py`` by path (the folder is not a package)."""
    path = HERE / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"ltv_benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def call_run(module: Any, quick: bool) -> dict:
    """Call ``module.run`` with ``quick`` when it takes it."""
    params = inspect.signature(module.run).parameters
    takes_quick = "quick" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs = {"quick": True} if (quick and takes_quick) else {}
    with _stdout_to_stderr():
        result = module.run(**kwargs)
    if not isinstance(result, dict):
        raise TypeError(f"{module.__name__}.run returned {type(result).__name__}, expected dict")
    return result


class _stdout_to_stderr:
    """Keep a module's own printing off stdout, where the child writes nothing else."""

    def __enter__(self) -> None:
        self._saved = sys.stdout
        sys.stdout = sys.stderr

    def __exit__(self, *exc: Any) -> None:
        sys.stdout = self._saved


def _child(name: str, quick: bool, out_path: str) -> int:
    t0 = time.perf_counter()
    try:
        module = load_module(name)
        result = {"status": "ok", "result": call_run(module, quick)}
    except Exception as exc:  # noqa: BLE001 - recorded honestly in the suite output
        import traceback

        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = time.perf_counter() - t0
    with open(out_path, "w") as fh:
        json.dump(result, fh, default=_json_default)
    return 0


def _json_default(x: Any) -> Any:
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(x)


def run_module(name: str, quick: bool, timeout: float) -> dict:
    """Run one module in a child process; returns ``{"status", "result" | "error", "seconds"}``."""
    if not (HERE / f"{name}.py").exists():
        return {"status": "absent", "error": f"benchmarks/{name}.py does not exist"}
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "result.json")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", name, "--_child-out", out_path]
        if quick:
            cmd.append("--quick")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "error": f"exceeded {timeout:.0f} s", "seconds": timeout}
        if not os.path.exists(out_path):
            return {"status": "failed", "error": f"child exited {proc.returncode}: {proc.stderr[-2000:]}",
                    "seconds": time.perf_counter() - t0}
        with open(out_path) as fh:
            return json.load(fh)


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            items += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(d, list) and d and all(isinstance(x, dict) for x in d) and len(d) <= 50:
        for i, v in enumerate(d):
            label = ",".join(f"{key}={v[key]}" for key in LABEL_KEYS if key in v and not isinstance(v[key], (dict, list))) or str(i)
            items += _flatten(v, f"{prefix}[{label}]")
    else:
        items.append((prefix, d))
    return items


def table_rows(name: str, record: dict) -> list[dict]:
    """Rows ``(benchmark, figure, value, unit, baseline)`` of one module's record.

    A module may give its own rows as ``result["summary"]`` (a list of dicts with ``figure``,
    ``value`` and optionally ``unit``/``baseline``); otherwise every numeric leaf whose key
    names a ratio, speed-up, slope or error is listed.
    """
    if record.get("status") != "ok":
        return [{"benchmark": name, "figure": record.get("status", "failed"), "value": float("nan"),
                 "unit": "", "baseline": str(record.get("error", ""))[:120]}]
    result = record["result"]
    summary = result.get("summary")
    if isinstance(summary, list) and summary and all(isinstance(r, dict) and "figure" in r for r in summary):
        return [{"benchmark": name, "figure": str(r["figure"]), "value": r.get("value"),
                 "unit": str(r.get("unit", "")), "baseline": str(r.get("baseline", ""))} for r in summary]
    rows = []
    for key, value in _flatten(result):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        tokens = set(re.split(r"[._\[\],=]+", key.lower()))
        if tokens & set(RATIO_WORDS) and not tokens & set(SKIP_WORDS):
            rows.append({"benchmark": name, "figure": key, "value": float(value), "unit": "", "baseline": ""})
    if not rows:
        rows.append({"benchmark": name, "figure": "(no ratio figures reported)", "value": float("nan"),
                     "unit": "", "baseline": ""})
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict], *, markdown: bool = False) -> str:
    """The suite table as plain text or Markdown."""
    header = ("benchmark", "figure", "value", "unit", "baseline")
    body = [(r["benchmark"], r["figure"], _fmt(r["value"]), r["unit"], r["baseline"]) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
    widths[-1] = len(header[-1])
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    return "\n".join([fmt.format(*header)] + [fmt.format(*row) for row in body])


def machine() -> dict:
    """Machine, library versions and thread settings."""
    info: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
    }
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        pass
    return info


def run(*, quick: bool = False, only: list[str] | None = None, timeout: float | None = None) -> dict:
    """Run the suite; returns ``{"machine", "quick", "modules": {name: record}, "table": rows}``."""
    names = [m for m in discover() if only is None or m in only]
    timeout = timeout or (900.0 if quick else 3600.0)
    records = {}
    for name in names:
        print(f"[run_all] {name} ...", file=sys.stderr, flush=True)
        records[name] = run_module(name, quick, timeout)
        print(f"[run_all] {name}: {records[name]['status']} in {records[name].get('seconds', 0):.1f} s",
              file=sys.stderr, flush=True)
    rows = [row for name in names for row in table_rows(name, records[name])]
    return {"machine": machine(), "quick": quick, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "modules": records, "table": rows}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Run every ltv-control benchmark.")
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes in total)")
    parser.add_argument("--out", default=None, help="JSON output file")
    parser.add_argument("--only", default=None, help="comma-separated module names")
    parser.add_argument("--timeout", type=float, default=None, help="per-module limit in seconds")
    parser.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    parser.add_argument("--from-json", default=None, help="re-print the table of a saved run (no benchmark runs)")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_child-out", dest="child_out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        return _child(args._child, args.quick, args.child_out)
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    if args.from_json:
        with open(args.from_json) as fh:
            res = json.load(fh)
        res["table"] = [row for name, record in res["modules"].items() for row in table_rows(name, record)]
    else:
        res = run(quick=args.quick, only=only, timeout=args.timeout)
    print(format_table(res["table"]))
    if args.out:
        atomic_write_text(args.out, json.dumps(res, indent=2, default=_json_default))
    if args.markdown:
        atomic_write_text(args.markdown, format_table(res["table"], markdown=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
