"""tileproc's engine: read -> cut -> share -> apply -> stitch -> write.

Filter numpy frames, image files, folders and videos in parallel by
overlapping tiles; the result equals the filter chain applied to the whole
frame, bit for bit.

Examples
--------
>>> import numpy as np, tiler
>>> frame = np.zeros((480, 640, 3), np.uint8)
>>> out = tiler.process(frame, "blur:sigma=3,sharpen", workers=2)   # doctest: +SKIP
>>> tiler.process_file("photo.jpg", None, "blur:sigma=2")           # doctest: +SKIP
PosixPath('photo.tileproc.jpg')
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from tiler import platform as _platform  # noqa: F401  (first: other systems are refused in one line)
from tiler._imports import own_package as _own_package

_own_package("filters")  # before anything imports it: a "filters" folder in the working directory cannot hide it
from tiler.errors import (  # noqa: E402
    FilterFailed,
    InputError,
    OutputError,
    OutputExists,
    TileprocError,
    TileTimeout,
    VideoError,
    WorkerDied,
    WorkerError,
)

if TYPE_CHECKING:
    import numpy as np

    from tiler.engine import Engine
    from tiler.pipeline import FileResult, Report

__all__ = [
    "process",
    "map_frames",
    "process_file",
    "process_folder",
    "process_video",
    "Engine",
    "shutdown",
    "FileResult",
    "Report",
    "TileprocError",
    "InputError",
    "OutputError",
    "OutputExists",
    "WorkerError",
    "FilterFailed",
    "WorkerDied",
    "TileTimeout",
    "VideoError",
]

# The engine, the pipeline and what they import (numpy, OpenCV, Pillow, the
# filters) load on first use, so that ``import tiler`` and a job import only
# what they need.
_LAZY = {"Engine": "tiler.engine", "FileResult": "tiler.pipeline", "Report": "tiler.pipeline"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if not name.startswith("_") and importlib.util.find_spec(f"tiler.{name}") is not None:  # a submodule
        return importlib.import_module(f"tiler.{name}")
    raise AttributeError(f"module 'tiler' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


_ENGINE_OPTIONS = (
    "tile_size",
    "frames_in_flight",
    "threads",
    "start_method",
    "retries",
    "tile_timeout",
    "progress",
    "inline_below",
    "builtins_in_process",
)


def _split(options: dict) -> tuple[dict, dict]:
    engine = {k: options.pop(k) for k in _ENGINE_OPTIONS if k in options}
    return engine, options


# -- the default engine ----------------------------------------------------------
#
# Like joblib's reusable executor: the module-level functions share one engine,
# started on first use and kept warm between calls, so that a notebook or a
# script calling tiler.process in a loop pays for starting workers once. It is
# rebuilt when a call asks for other engine options or after an interrupted
# call, and closed at exit (or by shutdown()).

_default_lock = threading.Lock()
_default: tuple[int, dict[str, Any], Engine] | None = None  # (pid, options, engine)


def shutdown() -> None:
    """Stop the default engine's workers and free its shared memory now.

    The module-level functions (:func:`process`, :func:`process_file`...)
    share one engine that stays warm between calls; it is also shut down when
    Python exits. The next call starts a new one.

    Examples
    --------
    >>> tiler.shutdown()   # doctest: +SKIP
    """
    global _default
    with _default_lock:
        _close_default()


def _close_default() -> None:
    global _default
    held, _default = _default, None
    if held is not None and held[0] == os.getpid():  # a forked child leaves its parent's engine alone
        held[2].close()


atexit.register(shutdown)


@contextlib.contextmanager
def _engine(workers: int | None, options: dict[str, Any], progress: Any = None) -> Iterator[Engine]:
    """The default engine for one call, with ``progress`` set; a private one while another thread uses it."""
    global _default
    from tiler.engine import Engine

    options = {"workers": workers, **options}
    if not _default_lock.acquire(blocking=False):
        with Engine(**options, progress=progress) as engine:
            yield engine
        return
    try:
        if _default is None or _default[0] != os.getpid() or _default[1] != options or _default[2]._closed:
            _close_default()
            _default = (os.getpid(), options, Engine(**options))
        engine = _default[2]
        engine.progress = progress
        try:
            yield engine
        except (TileprocError, ValueError, TypeError):
            raise  # a failed job or a bad argument: the engine is fine
        except BaseException:
            _close_default()  # interrupted mid-job, or something unexpected: start afresh next time
            raise
        finally:
            engine.progress = None
    finally:
        _default_lock.release()


def _bar(progress: Any, unit: str, total: int | None = None, desc: str = "") -> Any:
    """A tqdm.auto bar for ``progress=None`` (a widget in Jupyter, a bar on a terminal, else nothing)."""
    if progress is not None and progress is not True:
        return None
    if "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets") is None:
        # In Jupyter without ipywidgets, tqdm.auto warns that it cannot draw a
        # widget on every first use; the plain bar is silent there instead.
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm

    # delay: calls shorter than half a second show nothing.
    auto = progress is None
    return tqdm(
        total=total, unit=unit, desc=desc, leave=False, delay=0.5 if auto else 0, disable=None if auto else False
    )


def _set_total(bar: Any, total: int) -> None:
    bar.total = total
    if not bar.disable and not bar.delay:  # a delayed bar shows itself, with its total, once the delay passed
        bar.refresh()


def _events(progress: Any, bar: Any, kind: str) -> Callable | None:
    """The engine's progress callback: the user's own, or one advancing ``bar`` on ``kind`` events."""
    if bar is None:
        return progress if callable(progress) else None

    def advance(event) -> None:
        if event.kind == kind:
            if bar.total is None and kind == "tiles" and event.frame.tiles:
                _set_total(bar, event.frame.tiles)
            bar.update(event.done)

    return advance


def process(
    frame: np.ndarray,
    chain: Any,
    *,
    workers: int | None = None,
    tile_size: int | tuple[int, int] | None = None,
    progress: bool | Callable | None = None,
    **options: Any,
) -> np.ndarray:
    """Filter one numpy frame; returns a new array of the same shape and dtype.

    Calls share a default engine whose workers stay warm between calls (see
    :func:`shutdown`); give other options and it is restarted with them.

    Parameters
    ----------
    frame : ndarray
        (H, W) or (H, W, C) with C in 1..4; uint8, uint16 or float32 (nominally 0..1).
    chain : str, filter, or list of them
        ``"blur:sigma=3,sharpen"``, ``boxmean(radius=4)``, ``[boxmean, "invert"]``.
    workers : int, optional
        Worker processes (default: one per CPU available).
    tile_size : int or (int, int), optional
        Core tile size (default: full-width strips, about four per worker).
    progress : bool or callable, optional
        None (default): a tqdm.auto bar of tiles for calls longer than half a
        second, a widget in Jupyter, on a terminal a bar on stderr, else
        nothing; False: none; True: always; a callable gets the engine's
        :class:`tiler.scheduler.Progress` events.
    **options
        More :class:`Engine` options (``frames_in_flight``, ``tile_timeout``...).

    Examples
    --------
    >>> out = process(np.zeros((64, 64), np.uint8), "invert", workers=2)   # doctest: +SKIP
    """
    bar = _bar(progress, "tile")
    try:
        with _engine(workers, {"tile_size": tile_size, **options}, _events(progress, bar, "tiles")) as engine:
            return engine.process(frame, chain)
    finally:
        if bar is not None:
            bar.close()


def map_frames(
    frames: Iterable[np.ndarray], chain: Any, *, workers: int | None = None, **options: Any
) -> Iterator[np.ndarray]:
    """Filter an iterable of frames, yielding results in order, several in flight.

    Examples
    --------
    >>> for out in map_frames(frames, "blur", workers=2):   # doctest: +SKIP
    ...     show(out)
    """
    from tiler.engine import Engine

    with Engine(workers, **options) as engine:
        yield from engine.map_frames(frames, chain)


def process_file(src, dst, chain: Any, *, workers: int | None = None, client: Any = None, **options: Any):
    """Filter an image or video file into ``dst`` (None: ``name.tileproc.ext`` beside it).

    Options: ``overwrite``, ``max_pixels``, ``quality`` (JPEG/WebP), and for
    video ``codec``, ``crf``, ``preset``, ``pix_fmt``; plus :class:`Engine` options.
    Returns the output path. With a ``dask.distributed.Client`` as ``client``
    the work runs on its cluster (:func:`tiler.cluster.process_file`).
    ``src`` and ``dst`` may be URLs (``s3://``, ``gs://``, ``az://``, ``https://``
    for inputs; fsspec's ``storage_options`` as an option): see :mod:`tiler.staging`.

    Examples
    --------
    >>> process_file("photo.jpg", "out.jpg", "sharpen")   # doctest: +SKIP
    PosixPath('out.jpg')
    """
    if client is not None:
        from tiler import cluster

        return cluster.process_file(client, src, dst, chain, workers=workers, **options)
    engine_options, job = _split(options)
    progress = engine_options.pop("progress", None)
    with _engine(workers, engine_options, progress if callable(progress) else None) as engine:
        if _urls(src, dst, job):
            from tiler import staging

            return staging.run_file(engine, src, dst, chain, **job)
        return engine.process_file(src, dst, chain, **job)


def process_folder(src, dst, chain: Any, *, workers: int | None = None, client: Any = None, **options: Any) -> Report:
    """Filter every image and video under ``src`` into ``dst`` (None: beside each input).

    A bad file fails alone; the returned :class:`Report` lists each file's outcome.
    ``progress`` works as for :func:`process`, with a bar of files.
    With a ``dask.distributed.Client`` as ``client`` each file is a task on its
    cluster (:func:`tiler.cluster.process_folder`; ``workers`` then sizes each
    Dask worker's engine). ``src`` and ``dst`` may be URLs: a prefix is a folder
    (:mod:`tiler.staging`; fsspec's ``storage_options`` as an option).

    Examples
    --------
    >>> report = process_folder("photos", "out", "blur:sigma=2")   # doctest: +SKIP
    >>> report.ok
    True
    """
    if client is not None:
        from tiler import cluster

        return cluster.process_folder(client, src, dst, chain, workers=workers, **options)
    engine_options, job = _split(options)
    progress = engine_options.pop("progress", None)
    bar = _bar(progress, "file", desc=os.fspath(src))
    if bar is not None:
        on_plan, on_result = job.pop("on_plan", None), job.pop("on_result", None)

        def planned(n: int) -> None:
            _set_total(bar, n)
            if on_plan is not None:
                on_plan(n)

        def done(result: FileResult) -> None:
            bar.update()
            if on_result is not None:
                on_result(result)

        job.update(on_plan=planned, on_result=done)
    try:
        with _engine(workers, engine_options, None if bar is not None else progress) as engine:
            if _urls(src, dst, job):
                from tiler import staging

                return staging.process_folder(engine, src, dst, chain, **job)
            return engine.process_folder(src, dst, chain, **job)
    finally:
        if bar is not None:
            bar.close()


def process_video(src, dst, chain: Any, *, workers: int | None = None, client: Any = None, **options: Any):
    """Filter a video frame by frame; decoding, filtering and encoding overlap.

    Keeps the frame rate (exact fraction), displayed size and orientation, and
    audio; ``progress`` works as for :func:`process`, with a bar of frames.
    Options: ``overwrite``, ``codec``, ``crf``, ``preset``, ``pix_fmt``,
    ``max_pixels``; plus :class:`Engine` options. With a
    ``dask.distributed.Client`` as ``client``, segments cut at keyframes are
    filtered on its workers and joined (:func:`tiler.cluster.process_video`).

    Examples
    --------
    >>> process_video("clip.mp4", "clip.blur.mp4", "blur:sigma=2")   # doctest: +SKIP
    PosixPath('clip.blur.mp4')
    """
    if client is not None:
        from tiler import cluster

        return cluster.process_video(client, src, dst, chain, workers=workers, **options)
    engine_options, job = _split(options)
    progress = engine_options.pop("progress", None)
    bar = _bar(progress, "frame", desc=os.fspath(src))
    if bar is not None:
        on_start = job.pop("on_start", None)

        def started(info) -> None:
            _set_total(bar, info.frame_count)
            if on_start is not None:
                on_start(info)

        job["on_start"] = started
    try:
        with _engine(workers, engine_options, _events(progress, bar, "frame")) as engine:
            if _urls(src, dst, job):
                from tiler import staging

                return staging.run_file(engine, src, dst, chain, **job)
            return engine.process_video(src, dst, chain, **job)
    finally:
        if bar is not None:
            bar.close()


def _urls(src, dst, job: dict) -> bool:
    """True when ``src`` or ``dst`` is a URL (then ``storage_options`` stays in ``job``), else drops it."""
    from tiler import staging

    if staging.involved(src, dst):
        return True
    job.pop("storage_options", None)
    return False
