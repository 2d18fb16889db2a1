"""Complete validation of a controller file: bytes, header, metadata, hyper-parameters, tensors.

:mod:`ltv_control.adapters.controller_file` reads and writes the files; this module says what
a valid file is, so that a file that loads can be attached and generated with:

* **the file itself** (:func:`read_regular_file`): a regular file (a FIFO, a directory or a link
  to ``/dev/zero`` is refused from ``os.stat`` before anything is read), at most
  :data:`MAX_FILE_BYTES`;
* **JSON** (:func:`parse_json`): at most :data:`MAX_JSON_BYTES`, nesting at most
  :data:`MAX_JSON_DEPTH` (scanned before parsing, so no ``RecursionError``), integers of at most
  :data:`MAX_INT_DIGITS` digits;
* **metadata** (:func:`check_steerer_metadata`): ``state_dim``/``horizon`` ASCII decimal integers
  in range (no ``'²'``, no 5,000 digits), ``positions`` in ``{"last", "all"}``,
  ``controlled_layers`` a list of layer indices in ``[-T, T)``, ``hyperparameters`` a JSON object;
* **hyper-parameters** (:func:`check_hyperparameters`): every name the kind declares in
  :data:`HYPERPARAMETER_SCHEMAS`, each of the type and range its ``fit`` accepts (plus a
  magnitude bound that keeps the steering input far inside float32, ``|coeff| <= 1e6``);
* **tensors** (:func:`check_tensors`): float32, finite, ``(T,)``/``(T+1,)`` leading axis and
  ``n`` second axis;
* **integrity** (:func:`tensor_digest`, :func:`check_digest`): the SHA-256 of the tensor bytes
  stored at save under :data:`DIGEST_KEY` must match (a file written before the digest existed
  loads with a :class:`UserWarning`).

Every failure is a :class:`~ltv_control.ControllerFileError` whose message starts with the file
and says what was expected and found.

Each steerer kind declares its hyper-parameters once, as a tuple of :class:`Field` in
:data:`HYPERPARAMETER_SCHEMAS` (``Field("lam", "real", bound=1e6)``): the loader checks them,
and a steerer's ``fit`` may check its arguments with :func:`check_field`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ltv_control._exceptions import ControllerFileError

__all__ = [
    "Field", "HYPERPARAMETER_SCHEMAS", "DIGEST_KEY", "MAX_FILE_BYTES", "MAX_HEADER_BYTES",
    "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "MAX_INT_DIGITS", "read_regular_file", "parse_json",
    "parse_count", "check_field", "check_hyperparameters", "check_steerer_metadata",
    "check_tensors", "tensor_digest", "check_digest",
]

#: metadata key of the SHA-256 of the tensor bytes (:func:`tensor_digest`)
DIGEST_KEY = "tensor_sha256"
#: largest controller file read (bytes): a 70B model's constrained steerer is ~0.2 GiB
MAX_FILE_BYTES = 8 << 30
#: largest safetensors header of a controller file (bytes); ours are ~2 KiB
MAX_HEADER_BYTES = 1 << 20
#: largest JSON metadata value, nesting depth and integer length accepted
MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 16
MAX_INT_DIGITS = 19
#: ranges of the sizes in the metadata
MAX_STATE_DIM = 1 << 20
MAX_HORIZON = 1 << 14
_DECIMAL = re.compile(r"[0-9]{1,9}")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


@dataclass(frozen=True)
class Field:
    """One hyper-parameter of a steerer kind.

    Parameters
    ----------
    name : str
    type : {"real", "int", "bool", "choice", "layer", "str"}
        ``real``: a finite float (``allow_inf`` admits ``+inf``); ``int``: an integer (no bool);
        ``bool``; ``choice``: one of ``choices``; ``layer``: a layer index in ``[-T, T)``;
        ``str``: a non-empty string of at most 200 characters.
    low : float or None
        Lower bound (``low_open``: strict ``>``).
    high : float or None
        Upper bound; ``"n"`` reads ``min(high_cap, n)`` from the file's state dimension.
    bound : float or None
        ``|value| <= bound`` (real fields).
    many : bool
        A non-empty JSON list (at most :data:`MAX_LIST` items) of such values.
    optional : bool
        May be absent (a file written before the field existed); checked when present.
    """

    name: str
    type: str
    low: float | None = None
    low_open: bool = False
    high: Any = None
    bound: float | None = None
    allow_inf: bool = False
    choices: tuple = ()
    high_cap: int | None = None
    many: bool = False
    optional: bool = False


_GAIN = 1e6      # coefficients, gains and setpoint scales: far beyond any useful value
_WEIGHT = 1e12   # LQR weights (only their ratios matter)

#: each steerer kind's hyper-parameters, exactly as its ``fit`` checks them (see the classes)
HYPERPARAMETER_SCHEMAS: dict[str, tuple[Field, ...]] = {
    "alqr": (Field("q", "real", low=0.0, bound=_WEIGHT), Field("r", "real", low=0.0, low_open=True, bound=_WEIGHT),
             Field("qf", "real", low=0.0, bound=_WEIGHT), Field("lam", "real", bound=_GAIN),
             Field("form", "choice", choices=("paper", "relative"), optional=True)),
    "actadd": (Field("coeff", "real", bound=_GAIN),),
    "pid": (Field("kp", "real", bound=_GAIN), Field("ki", "real", bound=_GAIN),
            Field("kd", "real", bound=_GAIN), Field("lam", "real", bound=_GAIN),
            Field("reset_every", "int", low=1, high=1 << 31)),
    "constrained": (Field("rank", "int", low=1, high="n", high_cap=64),
                    Field("budget", "real", low=0.0, allow_inf=True),
                    Field("q", "real", low=0.0, bound=_WEIGHT),
                    Field("r", "real", low=0.0, low_open=True, bound=_WEIGHT),
                    Field("qf", "real", low=0.0, bound=_WEIGHT), Field("lam", "real", bound=_GAIN),
                    Field("first_layer", "layer"), Field("terminal_feature", "bool"),
                    Field("feedback", "bool"), Field("method", "choice", choices=("admm", "cvxpy")),
                    Field("on_infeasible", "choice", choices=("relax", "raise"))),
    "alqr_multi": (Field("q", "real", low=0.0, bound=_WEIGHT),
                   Field("r", "real", low=0.0, low_open=True, bound=_WEIGHT),
                   Field("qf", "real", low=0.0, bound=_WEIGHT),
                   Field("lams", "real", bound=_GAIN, many=True),
                   Field("concepts", "str", many=True)),
}
#: longest list hyper-parameter (``lams``, ``concepts``)
MAX_LIST = 1024


def _fail(where: str, message: str) -> ControllerFileError:
    return ControllerFileError(f"{where}: {message}")


# ---------------------------------------------------------------- the file

def read_regular_file(path: str | os.PathLike, where: str | None = None, *,
                      max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path``, a regular file of at most ``max_bytes`` bytes.

    ``os.stat`` (following links) decides before anything is opened, so a FIFO, a directory or
    a link to a device is refused without blocking or reading; the file is opened non-blocking
    and checked again with ``fstat`` (a file swapped meanwhile), and at most ``max_bytes + 1``
    bytes are read.

    Raises
    ------
    ControllerFileError
        Missing, not a regular file, too large, unreadable.
    """
    where = str(path) if where is None else where
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        raise _fail(where, "no such controller file") from exc
    except OSError as exc:
        raise _fail(where, f"cannot read the controller file ({exc.strerror or exc})") from exc
    _check_regular(info, where, max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise _fail(where, f"cannot read the controller file ({exc.strerror or exc})") from exc
    try:
        _check_regular(os.fstat(fd), where, max_bytes)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise _fail(where, f"cannot read the controller file ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise _fail(where, f"file grew beyond {max_bytes} bytes while being read")
    return data


def _check_regular(info: os.stat_result, where: str, max_bytes: int) -> None:
    mode = info.st_mode
    if not stat.S_ISREG(mode):
        what = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
                "a character device" if stat.S_ISCHR(mode) else "a block device"
                if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        raise _fail(where, f"expected a regular file, found {what}")
    if info.st_size > max_bytes:
        raise _fail(where, f"file of {info.st_size} bytes exceeds the {max_bytes}-byte limit of "
                           "a controller file")


# ---------------------------------------------------------------- JSON

def _bounded_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(digits)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not allowed here")


def parse_json(text: str | bytes, where: str, what: str, *, allow_constants: bool = False) -> Any:
    """``json.loads`` with bounded size, nesting depth and integer length.

    Parameters
    ----------
    text : str or bytes
        UTF-8 JSON.
    where, what : str
        The file and the part being parsed (for the message).
    allow_constants : bool, default False
        Admit ``NaN``/``Infinity`` (hyper-parameters, which are range-checked afterwards).

    Raises
    ------
    ControllerFileError
        Too large, too deeply nested, an oversized integer, not UTF-8, not JSON.
    """
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _fail(where, f"corrupt {what} (not UTF-8 at byte {exc.start})") from exc
    if len(text) > MAX_JSON_BYTES:
        raise _fail(where, f"{what} of {len(text)} characters exceeds {MAX_JSON_BYTES}")
    depth = deepest = 0
    for match in _BRACKETS.finditer(_STRINGS.sub('""', text)):
        depth += 1 if match.group() in "[{" else -1
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            raise _fail(where, f"corrupt {what} (JSON nested deeper than {MAX_JSON_DEPTH} levels)")
    try:
        return json.loads(text, parse_int=_bounded_int,
                          parse_constant=None if allow_constants else _no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise _fail(where, f"corrupt {what} (not valid JSON: {exc})") from exc


def parse_count(value: Any, where: str, key: str, high: int) -> int:
    """A metadata size: an ASCII decimal string (at most 9 digits) in ``[1, high]``."""
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
        raise _fail(where, f"metadata {key!r} is {str(value)[:40]!r}, expected a decimal integer")
    count = int(value)
    if not 1 <= count <= high:
        raise _fail(where, f"metadata {key!r} is {count}, expected 1 <= {key} <= {high}")
    return count


# ---------------------------------------------------------------- hyper-parameters

def check_field(field: Field, value: Any, *, state_dim: int, horizon: int) -> Any:
    """``value`` checked against ``field``; returns the normalised value.

    Raises
    ------
    ValueError
        The message says what was expected and found (the caller adds the file).
    """
    if field.many:
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_LIST:
            raise ValueError(f"{field.name}: expected a list of 1 to {MAX_LIST} values, found "
                             f"{_show(value)}")
        single = Field(**{**field.__dict__, "many": False})
        return [check_field(single, item, state_dim=state_dim, horizon=horizon) for item in value]
    name, kind = field.name, field.type
    if kind == "str":
        if not isinstance(value, str) or not 1 <= len(value) <= 200:
            raise ValueError(f"{name}: expected a non-empty string of at most 200 characters, "
                             f"found {_show(value)}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected a bool, found {_show(value)}")
        return value
    if kind == "choice":
        if not isinstance(value, str) or value not in field.choices:
            raise ValueError(f"{name}: expected one of {field.choices}, found {_show(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        expected = "a real number" if kind == "real" else "an integer"
        raise ValueError(f"{name}: expected {expected}, found {_show(value)}")
    if kind in ("int", "layer") and not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer, found {_show(value)}")
    if kind == "layer":
        if not -horizon <= value < horizon:
            raise ValueError(f"{name}: expected a layer index in [-{horizon}, {horizon}), found {value}")
        return value % horizon
    return _check_range(field, value, state_dim)


def _check_range(field: Field, value: float, state_dim: int) -> Any:
    name = field.name
    if math.isnan(value) or (math.isinf(value) and not (field.allow_inf and value > 0)):
        raise ValueError(f"{name}: expected a finite number, found {value}")
    if field.low is not None and (value <= field.low if field.low_open else value < field.low):
        relation = ">" if field.low_open else ">="
        raise ValueError(f"{name}: expected a value {relation} {field.low:g}, found {value}")
    high = field.high
    if high == "n":
        high = min(field.high_cap or state_dim, state_dim)
    if high is not None and value > high:
        raise ValueError(f"{name}: expected a value <= {high}, found {value}")
    if field.bound is not None and abs(value) > field.bound:
        raise ValueError(f"{name}: expected |{name}| <= {field.bound:g}, found {value:g}")
    return float(value) if field.type == "real" else int(value)


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def check_hyperparameters(kind: str, hyper: Any, *, where: str, state_dim: int,
                          horizon: int) -> dict[str, Any]:
    """Every hyper-parameter of ``kind`` (:data:`HYPERPARAMETER_SCHEMAS`) present and in range.

    A kind without a schema (a user's steerer) only needs a JSON object of JSON scalars/lists.

    Raises
    ------
    ControllerFileError
        Not a JSON object, missing or unknown names, wrong type or out of range.
    """
    if not isinstance(hyper, dict):
        raise _fail(where, f"metadata 'hyperparameters' must be a JSON object, found "
                           f"{type(hyper).__name__}")
    schema = HYPERPARAMETER_SCHEMAS.get(kind)
    if schema is None:
        return dict(hyper)
    names = [f.name for f in schema]
    missing = [f.name for f in schema if f.name not in hyper and not f.optional]
    unknown = sorted(set(hyper) - set(names))
    if missing or unknown:
        raise _fail(where, f"inconsistent controller file: {kind} hyperparameters expected "
                           f"exactly {names}, missing {missing}, unknown {unknown}")
    out = {}
    for field in (f for f in schema if f.name in hyper):
        try:
            out[field.name] = check_field(field, hyper[field.name], state_dim=state_dim,
                                          horizon=horizon)
        except ValueError as exc:
            raise _fail(where, f"inconsistent controller file: hyperparameter {exc}") from None
    return out


# ---------------------------------------------------------------- metadata

def check_steerer_metadata(meta: Mapping[str, str], where: str) -> dict[str, Any]:
    """Parse and check the steerer keys of a controller file's metadata.

    Returns
    -------
    dict
        ``state_dim``, ``horizon`` (int), ``positions`` (str or None), ``controlled_layers``
        (list of int or None), ``layer_path`` (str or None), ``model_id`` (str or None),
        ``hyperparameters`` (dict, checked by :func:`check_hyperparameters`).

    Raises
    ------
    ControllerFileError
    """
    n = parse_count(meta.get("state_dim"), where, "state_dim", MAX_STATE_DIM)
    T = parse_count(meta.get("horizon"), where, "horizon", MAX_HORIZON)
    positions = meta.get("positions") or None
    if positions not in (None, "last", "all"):
        raise _fail(where, f"metadata 'positions' is {positions[:40]!r}, expected 'last' or 'all'")
    controlled = parse_json(meta.get("controlled_layers", "null"), where, "metadata 'controlled_layers'")
    if controlled is not None:
        if not isinstance(controlled, list) or not all(
                isinstance(k, int) and not isinstance(k, bool) and -T <= k < T for k in controlled):
            raise _fail(where, f"metadata 'controlled_layers' must be null or a list of layer "
                               f"indices in [-{T}, {T}), found {str(controlled)[:60]}")
    layer_path = parse_json(meta.get("layers", "null"), where, "metadata 'layers'")
    if layer_path is not None and not isinstance(layer_path, str):
        raise _fail(where, f"metadata 'layers' must be null or a dotted path string, found "
                           f"{type(layer_path).__name__}")
    hyper = parse_json(meta.get("hyperparameters", "{}"), where, "metadata 'hyperparameters'",
                       allow_constants=True)
    hyper = check_hyperparameters(str(meta.get("kind")), hyper, where=where, state_dim=n, horizon=T)
    return {"state_dim": n, "horizon": T, "positions": positions, "controlled_layers": controlled,
            "layer_path": layer_path, "model_id": meta.get("model_id") or None,
            "hyperparameters": hyper}


# ---------------------------------------------------------------- tensors

def check_tensors(tensors: Mapping[str, np.ndarray], where: str, *, state_dim: int,
                  horizon: int) -> None:
    """float32, finite, leading axis ``T`` or ``T+1``, a matrix's second axis ``n``.

    The steerer class checks the exact shapes of its tensors when it is built.

    Raises
    ------
    ControllerFileError
    """
    for name, arr in tensors.items():
        if arr.dtype != np.float32:
            raise _fail(where, f"tensor {name!r} has dtype {arr.dtype}, expected float32")
        shape = tuple(arr.shape)
        if not 1 <= len(shape) <= 3 or shape[0] not in (horizon, horizon + 1) or (
                len(shape) == 2 and shape[1] != state_dim):
            raise _fail(where, f"inconsistent controller file: tensor {name!r} has shape {shape}, expected ({horizon} or "
                               f"{horizon + 1},), ({horizon} or {horizon + 1}, {state_dim}) or a "
                               f"3-d stack of {horizon} or {horizon + 1} matrices")
        if not np.all(np.isfinite(arr)):
            raise _fail(where, f"tensor {name!r} holds NaN or inf values")


def tensor_digest(tensors: Mapping[str, Any]) -> str:
    r"""SHA-256 of the tensors: for each name in sorted order, ``name \0 shape \0`` and the
    little-endian float32 C-order bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(np.asarray(tensors[name], dtype="<f4"))
        digest.update(name.encode("utf-8") + b"\0" + json.dumps(list(arr.shape)).encode() + b"\0")
        digest.update(arr.tobytes())
    return digest.hexdigest()


def check_digest(meta: Mapping[str, str], tensors: Mapping[str, Any], where: str) -> None:
    """The stored :data:`DIGEST_KEY` equals :func:`tensor_digest` of ``tensors``.

    A file without the key (written before it existed) loads with a :class:`UserWarning`.

    Raises
    ------
    ControllerFileError
        A malformed digest, or tensor bytes changed since the file was written.
    """
    stored = meta.get(DIGEST_KEY)
    if stored is None:
        warnings.warn(f"{where}: no {DIGEST_KEY} in the metadata (written by an older "
                      "ltv-control): the tensor data cannot be checked for corruption; save it "
                      "again to add one", UserWarning, stacklevel=4)
        return
    if not re.fullmatch(r"[0-9a-f]{64}", stored):
        raise _fail(where, f"metadata {DIGEST_KEY!r} is not a SHA-256 hex digest")
    found = tensor_digest(tensors)
    if found != stored:
        raise _fail(where, f"tensor data changed since the file was written (SHA-256 "
                           f"{found[:12]}..., metadata says {stored[:12]}...): corrupt file")
