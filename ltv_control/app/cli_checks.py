"""Checks the ``ltv-control`` command line makes before it does any work.

Each turns a user's mistake into a typed :class:`~ltv_control.ControlError` naming the option
or file and what was expected (the CLI prints it as one ``error:`` line, exit status 2):

* input files are regular UTF-8 text files (:func:`read_text_file`: the message gives the byte
  offset of the first invalid byte);
* an ``--out`` file or folder can be written *before* minutes of work (:func:`check_out_file`,
  :func:`check_out_dir`): its parent folder exists and accepts a new file (probed by creating
  one), an existing output is replaced only with ``--force``, and never an input file;
* ``--device`` exists on this machine (:func:`check_device`);
* prompts are not empty and fit the model's positions (:func:`check_prompts`,
  :func:`check_prompt_lengths`);
* an ``OSError`` while writing (a full disk) becomes a clear message (:func:`os_error_message`),
  and a folder made for the outputs is removed again if the run fails before writing into it
  (:func:`guard_output_folder`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ltv_control import ArgumentError, ControlError, DimensionError, PropertyError

__all__ = ["MAX_TEXT_BYTES", "read_text_file", "check_out_file", "check_out_dir",
           "check_device", "check_prompts", "max_positions", "check_prompt_lengths",
           "os_error_message", "guard_output_folder", "positive_int"]

_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
#: largest text input read (bytes)
MAX_TEXT_BYTES = 256 << 20


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``ArgumentTypeError`` naming the text otherwise)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
    return value


def read_text_file(path: str | os.PathLike, option: str, *,
                   decode_error: type[Exception] = ArgumentError) -> str:
    """The text of ``path``: a regular file of strict UTF-8 (a leading BOM is dropped).

    Parameters
    ----------
    path : path-like
    option : str
        What the file is (an option name such as ``--desired``), first in every message.
    decode_error : exception class, default ArgumentError
        Raised for bytes that are not UTF-8 (the task loader raises ``PropertyError``: the file
        exists but its content is wrong).

    Raises
    ------
    ArgumentError
        Missing, not a regular file (checked before opening: a FIFO never blocks), larger than
        :data:`MAX_TEXT_BYTES`.
    decode_error
        Not UTF-8 (the message gives the byte offset).
    """
    where = f"{option} {str(path)!r}"
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ArgumentError(f"{where}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ArgumentError(f"{where}: not a regular file (expected a regular text file)")
    if info.st_size > MAX_TEXT_BYTES:
        raise ArgumentError(f"{where}: {info.st_size} bytes, more than the {MAX_TEXT_BYTES}-byte "
                            "limit of a text input")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_TEXT_BYTES + 1)
    except OSError as exc:
        raise ArgumentError(f"{where}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise decode_error(f"{where}: not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at "
                           f"byte offset {exc.start}); save the file as UTF-8") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _probe_folder(folder: Path, option: str) -> None:
    """``folder`` exists, is a folder and accepts a new file (created and removed)."""
    if not folder.exists():
        raise ArgumentError(f"{option}: folder {str(folder)!r} does not exist (create it first)")
    if not folder.is_dir():
        raise ArgumentError(f"{option}: {str(folder)!r} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".ltv-control-probe-")
    except OSError as exc:
        raise ArgumentError(f"{option}: cannot write in {str(folder)!r} "
                            f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def check_out_file(path: str | os.PathLike, *, option: str = "--out", force: bool = False,
                   inputs: Iterable[Any] = ()) -> Path:
    """An output file that can be written: parent folder writable, not a folder, not one of
    ``inputs``, and not existing unless ``force``.

    Raises
    ------
    ArgumentError
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ArgumentError(f"{option} {str(path)!r} is a folder; give a file path")
    for other in inputs:
        if other is not None and _same_file(path, Path(other)):
            raise ArgumentError(f"{option} {str(path)!r} is also an input file; choose another path")
    if path.exists() and not force:
        raise ArgumentError(f"{option} {str(path)!r} exists; pass --force to overwrite it")
    _probe_folder(path.parent if str(path.parent) else Path("."), option)
    return path


def check_out_dir(path: str | os.PathLike, names: Sequence[str], *, option: str = "--out",
                  force: bool = False) -> Path:
    """An output folder for the files ``names``: it (or its parent) can be written, and none of
    ``names`` exists there unless ``force``.

    Raises
    ------
    ArgumentError
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ArgumentError(f"{option} {str(path)!r} exists and is not a folder")
    if path.is_dir():
        existing = [n for n in names if (path / n).exists()]
        if existing and not force:
            raise ArgumentError(f"{option} {str(path)!r} already holds {', '.join(existing)}; "
                                "pass --force to overwrite")
        _probe_folder(path, option)
    else:
        _probe_folder(path.parent if str(path.parent) else Path("."), option)
    return path


def check_device(text: str) -> str:
    """``text`` names a torch device present on this machine (``meta`` refused: no data).

    Raises
    ------
    ArgumentError
        Not a device name, an absent device type or index.
    """
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise ArgumentError(f"--device: not a torch device: {text!r} (e.g. cpu, cuda, cuda:1, "
                            "mps)") from None
    kind = device.type
    if kind == "cpu":
        return text
    if kind == "meta":
        raise ArgumentError("--device meta: meta tensors hold no data, a model cannot run there")
    if kind == "mps":
        available, count = bool(torch.backends.mps.is_available()), 1
    else:
        module = getattr(torch, kind, None)
        is_available = getattr(module, "is_available", None)
        available = bool(is_available()) if callable(is_available) else False
        counter = getattr(module, "device_count", None)
        count = int(counter()) if available and callable(counter) else (1 if available else 0)
    if not available:
        raise ArgumentError(f"--device {text}: no {kind} device on this machine (use --device cpu)")
    if device.index is not None and device.index >= count:
        raise ArgumentError(f"--device {text}: this machine has {count} {kind} device(s), "
                            f"index {device.index} does not exist")
    return text


def check_prompts(prompts: Sequence[str], option: str) -> list[str]:
    """At least one prompt, none empty or only whitespace.

    Raises
    ------
    PropertyError
    """
    prompts = list(prompts)
    if not prompts:
        raise PropertyError(f"{option}: expected at least one prompt, found none")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise PropertyError(f"{option}: prompt {i} is empty; give some text to continue")
    return prompts


def max_positions(model: Any) -> int | None:
    """The model's largest number of positions (``max_position_embeddings`` and the like)."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
                "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_prompt_lengths(tokenizer: Any, prompts: Sequence[str], limit: int | None, *,
                         option: str = "--prompt", new_tokens: int = 0) -> None:
    """Every prompt plus ``new_tokens`` fits in ``limit`` positions (``None``: no limit).

    Raises
    ------
    DimensionError
        Naming the prompt, its token count and the model's limit.
    """
    if limit is None:
        return
    for i, prompt in enumerate(prompts):
        count = len(tokenizer(prompt)["input_ids"])
        if count + new_tokens > limit:
            raise DimensionError(f"{option}: prompt {i} has {count} tokens (+{new_tokens} new), "
                                 f"more than the model's {limit} positions; shorten it")


def os_error_message(exc: OSError, path: Any = None) -> str:
    """One line for an ``OSError`` met while writing (disk full, read-only, permission)."""
    target = str(path if path is not None else exc.filename or "the output")
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device while writing {target!r}; free some space and rerun"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded while writing {target!r}"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {target!r} ({exc.strerror})"
    return f"cannot write {target!r} ({exc.strerror or exc})"


@contextlib.contextmanager
def guard_output_folder(path: str | os.PathLike | None) -> Iterator[None]:
    """Run a block that may create the folder ``path``; if the block fails, remove the folder
    again when it did not exist before and is still empty, so a failed run never leaves an
    empty ``--out`` folder behind (``None``: no folder to guard).

    An ``OSError`` of writing (disk full, read-only, permission) from the block becomes a
    :class:`ControlError` with :func:`os_error_message`.
    """
    folder = None if path is None else Path(path)
    existed = folder is None or folder.exists()
    try:
        yield
    except BaseException as exc:
        if not existed and folder.is_dir():
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRORS:
            raise ControlError(os_error_message(exc)) from exc
        raise
