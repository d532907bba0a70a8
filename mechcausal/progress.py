"""Progress bars that cost nothing when off.

``tqdm.auto`` picks the notebook widget when it can, but importing it without
ipywidgets prints a warning into every notebook; so it is imported only when a bar is
actually shown, and a disabled bar comes from plain ``tqdm``.
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm as plain_tqdm


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar over ``total`` steps; a disabled one (every call a no-op) when not
    ``enabled``."""
    if not enabled:
        return plain_tqdm(total=total, disable=True)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)
