"""Argument checks and conversions shared by the adapters: prompts, layer indices, scalars,
``positions``, and the one "any array to float64 numpy" helper.

Each raises the package's typed errors (:mod:`ltv_control._exceptions`) naming the argument and
what was expected and found.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ltv_control._exceptions import ArgumentError, DimensionError, PropertyError

__all__ = ["POSITIONS", "reject_unknown", "check_positions", "check_prompts", "check_layer_indices",
           "check_scalar", "check_positive_int", "to_numpy64"]

POSITIONS = ("last", "all")


def reject_unknown(unknown: Mapping[str, Any], where: str) -> None:
    """Raise :class:`ArgumentError` naming every unknown keyword in ``unknown``."""
    if unknown:
        names = ", ".join(sorted(unknown))
        raise ArgumentError(f"{where}: unknown keyword argument(s) {names}")


def check_positions(positions: Any) -> str:
    """Validate a ``positions`` option (``"last"`` or ``"all"``)."""
    if positions not in POSITIONS:
        raise ArgumentError(f"positions: expected 'last' or 'all', found {positions!r}")
    return positions


def check_prompts(prompts: Any, name: str) -> list[str]:
    """A non-empty list of strings."""
    if isinstance(prompts, str) or not isinstance(prompts, Iterable):
        raise ArgumentError(f"{name}: expected a list of prompt strings, found {type(prompts).__name__}")
    prompts = list(prompts)
    if not prompts:
        raise DimensionError(f"{name}: expected at least one prompt, found none")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ArgumentError(f"{name}[{i}]: expected a string, found {type(p).__name__}")
    return prompts


def check_layer_indices(layers: Any, num_layers: int, name: str = "layers") -> list[int] | None:
    """``None`` or a sorted list of distinct layer indices in ``[0, num_layers)`` (negatives wrap)."""
    if layers is None:
        return None
    if isinstance(layers, int | np.integer):
        layers = [layers]
    if isinstance(layers, str) or not isinstance(layers, Iterable):
        raise ArgumentError(f"{name}: expected a list of layer indices, found {type(layers).__name__}")
    out = set()
    for item in layers:
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            raise ArgumentError(f"{name}: expected integer layer indices, found {item!r}")
        idx = int(item)
        if not -num_layers <= idx < num_layers:
            raise DimensionError(
                f"{name}: layer index {idx} out of range for {num_layers} layers "
                f"(expected -{num_layers} <= index < {num_layers})"
            )
        out.add(idx % num_layers)
    return sorted(out)


def check_scalar(value: Any, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    """A finite real scalar (optionally > 0 or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ArgumentError(f"{name}: expected a real scalar, found {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise PropertyError(f"{name}: expected a finite value, found {value}")
    if positive and value <= 0:
        raise PropertyError(f"{name}: expected a positive value, found {value}")
    if nonnegative and value < 0:
        raise PropertyError(f"{name}: expected a non-negative value, found {value}")
    return value


def check_positive_int(value: Any, name: str) -> int:
    """A positive Python/numpy integer (``bool`` refused)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ArgumentError(f"{name}: expected a positive int, found {type(value).__name__}")
    if value < 1:
        raise ArgumentError(f"{name}: expected a positive int, found {value}")
    return int(value)


def to_numpy64(x: Any, name: str = "array", *, finite: bool = False) -> np.ndarray:
    """``x`` (numpy, torch on any device, nested lists) as a float64 numpy array.

    Raises
    ------
    PropertyError
        ``finite=True`` and ``x`` holds NaN or inf (the message names ``name``).
    """
    if type(x).__module__.split(".")[0] == "torch":
        x = x.detach().to("cpu").double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if finite and not np.all(np.isfinite(arr)):
        raise PropertyError(f"{name}: expected finite values, found NaN or inf")
    return arr
