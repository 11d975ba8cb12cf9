"""Progress bars: a tqdm bar, or a no-op stand-in when tqdm is missing or the bar is not wanted."""

from __future__ import annotations

from typing import Any


class _NoBar:
    """Stand-in for a tqdm bar when tqdm is missing or the bar is not wanted."""

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True) -> Any:
    """A tqdm bar (context manager with ``update(n)``) when tqdm is importable and ``enabled``, else a no-op.

    The bar is hidden automatically when stderr is not a terminal (``disable=None``).
    """
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return _NoBar()
        scale = unit == "B"
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, disable=None, leave=False)
    return _NoBar()
