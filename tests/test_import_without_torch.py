"""The core imports and solves with torch unavailable (torch is imported lazily only)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import ltv_control

CORE = Path(ltv_control.__file__).resolve().parent

_SCRIPT = textwrap.dedent("""
    import importlib, sys

    class _BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, _BlockTorch())
    sys.modules.pop("torch", None)

    import numpy as np
    import ltv_control as lc
    import ltv_control.backends
    for name in sys.argv[1:]:
        importlib.import_module(name)
    for lazy in ("bounds", "plants", "constrained", "setpoint", "streaming"):
        if importlib.util.find_spec("ltv_control." + lazy) is not None:
            getattr(lc, lazy)
    system = lc.LTVSystem.constant(np.eye(2), None, 3)
    K, S = lc.finite_horizon_lqr(system, 1.0, 1.0)
    assert isinstance(K, np.ndarray)
    assert "torch" not in sys.modules, "torch was imported"
    print("ok")
""")


def _core_modules() -> list[str]:
    return sorted(f"ltv_control.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__")


def test_core_imports_without_torch():
    modules = _core_modules() + ["ltv_control.backends.numpy_backend"]
    result = subprocess.run([sys.executable, "-c", _SCRIPT, *modules], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_lazy_submodule_access_and_unknown_attribute():
    import pytest

    assert "bounds" in dir(ltv_control)
    with pytest.raises(AttributeError, match="no attribute 'does_not_exist'"):
        ltv_control.does_not_exist
