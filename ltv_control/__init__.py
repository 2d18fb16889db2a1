"""ltv-control: finite-horizon optimal control of discrete linear time-varying systems."""

from __future__ import annotations

import importlib
from typing import Any

from ltv_control._exceptions import (
    ArgumentError,
    ControlError,
    ControllerFileError,
    DimensionError,
    InfeasibleError,
    NumericalError,
    PropertyError,
)
from ltv_control.cost import lqr_cost
from ltv_control.lqr import LQRResult, finite_horizon_lqr
from ltv_control.riccati import lqr_step, riccati_step
from ltv_control.system import LTVSystem
from ltv_control.tracking import TrackingLQRResult, tracking_lqr

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "ControlError",
    "ControllerFileError",
    "DimensionError",
    "InfeasibleError",
    "NumericalError",
    "PropertyError",
    "LTVSystem",
    "LQRResult",
    "TrackingLQRResult",
    "finite_horizon_lqr",
    "tracking_lqr",
    "lqr_cost",
    "riccati_step",
    "lqr_step",
    "__version__",
]

# Submodules written on top of the core, imported on first attribute access so
# that ``import ltv_control`` stays light (and never imports torch).
_LAZY_SUBMODULES = frozenset({"bounds", "bound_plots", "plants", "constrained", "setpoint", "streaming"})


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(f"ltv_control.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'ltv_control' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBMODULES)
