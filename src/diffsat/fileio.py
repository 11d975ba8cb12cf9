"""Crash-safe file writes.

:func:`atomic_write` writes to a temporary file in the destination folder and moves it into place with
``os.replace`` (atomic on POSIX and Windows), so a crash or a full disk leaves the previous file intact;
:func:`remove_stray_tmp_files` clears the temporary files a killed process left behind. :func:`fsync_path`
makes a written file or a directory's entries durable.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

_TMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")
"""The temporary names :func:`atomic_write` uses: ``.NAME.<12 hex digits>.tmp``."""


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, then move it into place.

    The file gets mode 0o666 minus the umask, as a plain ``open`` would (safetensors and ``mkstemp`` leave
    0o600). On any exception the temporary file is removed and the exception propagates. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = os.stat(tmp).st_mode & 0o777
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stray_tmp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` in ``folder`` (not recursive) that a killed process
    left behind; returns their paths. Only call it while no other process writes into ``folder``."""
    folder = Path(folder)
    stray = [p for p in folder.iterdir() if _TMP_NAME.fullmatch(p.name) and p.is_file()] if folder.is_dir() else []
    for path in stray:
        path.unlink(missing_ok=True)
    return stray


def fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a directory's entries (a rename or a new file in it), to the disk.

    Directories are skipped on Windows, where they cannot be opened (and renames are journaled)."""
    if os.name == "nt" and Path(path).is_dir():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def cache_dir() -> Path:
    """diffsat's cache folder: ``$DIFFSAT_CACHE`` when set, else ``~/.cache/diffsat`` (not created here)."""
    base = os.environ.get("DIFFSAT_CACHE")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "diffsat"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, streamed in 1 MiB chunks."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
