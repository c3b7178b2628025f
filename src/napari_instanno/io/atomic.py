"""Atomic, non-clobbering writes: a crash or a full disk never leaves half a file behind.

Every file the project writes goes through ``atomic_text_file`` (JSON through
``write_json_atomic``) or ``new_temp_beside`` + ``os.replace``: an existing file is replaced only
with ``overwrite`` and only when it is a regular file (never a symlink, folder or device), a new
file gets the permissions the user's umask allows (an overwritten one keeps its own), and JSON
never holds NaN or infinity (strict parsers reject them).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..errors import InstannoError

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def check_target(path: str | Path, overwrite: bool = False) -> int:
    """Check that ``path`` may be written; returns the permission bits the file should get.

    Raises ``InstannoError`` when it exists and ``overwrite`` is false, when it exists but is not
    a regular file (a symlink, folder or device is never replaced), or when its folder is missing.
    """
    path = Path(path)
    if os.path.lexists(path):
        st = os.lstat(path)
        if not overwrite:
            raise InstannoError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
        if not stat.S_ISREG(st.st_mode):
            kind = ("a symlink" if stat.S_ISLNK(st.st_mode) else
                    "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file")
            raise InstannoError(f"{path} is {kind}; only regular files are replaced: choose another name")
        return stat.S_IMODE(st.st_mode)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InstannoError(f"cannot save to {path}: folder {folder} does not exist")
    return 0o666 & ~_umask()


def new_temp_beside(path: str | Path, mode: int) -> tuple[int, str]:
    """A temporary file next to ``path`` (same file system, so ``os.replace`` is atomic), with
    permission bits ``mode``; returns (descriptor, name)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.fchmod(fd, mode)
    except OSError as err:
        raise InstannoError(f"cannot save to {path}: {err.strerror}; choose another folder") from err
    return fd, tmp


@contextmanager
def atomic_text_file(path: str | Path, overwrite: bool = False) -> Iterator[TextIO]:
    """A text file handle whose content replaces ``path`` only when the block ends without error.

    See ``check_target`` for what may be replaced; a failed write leaves no file behind.
    """
    path = Path(path)
    fd, tmp = new_temp_beside(path, check_target(path, overwrite))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise InstannoError(f"cannot save to {path}: {err.strerror}") from err
        raise


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON values (``json.dump``'s ``default``)."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(data: Any, path: str | Path = "JSON") -> str:
    """``data`` as strict JSON text (numpy values converted); NaN or infinity is an error."""
    try:
        return json.dumps(data, allow_nan=False, default=_plain)
    except ValueError as err:
        raise InstannoError(f"cannot save {path}: it would hold NaN or infinity, which JSON does not "
                            "allow; fix or drop the non-finite values first") from err


def write_json_atomic(path: str | Path, data: Any, overwrite: bool = False) -> Path:
    """Write ``data`` as strict JSON to ``path`` atomically (see ``atomic_text_file``)."""
    text = to_json(data, path)
    with atomic_text_file(path, overwrite) as fh:
        fh.write(text)
    return Path(path)


def _no_constants(name: str) -> Any:
    raise InstannoError(f"holds {name}, which JSON does not allow")


def read_json(path: str | Path, what: str) -> Any:
    """Load a JSON file, turning a missing, unreadable or corrupt file into a one-line
    ``InstannoError`` (NaN and Infinity, which Python would accept, count as corrupt)."""
    path = Path(path)
    if not path.is_file():
        raise InstannoError(f"{what} file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh, parse_constant=_no_constants)
    except InstannoError as err:
        raise InstannoError(f"{path} is not valid {what} JSON: it {err}; is the file corrupt?") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InstannoError(f"{path} is not valid {what} JSON ({err}); is the file corrupt?") from err
    except RecursionError as err:
        raise InstannoError(f"{path} is not valid {what} JSON: nested too deeply") from err
    except OSError as err:
        raise InstannoError(f"cannot read {what} file {path}: {err.strerror}") from err
