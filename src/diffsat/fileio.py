"""Crash-safe file writes.

:func:`atomic_write` writes to a temporary file in the destination folder and moves it into place with
``os.replace`` (atomic on POSIX and Windows), so a crash or a full disk leaves the previous file intact.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


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
