"""Inputs and outputs on object storage and the web, through fsspec: stage in, upload on commit.

Decoders and encoders work on local files (ffmpeg seeks in its input and in
the MP4 it writes), so a remote input is copied once into a local staging
folder of the process that filters it, and an output is written there and
uploaded when complete::

    s3://bucket/in/clip.mp4 --get--> /tmp/tileproc-stage-PID-*/in/clip.mp4
                                     (filtered by the local pipeline)
    s3://bucket/out/clip.mp4 <-put-- /tmp/tileproc-stage-PID-*/out/clip.mp4

An output appears only when complete: object stores make an object visible
only when its upload completes (one PUT, or the completion of a multipart
upload, which s3fs aborts on error), so no reader ever sees part of one and a
process killed mid-upload leaves no object at the key. Outputs are therefore
written only to stores that behave so (:data:`OUTPUT_PROTOCOLS`). Without
``overwrite`` an existing output is refused, checked before the input is
fetched and again just before the upload (a store offers no "create only if
absent" that every S3-compatible server honours; another writer in the
instant between the check and the upload would be replaced).

Credentials come from where each fsspec backend looks (environment variables,
configuration files, instance roles) or from ``storage_options`` given in
Python; messages name the URL and the reason, never the options.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from tiler import platform
from tiler.errors import InputError, OutputError, OutputExists

__all__ = [
    "OUTPUT_PROTOCOLS",
    "is_url",
    "one_line",
    "masked",
    "filesystem",
    "join",
    "is_folder",
    "list_folder",
    "exists",
    "absent",
    "check_output",
    "stage_input",
    "upload",
    "workspace",
    "sweep_stale_workspaces",
]

OUTPUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})
"""Stores where an upload is all or nothing (see the module notes); outputs go only there."""

_WORKSPACE = re.compile(rf"tileproc-stage-({platform.OWNER_PATTERN})-")


def is_url(path: Any) -> bool:
    """True for ``scheme://...`` other than ``file://`` (which is a local path)."""
    if path is None or isinstance(path, os.PathLike) and not isinstance(path, str):
        return False
    text = str(path)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and scheme.lower() != "file"


_WIDTH = 400
"""The most characters of another library's message that a tileproc message quotes."""


def one_line(text: str, width: int = _WIDTH) -> str:
    """``text`` on one line: its lines joined, runs of white space made one space, cut at a word with "..." past ``width``."""
    words = " ".join(text.split())
    if len(words) <= width:
        return words
    short = textwrap.shorten(words, width, placeholder=" ...")
    return short if short != "..." else words[: width - 3] + "..."  # one word longer than width


_USERINFO = re.compile(r"(?<=://)[^/\s@]+@")


def masked(text: str) -> str:
    """``text`` with the user and password of each URL in it hidden: ``s3://KEY:SECRET@b/k`` -> ``s3://***@b/k``."""
    return _USERINFO.sub("***@", text)


def _said(url: str, text: str) -> str:
    """The message ``url: text``, its URL's user and password hidden, also where a library's reason repeats them."""
    message = f"{url}: {text}"
    userinfo = url.partition("://")[2].partition("/")[0].rpartition("@")[0]
    if userinfo:
        message = message.replace(userinfo, "***")
    return masked(message)


def _reason(exc: BaseException) -> str:
    text = one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None):
    """(fsspec file system, path within it) for ``url``.

    Raises
    ------
    InputError
        The scheme is unknown, or its fsspec backend is not installed.
    """
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except ImportError as exc:
        raise InputError(_said(url, f"{_reason(exc)}")) from None
    except ValueError as exc:
        raise InputError(_said(url, f"not a storage URL tileproc can open ({_reason(exc)})")) from None


def _protocol(fs) -> str:
    protocol = fs.protocol
    return (protocol if isinstance(protocol, str) else protocol[0]).lower()


def join(url: str, relative: str) -> str:
    """``url`` + "/" + ``relative`` (a POSIX path inside the folder ``url``)."""
    return url.rstrip("/") + "/" + relative


def is_folder(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True when ``url`` is a folder: a prefix with objects under it (or a directory)."""
    fs, path = filesystem(url, storage_options)
    try:
        return bool(fs.isdir(path))
    except Exception:  # noqa: BLE001 - an unreachable store: the file path reports it
        return False


def list_folder(url: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Every file under the folder ``url``, as sorted POSIX paths relative to it.

    Raises
    ------
    InputError
        ``url`` holds nothing, or cannot be listed.
    """
    fs, root = filesystem(url, storage_options)
    root = root.rstrip("/")
    try:
        found = fs.find(root, withdirs=False)
    except FileNotFoundError:
        raise InputError(_said(url, absent(url, storage_options) or "not a folder")) from None
    except Exception as exc:  # noqa: BLE001 - every backend has its own errors
        raise InputError(_said(url, f"cannot list the folder ({_reason(exc)})")) from None
    names = sorted(p[len(root) + 1 :] for p in found if p.startswith(root + "/"))
    if not names and not fs.isdir(root):
        raise InputError(_said(url, absent(url, storage_options) or "not a folder"))
    return names


def exists(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True when an object or file is at ``url``."""
    fs, path = filesystem(url, storage_options)
    return bool(fs.exists(path))


_BUCKETS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
"""Stores whose paths start with a bucket (or container) name."""


def absent(url: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """Why nothing is at ``url`` ("no such bucket", "no such file or folder"); None when something is.

    Raises
    ------
    InputError
        The store cannot be asked (access denied, unreachable).
    """
    fs, path = filesystem(url, storage_options)
    path = path.rstrip("/")
    try:
        if fs.exists(path):
            return None
        bucket = path.partition("/")[0]
        if _protocol(fs) in _BUCKETS and bucket != path and not fs.exists(bucket):
            return "no such bucket"
    except Exception as exc:  # noqa: BLE001 - every backend has its own errors
        raise InputError(_said(url, _unreadable(exc))) from None
    return "no such file or folder"


def _denied(exc: BaseException) -> int | None:
    """The HTTP status (401 or 403) behind ``exc`` when the store refused access, else None."""
    link: BaseException | None = exc
    while link is not None:
        status = getattr(link, "status", None) or getattr(link, "status_code", None)
        if status in (401, 403):
            return int(status)
        link = link.__cause__ or link.__context__
    return None


def _unreadable(exc: BaseException) -> str:
    """Why the store did not give the object: access denied, no such file, or another library's reason."""
    status = _denied(exc)
    if status is not None:
        return f"access denied (HTTP {status})"
    if isinstance(exc, PermissionError):
        return "access denied"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    return f"cannot read ({_reason(exc)})"


def check_output(url: str, storage_options: Mapping[str, Any] | None = None, *, overwrite: bool = False) -> None:
    """Raise unless ``url`` may be written: a store where uploads are whole, no folder there, no object unless ``overwrite``."""
    fs, path = filesystem(url, storage_options)
    if _protocol(fs) not in OUTPUT_PROTOCOLS:
        kinds = ", ".join(f"{p}://" for p in sorted(OUTPUT_PROTOCOLS))
        raise OutputError(
            _said(url, f"outputs go to a local path or to {kinds}, where an upload appears only when whole")
        )
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return
    except Exception as exc:  # noqa: BLE001
        raise OutputError(_said(url, f"cannot check the output ({_reason(exc)})")) from None
    if info.get("type") == "directory":
        raise OutputError(_said(url, "output is a folder"))
    if not overwrite:
        raise OutputExists(_said(url, "output exists (overwrite=True or --overwrite replaces it)"))


def stage_input(url: str, folder: Path, storage_options: Mapping[str, Any] | None = None) -> Path:
    """Copy the file at ``url`` into ``folder`` (keeping its name); returns the local path.

    Raises
    ------
    InputError
        No such object, a folder, an empty one, or the transfer failed.
    """
    fs, path = filesystem(url, storage_options)
    try:
        info = fs.info(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(_said(url, _unreadable(exc))) from None
    if info.get("type") == "directory":
        raise InputError(_said(url, "is a folder"))
    if info.get("size") == 0:
        raise InputError(_said(url, "empty file (0 bytes)"))
    folder.mkdir(parents=True, exist_ok=True)
    local = folder / (PurePosixPath(path).name or "input")
    try:
        fs.get_file(path, str(local))
    except Exception as exc:  # noqa: BLE001
        raise InputError(_said(url, _unreadable(exc))) from None
    return local


def upload(local: Path, url: str, storage_options: Mapping[str, Any] | None = None, *, overwrite: bool = False) -> None:
    """Upload the complete file ``local`` to ``url`` in one upload (whole or not at all).

    Raises
    ------
    OutputExists
        Something appeared at ``url`` meanwhile and ``overwrite`` is False.
    OutputError
        The upload failed (nothing is left at ``url``).
    """
    check_output(url, storage_options, overwrite=overwrite)
    fs, path = filesystem(url, storage_options)
    try:
        fs.put_file(str(local), path)
    except Exception as exc:  # noqa: BLE001
        raise OutputError(_said(url, f"cannot write ({_reason(exc)})")) from None


def workspace_prefix() -> str:
    """The name a staging folder starts with: whose it is (see :func:`tiler.platform.me`)."""
    return f"tileproc-stage-{platform.me().token}-"


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A private local folder for staged files, removed on exit (a killed run's is swept by the next)."""
    sweep_stale_workspaces()
    folder = Path(tempfile.mkdtemp(prefix=workspace_prefix()))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sweep_stale_workspaces(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove staging folders of tileproc processes that no longer run (in the temporary folder)."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            m = _WORKSPACE.match(entry.name)
            owner = platform.Owner.parse(m.group(1)) if m else None
            if owner is not None and owner != platform.me() and platform.owner_dead(owner) and entry.is_dir():
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    return removed
