"""Controller files: one ``.safetensors`` file holding a steerer's tensors and metadata.

Details: the Notes of :func:`save_controller_file`.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ltv_control._exceptions import ArgumentError, ControllerFileError, PropertyError
from ltv_control.adapters.controller_schema import (
    DIGEST_KEY,
    MAX_HEADER_BYTES,
    check_digest,
    check_hyperparameters,
    check_steerer_metadata,
    check_tensors,
    parse_count,
    parse_json,
    read_regular_file,
    tensor_digest,
)
from ltv_control.atomic import atomic_write_bytes

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "save_controller_file",
    "load_controller_file",
    "SteererRecord",
    "write_steerer_file",
    "read_steerer_file",
]

FORMAT = "ltv-control/steerer"
FORMAT_VERSION = "1"
_REQUIRED_KEYS = ("format", "kind", "version", "state_dim", "horizon")
#: keys renamed since files were first written: new name -> old name (old files still load)
_RENAMED_KEYS = {"state_dim": "hidden_size", "horizon": "num_layers"}
_MAX_HEADER = MAX_HEADER_BYTES


def _as_float32_numpy(name: str, value: Any) -> np.ndarray:
    if type(value).__module__.split(".")[0] == "torch":
        value = value.detach().to("cpu").float().numpy()
    arr = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
    return arr


def _stringify(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(
            f"metadata[{key!r}]: expected a string or a JSON-serialisable value, found "
            f"{type(value).__name__}"
        ) from exc


def save_controller_file(
    path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, Any]
) -> Path:
    """Write a controller file atomically.

    Parameters
    ----------
    path : str or PathLike
        Destination (conventionally ending in ``.safetensors``); its folder must exist.
    tensors : mapping of str to array
        numpy arrays or torch tensors; stored as float32.
    metadata : mapping of str to str or JSON-serialisable
        Must contain ``kind``, ``state_dim``, ``horizon`` (or their old names ``hidden_size``, ``num_layers``); ``format``,
        ``format_version`` and ``version`` are filled in.  Non-string values are
        stored as JSON.

    Returns
    -------
    pathlib.Path
        The written path.

    Notes
    -----
    Layout
    ------
    * Tensors: float32, C-contiguous, named by the steerer (e.g. ``w``, ``v``, ``e_norm``,
      ``beta_star`` for A-LQR).
    * Header metadata (``__metadata__``, every value a string):

      ============== ===========================================================
      key            value
      ============== ===========================================================
      format         ``"ltv-control/steerer"``
      format_version ``"1"``
      kind           the steerer kind (``"alqr"``, ``"actadd"``, ``"pid"``, ...)
      version        the ltv-control version that wrote the file
      model_id       the model's name or path (informative)
      state_dim      ``n`` (decimal integer; older files say ``hidden_size``, still read)
      horizon        ``T`` (decimal integer; older files say ``num_layers``, still read)
      layers         JSON: the dotted override path of the decoder blocks, or null
      hyperparameters JSON object of the fit's hyper-parameters
      tensor_sha256  SHA-256 of the tensors (:func:`~ltv_control.adapters.controller_schema.tensor_digest`)
      ============== ===========================================================

      Further keys may be added by a steerer; structured values are JSON.

    Files are written atomically and flushed to disk (:func:`ltv_control.atomic.atomic_write_bytes`
    with ``fsync``), so a crash never leaves a half-written controller.  Loading
    parses and validates the header itself before handing the bytes to
    ``safetensors`` and never unpickles anything.  A truncated, corrupt or foreign
    file raises :class:`ltv_control.ControllerFileError` saying what is wrong.  What a valid
    file is (regular file, bounded header and JSON, every hyper-parameter of the kind in range,
    consistent shapes, the tensor digest) is spelled out in
    :mod:`ltv_control.adapters.controller_schema`; a file written before the digest existed loads
    with a warning.
    """
    from safetensors.numpy import save

    import ltv_control

    path = Path(path)
    if not tensors:
        raise ArgumentError("tensors: expected at least one tensor to save")
    arrays = {str(k): _as_float32_numpy(str(k), v) for k, v in tensors.items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": ltv_control.__version__}
    for key, value in metadata.items():
        if key in ("format", "format_version"):
            continue
        meta[str(key)] = _stringify(str(key), value)
    for new, old in _RENAMED_KEYS.items():
        if new not in meta and old in meta:
            meta[new] = meta.pop(old)
    for key in _REQUIRED_KEYS:
        if key not in meta:
            raise ArgumentError(f"metadata: missing required key {key!r}")
    meta[DIGEST_KEY] = tensor_digest(arrays)
    payload = save(arrays, metadata=meta)

    atomic_write_bytes(path, payload, fsync=True)
    return path


def _parse_header(data: bytes, where: str) -> dict:
    """Validate the safetensors framing of ``data`` and return its JSON header."""
    if len(data) < 8:
        raise ControllerFileError(
            f"{where}: truncated or not a safetensors file ({len(data)} bytes, the 8-byte "
            "header length is missing)"
        )
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len == 0 or header_len > _MAX_HEADER:
        raise ControllerFileError(
            f"{where}: not a safetensors file (header length field reads {header_len})"
        )
    if 8 + header_len > len(data):
        raise ControllerFileError(
            f"{where}: truncated file: the header announces {header_len} bytes but only "
            f"{len(data) - 8} follow"
        )
    header = parse_json(data[8 : 8 + header_len], where, "header")
    if not isinstance(header, dict):
        raise ControllerFileError(f"{where}: corrupt header (expected a JSON object)")

    body = len(data) - 8 - header_len
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(info, dict) and {"dtype", "shape", "data_offsets"} <= set(info)):
            raise ControllerFileError(f"{where}: corrupt header entry for tensor {name!r}")
        offsets = info["data_offsets"]
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]
        ):
            raise ControllerFileError(f"{where}: corrupt data offsets for tensor {name!r}")
        end_max = max(end_max, offsets[1])
    if end_max > body:
        raise ControllerFileError(
            f"{where}: truncated file: tensor data needs {end_max} bytes, only {body} present"
        )
    if end_max < body:
        raise ControllerFileError(
            f"{where}: corrupt file: {body - end_max} trailing bytes after the tensor data"
        )
    return header


def load_controller_file(
    path: str | os.PathLike, *, kind: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read and validate a controller file.

    Parameters
    ----------
    path : str or PathLike
        A file written by :func:`save_controller_file`.
    kind : str or None, default None
        When given, the file's ``kind`` must equal it.

    Returns
    -------
    tensors : dict of str to numpy.ndarray
        float32 arrays.
    metadata : dict of str to str
        The raw header metadata (parse structured values with ``json.loads``).

    Raises
    ------
    ControllerFileError
        Missing/unreadable file, truncated or corrupt bytes, a file that is not a
        ltv-control steerer, a missing metadata key, a non-float32 or non-finite tensor,
        or a different ``kind``.
    """
    from safetensors.numpy import load

    where = str(path)
    data = read_regular_file(path, where)

    header = _parse_header(data, where)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ControllerFileError(
            f"{where}: not a ltv-control controller file (metadata 'format' is {found!r}, "
            f"expected {FORMAT!r})"
        )
    if not all(isinstance(v, str) for v in meta.values()):
        raise ControllerFileError(f"{where}: corrupt metadata (every value must be a string)")
    meta = dict(meta)
    for new, old in _RENAMED_KEYS.items():
        if new not in meta and old in meta:
            meta[new] = meta[old]  # a file written before the rename
    missing = [key for key in _REQUIRED_KEYS if key not in meta]
    if missing:
        raise ControllerFileError(f"{where}: metadata lacks the required keys {missing}")
    if meta.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ControllerFileError(
            f"{where}: unsupported format_version {meta.get('format_version')!r} "
            f"(this ltv-control reads {FORMAT_VERSION!r})"
        )
    if kind is not None and meta["kind"] != kind:
        raise ControllerFileError(
            f"{where}: holds a {meta['kind']!r} steerer, expected a {kind!r} steerer"
        )
    for key in ("state_dim", "horizon"):
        parse_count(meta[key], where, key, 1 << 30)
    for name, info in header.items():
        if name != "__metadata__" and info["dtype"] != "F32":
            raise ControllerFileError(
                f"{where}: tensor {name!r} has dtype {info['dtype']}, expected F32"
            )
    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ControllerFileError(f"{where}: corrupt tensor data ({exc})") from exc
    for name, arr in tensors.items():
        if not np.all(np.isfinite(arr)):
            raise ControllerFileError(f"{where}: tensor {name!r} holds NaN or inf values")
    check_digest(meta, tensors, where)
    return dict(tensors), dict(meta)


class SteererRecord(NamedTuple):
    """What a controller file says about a steerer (the keys are listed in the Notes of :func:`save_controller_file`)."""

    kind: str
    tensors: dict
    state_dim: int
    horizon: int
    hyperparameters: dict
    controlled_layers: list | None
    positions: str | None
    layer_path: str | None
    model_id: str | None
    metadata: dict


def write_steerer_file(path: str | os.PathLike, record: SteererRecord) -> Path:
    """Write ``record`` atomically (structured values as JSON; ``record.metadata`` adds keys).

    Raises
    ------
    PropertyError
        A hyper-parameter that :func:`read_steerer_file` would refuse (out of the kind's schema,
        :data:`~ltv_control.adapters.controller_schema.HYPERPARAMETER_SCHEMAS`): nothing is
        written, so a saved file always loads.
    """
    try:
        check_hyperparameters(record.kind, json.loads(json.dumps(record.hyperparameters)),
                              where=str(path), state_dim=int(record.state_dim),
                              horizon=int(record.horizon))
    except ControllerFileError as exc:
        raise PropertyError(f"{exc}; not saved") from None
    meta = dict(record.metadata)
    meta.update({
        "kind": record.kind,
        "model_id": record.model_id or "",
        "state_dim": str(record.state_dim),
        "horizon": str(record.horizon),
        "layers": json.dumps(record.layer_path),
        "controlled_layers": json.dumps(record.controlled_layers),
        "positions": record.positions or "",
        "hyperparameters": json.dumps(record.hyperparameters, sort_keys=True),
    })
    return save_controller_file(path, record.tensors, meta)


def read_steerer_file(path: str | os.PathLike, *, kind: str | None = None) -> SteererRecord:
    """Read and validate a controller file (:func:`load_controller_file`) and parse its metadata.

    Raises
    ------
    ControllerFileError
        As :func:`load_controller_file`; corrupt, oversized or too deeply nested JSON metadata;
        sizes that are not decimal integers in range; a hyper-parameter of the kind missing,
        unknown, of the wrong type or out of range; tensor shapes inconsistent with the sizes
        (:mod:`ltv_control.adapters.controller_schema`).
    """
    tensors, raw = load_controller_file(path, kind=kind)
    where = str(path)
    fields = check_steerer_metadata(raw, where)
    check_tensors(tensors, where, state_dim=fields["state_dim"], horizon=fields["horizon"])
    return SteererRecord(kind=raw["kind"], tensors=tensors, metadata=raw, **fields)
