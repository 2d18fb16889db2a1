"""LTV system files: one ``.safetensors`` file of the stacks plus a JSON metadata file beside it.

``save_system(path, system)`` writes ``A`` (and ``B``, ``c`` when present) as float tensors into
``path`` (the metadata also in the safetensors header, key ``__metadata__``) and the metadata as
``path`` with suffix ``.json``.  ``load_system(path)`` returns a numpy :class:`LTVSystem`.  Both
files are written atomically through :mod:`ltv_control.atomic` (permissions ``0o666 & ~umask``);
nothing is pickled.  Loading reads regular files only (a FIFO or a device is refused before it is
opened) and checks the metadata against the tensors: format, names, sizes, floating dtypes and
finite values.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from ltv_control._exceptions import ArgumentError, ControlError, ControllerFileError
from ltv_control._validation import require_system
from ltv_control.atomic import atomic_write_bytes, atomic_write_text, output_path

__all__ = ["SYSTEM_FORMAT", "load_system", "save_system"]

SYSTEM_FORMAT = "ltv-control/ltv-system"
_TENSORS = ("A", "B", "c")


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.ascontiguousarray(np.asarray(x))


def save_system(path: str | os.PathLike, system, *, metadata: dict | None = None) -> Path:
    """Write ``system`` to ``path`` (.safetensors) and its metadata to ``path.with_suffix('.json')``.

    Parameters
    ----------
    path : path-like
        Target file; its folder must exist.
    system : LTVSystem
        ``A`` (T, n, n), optional ``B`` (T, n, m) and ``c`` (T, n); any backend (stored as numpy).
    metadata : dict, optional
        JSON-serializable extra information (model id, prompts, ...); NaN/inf are refused.

    Returns
    -------
    Path of the ``.safetensors`` file.

    Raises
    ------
    ArgumentError
        ``system`` is not an LTVSystem, or ``metadata`` is not a JSON-serializable dict.
    FileNotFoundError
        The folder of ``path`` does not exist.
    """
    from safetensors.numpy import save

    import ltv_control

    system = require_system(system)
    if metadata is not None and not isinstance(metadata, dict):
        raise ArgumentError(f"metadata: expected a dict or None, found {type(metadata).__name__}")
    path = output_path(path)
    tensors = {"A": _numpy(system.A)}
    if system.B is not None:
        tensors["B"] = _numpy(system.B)
    if system.c is not None:
        tensors["c"] = _numpy(system.c)
    meta = {"format": SYSTEM_FORMAT, "version": ltv_control.__version__,
            "horizon": int(system.horizon), "n_states": int(system.n_states),
            "n_inputs": int(system.n_inputs), "has_B": system.B is not None,
            "has_c": system.c is not None, "dtype": str(tensors["A"].dtype),
            "metadata": metadata or {}}
    try:
        header = json.dumps(meta, allow_nan=False)
        pretty = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"metadata: expected JSON-serializable values without NaN/inf ({exc})") from None
    atomic_write_bytes(path, save(tensors, metadata={"ltv-control": header}))
    atomic_write_text(path.with_suffix(".json"), pretty)
    return path


def _regular_file(path: Path) -> None:
    """FileNotFoundError if missing; ControllerFileError unless a regular file (after symlinks)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {str(path)!r}") from None
    except OSError as exc:
        raise ControllerFileError(f"{str(path)!r} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise ControllerFileError(f"{str(path)!r} is not a regular file (a FIFO, device or folder "
                                  "cannot hold an LTV system)")


def _read(path: Path) -> tuple[dict, dict]:
    """The header metadata and the tensors of a safetensors file (ControllerFileError if unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            header = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise ControllerFileError(f"{str(path)!r} is not a readable safetensors file: {exc}") from None
    try:
        meta = json.loads(header["ltv-control"])
    except (KeyError, TypeError, ValueError, RecursionError):
        raise ControllerFileError(f"{str(path)!r} has no readable ltv-control system metadata") from None
    if not isinstance(meta, dict) or meta.get("format") != SYSTEM_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ControllerFileError(f"{str(path)!r}: expected format {SYSTEM_FORMAT!r}, found {found!r}")
    return meta, tensors


def _check_tensors(where: str, meta: dict, tensors: dict) -> None:
    """Names, floating dtypes and the sizes recorded in ``meta`` agree with the tensors."""
    unknown = sorted(set(tensors) - set(_TENSORS))
    if "A" not in tensors or unknown:
        raise ControllerFileError(f"{where}: expected tensors A (and optionally B, c), found "
                                  f"{sorted(tensors)}")
    for name, arr in tensors.items():
        if arr.dtype.kind != "f":
            raise ControllerFileError(f"{where}: tensor {name} has dtype {arr.dtype}, expected a "
                                      "floating dtype")
        if not np.all(np.isfinite(arr)):
            raise ControllerFileError(f"{where}: tensor {name} contains NaN or inf values")
    for flag, name in (("has_B", "B"), ("has_c", "c")):
        if flag in meta and meta[flag] is not (name in tensors):
            raise ControllerFileError(f"{where}: metadata {flag}={meta[flag]!r} but tensor {name} is "
                                      f"{'present' if name in tensors else 'absent'}")
    A = tensors["A"]
    sizes = {"horizon": A.shape[-3] if A.ndim >= 3 else None,
             "n_states": A.shape[-1] if A.ndim >= 3 else None}
    if "B" in tensors and tensors["B"].ndim >= 3:
        sizes["n_inputs"] = tensors["B"].shape[-1]
    for key, found in sizes.items():
        recorded = meta.get(key)
        if recorded is not None and (isinstance(recorded, bool) or recorded != found):
            raise ControllerFileError(f"{where}: metadata {key}={recorded!r} does not match the "
                                      f"tensors ({key} = {found})")


def load_system(path: str | os.PathLike):
    """Read an LTV system file written by :func:`save_system`; return a numpy LTVSystem.

    Parameters
    ----------
    path : path-like
        A ``.safetensors`` file written by :func:`save_system`.

    Returns
    -------
    LTVSystem
        numpy-backed, in the dtype stored.

    Raises
    ------
    FileNotFoundError
        No such file.
    ControllerFileError
        Not a regular file, or the file is truncated, corrupt, not an ltv-control system file,
        or its tensors disagree with its metadata (names, sizes, dtypes, non-finite values).
    """
    from ltv_control import LTVSystem

    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise ArgumentError(f"path: expected a str or os.PathLike, found {type(path).__name__}")
    path = Path(path)
    _regular_file(path)
    meta, tensors = _read(path)
    _check_tensors(repr(str(path)), meta, tensors)
    try:
        return LTVSystem(tensors["A"], tensors.get("B"), tensors.get("c"))
    except ControlError as exc:
        raise ControllerFileError(f"{str(path)!r}: the stored stacks do not form an LTV system "
                                  f"({exc})") from None
