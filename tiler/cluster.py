"""The same jobs on a Dask cluster: each file, or each stretch of a video, is a task.

Data flow::

    this process (the driver)                         each Dask worker process
    -------------------------                         ------------------------
    folder: plan_folder -> (src, dst) ---submit--->   _file_task: its local Engine runs
            at most `window` tasks in flight          pipeline.process_file; the output is
            <-------------- FileResult -------------  written atomically beside the others
    video:  probe + keyframes -> segments --submit->  _segment_task: ffmpeg seeks to the
                                                      segment, its Engine filters, a video-only
            <--------------- done ------------------  segment file is written atomically
            concat (-c copy) + the source's audio, once, into dst, atomically

Tasks carry paths, never pixels: inputs, outputs and segment files live on a
file system every worker sees. Each Dask worker process keeps one local
:class:`~tiler.Engine` per worker thread, made on first use and reused, sized to
its share of its machine's cores (cores // Dask threads on that host), so
workers that share a machine do not oversubscribe it. A task lost with a dead
worker is rerun elsewhere by Dask's scheduler; as outputs are written under a
temporary name and renamed when complete, a rerun never leaves a half file.

Dask is an optional dependency (``pip install 'tileproc[dask]'``): it is
imported here, lazily, and nowhere else.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import itertools
import math
import os
import pickle
import secrets
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

from tiler import pipeline
from tiler.engine import Engine, resolve_chain
from tiler.errors import InputError, OutputExists, TileprocError, VideoError, WorkerDied, WorkerError
from tiler.io import video
from tiler.io.files import atomic_output, check_input, check_output, output_name, sweep_stale_temps
from tiler.io.images import DEFAULT_MAX_PIXELS
from tiler.pipeline import FileResult, Report

__all__ = [
    "connect",
    "process_file",
    "process_folder",
    "process_video",
    "ClusterError",
    "DaskMissing",
    "CONNECT_TIMEOUT",
    "LOCAL_WORKERS",
]

CONNECT_TIMEOUT = 10.0
"""Seconds :func:`connect` waits for a scheduler before giving up."""
LOCAL_WORKERS = 2
"""Worker processes of ``connect("local")``."""

_INSTALL = "pip install 'tileproc[dask]'"
_ENGINE_OPTIONS = (
    "tile_size",
    "frames_in_flight",
    "threads",
    "start_method",
    "retries",
    "tile_timeout",
    "inline_below",
)
_T = TypeVar("_T")


class ClusterError(TileprocError):
    """The cluster cannot be used: Dask is missing, or the scheduler cannot be reached."""


class DaskMissing(ClusterError):
    """``--cluster`` without the ``dask`` extra installed (a usage error: exit code 2)."""


def _distributed():
    try:
        import distributed
    except ImportError:
        raise DaskMissing(f"running on a cluster needs Dask's distributed scheduler: {_INSTALL}") from None
    return distributed


# -- connecting ------------------------------------------------------------------


def connect(address: str = "local", *, timeout: float = CONNECT_TIMEOUT):
    """A ``dask.distributed.Client`` for a scheduler, or for a cluster on this machine.

    Parameters
    ----------
    address : str
        ``tcp://host:8786`` (any address Dask takes; ``host:8786`` means tcp),
        or ``local`` / ``local:N``: a LocalCluster of N worker processes
        (default :data:`LOCAL_WORKERS`) with one thread each, on this machine,
        for trying it out. Closing the client stops that cluster.
    timeout : float
        Seconds to wait for the scheduler.

    Raises
    ------
    ClusterError
        Dask is not installed, or the scheduler did not answer within ``timeout``.
    ValueError
        ``address`` is malformed.

    Examples
    --------
    >>> client = connect("tcp://10.0.0.5:8786")   # doctest: +SKIP
    >>> with connect("local:2") as client:        # doctest: +SKIP
    ...     report = process_folder(client, "photos", "out", "blur")
    """
    address = str(address).strip()
    if address == "local" or address.startswith("local:"):
        n = LOCAL_WORKERS if address == "local" else _count(address[len("local:") :], address)
        distributed = _distributed()
        return distributed.Client(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
    scheme, sep, rest = address.rpartition("://")
    host, colon, port = rest.rpartition(":")
    if not rest or (colon and not port.isdigit()) or (sep and not scheme):
        raise ValueError(f"cluster address must be tcp://HOST:PORT or local[:N], got {address!r}")
    distributed = _distributed()
    try:
        return distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClusterError(
            f"{address}: no Dask scheduler answered within {timeout:g} s ({reason}); "
            "start one with 'dask scheduler', or check the address"
        ) from None


def _count(text: str, address: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"cluster address local:N needs N >= 1 worker processes, got {address!r}")
    return int(text)


# -- the driver's side -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _EngineSpec:
    """How each Dask worker builds its local engines: a small, hashable, picklable value."""

    workers: int | None
    options: tuple[tuple[str, Any], ...]


def _engine_spec(workers: int | None, options: dict[str, Any]) -> _EngineSpec:
    if "progress" in options:
        raise ValueError("progress events stay on the workers of a cluster; use on_result / on_segment")
    unknown = sorted(set(options) - set(_ENGINE_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected option {unknown[0]!r}")
    if workers is not None and int(workers) < 1:
        raise ValueError(f"workers per Dask worker must be >= 1, got {workers}")
    Engine(0, **options).close()  # checks the values here, before any task runs
    return _EngineSpec(None if workers is None else int(workers), tuple(sorted(options.items())))


def _local_path(path: Any) -> Path:
    """A path every worker can open: plain paths and ``file://`` URLs."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        if scheme.lower() != "file":
            raise ValueError(
                f"{text}: {scheme}:// is not supported; inputs and outputs must be paths "
                "on a file system every worker sees (or file:// URLs)"
            )
        return Path(urllib.parse.unquote(urllib.parse.urlparse(text).path))
    return Path(text)


def _checked_chain(chain: Any):
    chain = resolve_chain(chain)
    chain.check_picklable()
    return chain


def _hosts(client) -> dict[str, int]:
    """Dask worker threads per host, as the scheduler sees them now (waiting a while for a first worker)."""

    def ask() -> dict[str, int]:
        try:
            info = client.scheduler_info(n_workers=-1)
        except TypeError:  # older distributed: every worker by default
            info = client.scheduler_info()
        hosts: dict[str, int] = {}
        for w in info.get("workers", {}).values():
            hosts[w["host"]] = hosts.get(w["host"], 0) + int(w.get("nthreads", 1))
        return hosts

    hosts = ask()
    if not hosts:
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
        except TimeoutError:
            address = getattr(client.scheduler, "address", "the scheduler")
            raise ClusterError(
                f"{address}: the Dask scheduler has no workers after {CONNECT_TIMEOUT:g} s; "
                f"start some with 'dask worker {address}'"
            ) from None
        hosts = ask()
    return hosts


def _window(hosts: dict[str, int], window: int | None) -> int:
    if window is not None:
        if window < 1:
            raise ValueError(f"window must be >= 1 task, got {window}")
        return int(window)
    return max(2, 2 * sum(hosts.values()))


def _register(client) -> None:
    """Have every worker, present and future, close its engines when it stops."""
    client.register_plugin(_engines_plugin(), name="tileproc-engines")


class _Window:
    """Submit ``items`` with at most ``size`` tasks in flight; iterate (item, future) as each finishes.

    A new task is submitted as each one completes, so a million items never
    make a million-task graph on the scheduler.
    """

    def __init__(self, client, items: Iterable[_T], submit: Callable[[_T], Any], size: int):
        self._client, self._items, self._submit = client, iter(items), submit
        self._pending: dict[Any, _T] = {}
        self._done = _distributed().as_completed()
        for item in itertools.islice(self._items, size):
            self._add(item)

    def _add(self, item: _T) -> None:
        future = self._submit(item)
        self._pending[future] = item
        self._done.add(future)

    def __iter__(self) -> Iterator[tuple[_T, Any]]:
        for future in self._done:
            item = self._pending.pop(future)
            following = next(self._items, _END)
            if following is not _END:
                self._add(following)
            yield item, future

    def settle(self) -> None:
        """Submit nothing more and wait for the tasks in flight to end (their results unused)."""
        self._items = iter(())
        _distributed().wait(list(self._pending))

    def cancel(self) -> None:
        """Forget every task still pending (a running one still finishes on its worker)."""
        pending, self._pending = list(self._pending), {}
        if pending:
            with contextlib.suppress(Exception):
                self._client.cancel(pending)


_END = object()


def _outcome(future, label: str) -> Any:
    """A finished task's value, or its failure as a one-line tileproc error naming ``label``."""
    distributed = _distributed()
    try:
        return future.result()
    except distributed.KilledWorker:
        return WorkerDied(
            f"{label}: each Dask worker that ran it died (allowed-failures reached; see the workers' logs)"
        )
    except TileprocError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - a failure after Dask's retries
        first = str(exc).strip().splitlines()[:1]
        return WorkerError(f"{label}: {type(exc).__name__}" + (f": {first[0]}" if first else ""))


def _existing(paths: Iterable[Path]) -> set[Path]:
    """Which of ``paths`` exist now: one listing per folder, not one stat per file."""
    by_folder: dict[Path, list[Path]] = {}
    for path in paths:
        by_folder.setdefault(path.parent, []).append(path)
    found = set()
    for folder, wanted in by_folder.items():
        try:
            names = set(os.listdir(folder))
        except OSError:
            continue
        found.update(p for p in wanted if p.name in names)
    return found


def _rerun_found_its_output(error: BaseException | None, dst: Path, existed: set[Path]) -> bool:
    """A task refused an output that did not exist when the job started: a first attempt wrote it.

    Its worker died after the rename into place and before its result reached
    the scheduler; the rerun finds the whole file there. Outputs are renamed
    into place only when complete, so the file is the task's own, whole.
    """
    return isinstance(error, OutputExists) and dst not in existed


def _sweep_workers(client) -> None:
    """On every worker's machine: unlink shared memory of tileproc processes that died (a killed worker's)."""
    with contextlib.suppress(Exception):
        client.run(_sweep_segments)


def process_folder(
    client,
    src,
    dst=None,
    chain: Any = None,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    quality: int | None = None,
    on_result: Callable[[FileResult], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
    task_retries: int = 2,
    window: int | None = None,
    codec: str | None = None,
    crf: float | None = None,
    preset: str = "medium",
    pix_fmt: str | None = None,
    ext: str | None = None,
    **engine_options: Any,
) -> Report:
    """Filter every image and video under ``src`` into ``dst`` on a Dask cluster, one task per file.

    Same inputs, outputs and report as :func:`tiler.process_folder`. Each task
    reads its file, filters it with the local engine of the worker it runs on
    and writes the output atomically there; ``src`` and ``dst`` must be on a
    file system every worker sees. At most ``window`` tasks are in flight.

    Parameters
    ----------
    client : dask.distributed.Client
        From :func:`connect` or your own.
    src, dst : path or file:// URL
        Input folder; output folder (None: ``name.tileproc.ext`` beside each input).
    chain : str, filter, or list of them
        As for :func:`tiler.process`.
    workers : int, optional
        Engine workers in each Dask worker process (default: its share of
        its machine's cores).
    on_result, on_plan : callable, optional
        Called here with each file's :class:`FileResult` as it finishes, and
        once with the number of files before the first task.
    task_retries : int
        Times Dask reruns a task that raised unexpectedly (an input error is
        a result, not retried). A task whose worker died is rerun by the
        scheduler up to its ``allowed-failures`` setting.
    window : int, optional
        Tasks in flight (default twice the cluster's worker threads).
    ext : str, optional
        Write images in this format (``".png"``) instead of the input's.
    **engine_options
        ``tile_size``, ``frames_in_flight``, ``tile_timeout``... for each engine.

    Examples
    --------
    >>> with connect("local:2") as client:                         # doctest: +SKIP
    ...     report = process_folder(client, "photos", "out", "blur:sigma=2")
    >>> report.ok                                                  # doctest: +SKIP
    True
    """
    src = _local_path(src)
    dst = _local_path(dst) if dst is not None else None
    if not src.is_dir():
        raise InputError(f"{src}: not a folder")
    chain = _checked_chain(chain)
    spec = _engine_spec(workers, engine_options)
    options = dict(
        overwrite=overwrite,
        max_pixels=max_pixels,
        quality=quality,
        codec=codec,
        crf=crf,
        preset=preset,
        pix_fmt=pix_fmt,
    )
    report = Report()

    def record(result: FileResult) -> None:
        report.results.append(result)
        if on_result is not None:
            on_result(result)

    pairs = pipeline.prepare_folder(src, dst, ext=ext, record=record, on_plan=on_plan)
    folders = sorted({d.parent for _, d in pairs})
    if not pairs:
        return report
    hosts = _hosts(client)
    _register(client)
    existed = set() if overwrite else _existing(d for _, d in pairs)
    job = secrets.token_hex(4)
    numbered = ((i, s, d) for i, (s, d) in enumerate(pairs))

    def submit(item):
        i, s, d = item
        return client.submit(
            _file_task,
            str(s),
            str(d),
            chain,
            spec,
            hosts,
            options,
            key=f"tileproc-file-{job}-{i}",
            retries=task_retries,
            pure=False,
        )

    tasks = _Window(client, numbered, submit, _window(hosts, window))
    try:
        for (_, s, d), future in tasks:
            value = _outcome(future, str(s))
            result = value if isinstance(value, FileResult) else FileResult(s, None, value)
            if _rerun_found_its_output(result.error, d, existed):
                result = FileResult(s, d, None)
            record(result)
    finally:
        tasks.cancel()
        _sweep_workers(client)
        for folder in folders:  # what the attempts of dead workers left
            sweep_stale_temps(folder)
    return report


def process_file(
    client,
    src,
    dst=None,
    chain: Any = None,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    quality: int | None = None,
    task_retries: int = 2,
    codec: str | None = None,
    crf: float | None = None,
    preset: str = "medium",
    pix_fmt: str | None = None,
    **engine_options: Any,
) -> Path:
    """Filter one image (one task) or video (:func:`process_video`) on a Dask cluster.

    ``dst`` None means ``name.tileproc.ext`` beside it. Returns the output path.

    Examples
    --------
    >>> with connect("local") as client:                             # doctest: +SKIP
    ...     process_file(client, "photo.jpg", "out.jpg", "sharpen")
    PosixPath('out.jpg')
    """
    src = _local_path(src)
    dst = _local_path(dst) if dst is not None else None
    video_options = dict(codec=codec, crf=crf, preset=preset, pix_fmt=pix_fmt)
    if pipeline.is_video(src):
        return process_video(
            client,
            src,
            dst,
            chain,
            workers=workers,
            overwrite=overwrite,
            max_pixels=max_pixels,
            task_retries=task_retries,
            **video_options,
            **engine_options,
        )
    dst = dst if dst is not None else output_name(src)
    chain = _checked_chain(chain)
    spec = _engine_spec(workers, engine_options)
    sweep_stale_temps(dst.parent)
    hosts = _hosts(client)
    _register(client)
    options = dict(overwrite=overwrite, max_pixels=max_pixels, quality=quality, **video_options)
    try:
        _whole_file_task(
            client,
            _file_task,
            src,
            dst,
            chain,
            spec,
            hosts,
            options,
            overwrite=overwrite,
            key=f"tileproc-file-{secrets.token_hex(4)}-0",
            task_retries=task_retries,
        )
    finally:
        _sweep_workers(client)
        sweep_stale_temps(dst.parent)
    return dst


def _whole_file_task(
    client,
    task,
    src: Path,
    dst: Path,
    chain,
    spec,
    hosts,
    options: dict,
    *,
    overwrite: bool,
    key: str,
    task_retries: int,
) -> None:
    """Run ``task`` for one whole file on some worker; raise its error unless a rerun
    (after a worker died) found the output its first attempt had already completed."""
    existed = set() if overwrite else _existing([dst])
    future = client.submit(
        task, str(src), str(dst), chain, spec, hosts, options, key=key, retries=task_retries, pure=False
    )
    try:
        value = _outcome(future, str(src))
    finally:
        with contextlib.suppress(Exception):
            future.cancel()
    if isinstance(value, FileResult):
        value = value.error
    if value is not None and not _rerun_found_its_output(value, dst, existed):
        raise value


def process_video(
    client,
    src,
    dst=None,
    chain: Any = None,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    codec: str | None = None,
    crf: float | None = None,
    preset: str = "medium",
    pix_fmt: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    segment_frames: int | None = None,
    on_start: Callable[[video.VideoInfo], None] | None = None,
    on_segment: Callable[[int], None] | None = None,
    task_retries: int = 2,
    window: int | None = None,
    **engine_options: Any,
) -> Path:
    """Filter a video on a Dask cluster: segments on different workers, joined into one file.

    The video is cut at keyframes into segments of at least ``segment_frames``
    frames. Each segment is a task: its worker decodes just that stretch of
    the source (ffmpeg seeks to it), filters it with its local engine and
    encodes a video-only segment into a temporary folder beside ``dst``. The
    segments are then joined without re-encoding (ffmpeg's concat demuxer,
    ``-c copy``) and the source's audio is muxed once, so the output has the
    frames, frame rate and audio that :func:`tiler.process_video` gives on one
    machine. The temporary folder is removed whatever happens; ``dst`` is
    written atomically.

    A variable-frame-rate source or a GIF output is not cut: the whole video
    is one task. Options are those of :func:`tiler.process_video`, and:

    Parameters
    ----------
    segment_frames : int, optional
        Frames per segment, at least (a cut waits for the next keyframe).
        Default: enough segments for twice the cluster's worker threads, but
        at least two seconds each.
    on_start : callable, optional
        Called with the source's :class:`~tiler.io.video.VideoInfo` before any task.
    on_segment : callable, optional
        Called with the number of frames of each segment as it finishes.

    Examples
    --------
    >>> with connect("local:2") as client:                                  # doctest: +SKIP
    ...     process_video(client, "clip.mp4", "clip.blur.mp4", "blur", crf=20)
    PosixPath('clip.blur.mp4')
    """
    src = _local_path(src)
    dst = _local_path(dst) if dst is not None else output_name(src)
    chain = _checked_chain(chain)
    spec = _engine_spec(workers, engine_options)
    if segment_frames is not None and segment_frames < 1:
        raise ValueError(f"segment_frames must be >= 1, got {segment_frames}")
    sweep_stale_temps(dst.parent)
    check_input(src)
    info = video.probe_video(src, max_pixels=max_pixels)
    check_output(dst, inputs=[src], overwrite=overwrite)
    dtype = pipeline.video_dtype(info, dst)
    writer = dict(codec=codec, crf=crf, preset=preset, pix_fmt=pix_fmt)
    plan = video.encoder_plan(dst, info, dtype, codec, crf, preset, pix_fmt)  # refuses bad options before any task
    if on_start is not None:
        on_start(info)
    hosts = _hosts(client)
    _register(client)
    threads = max(1, sum(hosts.values()))
    target = segment_frames or max(math.ceil(info.frame_count / (2 * threads)), math.ceil(2 * info.fps))
    keys = None if info.variable_rate or plan.muxer == "gif" else _keyframes(info)
    segments = _plan_segments(keys, info.frame_count, target) if keys else [(0, info.frame_count, None)]
    job = secrets.token_hex(4)
    try:
        if len(segments) == 1:
            options = dict(overwrite=overwrite, max_pixels=max_pixels, **writer)
            _whole_file_task(
                client,
                _video_task,
                src,
                dst,
                chain,
                spec,
                hosts,
                options,
                overwrite=overwrite,
                key=f"tileproc-video-{job}",
                task_retries=task_retries,
            )
            if on_segment is not None:
                on_segment(info.frame_count)
            return dst
        return _segments(
            client,
            info,
            dst,
            chain,
            spec,
            hosts,
            segments,
            plan,
            dtype,
            writer,
            overwrite=overwrite,
            job=job,
            on_segment=on_segment,
            task_retries=task_retries,
            window=_window(hosts, window),
        )
    finally:
        _sweep_workers(client)
        sweep_stale_temps(dst.parent)


def _segments(
    client,
    info,
    dst: Path,
    chain,
    spec,
    hosts,
    segments,
    plan,
    dtype,
    writer,
    *,
    overwrite: bool,
    job: str,
    on_segment,
    task_retries: int,
    window: int,
) -> Path:
    """Filter ``segments`` on the workers into a folder beside ``dst``, then join them."""
    folder = dst.parent / f".{dst.stem[:80]}.tileproc-segments-{job}"
    folder.mkdir()
    try:
        names = [f"segment-{i:05d}{dst.suffix}" for i in range(len(segments))]

        def submit(item):
            i, (first, count, seek) = item
            return client.submit(
                _segment_task,
                info,
                first,
                count,
                seek,
                str(folder / names[i]),
                chain,
                spec,
                hosts,
                writer,
                key=f"tileproc-segment-{job}-{i}",
                retries=task_retries,
                pure=False,
            )

        tasks = _Window(client, enumerate(segments), submit, window)
        try:
            for (_, (first, count, _)), future in tasks:
                error = _outcome(future, f"{info.path} frames {first}-{first + count - 1}")
                if error is not None:
                    tasks.settle()  # the segments in flight end before their folder goes
                    raise error
                if on_segment is not None:
                    on_segment(count)
        finally:
            tasks.cancel()
        _join(info, folder, names, segments, dst, plan, overwrite=overwrite)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return dst


def _keyframes(info: video.VideoInfo) -> list[tuple[int, Fraction]] | None:
    """(frame index, seconds from the file's start) of each keyframe, in presentation order.

    From the probe's packet scan (no decoding). None when the packets do not
    map one to one onto the frames the reader delivers (then the video is not cut).
    """
    if len(info.timestamps) != info.frame_count or not info.keyframes:
        return None
    return video.keyframe_times(info)


def _plan_segments(keys: list[tuple[int, Fraction]], n: int, target: int) -> list[tuple[int, int, Fraction | None]]:
    """(first frame, frame count, seek seconds or None) of each segment, cut at keyframes.

    A cut waits until the segment has ``target`` frames, and is skipped when
    it would leave fewer than half that for the last one. The seek point is
    half a frame before the keyframe: ffmpeg starts decoding at a keyframe at
    or before it and drops what precedes it, so the keyframe is the first
    frame out, whatever the rounding of timestamps.
    """
    segments: list[tuple[int, int, Fraction | None]] = []
    first, seek = 0, None
    for index, seconds in keys:
        if index - first >= target and n - index >= max(1, target // 2):
            segments.append((first, index - first, seek))
            first, seek = index, seconds
    segments.append((first, n - first, seek))
    return segments


def _seek_point(seconds: Fraction, fps: Fraction) -> float:
    return max(0.0, math.floor((seconds - 1 / (2 * fps)) * 1_000_000) / 1_000_000)


def _join(
    info: video.VideoInfo, folder: Path, names: list[str], segments: list, dst: Path, plan, *, overwrite: bool
) -> None:
    """Concatenate the segment files (no re-encoding), mux the source's audio once, write ``dst`` atomically."""
    # Each segment's exact duration (ends rounded to microseconds, so errors never add up):
    # the concat demuxer starts the next segment there, and timestamps stay on the frame grid.
    ends = list(itertools.accumulate(count for _, count, _ in segments))
    micros = [0] + [round(Fraction(end) / info.fps * 1_000_000) for end in ends]
    listing = folder / "segments.ffconcat"
    listing.write_text(
        "ffconcat version 1.0\n"
        + "".join(
            f"file '{name}'\nduration {(b - a) / 1_000_000:.6f}\n" for name, a, b in zip(names, micros, micros[1:])
        )
    )
    copy = dataclasses.replace(plan, filters="", video_args=["-c:v", "copy"])
    audio = info.streams if plan.muxer != "gif" else ()  # every stream the container holds
    cmd = [
        video.ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "error",
        "-f",
        "concat",
        "-safe",
        "0",
        "-i",
        video.ffmpeg_path(listing),
    ]
    if audio:
        cmd += ["-i", video.ffmpeg_path(info.path)]
    with atomic_output(dst, inputs=[info.path], overwrite=overwrite) as tmp:
        cmd += video.encode_args(copy, video.ffmpeg_path(tmp), audio, 1 if audio else None)
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        if proc.returncode != 0:
            said = video.last_lines(proc.stderr.decode("utf-8", "replace")) or f"exit status {proc.returncode}"
            raise VideoError(f"{dst}: joining {len(names)} segments failed ({said})")
        got = video.probe_video(tmp).frame_count
        if got != info.frame_count:
            raise VideoError(f"{dst}: the joined segments hold {got} frames, the source {info.frame_count}")


# -- the workers' side -----------------------------------------------------------
#
# Module-level functions: Dask pickles them by reference and each worker
# imports this module, which needs tileproc installed on every worker.

_lock = threading.Lock()
_idle: dict[tuple, list[Engine]] = {}  # (spec, size) -> engines not running a task now
_engines: list[Engine] = []  # every engine of this process, for closing at its end
_atexit_registered = False
_stopping = False  # the worker is stopping: engines are closed as their tasks end


def _cores() -> int:
    """CPUs this process may use (Dask's count also honours container quotas)."""
    from tiler.pool import default_workers

    try:
        from dask.system import CPU_COUNT
    except ImportError:  # pragma: no cover - dask is here whenever a task runs
        return default_workers()
    return max(1, min(default_workers(), CPU_COUNT))


def _engine_size(spec: _EngineSpec, hosts: dict[str, int]) -> int:
    """Engine workers for one task slot of this Dask worker: its share of the machine's cores."""
    if spec.workers is not None:
        return spec.workers
    try:
        from distributed import get_worker
        from distributed.comm import get_address_host

        worker = get_worker()
    except (ImportError, ValueError):  # not inside a Dask worker (tests call tasks directly)
        return _cores()
    threads_here = hosts.get(get_address_host(worker.address)) or worker.state.nthreads
    return max(1, _cores() // max(1, threads_here))


@contextlib.contextmanager
def _engine(spec: _EngineSpec, hosts: dict[str, int]) -> Iterator[Engine]:
    """This process's engine for ``spec``: an idle one, or a new one (kept for the next task)."""
    global _atexit_registered
    size = _engine_size(spec, hosts)
    key = (spec, size)
    with _lock:
        stale = [k for k in _idle if k != key]
        old = [e for k in stale for e in _idle.pop(k)]
        engine = _idle[key].pop() if _idle.get(key) else None
    for e in old:  # another job's settings: free their processes and memory
        e.close()
    if engine is None:
        engine = Engine(size, **dict(spec.options))
        with _lock:
            _engines.append(engine)
            if not _atexit_registered:
                atexit.register(_close_engines, at_exit=True)
                _atexit_registered = True
    try:
        yield engine
    finally:
        with _lock:
            keep = not _stopping and not engine._closed
            if keep:
                _idle.setdefault(key, []).append(engine)
            elif engine in _engines:
                _engines.remove(engine)
        if not keep:
            engine.close()


def _close_engines(*, at_exit: bool = False) -> None:
    """Close the idle engines of this process now, and each busy one when its task ends.

    Called when the Dask worker stops (its plugin's teardown): an engine is
    never closed under a running task, whose frames still use it. At exit
    every engine is closed (a task thread still running dies with the process).
    """
    global _stopping
    with _lock:
        _stopping = True
        closing = list(_engines) if at_exit else [e for engines in _idle.values() for e in engines]
        _idle.clear()
        for e in closing:
            _engines.remove(e)
    for e in closing:
        with contextlib.suppress(Exception):
            e.close()


def _engines_plugin():
    from distributed.diagnostics.plugin import WorkerPlugin

    class TileprocEngines(WorkerPlugin):
        """Closes the worker's tileproc engines when the worker stops."""

        idempotent = True  # registered once per scheduler, however many jobs

        def teardown(self, worker) -> None:
            _close_engines()

    return TileprocEngines()


def _sweep_segments(dask_worker=None) -> int:
    from tiler.sharedmem import sweep_stale_segments

    return len(sweep_stale_segments())


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a plain tileproc error with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001
        return TileprocError(str(exc))
    return exc


def _file_task(
    src: str, dst: str, chain, spec: _EngineSpec, hosts: dict[str, int], options: dict[str, Any]
) -> FileResult:
    """One file on this worker: read, filter with the local engine, write atomically."""
    try:
        with _engine(spec, hosts) as engine:
            out = pipeline.process_file(engine, src, dst, chain, sweep=False, **options)
    except TileprocError as exc:
        return FileResult(Path(src), None, _portable(exc))
    return FileResult(Path(src), Path(out), None)


def _video_task(
    src: str, dst: str, chain, spec: _EngineSpec, hosts: dict[str, int], options: dict[str, Any]
) -> BaseException | None:
    """A whole video on this worker, as on one machine."""
    try:
        with _engine(spec, hosts) as engine:
            pipeline.process_video(engine, src, dst, chain, sweep=False, **options)
    except TileprocError as exc:
        return _portable(exc)
    return None


class _RangeReader(video.VideoReader):
    """``info.frame_count`` frames of ``info.path`` from ``seek`` seconds on (None: from the start)."""

    def __init__(self, info: video.VideoInfo, seek: float | None, *, dtype: Any = None) -> None:
        super().__init__(info, dtype=dtype)
        self.seek = seek

    def command(self) -> list[str]:
        cmd = super().command()
        if self.seek is None:
            return cmd
        i = cmd.index("-i")
        return [*cmd[:i], "-ss", f"{self.seek:.6f}", *cmd[i:]]


def _segment_task(
    info: video.VideoInfo,
    first: int,
    count: int,
    seek: Fraction | None,
    dst: str,
    chain,
    spec: _EngineSpec,
    hosts: dict[str, int],
    writer: dict[str, Any],
) -> BaseException | None:
    """Frames ``first .. first+count-1`` of the source, filtered, into a video-only file ``dst``."""
    part = dataclasses.replace(info, frame_count=count, duration=Fraction(count) / info.fps)
    try:
        with _engine(spec, hosts) as engine:
            _filter_range(
                engine, part, first, None if seek is None else _seek_point(seek, info.fps), Path(dst), chain, writer
            )
    except TileprocError as exc:
        return _portable(exc)
    return None


def _filter_range(
    engine: Engine,
    info: video.VideoInfo,
    first: int,
    seek: float | None,
    dst: Path,
    chain,
    writer_options: dict[str, Any],
) -> None:
    """As :func:`tiler.pipeline.process_video`, for a stretch of the source and without audio."""
    dtype = pipeline.video_dtype(info, dst)
    out_info = pipeline.resized_video_info(info, chain)
    writer = video.VideoWriter(dst, out_info, dtype=dtype, audio_from=None, overwrite=True, **writer_options)
    pipeline.filter_stream(engine, _RangeReader(info, seek, dtype=dtype), writer, chain, first=first)
