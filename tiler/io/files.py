"""Safe outputs: never an input, never a partial file at the final path.

Every output is written to a temporary name in the target folder and moved into
place only when complete. Temporary names say whose they are (host, boot, pid
namespace, pid and start time: :class:`tiler.platform.Owner`), so a later run
sweeps what a killed run of this machine left behind, and never the live
temporary of a run in another container or on another machine sharing the folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from tiler import platform
from tiler.errors import InputError, OutputError, OutputExists

__all__ = [
    "atomic_output",
    "check_input",
    "check_output",
    "sweep_stale_temps",
    "temp_path_for",
    "same_file",
    "inside",
    "output_name",
    "temp_owner",
    "VIDEO_EXTENSIONS",
]

#: Lower-case file extensions tileproc treats as video (here, so that telling a video by its
#: name does not import :mod:`tiler.io.video` and what it loads).
VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif", ".m4v"})

_TEMP = re.compile(rf"^\..*\.tileproc-({platform.OWNER_PATTERN})-[0-9a-f]{{8}}(\.[^./]*)?$")


def temp_path_for(dst: Path) -> Path:
    """A hidden, unique sibling of ``dst`` that keeps its extension (encoders read it)."""
    dst = Path(dst)
    return dst.with_name(f".{dst.stem[:100]}.tileproc-{platform.me().token}-{secrets.token_hex(4)}{dst.suffix}")


def temp_owner(name: str) -> platform.Owner | None:
    """The owner a temporary's name records; None for names that are not tileproc temporaries."""
    m = _TEMP.match(os.path.basename(name))
    return platform.Owner.parse(m.group(1)) if m else None


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name the same file (path, symlink or hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_input(path: Path) -> os.stat_result:
    """Raise :class:`InputError` unless ``path`` is a readable regular file (never opens a FIFO)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        kind = "dangling symbolic link" if os.path.islink(path) else "no such file"
        raise InputError(f"{path}: {kind}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a folder")
    if not stat.S_ISREG(st.st_mode):
        what = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
        raise InputError(f"{path}: not a regular file ({what})")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    if st.st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    return st


def inside(path: Path, folder: Path) -> bool:
    """True when ``path``, symbolic links resolved, lies within ``folder`` (resolved too)."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def check_output(dst: Path, *, inputs: Iterable[Path] = (), overwrite: bool = False) -> None:
    """Raise unless ``dst`` may be written: not an input, not a folder, not existing unless ``overwrite``."""
    dst = Path(dst)
    for src in inputs:
        if same_file(src, dst):
            raise OutputError(f"{dst}: output is the input file {src}; choose another output name")
    try:
        st = os.lstat(dst)
    except FileNotFoundError:
        st = None
    except OSError as exc:  # a name too long, a parent that is a file...
        raise OutputError(f"{dst}: cannot write there ({exc.strerror or exc})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{dst}: output is a folder")
    if st is not None and not overwrite:
        raise OutputExists(f"{dst}: output exists (overwrite=True or --overwrite replaces it)")
    if not dst.parent.is_dir():
        raise OutputError(f"{dst}: output folder {dst.parent} does not exist")


@contextlib.contextmanager
def atomic_output(dst: Path, *, inputs: Iterable[Path] = (), overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on success move it to ``dst``, on any failure delete it.

    Without ``overwrite`` the move fails (and the temporary is removed) if
    ``dst`` appeared meanwhile. A symlink at ``dst`` is replaced, never written through.

    Examples
    --------
    >>> with atomic_output(Path("out.png")) as tmp:   # doctest: +SKIP
    ...     image.save(tmp)
    """
    dst = Path(dst)
    inputs = list(inputs)
    check_output(dst, inputs=inputs, overwrite=overwrite)
    tmp = temp_path_for(dst)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"{dst}: nothing was written")
        if overwrite:
            os.replace(tmp, dst)
        else:
            _move_no_replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _move_no_replace(tmp: Path, dst: Path) -> None:
    """Move ``tmp`` to ``dst`` unless ``dst`` exists.

    A hard link is atomic and fails if ``dst`` exists. File systems without
    hard links (FAT, exFAT, some network and FUSE mounts) refuse it with
    another error; then check and rename: a file that appears at ``dst`` in
    the instant between the two could be replaced, but a killed run never
    leaves a partial or empty file at ``dst``.
    """
    try:
        os.link(tmp, dst)
    except FileExistsError:
        raise OutputExists(f"{dst}: output exists (overwrite=True or --overwrite replaces it)") from None
    except OSError:
        if os.path.lexists(dst):
            raise OutputExists(f"{dst}: output exists (overwrite=True or --overwrite replaces it)") from None
        os.rename(tmp, dst)
        return
    os.unlink(tmp)


def sweep_stale_temps(folder: Path) -> list[Path]:
    """Delete temporaries in ``folder`` left by tileproc runs that provably no longer exist.

    Only those written on this host and in this pid namespace whose process is
    gone (or whose pid now runs a later process): a folder shared with another
    machine or container keeps the other runs' temporaries, live or not.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        owner = temp_owner(entry.name)
        if owner is not None and owner != platform.me() and platform.owner_dead(owner):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def output_name(
    src: str | os.PathLike[str],
    *,
    tag: str = "tileproc",
    ext: str | None = None,
    folder: str | os.PathLike[str] | None = None,
) -> Path:
    """Default output path for ``src``: ``photo.jpg`` -> ``photo.tileproc.jpg``, beside it (images and videos alike).

    The tag is always inserted, so the result is never ``src`` itself.

    Parameters
    ----------
    src : path-like
        The input file.
    tag : str
        Inserted before the extension; non-empty, no path separators.
    ext : str, optional
        Output extension (``".png"`` or ``"png"``); default: the input's.
    folder : path-like, optional
        Output folder; default: the input's.

    Examples
    --------
    >>> output_name("shots/photo.jpg")
    PosixPath('shots/photo.tileproc.jpg')
    >>> output_name("shots/photo.jpg", ext="png", folder="out")
    PosixPath('out/photo.tileproc.png')
    """
    src = Path(src)
    if not tag or "/" in tag or os.sep in tag or tag in (".", ".."):
        raise ValueError(f"tag must be a non-empty file-name part, got {tag!r}")
    suffix = src.suffix if ext is None else (ext if ext.startswith(".") or not ext else "." + ext)
    parent = src.parent if folder is None else Path(folder)
    return parent / f"{src.stem}.{tag}{suffix}"
