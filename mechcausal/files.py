"""Output files: paths checked before any work starts, and atomic writes.

Every path the package writes to (a checkpoint, ``--out`` folders, ``reproduce``'s
report) is checked with :func:`check_output_file` / :func:`check_output_dir` before the
first training step, so a typo costs a second, not a run. Files are written with
:func:`write_atomically`: the bytes go to an unnamed temporary file in the target's
folder (Linux ``O_TMPFILE``; a named ``.NAME.*.tmp`` elsewhere, removed on any error),
which replaces the target in one ``rename``. A reader never sees half a file, the
previous version stays intact until the new one is complete, and a process killed
mid-write leaves nothing behind (on Linux). Permissions follow the umask, like any
file ``open()`` creates.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

_UNNAMED_TMPFILE = getattr(os, "O_TMPFILE", 0)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _check_can_create_in(folder: Path, name: str, path: Path) -> None:
    """ValueError unless a file can be created in the existing folder ``folder`` (tried
    for real, so a read-only mount or a root-owned folder is caught even for root)."""
    if not folder.is_dir():
        raise ValueError(f"{name} {str(path)!r}: {str(folder)!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{name} {str(path)!r}: cannot write in {str(folder)!r} "
                         f"({error.strerror or error})") from None


def check_output_file(path: str | os.PathLike, name: str = "path") -> Path:
    """``path`` as a Path if a file can be written there: not a folder, no file where a
    parent folder should be, a writable place. Creates nothing."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {path!r}")
    path = Path(path)
    if str(path) in ("", "."):
        raise ValueError(f"{name} must name a file, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a folder; give a file path such as "
                         f"{str(path / 'checkpoint.pt')!r}")
    _check_can_create_in(_nearest_existing(path.parent), name, path)
    return path


def check_output_dir(path: str | os.PathLike, name: str = "out") -> Path:
    """``path`` as a Path if a folder can be written there: an existing folder or one
    that can be created (no file in the way, a writable ancestor). Creates nothing."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {path!r}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a file; give a folder")
    _check_can_create_in(_nearest_existing(path), name, path)
    return path


def _fresh_name(folder: Path, target: Path) -> Path:
    """A name for a temporary file beside ``target``: hidden, and ending in ``.tmp``."""
    return folder / f".{target.name}.{secrets.token_hex(6)}.tmp"


@contextlib.contextmanager
def _temporary_file(target: Path) -> Iterator[tuple[IO[bytes], Callable[[], None]]]:
    """An open temporary file beside ``target`` and a function that makes it ``target``."""
    folder, descriptor = target.parent, None
    if _UNNAMED_TMPFILE:
        with contextlib.suppress(OSError):  # a filesystem without unnamed files
            descriptor = os.open(folder, _UNNAMED_TMPFILE | os.O_WRONLY, 0o666)
    if descriptor is not None:
        with os.fdopen(descriptor, "wb") as handle:
            def publish() -> None:
                # give the finished file a name, then rename it over the target (a link
                # cannot replace an existing file)
                link = _fresh_name(folder, target)
                # a folder descriptor makes os.link call linkat with AT_SYMLINK_FOLLOW,
                # which links the file behind /proc/self/fd, not the symlink itself
                folder_descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.link(f"/proc/self/fd/{descriptor}", link.name,
                            dst_dir_fd=folder_descriptor)
                finally:
                    os.close(folder_descriptor)
                try:
                    os.replace(link, target)
                except BaseException:
                    link.unlink(missing_ok=True)
                    raise
            yield handle, publish
        return
    named = _fresh_name(folder, target)
    descriptor = os.open(named, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle, lambda: os.replace(named, target)
    finally:
        named.unlink(missing_ok=True)


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temporary file, then make it ``path`` in one step
    (creating the folder); on any error or interrupt ``path`` is left as it was and no
    temporary file remains. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_file(path) as (handle, publish):
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
        publish()
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """:func:`write_atomically` for UTF-8 text."""
    return write_atomically(path, lambda handle: handle.write(text.encode()))
