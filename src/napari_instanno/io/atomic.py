"""Atomic, non-clobbering writes: a crash or a full disk never leaves half a file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from ..errors import InstannoError


@contextmanager
def atomic_text_file(path: str | Path, overwrite: bool = False) -> Iterator[TextIO]:
    """A text file handle whose content replaces ``path`` only when the block ends without error.

    Refuses to replace an existing file unless ``overwrite``; raises ``InstannoError`` with the
    reason when the folder is missing or not writable. A failed write leaves no file behind.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InstannoError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InstannoError(f"cannot save to {path}: folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise InstannoError(f"cannot save to {path}: {err.strerror}; choose another folder") from err
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


def write_json_atomic(path: str | Path, data: Any, overwrite: bool = False) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (see ``atomic_text_file``)."""
    with atomic_text_file(path, overwrite) as fh:
        json.dump(data, fh)
    return Path(path)


def read_json(path: str | Path, what: str) -> Any:
    """Load a JSON file, turning a missing or corrupt file into a one-line ``InstannoError``."""
    path = Path(path)
    if not path.is_file():
        raise InstannoError(f"{what} file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InstannoError(f"{path} is not valid {what} JSON ({err}); is the file corrupt?") from err
