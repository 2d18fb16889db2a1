"""Checking a GGUF model file before handing it to transformers.

transformers reads a GGUF file with ``gguf.GGUFReader``, which on a truncated file fails with
an unrelated ``ValueError``/``IndexError`` deep inside numpy (and takes ~30 s on a 2-core machine
to get there).  :func:`inspect_gguf` parses the header itself (magic, version, metadata,
tensor table: a fraction of a second) and checks that the file is long enough to hold every
tensor the table announces:

.. math::

    \\text{size} \\ge \\operatorname{align}(\\text{header end}, a)
        + \\max_t \\left( \\text{offset}_t + \\text{bytes}_t \\right),
    \\qquad \\text{bytes}_t = \\frac{\\prod_i d_{t,i}}{\\text{block}(q_t)} \\cdot \\text{type size}(q_t),

with the alignment ``a = general.alignment`` (default 32) and the block sizes of the quantisation
types from ``gguf.constants.GGML_QUANT_SIZES``.  The architecture must be one transformers can
dequantise (``GGUF_SUPPORTED_ARCHITECTURES``).
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from ltv_control._exceptions import ArgumentError, ControllerFileError

__all__ = ["GGUFInfo", "ModelFileError", "file_sha256", "inspect_gguf"]

_MAGIC = b"GGUF"
# GGUF metadata value types: fixed-size scalars (struct format), 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class ModelFileError(ControllerFileError):
    """A model file (GGUF) that is truncated, corrupt or of an unsupported format/architecture."""


class GGUFInfo(NamedTuple):
    """What the header of a GGUF file says: architecture, name, tensor count, expected size."""

    path: Path
    architecture: str
    name: str
    version: int
    n_tensors: int
    expected_bytes: int
    size_bytes: int


class _Truncated(Exception):
    pass


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise _Truncated
    return struct.unpack(fmt, data)[0]


def _read_string(f: BinaryIO, limit: int) -> str:
    length = _read(f, "<Q")
    if length > limit:
        raise ValueError(f"string length {length} exceeds the file size (truncated or corrupt)")
    data = f.read(length)
    if len(data) != length:
        raise _Truncated
    return data.decode("utf-8", errors="replace")


def _read_value(f: BinaryIO, vtype: int, limit: int) -> Any:
    if vtype in _SCALARS:
        return _read(f, _SCALARS[vtype])
    if vtype == _STRING:
        return _read_string(f, limit)
    if vtype == _ARRAY:
        etype, count = _read(f, "<I"), _read(f, "<Q")
        if count > limit:
            raise ValueError(f"array length {count} exceeds the file size (truncated or corrupt)")
        if etype in _SCALARS:  # skip fixed-size arrays in one seek
            size = struct.calcsize(_SCALARS[etype]) * count
            f.seek(size, os.SEEK_CUR)
            return None
        for _ in range(count):
            _read_value(f, etype, limit)
        return None
    raise ValueError(f"unknown metadata value type {vtype}")


def _tensor_bytes(dims: list[int], qtype: int) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    count = 1
    for d in dims:
        count *= int(d)
    return count // block * type_size


def _parse(f: BinaryIO, size: int) -> tuple[int, dict, int, int]:
    """(version, metadata of scalar/string keys, tensor count, expected file size) from the header."""
    if f.read(4) != _MAGIC:
        raise ValueError("the file does not start with the GGUF magic bytes")
    version = _read(f, "<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (expected 2 or 3)")
    n_tensors, n_kv = _read(f, "<Q"), _read(f, "<Q")
    if n_tensors > size or n_kv > size:
        raise ValueError("tensor/metadata counts exceed the file size")
    meta: dict = {}
    for _ in range(n_kv):
        key = _read_string(f, size)
        meta[key] = _read_value(f, _read(f, "<I"), size)
    end = 0
    for _ in range(n_tensors):
        _read_string(f, size)
        dims = [_read(f, "<Q") for _ in range(_read(f, "<I"))]
        qtype, offset = _read(f, "<I"), _read(f, "<Q")
        end = max(end, offset + _tensor_bytes(dims, qtype))
    align = int(meta.get("general.alignment") or 32)
    start = (f.tell() + align - 1) // align * align
    return version, meta, n_tensors, start + end


def inspect_gguf(path: str | os.PathLike) -> GGUFInfo:
    """Parse and check the header of a GGUF file (no tensor data is read).

    Parameters
    ----------
    path : str or os.PathLike
        A ``.gguf`` file.

    Returns
    -------
    GGUFInfo

    Raises
    ------
    ArgumentError
        No file at ``path``.
    ModelFileError
        Not a GGUF file, a corrupt header, a file shorter than its tensor table requires
        (truncated), or an architecture transformers cannot load.
    """
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    path = Path(path).expanduser()
    if not path.is_file():
        raise ArgumentError(f"path: expected a .gguf file or a model directory, found nothing at {path}")
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            version, meta, n_tensors, expected = _parse(f, size)
    except _Truncated:
        raise ModelFileError(f"path: {path} is truncated inside its GGUF header ({size} bytes)") from None
    except (ValueError, KeyError, UnicodeDecodeError, struct.error) as exc:
        raise ModelFileError(f"path: {path} is not a readable GGUF file: {exc}") from None
    if size < expected:
        raise ModelFileError(f"path: {path} is truncated: its tensor table needs {expected} bytes, "
                             f"found {size}")
    arch = str(meta.get("general.architecture") or "")
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelFileError(f"path: {path} holds architecture {arch!r}, which transformers cannot "
                             f"load from GGUF (supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})")
    name = str(meta.get("general.name") or path.stem)
    return GGUFInfo(path, arch, name, version, n_tensors, expected, size)


def file_sha256(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
