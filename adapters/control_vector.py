"""llama.cpp control vectors: export a steerer to a control-vector GGUF, and import one.

A llama.cpp control vector is a GGUF file with ``general.architecture = "controlvector"``,
``controlvector.model_hint`` (the model's architecture name), ``controlvector.layer_count`` and
float32 1-D tensors ``direction.N`` of the hidden size.  llama.cpp adds ``direction.N`` to the
output of decoder block ``N`` (0-based, the same numbering as ``model.model.layers[N]`` in
transformers) at every position of every token:

    h_{N+1} = f_N(h_N) + s · direction.N          (N >= 1; several files are summed)

``direction.0`` is invalid (llama.cpp refuses the file), so block 0's output cannot be steered,
and ``N`` must be at most ``T - 1`` for a model with ``T`` blocks.  (Checked against llama.cpp's
``common_control_vector_load_one`` in ``common/common.cpp``, ``llama_adapter_cvec::apply`` and
``::tensor_for`` in ``src/llama-adapter.cpp``, and ``build_cvec(cur, il)`` at the end of block
``il`` in ``src/models/*.cpp``; see ``docs/llamacpp.md``.)

Export.  A constant law (ActAdd: ``u_k = coeff · e_k``) exports exactly.  A feedback law
(A-LQR, S-PID, constrained) applies a state-dependent input ``u_k(z)``; llama.cpp can only add
constants, so the export is the mean closed-loop input

    ū_k = (1/|S|) Σ_{(b,t) ∈ S} u_k(z_{k,b,t}),

over the set ``S`` of real (non-pad) positions of steered trajectories of calibration prompts
(prompt positions and every generated token, the law attached with ``positions="all"``: llama.cpp's
semantics).  The inputs are measured, not recomputed: forward hooks registered around the
steerer's own hook record each block's output just before and just after it, so any steerer
with the public ``attach`` surface can be exported.  The share of the input energy that the
constant keeps, ``‖ū_k‖² / mean ‖u_k‖²`` (1 for a constant law), is reported per layer.

Import.  :func:`load_control_vector` reads any llama.cpp / repeng control vector as an
:class:`~ltv_control.adapters.ActAddSteerer` (``e_N = direction.N``, ``coeff = scale``,
``positions="all"``), refusing a file whose hidden size or layer count does not match the model
(:class:`~ltv_control.DimensionError`) and a corrupt or foreign file
(:class:`~ltv_control.ControllerFileError`).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ltv_control._exceptions import ArgumentError, ControllerFileError, DimensionError, PropertyError
from ltv_control.atomic import atomic_write_bytes

__all__ = [
    "ControlVectorExport",
    "ControlVectorFile",
    "ClosedLoopInputs",
    "export_gguf",
    "load_control_vector",
    "read_control_vector",
    "write_control_vector",
    "mean_closed_loop_input",
]

ARCH = "controlvector"
FORMAT = "ltv-control/control-vector"
_DIRECTION = re.compile(r"^direction\.(\d+)$")
_EXACT_KINDS = ("actadd",)


# ---------------------------------------------------------------------------------- file I/O


@dataclass(frozen=True)
class ControlVectorFile:
    """Contents of a control-vector GGUF.

    Attributes
    ----------
    directions : dict of int to numpy.ndarray
        ``N -> direction.N`` (float32, shape ``(n,)``); repeated names are summed, as llama.cpp does.
    hidden_size : int
        ``n``.
    model_hint : str or None
        ``controlvector.model_hint``.
    layer_count : int or None
        ``controlvector.layer_count`` (llama.cpp's generator writes ``T - 1``; repeng writes the
        number of directions).
    num_layers : int or None
        ``T`` of the model the file was written for, when this package wrote it.
    metadata : dict
        Every scalar key/value of the file.
    """

    directions: dict[int, np.ndarray]
    hidden_size: int
    model_hint: str | None
    layer_count: int | None
    num_layers: int | None
    metadata: dict[str, Any]


def write_control_vector(path: str | os.PathLike, vectors: Any, *, model_hint: str,
                         metadata: dict[str, Any] | None = None) -> Path:
    """Write ``vectors`` as a llama.cpp control vector (atomically, permissions ``0o666 & ~umask``).

    Row ``k`` of ``vectors`` is written as ``direction.k`` for ``k = 1 .. T-1`` (llama.cpp adds
    it to block ``k``'s output); row 0 must be zero (block 0 cannot be steered).  The header
    holds what llama.cpp's ``cvector-generator`` writes (``general.architecture``,
    ``controlvector.model_hint``, ``controlvector.layer_count = T - 1`` as int32) plus
    ``ltv_control.*`` keys that llama.cpp ignores.

    Parameters
    ----------
    path : str or PathLike
    vectors : array, shape (T, n)
    model_hint : str
        The model's architecture name as llama.cpp knows it (e.g. ``"llama"``).
    metadata : dict, optional
        Extra ``ltv_control.<key>`` values (str, bool, int or float).

    Returns
    -------
    pathlib.Path
    """
    import gguf

    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] < 2:
        raise DimensionError(f"vectors: expected shape (T, n) with T >= 2, found {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise PropertyError("vectors: expected finite values, found NaN or inf")
    if np.any(vectors[0] != 0):
        raise PropertyError("vectors: row 0 must be zero (llama.cpp cannot steer block 0's output)")
    T, n = vectors.shape
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "control_vector.gguf"
        writer = gguf.GGUFWriter(str(scratch), arch=ARCH)
        writer.add_string(f"{ARCH}.model_hint", str(model_hint))
        writer.add_int32(f"{ARCH}.layer_count", T - 1)
        extra = {"format": FORMAT, "num_layers": T, "hidden_size": n, **(metadata or {})}
        for key, value in extra.items():
            _add_value(writer, f"ltv_control.{key}", value)
        for k in range(1, T):
            writer.add_tensor(f"direction.{k}", np.ascontiguousarray(vectors[k]))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        data = scratch.read_bytes()
    return atomic_write_bytes(path, data, fsync=True)


def _add_value(writer: Any, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, (int, np.integer)):
        writer.add_uint32(key, int(value)) if value >= 0 else writer.add_int32(key, int(value))
    elif isinstance(value, (float, np.floating)):
        writer.add_float32(key, float(value))
    else:
        writer.add_string(key, str(value))


def read_control_vector(path: str | os.PathLike) -> ControlVectorFile:
    """Read and validate a llama.cpp / repeng control-vector GGUF.

    Raises
    ------
    FileNotFoundError
        No such file.
    ControllerFileError
        Not a GGUF file, truncated or corrupt, another GGUF kind (e.g. a model file), or a
        tensor that is not a float32 1-D ``direction.N`` with ``N >= 1`` of one common size.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ControllerFileError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    meta, tensors = _parse_gguf(path)
    arch = meta.get("general.architecture")
    if arch != ARCH:
        raise ControllerFileError(
            f"{path}: not a control vector: general.architecture is {arch!r}, expected {ARCH!r}")
    directions = _directions(path, tensors)
    hidden = next(iter(directions.values())).shape[0]
    return ControlVectorFile(
        directions=directions, hidden_size=hidden,
        model_hint=_opt(meta.get(f"{ARCH}.model_hint"), str),
        layer_count=_opt(meta.get(f"{ARCH}.layer_count"), int),
        num_layers=_opt(meta.get("ltv_control.num_layers"), int),
        metadata=meta)


def _opt(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)


def _parse_gguf(path: Path) -> tuple[dict[str, Any], list]:
    """Scalar metadata and tensors of a GGUF file; any parse failure is a ControllerFileError."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        meta: dict[str, Any] = {}
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or len(field.types) != 1:
                continue  # header fields and arrays
            value = field.contents()
            meta[name] = value.item() if isinstance(value, np.generic) else value
        tensors = [(t.name, t.tensor_type, [int(d) for d in t.shape], np.array(t.data))
                   for t in reader.tensors]
    except (ValueError, IndexError, KeyError, TypeError, OSError, OverflowError,
            UnicodeDecodeError, AssertionError) as exc:
        raise ControllerFileError(f"{path}: truncated or corrupt GGUF file ({exc})") from exc
    return meta, tensors


def _directions(path: Path, tensors: list) -> dict[int, np.ndarray]:
    import gguf

    if not tensors:
        raise ControllerFileError(f"{path}: holds no direction tensors")
    out: dict[int, np.ndarray] = {}
    size = None
    for name, kind, shape, data in tensors:
        match = _DIRECTION.match(name)
        if match is None or int(match.group(1)) == 0:
            raise ControllerFileError(
                f"{path}: tensor {name!r} is not a direction.N with N >= 1 (llama.cpp refuses it)")
        if kind != gguf.GGMLQuantizationType.F32 or len(shape) != 1:
            raise ControllerFileError(
                f"{path}: {name} must be a float32 1-D tensor, found {getattr(kind, 'name', kind)} "
                f"of shape {tuple(shape)}")
        size = shape[0] if size is None else size
        if shape[0] != size:
            raise ControllerFileError(f"{path}: {name} has size {shape[0]}, the others {size}")
        vec = np.asarray(data, dtype=np.float32).reshape(-1)
        if not np.isfinite(vec).all():
            raise ControllerFileError(f"{path}: {name} holds NaN or inf")
        index = int(match.group(1))
        out[index] = out[index] + vec if index in out else vec.copy()
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------- import


def load_control_vector(path: str | os.PathLike, model: Any = None, *, scale: float = 1.0) -> Any:
    """Import a llama.cpp / repeng control vector as a constant steerer.

    ``direction.N`` becomes the input added to transformers block ``N``'s output at every
    non-pad position, ``u_N = scale · direction.N`` (llama.cpp's ``--control-vector-scaled FILE
    scale``), with the same layer numbering as llama.cpp.

    Parameters
    ----------
    path : str or PathLike
    model : torch.nn.Module, optional
        The model to steer; the file is checked against it.  Without it the layer count is the
        one the file states (this package's files), else ``layer_count + 1`` (llama.cpp's
        generator), at least ``max N + 1`` — pass ``model`` for files written elsewhere.
    scale : float, default 1.0

    Returns
    -------
    ActAddSteerer
        ``e[N] = direction.N`` (zero elsewhere), ``coeff = scale``, ``positions = "all"``,
        ``layers`` = the nonzero directions; change the strength with ``attach(coeff=...)``.

    Raises
    ------
    DimensionError
        The hidden size or the layer count does not match ``model`` (both values named).
    ControllerFileError
        Truncated, corrupt or foreign file.
    """
    from ltv_control.adapters.actadd import ActAddSteerer

    scale = float(scale)
    if not np.isfinite(scale):
        raise PropertyError(f"scale: expected a finite number, found {scale}")
    cv = read_control_vector(path)
    top = max(cv.directions)
    if model is not None:
        num_layers = _check_against_model(path, cv, model)
    elif cv.num_layers is not None:
        num_layers = cv.num_layers
    else:
        num_layers = max(top + 1, (cv.layer_count or 0) + 1)
    if top >= num_layers:
        raise ControllerFileError(
            f"{path}: direction.{top} targets block {top}, but the file states {num_layers} layers")
    e = np.zeros((num_layers, cv.hidden_size), dtype=np.float32)
    for index, vec in cv.directions.items():
        e[index] = vec
    layers = [k for k in cv.directions if np.any(e[k] != 0)]
    return ActAddSteerer(
        {"e": e}, hidden_size=cv.hidden_size, num_layers=num_layers,
        hyperparameters={"coeff": scale}, layers=layers, positions="all",
        model_id=cv.metadata.get("ltv_control.model_id") or cv.model_hint)


def _model_shape(model: Any) -> tuple[list, int | None]:
    from ltv_control.adapters import find_decoder_layers
    from ltv_control.adapters._blocks import hidden_size_of

    blocks, _ = find_decoder_layers(model)
    return blocks, hidden_size_of(model)


def _check_against_model(path: Any, cv: ControlVectorFile, model: Any) -> int:
    blocks, hidden = _model_shape(model)
    T = len(blocks)
    name = type(model).__name__
    if hidden is not None and hidden != cv.hidden_size:
        raise DimensionError(
            f"{path}: the control vector has hidden size {cv.hidden_size}, the model ({name}) "
            f"has hidden size {hidden}")
    top = max(cv.directions)
    if top > T - 1:
        raise DimensionError(
            f"{path}: direction.{top} targets block {top}, the model ({name}) has {T} decoder "
            f"layers (valid directions 1..{T - 1})")
    if cv.num_layers is not None and cv.num_layers != T:
        raise DimensionError(
            f"{path}: the control vector was written for {cv.num_layers} decoder layers, the "
            f"model ({name}) has {T}")
    return T


# ---------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ClosedLoopInputs:
    """Statistics of the inputs a steerer applied along calibration trajectories.

    Attributes
    ----------
    mean : numpy.ndarray, shape (T, n), float64
        ``ū_k``, the mean input added to block ``k``'s output over the real positions.
    energy : numpy.ndarray, shape (T,), float64
        ``mean ‖u_k‖²`` over the same positions.
    count : numpy.ndarray, shape (T,), int64
        Number of real positions seen at block ``k`` (prompt positions and generated tokens).
    """

    mean: np.ndarray
    energy: np.ndarray
    count: np.ndarray


def _hidden(output: Any) -> Any:
    """The hidden-state tensor of a decoder block's output (tensor, or tuple/list first item)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ArgumentError(f"decoder block output: expected a tensor or a tuple, found {type(output).__name__}")


def _left_pad(tokenizer: Any, prompts: Sequence[str]) -> tuple[Any, Any, int]:
    import torch

    rows = [list(tokenizer(p)["input_ids"]) for p in prompts]
    pad = next((v for v in (getattr(tokenizer, a, None) for a in
                            ("pad_token_id", "eos_token_id", "bos_token_id")) if isinstance(v, int)), 0)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
    return ids, mask, pad


def _recording_hooks(model: Any, blocks: list, acc: dict) -> list:
    """Hooks that record ``u_k = output after − output before`` the steerer's hook on each block.

    Registered after ``attach``: the ``prepend`` hook runs before every hook already there, the
    appended one after them, so their difference is exactly what the steerer added.
    """
    import torch

    state: dict[str, Any] = {"mask": None, "before": {}}

    def model_pre(module, args, kwargs):
        mask = kwargs.get("attention_mask") if kwargs else None
        state["mask"] = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None

    def before(k):
        def hook(module, args, output):
            state["before"][k] = _hidden(output).detach().to(torch.float64, copy=True)
        return hook

    def after(k):
        def hook(module, args, output):
            prev = state["before"].pop(k, None)
            if prev is None:
                return
            u = _hidden(output).detach().to(torch.float64) - prev
            u = u if u.ndim == 3 else u.unsqueeze(1)
            mask = state["mask"]
            w = torch.ones(u.shape[:2], dtype=torch.float64, device=u.device)
            if mask is not None and mask.shape[0] == u.shape[0] and mask.shape[1] >= u.shape[1]:
                w = (mask[:, -u.shape[1]:] != 0).to(device=u.device, dtype=torch.float64)
            acc["sum"][k] += (u * w.unsqueeze(-1)).sum((0, 1)).cpu()
            acc["sq"][k] += float(((u * u).sum(-1) * w).sum())
            acc["count"][k] += int(w.sum())
        return hook

    handles = [model.register_forward_pre_hook(model_pre, with_kwargs=True)]
    for k, block in enumerate(blocks):
        handles.append(block.register_forward_hook(before(k), prepend=True))
        handles.append(block.register_forward_hook(after(k)))
    return handles


def mean_closed_loop_input(steerer: Any, model: Any, tokenizer: Any, prompts: Sequence[str], *,
                           positions: str = "all", max_new_tokens: int = 16, batch_size: int = 8,
                           **attach_options: Any) -> ClosedLoopInputs:
    """Measure ``ū_k`` along steered greedy trajectories of ``prompts``.

    The steerer is attached with ``positions`` (default ``"all"``: llama.cpp's semantics) and
    ``attach_options``; each batch (left padded) is decoded greedily for ``max_new_tokens``
    tokens with the KV cache (``max_new_tokens=0``: one forward pass over the prompts), and the
    input added at every real position of every forward pass is accumulated.

    Returns
    -------
    ClosedLoopInputs
    """
    import torch

    prompts = _check_prompts(prompts)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise PropertyError(f"max_new_tokens: expected an int >= 0, found {max_new_tokens!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise PropertyError(f"batch_size: expected a positive int, found {batch_size!r}")
    blocks = steerer.check_model(model)
    T, n = len(blocks), int(steerer.hidden_size)
    acc = {"sum": torch.zeros(T, n, dtype=torch.float64), "sq": np.zeros(T), "count": np.zeros(T, np.int64)}
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        ids, mask, pad = _left_pad(tokenizer, prompts[start:start + batch_size])
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad(), steerer.attach(model, positions=positions, **attach_options):
            handles = _recording_hooks(model, blocks, acc)
            try:
                if max_new_tokens == 0:
                    model(input_ids=ids, attention_mask=mask, use_cache=False)
                else:
                    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                   do_sample=False, temperature=None, top_p=None, top_k=None,
                                   pad_token_id=pad)
            finally:
                for h in handles:
                    h.remove()
    count = acc["count"]
    safe = np.maximum(count, 1)
    return ClosedLoopInputs(mean=acc["sum"].numpy() / safe[:, None], energy=acc["sq"] / safe,
                            count=count)


def _check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str) or prompts is None:
        raise ArgumentError(f"prompts: expected a list of str, found {type(prompts).__name__}")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise PropertyError("prompts: expected a non-empty list of str")
    return prompts


@dataclass(frozen=True)
class ControlVectorExport:
    """What :func:`export_gguf` wrote; usable as a path (``os.fspath(report)``).

    Attributes
    ----------
    path : pathlib.Path
        The control-vector GGUF.
    kind : str
        The steerer's kind (``"actadd"``, ``"alqr"``, ...).
    exact : bool
        True for a constant law (the file reproduces it); False for a feedback law (the file
        holds its mean closed-loop input, an approximation).
    vectors : numpy.ndarray, shape (T, n), float32
        Row ``k`` is added to block ``k``'s output (row 0 is zero: block 0 cannot be steered).
    energy : numpy.ndarray, shape (T,)
        ``mean ‖u_k‖²`` of the law's input over the calibration positions (``‖u_k‖²`` when exact).
    dropped_norm : float
        ``‖ū_0‖``, the block-0 input that llama.cpp cannot apply and that was left out.
    positions : int
        Number of (prompt or generated) positions the mean was taken over (0 when exact).
    prompts : int
        Number of calibration prompts (0 when exact).
    """

    path: Path
    kind: str
    exact: bool
    vectors: np.ndarray
    energy: np.ndarray
    dropped_norm: float
    positions: int
    prompts: int

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def layers(self) -> list[int]:
        """Blocks whose output receives a nonzero direction."""
        return [k for k in range(self.vectors.shape[0]) if np.any(self.vectors[k] != 0)]

    @property
    def captured(self) -> np.ndarray:
        """``‖ū_k‖² / mean ‖u_k‖²`` per block: the share of the input energy the constant keeps
        (1 for a constant law; NaN where the law applied nothing; 0 at a dropped block 0)."""
        norms = np.sum(self.vectors.astype(np.float64) ** 2, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.energy > 0, norms / np.where(self.energy > 0, self.energy, 1), np.nan)

    @property
    def captured_total(self) -> float:
        """``Σ_k ‖ū_k‖² / Σ_k mean ‖u_k‖²`` over blocks ``k >= 1`` (1 when exact)."""
        norms = np.sum(self.vectors[1:].astype(np.float64) ** 2)
        total = float(np.sum(self.energy[1:]))
        return float(norms / total) if total > 0 else float("nan")

    def summary(self) -> str:
        """Human-readable lines about the export (what it is, how much it keeps)."""
        layers = self.layers
        span = f"blocks {layers[0]}..{layers[-1]}" if layers else "no block"
        lines = [f"wrote {self.path} ({self.kind}, {len(layers)} directions, {span})"]
        if self.exact:
            lines.append("exact: the law's input is constant")
        else:
            lines.append(
                f"approximation: the mean closed-loop input over {self.positions} positions of "
                f"{self.prompts} calibration prompts; it keeps {100 * self.captured_total:.1f}% of "
                f"the input energy (the rest varies with the state)")
        if self.dropped_norm > 0:
            lines.append(f"block 0's input (norm {self.dropped_norm:.3g}) is left out: llama.cpp "
                         "cannot steer block 0's output")
        return "\n".join(lines)


def _constant_inputs(steerer: Any, attach_options: dict) -> np.ndarray:
    """``coeff · e_k`` at the steerer's layers (ActAdd's documented attributes)."""
    unknown = set(attach_options) - {"coeff", "layers"}
    if unknown:
        raise ArgumentError(f"export_gguf: unknown options for {type(steerer).__name__}: {sorted(unknown)}")
    coeff = attach_options.get("coeff")
    coeff = float(steerer.coeff if coeff is None else coeff)
    e = steerer.e.detach().cpu().double().numpy()
    active = set(range(e.shape[0]))
    for restrict in (steerer.layers, attach_options.get("layers")):
        if restrict is not None:
            active &= {int(k) % e.shape[0] for k in restrict}
    out = np.zeros_like(e)
    for k in active:
        out[k] = coeff * e[k]
    return out


def _model_hint(model: Any, steerer: Any) -> str:
    config = getattr(model, "config", None)
    hint = getattr(config, "model_type", None)
    return str(hint) if hint else "unknown"


def export_gguf(steerer: Any, path: str | os.PathLike, *, model: Any = None, tokenizer: Any = None,
                prompts: Sequence[str] | None = None, positions: str = "all",
                max_new_tokens: int = 16, batch_size: int = 8, layer0: str = "drop",
                model_hint: str | None = None, **attach_options: Any) -> ControlVectorExport:
    """Export ``steerer`` as a llama.cpp control vector (``direction.k`` added to block ``k``).

    Constant laws (ActAdd) export exactly, ``direction.k = coeff · e_k``.  Feedback laws export
    their mean closed-loop input ``ū_k`` (see :func:`mean_closed_loop_input`), an approximation.

    Parameters
    ----------
    steerer : Steerer
    path : str or PathLike
        Destination ``.gguf`` (written atomically).
    model, tokenizer : optional
        Required for a feedback law (the calibration runs on them); ``model`` also supplies
        ``model_hint`` (``config.model_type``).
    prompts : list of str, optional
        Calibration prompts, required for a feedback law.
    positions : {"all", "last"}, default "all"
        Positions steered during calibration ("all" is what llama.cpp does).
    max_new_tokens, batch_size : int
        Greedy tokens generated per calibration prompt, and the batch size.
    layer0 : {"drop", "error"}, default "drop"
        What to do when the law puts a nonzero input on block 0's output, which llama.cpp cannot
        apply: leave it out (its norm is reported) or raise :class:`PropertyError`.
    model_hint : str, optional
        ``controlvector.model_hint`` (llama.cpp's architecture name, e.g. ``"llama"``).
    **attach_options
        Passed to ``steerer.attach`` (e.g. ``lam=2.0``; ``coeff=`` / ``layers=`` for ActAdd).

    Returns
    -------
    ControlVectorExport
        Path-like report (``summary()`` prints it).
    """
    if layer0 not in ("drop", "error"):
        raise ArgumentError(f"layer0: expected 'drop' or 'error', found {layer0!r}")
    kind = str(getattr(steerer, "kind", "") or type(steerer).__name__)
    exact = kind in _EXACT_KINDS
    if model is not None:
        steerer.check_model(model)
    if exact:
        vectors = _constant_inputs(steerer, attach_options)
        energy = np.sum(vectors.astype(np.float32).astype(np.float64) ** 2, axis=1)
        n_pos, n_prompts = 0, 0
    else:
        missing = [name for name, v in (("model", model), ("tokenizer", tokenizer),
                                         ("prompts", prompts)) if v is None]
        if missing:
            raise ArgumentError(
                f"export_gguf: a {kind} law is not constant; its export needs {', '.join(missing)} "
                "(calibration prompts on the model)")
        stats = mean_closed_loop_input(steerer, model, tokenizer, prompts, positions=positions,
                                       max_new_tokens=max_new_tokens, batch_size=batch_size,
                                       **attach_options)
        vectors, energy = stats.mean, stats.energy
        n_pos, n_prompts = int(stats.count.max(initial=0)), len(list(prompts))
    dropped = float(np.linalg.norm(vectors[0]))
    if dropped > 0 and layer0 == "error":
        raise PropertyError(
            f"steerer: block 0's output receives an input of norm {dropped:.3g}, which llama.cpp "
            "cannot apply (direction.0 is invalid); pass layer0='drop' to leave it out")
    vectors = vectors.astype(np.float32)
    vectors[0] = 0.0
    hint = model_hint or _model_hint(model, steerer)
    meta = {"kind": kind, "exact": exact, "model_id": getattr(steerer, "model_id", None) or "",
            "positions": positions if not exact else "all"}
    written = write_control_vector(path, vectors, model_hint=hint, metadata=meta)
    return ControlVectorExport(path=written, kind=kind, exact=exact, vectors=vectors,
                               energy=np.asarray(energy, dtype=np.float64),
                               dropped_norm=dropped, positions=n_pos, prompts=n_prompts)
