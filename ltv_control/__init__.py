"""ltv-control: finite-horizon optimal control of discrete linear time-varying systems."""

from ltv_control._exceptions import (
    ArgumentError,
    ControlError,
    ControllerFileError,
    DimensionError,
    InfeasibleError,
    NumericalError,
    PropertyError,
)

__version__ = "0.1.0"
