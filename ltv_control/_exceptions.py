"""Typed exceptions of ltv-control.

Every error raised at the API boundary derives from :class:`ControlError`, and
also from the built-in exception a caller would expect (``ValueError`` for bad
values, ``TypeError`` for bad keywords and types, ...), so ``except ValueError``
keeps working.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ControlError",
    "DimensionError",
    "PropertyError",
    "ArgumentError",
    "NumericalError",
    "InfeasibleError",
    "ControllerFileError",
]


class ControlError(Exception):
    """Base class of every error raised by ltv-control."""


class DimensionError(ControlError, ValueError):
    """An argument has the wrong shape; the message names the argument, the expected and the found shape."""


class PropertyError(ControlError, ValueError):
    """An argument has the right shape but a wrong property (non-finite, asymmetric, not PSD/PD)."""


class ArgumentError(ControlError, TypeError):
    """An unknown keyword argument or an argument of the wrong type."""


class NumericalError(ControlError, np.linalg.LinAlgError):
    """A factorization failed during a recursion; the message names the step and the batch member."""


class InfeasibleError(ControlError, RuntimeError):
    """A constrained problem has no solution or the solver failed; the message carries the solver status."""


class ControllerFileError(ControlError, ValueError):
    """A controller file is truncated, corrupt, or of another format."""
