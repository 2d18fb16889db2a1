"""Former home of the steerer base class, kept so old imports keep working.

The pieces now live in :mod:`~ltv_control.adapters.steerer` (the steerer type and registry),
:mod:`~ltv_control.adapters.hooks` (attaching laws to blocks), :mod:`~ltv_control.adapters.laws`
(the laws), :mod:`~ltv_control.adapters.controller_file` (files) and
:mod:`~ltv_control.adapters._checks` (argument checks).  Import from ``ltv_control.adapters``.
"""

from __future__ import annotations

from ltv_control.adapters._checks import (  # noqa: F401
    POSITIONS,
    check_layer_indices,
    check_positions,
    check_prompts,
    check_scalar,
    reject_unknown,
)
from ltv_control.adapters.hooks import SteeringHandle
from ltv_control.adapters.steerer import Steerer

__all__ = ["Steerer", "SteeringHandle", "POSITIONS"]
