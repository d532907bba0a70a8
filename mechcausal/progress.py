"""Progress bars that cost nothing when off.

``tqdm.auto`` picks the notebook widget when it can, but importing it without
ipywidgets prints a warning into every notebook; so it is imported only when a bar is
actually shown.
"""

from __future__ import annotations

from typing import Any


class _NoBar:
    """Stands in for a disabled tqdm bar."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar over ``total`` steps, or a no-op stand-in when not ``enabled``."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)
