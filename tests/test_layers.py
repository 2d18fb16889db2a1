"""The three layers (core -> adapters -> app) are enforced by import-linter, inside the suite.

``adapters/`` and ``backends/`` are mapped into ``ltv_control`` by setuptools ``package-dir``;
grimp cannot follow that mapping in an editable install, so the test assembles the installed
layout (``ltv_control/``, ``ltv_control/adapters``, ``ltv_control/backends``) in a temporary
folder and runs ``lint-imports`` there with the contracts of ``pyproject.toml``. A second test
plants deliberate violations (a function-body ``import torch`` in a core module, an adapter that
imports the app) and checks that the linter sees them, so a contract that silently checks
nothing cannot pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports")


def assemble_installed_layout(dest: Path) -> Path:
    """Copy the three source folders into ``dest`` as they are laid out once installed."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "ltv_control", dest / "ltv_control", ignore=ignore)
    shutil.copytree(ROOT / "adapters", dest / "ltv_control" / "adapters", ignore=ignore)
    shutil.copytree(ROOT / "backends", dest / "ltv_control" / "backends", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def run_lint_imports(layout: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(layout))
    command = [LINT_IMPORTS] if LINT_IMPORTS else [sys.executable, "-m", "importlinter.cli"]
    return subprocess.run(command + ["--no-cache"], cwd=layout, env=env, capture_output=True,
                          text=True, timeout=600)


def test_layer_contracts_hold(tmp_path):
    result = run_lint_imports(assemble_installed_layout(tmp_path))
    report = result.stdout + result.stderr
    # the mapped subpackages are in the graph: the adapters' own modules were analysed
    assert "BROKEN" not in report, report
    assert result.returncode == 0, report
    assert "Contracts: 4 kept, 0 broken." in report, report


def test_linter_sees_planted_violations(tmp_path):
    layout = assemble_installed_layout(tmp_path)
    core = layout / "ltv_control" / "system.py"
    core.write_text(core.read_text(encoding="utf-8")
                    + "\n\ndef _planted():\n    import torch  # deliberate violation\n    return torch\n",
                    encoding="utf-8")
    adapter = layout / "ltv_control" / "adapters" / "_blocks.py"
    adapter.write_text(adapter.read_text(encoding="utf-8")
                       + "\n\ndef _planted():\n    from ltv_control.app import report\n    return report\n",
                       encoding="utf-8")
    result = run_lint_imports(layout)
    report = result.stdout + result.stderr
    assert result.returncode != 0, report
    assert "ltv_control.system -> torch" in report, report
    assert "ltv_control.adapters._blocks -> ltv_control.app.report" in report, report
