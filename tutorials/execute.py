"""Execute the tutorial notebooks top to bottom, in place or as a check.

    python tutorials/execute.py                  # re-run all, save outputs (full size)
    python tutorials/execute.py 03 --small       # one notebook, small sizes, not saved

The notebooks read ``MECHCAUSAL_TUTORIAL_SMALL=1`` (set by ``--small`` and by the
tests) to shrink their training runs; their final assertion cells hold either way.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TUTORIALS = Path(__file__).resolve().parent
SMALL_ENV = "MECHCAUSAL_TUTORIAL_SMALL"


def notebooks(prefixes: list[str] | None = None) -> list[Path]:
    """The tutorial notebooks, in order; ``prefixes`` keeps those whose name starts so."""
    found = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
    if prefixes:
        found = [p for p in found if any(p.name.startswith(x) for x in prefixes)]
    return found


def execute(path: Path, small: bool, save: bool, timeout_s: int = 900) -> None:
    """Run every cell of ``path`` in a fresh kernel from this interpreter's environment.

    Raises ``nbclient.exceptions.CellExecutionError`` naming the failing cell.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    previous = os.environ.get(SMALL_ENV)
    os.environ[SMALL_ENV] = "1" if small else "0"
    try:
        client = NotebookClient(
            nb, timeout=timeout_s, kernel_name="python3",
            resources={"metadata": {"path": str(TUTORIALS)}},
        )
        client.execute()
    finally:
        if previous is None:
            os.environ.pop(SMALL_ENV, None)
        else:
            os.environ[SMALL_ENV] = previous
    if save:
        nbformat.write(nb, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="name prefixes, e.g. 01 03")
    parser.add_argument("--small", action="store_true", help="small sizes; outputs not saved")
    args = parser.parse_args(argv)
    for path in notebooks(args.only):
        print(f"executing {path.name} ({'small' if args.small else 'full'})", flush=True)
        execute(path, small=args.small, save=not args.small)
    return 0


if __name__ == "__main__":
    sys.exit(main())
