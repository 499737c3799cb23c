"""Atomic file writes: a reader (another job of a sweep, a resume after a kill) sees the old file or the
new one, never half of one.

Every write goes to a temporary file in the target's folder (same file system), is flushed and fsynced,
then renamed over the target with `os.replace`. On any failure the temporary file is removed and the old
target is left as it was. Files and created folders get the permissions the process umask gives
(0o666 / 0o777 & ~umask), as a plain `open(path, "w")` would: results and caches are often shared
between users of a group. Equal content gives equal bytes (see `atomic_torch_save`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "current_umask",
    "json_default",
    "make_shared_tempdir",
]

PathLike = str | os.PathLike[str]


def current_umask() -> int:
    """The process umask, read without changing it where the kernel allows (Linux >= 4.7).

    Elsewhere it is read by setting and restoring it, which briefly exposes umask 0 to other threads.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def json_default(value: Any) -> Any:
    """`default=` for json.dumps: paths as strings, numpy/torch scalars as numbers, anything else as str."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):  # numpy / torch scalars (0-d arrays and tensors too)
        return value.item()
    return str(value)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600; os.chmod (unlike fchmod) exists on Windows too
        os.replace(tmp, path)
    except BaseException:
        # The `with` closed the descriptor; only the file itself can be left over.
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; no newline translation (the bytes are `text.encode(encoding)`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(
    path: PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False, allow_nan: bool = True
) -> Path:
    """Write `obj` as JSON (insertion order unless sort_keys, a trailing newline) to `path` atomically.

    Paths and numpy/torch scalars are converted (`json_default`). The text is built before the disk is
    touched, so an object JSON cannot encode raises without leaving anything behind.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan, default=json_default) + "\n"
    return atomic_write_text(path, text)


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """`torch.save(obj, path)`, atomically, and byte-identical for equal objects.

    torch.save names the zip archive's top folder after the file it writes, so saving through a randomly
    named temporary file would make equal objects differ on disk. The object is saved under the target's
    own name inside a private temporary folder next to it, then moved into place: the bytes are exactly
    those of a plain `torch.save(obj, path)` (the committed toy CLIP reproduces bit for bit).
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    tmp = staging / path.name
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        staging.rmdir()
    _fsync_dir(path.parent)
    return path


def make_shared_tempdir(parent: PathLike, prefix: str) -> Path:
    """A new, uniquely named folder in `parent` whose mode follows the umask (mkdtemp makes it 0700).

    For folders that are filled and then renamed into place as shared data (e.g. a generated dataset).
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; best effort, some file systems do not allow it on directories.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
