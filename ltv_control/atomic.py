"""Atomic file writes: a temporary file in the target folder, then ``os.replace``.

Every file the package writes (reports, figures, systems, controller files, caches) goes
through here, so a crash or a full disk never leaves a half-written file behind, and every
written file gets the usual permissions ``0o666 & ~umask`` (``tempfile.mkstemp`` alone would
leave ``0o600``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_save_figure",
           "current_umask", "output_path"]


def current_umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_path(path: Any) -> Path:
    """``path`` as a :class:`~pathlib.Path` whose folder exists, checked before any work.

    Raises
    ------
    ArgumentError
        ``path`` is not a str or os.PathLike.
    FileNotFoundError
        Its folder does not exist (nothing is created).
    """
    from ltv_control._exceptions import ArgumentError

    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise ArgumentError(f"path: expected a str or os.PathLike, found {type(path).__name__}")
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"path: the folder {str(folder)!r} does not exist")
    return target


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *,
                 fsync: bool = False) -> Path:
    """Call ``write(handle)`` on a temporary binary file beside ``path``, then rename it.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; its folder is created if missing.
    write : callable
        Receives the open binary handle and writes the whole content.
    fsync : bool, default False
        Flush the data to disk before the rename (controller files).

    Returns
    -------
    pathlib.Path
        ``path``. On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: handle.write(data), fsync=fsync)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 110, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure as PNG atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi, **savefig_kwargs))
