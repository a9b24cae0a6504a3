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

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from tiler import staging
from tiler.engine import Engine
from tiler.errors import (
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
from tiler.pipeline import FileResult, Report

__all__ = [
    "process",
    "map_frames",
    "process_file",
    "process_folder",
    "process_video",
    "Engine",
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

_ENGINE_OPTIONS = (
    "tile_size",
    "frames_in_flight",
    "threads",
    "start_method",
    "retries",
    "tile_timeout",
    "progress",
    "inline_below",
)


def _split(options: dict) -> tuple[dict, dict]:
    engine = {k: options.pop(k) for k in _ENGINE_OPTIONS if k in options}
    return engine, options


def process(
    frame: np.ndarray,
    chain: Any,
    *,
    workers: int | None = None,
    tile_size: int | tuple[int, int] | None = None,
    **options: Any,
) -> np.ndarray:
    """Filter one numpy frame; returns a new array of the same shape and dtype.

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
    **options
        More :class:`Engine` options (``frames_in_flight``, ``tile_timeout``...).

    Examples
    --------
    >>> out = process(np.zeros((64, 64), np.uint8), "invert", workers=2)   # doctest: +SKIP
    """
    with Engine(workers, tile_size=tile_size, **options) as engine:
        return engine.process(frame, chain)


def map_frames(
    frames: Iterable[np.ndarray], chain: Any, *, workers: int | None = None, **options: Any
) -> Iterator[np.ndarray]:
    """Filter an iterable of frames, yielding results in order, several in flight.

    Examples
    --------
    >>> for out in map_frames(frames, "blur", workers=2):   # doctest: +SKIP
    ...     show(out)
    """
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
    with Engine(workers, **engine_options) as engine:
        if _urls(src, dst, job):
            return staging.run_file(engine, src, dst, chain, **job)
        return engine.process_file(src, dst, chain, **job)


def process_folder(src, dst, chain: Any, *, workers: int | None = None, client: Any = None, **options: Any) -> Report:
    """Filter every image and video under ``src`` into ``dst`` (None: beside each input).

    A bad file fails alone; the returned :class:`Report` lists each file's outcome.
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
    with Engine(workers, **engine_options) as engine:
        if _urls(src, dst, job):
            return staging.process_folder(engine, src, dst, chain, **job)
        return engine.process_folder(src, dst, chain, **job)


def process_video(src, dst, chain: Any, *, workers: int | None = None, client: Any = None, **options: Any):
    """Filter a video frame by frame; decoding, filtering and encoding overlap.

    Keeps the frame rate (exact fraction), displayed size and orientation, and
    audio. Options: ``overwrite``, ``codec``, ``crf``, ``preset``, ``pix_fmt``,
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
    with Engine(workers, **engine_options) as engine:
        if _urls(src, dst, job):
            return staging.run_file(engine, src, dst, chain, **job)
        return engine.process_video(src, dst, chain, **job)


def _urls(src, dst, job: dict) -> bool:
    """True when ``src`` or ``dst`` is a URL (then ``storage_options`` stays in ``job``), else drops it."""
    if staging.involved(src, dst):
        return True
    job.pop("storage_options", None)
    return False
