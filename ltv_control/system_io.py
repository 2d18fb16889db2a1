"""LTV system files: one ``.safetensors`` file of the stacks plus a JSON metadata file beside it.

``save_system(path, system)`` writes ``A`` (and ``B``, ``c`` when present) as float tensors into
``path`` (the metadata also in the safetensors header, key ``__metadata__``) and the metadata as
``path`` with suffix ``.json``.  ``load_system(path)`` returns a numpy :class:`LTVSystem`.  Both
files are written atomically; nothing is pickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ltv_control._exceptions import ArgumentError, ControllerFileError

__all__ = ["SYSTEM_FORMAT", "load_system", "save_system"]

SYSTEM_FORMAT = "ltv-control/ltv-system"


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
        JSON-serializable extra information (model id, prompts, ...).

    Returns
    -------
    Path of the ``.safetensors`` file.
    """
    from safetensors.numpy import save_file

    from ltv_control.atomic import atomic_write_text

    if not hasattr(system, "A") or not hasattr(system, "horizon"):
        raise ArgumentError(f"system must be an LTVSystem, found {type(system).__name__}")
    path = Path(path)
    tensors = {"A": _numpy(system.A)}
    if system.B is not None:
        tensors["B"] = _numpy(system.B)
    if system.c is not None:
        tensors["c"] = _numpy(system.c)
    import ltv_control

    meta = {"format": SYSTEM_FORMAT, "version": ltv_control.__version__,
            "horizon": int(system.horizon), "n_states": int(system.n_states),
            "n_inputs": int(system.n_inputs), "has_B": system.B is not None,
            "has_c": system.c is not None, "dtype": str(tensors["A"].dtype),
            "metadata": metadata or {}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"ltv-control": json.dumps(meta)})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return path


def load_system(path: str | os.PathLike):
    """Read an LTV system file written by :func:`save_system`; return a numpy LTVSystem.

    Raises
    ------
    FileNotFoundError
        No such file.
    ControllerFileError
        The file is truncated, corrupt, or not an ltv-control system file.
    """
    from safetensors import safe_open

    from ltv_control import LTVSystem

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            header = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise ControllerFileError(f"{str(path)!r} is not a readable safetensors file: {exc}") from None
    try:
        meta = json.loads(header["ltv-control"])
    except (KeyError, json.JSONDecodeError):
        raise ControllerFileError(f"{str(path)!r} has no ltv-control system metadata") from None
    if meta.get("format") != SYSTEM_FORMAT or "A" not in tensors:
        raise ControllerFileError(
            f"{str(path)!r}: expected format {SYSTEM_FORMAT!r}, found {meta.get('format')!r}")
    return LTVSystem(tensors["A"], tensors.get("B"), tensors.get("c"))
