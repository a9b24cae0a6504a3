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
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from tiler import pipeline, staging
from tiler.engine import Engine, resolve_chain
from tiler.errors import InputError, OutputExists, TileprocError, VideoError, WorkerDied, WorkerError
from tiler.io import remote, video
from tiler.io.files import atomic_output, check_input, check_output, output_name, sweep_stale_temps
from tiler.io.images import DEFAULT_MAX_PIXELS
from tiler.pipeline import FileResult, Report

__all__ = [
    "FOLDER_SEGMENT_SECONDS",
    "connect",
    "tls",
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
    "builtins_in_process",
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


def connect(address: str = "local", *, timeout: float = CONNECT_TIMEOUT, security: Any = None):
    """A ``dask.distributed.Client`` for a scheduler, or for a cluster on this machine.

    A Dask scheduler runs whatever code a client that reaches it sends: on a
    network others can reach, run it with TLS (``tls://`` and certificates)
    and connect with ``security``.

    Parameters
    ----------
    address : str
        ``tls://host:8786`` or ``tcp://host:8786`` (any address Dask takes;
        ``host:8786`` means tls with ``security``, else tcp), or ``local`` /
        ``local:N``: a LocalCluster of N worker processes (default
        :data:`LOCAL_WORKERS`) with one thread each, on this machine, for
        trying it out (over TLS with ``security``). Closing the client stops
        that cluster.
    timeout : float
        Seconds to wait for the scheduler.
    security : distributed.Security, optional
        The certificates to connect with. Default: Dask's configuration
        (``distributed.comm.tls.*``, e.g. ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``).

    Raises
    ------
    ClusterError
        Dask is not installed, the scheduler did not answer within ``timeout``,
        or it refused the connection (TLS without matching certificates).
    ValueError
        ``address`` is malformed, or ``security`` comes with a ``tcp://`` address.

    Examples
    --------
    >>> from distributed import Security                                  # doctest: +SKIP
    >>> tls = Security(tls_ca_file="ca.pem", tls_client_cert="me.pem",
    ...                tls_client_key="me.key", require_encryption=True)  # doctest: +SKIP
    >>> client = connect("tls://10.0.0.5:8786", security=tls)             # doctest: +SKIP
    >>> with connect("local:2") as client:                                # doctest: +SKIP
    ...     report = process_folder(client, "photos", "out", "blur")
    """
    address = str(address).strip()
    if address == "local" or address.startswith("local:"):
        n = LOCAL_WORKERS if address == "local" else _count(address[len("local:") :], address)
        tls = {} if security is None else dict(security=security, protocol="tls")
        return _local_client(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, **tls)
    scheme, sep, rest = address.rpartition("://")
    host, colon, port = rest.rpartition(":")
    if not rest or (colon and not port.isdigit()) or (sep and not scheme):
        raise ValueError(f"cluster address must be tls://HOST:PORT, tcp://HOST:PORT or local[:N], got {address!r}")
    if security is not None and not sep:
        address = f"tls://{address}"
    if security is not None and sep and scheme.lower() != "tls":
        raise ValueError(f"TLS options need a tls:// address (or HOST:PORT), got {address!r}")
    distributed = _distributed()
    if security is None and address.lower().startswith("tls://"):
        security = distributed.Security()  # from Dask's configuration
        if not security.tls_ca_file:
            # Checked here: Dask's own error for this (a TypeError) leaves the client's event loop in a state
            # where the next client of this process cannot start.
            raise ClusterError(
                f"{address}: the scheduler speaks TLS and no certificates were given; "
                "pass --tls-ca-file, --tls-cert and --tls-key (security= in Python)"
            )
    extra = {} if security is None else {"security": security}
    try:
        return distributed.Client(address, timeout=timeout, **extra)
    except (OSError, TimeoutError) as exc:
        reason = _first_line(exc)
        if "certificate" in reason.lower() or "ssl" in reason.lower():
            raise ClusterError(
                f"{address}: the scheduler refused the TLS certificates given (not signed by the authority it trusts)"
            ) from None
        if isinstance(exc, distributed.comm.CommClosedError):
            raise ClusterError(
                f"{address}: the scheduler closed the connection at once; "
                "a TLS scheduler needs a tls:// address and its certificates (--tls-ca-file, --tls-cert, --tls-key)"
            ) from None
        raise ClusterError(
            f"{address}: no Dask scheduler answered within {timeout:g} s ({reason}); "
            "start one with 'dask scheduler', or check the address (tls:// for a TLS scheduler)"
        ) from None


def _local_client(**options: Any):
    """A Client and its LocalCluster whose scratch folders are in a private temporary folder, removed on close.

    Dask's scheduler and workers otherwise leave an empty ``dask-scratch-space``
    in the temporary folder. The folder's name is a staging workspace's, so the
    next tileproc run sweeps it if this process is killed.
    """
    import dask

    distributed = _distributed()
    scratch = tempfile.mkdtemp(prefix=remote.workspace_prefix() + "dask-")

    class LocalClient(distributed.Client):  # type: ignore[name-defined]  # a module object, not a type mypy sees
        def close(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().close(*args, **kwargs)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

    try:
        with dask.config.set({"temporary-directory": scratch}):
            return LocalClient(local_directory=scratch, **options)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def tls(ca_file: str | None, cert: str | None, key: str | None = None):
    """A ``distributed.Security`` that requires TLS, from PEM files (or PEM text).

    Parameters
    ----------
    ca_file : str
        The certificate authority that signed the scheduler's and workers' certificates.
    cert, key : str
        This client's certificate and private key (``key`` None: in ``cert``).

    Examples
    --------
    >>> client = connect("tls://10.0.0.5:8786", security=tls("ca.pem", "me.pem", "me.key"))  # doctest: +SKIP

    Raises
    ------
    ValueError
        The authority or the certificate is missing, a file is not what it
        should be, or the key is not the certificate's.
    """
    if not ca_file:
        raise ValueError("TLS needs --tls-ca-file too (ca_file): the authority that signed the scheduler's certificate")
    if not cert:
        raise ValueError(
            "TLS needs --tls-cert too (cert): this client's certificate, signed by the scheduler's authority"
        )
    _check_pem(ca_file, cert, key)
    return _distributed().Security(
        tls_ca_file=ca_file, tls_client_cert=cert, tls_client_key=key, require_encryption=True
    )


def _check_pem(ca_file: str, cert: str, key: str | None) -> None:
    """Raise ValueError naming the file when a PEM file is not a certificate, or the key is missing or not the cert's.

    Dask reports each of these as the scheduler refusing the connection; Python's ssl module tells them apart.
    PEM text (not a file) is left to Dask.
    """
    for option, path in (("--tls-ca-file", ca_file), ("--tls-cert", cert)):
        if os.path.isfile(path):
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
            except ssl.SSLError:
                raise ValueError(f"{option} {path}: not a PEM certificate") from None
    if not os.path.isfile(cert) or (key is not None and not os.path.isfile(key)):
        return
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
    except ssl.SSLError:
        if key is None:
            raise ValueError(
                f"--tls-cert {cert}: holds no private key for its certificate; give the key file with --tls-key"
            ) from None
        raise ValueError(f"--tls-key {key}: not the private key of the certificate in {cert}") from None


def _first_line(exc: BaseException) -> str:
    """The whole message of ``exc`` on one line (its type's name when it has none)."""
    return remote.one_line(str(exc)) or type(exc).__name__


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


def _location(path: Any) -> Path | str:
    """A storage URL as a string (``s3://...``, fetched by the worker that needs it), else a local path.

    Local paths and ``file://`` URLs must be at the same place on every worker (a shared file system).
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if remote.is_url(text):
        return text
    if "://" in text:
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


class _Window(Generic[_T]):
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
                self._add(cast(_T, following))  # not the sentinel: an item
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
        text = remote.one_line(str(exc))
        return WorkerError(f"{label}: {type(exc).__name__}" + (f": {text}" if text else ""))


def _rerun_found_its_output(error: BaseException | None, dst: Path | str, existed: set[str]) -> bool:
    """A task refused an output that did not exist when the job started: a first attempt wrote it.

    Its worker died after the rename into place and before its result reached
    the scheduler; the rerun finds the whole file there. Outputs are renamed
    into place only when complete, so the file is the task's own, whole.
    """
    return isinstance(error, OutputExists) and str(dst) not in existed


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
    storage_options: dict[str, Any] | None = None,
    skip_existing: bool = False,
    segment_frames: int | None = None,
    on_frames: Callable[[int], None] | None = None,
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
    storage_options : dict, optional
        fsspec options for URL inputs and outputs (sent to the workers with each task).
    skip_existing : bool
        An output that exists (complete: outputs appear only whole) counts as
        done and is not redone, so a rerun resumes an interrupted batch.
    segment_frames : int, optional
        A video of the folder long enough for two segments of at least this
        many frames is cut at keyframes and its segments filtered on several
        workers, as :func:`process_video` does. Default: segments of at least
        :data:`FOLDER_SEGMENT_SECONDS` seconds (the other files keep workers
        busy meanwhile). Videos given by URL are one task each.
    on_frames : callable, optional
        Called here, from Dask's event thread, with the number of frames
        filtered since the last call, as the workers report them (about twice
        a second each): images count one frame each.
    **engine_options
        ``tile_size``, ``frames_in_flight``, ``tile_timeout``... for each engine.

    Examples
    --------
    >>> with connect("local:2") as client:                         # doctest: +SKIP
    ...     report = process_folder(client, "photos", "out", "blur:sigma=2")
    >>> report.ok                                                  # doctest: +SKIP
    True
    """
    src = _location(src)
    dst = _location(dst) if dst is not None else None
    urls = staging.involved(src, dst)
    if not urls and not src.is_dir():
        raise InputError(f"{src}: not a folder")
    chain = _checked_chain(chain)
    spec = _engine_spec(workers, engine_options)
    options: dict[str, Any] = dict(
        overwrite=overwrite,
        max_pixels=max_pixels,
        quality=quality,
        codec=codec,
        crf=crf,
        preset=preset,
        pix_fmt=pix_fmt,
    )
    if urls:
        options["storage_options"] = storage_options
    report = Report()

    def record(result: FileResult) -> None:
        report.results.append(result)
        if on_result is not None:
            on_result(result)

    if urls:
        pairs, problems = staging.plan_folder(src, dst, ext=ext, storage_options=storage_options)
        if on_plan is not None:
            on_plan(len(pairs) + len(problems))
        for problem in problems:
            record(problem)
    else:
        pairs = pipeline.prepare_folder(src, dst, ext=ext, record=record, on_plan=on_plan)
    folders = sorted({d.parent for _, d in pairs if isinstance(d, Path)})
    if not pairs:
        return report
    hosts = _hosts(client)
    _register(client)
    existed = set() if overwrite else staging.existing([d for _, d in pairs], storage_options)
    if skip_existing and not overwrite:
        for s, d in pairs:
            if str(d) in existed:
                record(FileResult(s, d, None))
        pairs = [(s, d) for s, d in pairs if str(d) not in existed]
    if segment_frames is not None and segment_frames < 1:
        raise ValueError(f"segment_frames must be >= 1, got {segment_frames}")
    job = secrets.token_hex(4)
    with _frames_topic(client, job, on_frames) as topic:
        threads = max(1, sum(hosts.values()))
        cuts: list[_Cut] = []

        def items() -> Iterator[tuple[int, Any, Any, tuple[_Cut, int] | None]]:
            """Each file as one task; a long video (cut when the window reaches it) as one task per segment."""
            for i, (s, d) in enumerate(pairs):
                cut = None
                if isinstance(s, Path) and isinstance(d, Path) and pipeline.is_video(s):
                    cut = _cut(s, d, job, i, threads, segment_frames, overwrite=overwrite, options=options)
                if cut is None:
                    yield i, s, d, None
                    continue
                cuts.append(cut)
                for k in range(len(cut.segments)):
                    yield i, s, d, (cut, k)

        def submit(item):
            i, s, d, part = item
            if part is None:
                return client.submit(
                    _file_task,
                    str(s),
                    str(d),
                    chain,
                    spec,
                    hosts,
                    options,
                    topic,
                    key=f"tileproc-file-{job}-{i}",
                    retries=task_retries,
                    pure=False,
                )
            cut, k = part
            first, count, seek = cut.segments[k]
            return client.submit(
                _segment_task,
                cut.info,
                first,
                count,
                seek,
                str(cut.folder / cut.names[k]),
                chain,
                spec,
                hosts,
                cut.writer,
                topic,
                key=f"tileproc-segment-{job}-{i}-{k}",
                retries=task_retries,
                pure=False,
            )

        tasks = _Window(client, items(), submit, _window(hosts, window))
        try:
            for (_, s, d, part), future in tasks:
                if part is not None:
                    cut, k = part
                    first, count, _ = cut.segments[k]
                    error = _outcome(future, f"{s} frames {first}-{first + count - 1}")
                    if not cut.segment_done(error):
                        continue
                    result = cut.finish(overwrite=overwrite)
                else:
                    value = _outcome(future, str(s))
                    result = value if isinstance(value, FileResult) else FileResult(s, None, value)
                if _rerun_found_its_output(result.error, d, existed):
                    result = FileResult(s, d, None)
                record(result)
        finally:
            tasks.cancel()
            for cut in cuts:
                shutil.rmtree(cut.folder, ignore_errors=True)
            _sweep_workers(client)
            for folder in folders:  # what the attempts of dead workers left
                sweep_stale_temps(folder)
    return report


@contextlib.contextmanager
def _frames_topic(client, job: str, on_frames: Callable[[int], None] | None) -> Iterator[str | None]:
    """The Dask event topic on which this job's tasks report frames done (None without ``on_frames``)."""
    if on_frames is None:
        yield None
        return
    topic = f"tileproc-frames-{job}"
    client.subscribe_topic(topic, lambda event: on_frames(event[1]))
    try:
        yield topic
    finally:
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(topic)


FOLDER_SEGMENT_SECONDS = 10
"""Least length of a segment of a video in a folder job (:func:`process_folder`)."""


@dataclasses.dataclass
class _Cut:
    """A video of a folder job cut into segments: what to join once every segment is back."""

    info: video.VideoInfo
    dst: Path
    plan: Any
    writer: dict[str, Any]
    segments: list[tuple[int, int, Fraction | None]]
    folder: Path
    left: int = 0
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.left = len(self.segments)

    @property
    def names(self) -> list[str]:
        return [f"segment-{i:05d}{self.dst.suffix}" for i in range(len(self.segments))]

    def segment_done(self, error: BaseException | None) -> bool:
        """Count one segment back (keeping the first error); True when it was the last."""
        if error is not None and self.error is None:
            self.error = error
        self.left -= 1
        return self.left == 0

    def finish(self, *, overwrite: bool) -> FileResult:
        """Join the segments into ``dst`` (unless one failed) and remove their folder."""
        try:
            if self.error is None:
                _join(self.info, self.folder, self.names, self.segments, self.dst, self.plan, overwrite=overwrite)
        except TileprocError as exc:
            self.error = exc
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
        if self.error is not None:
            return FileResult(self.info.path, None, self.error)
        return FileResult(self.info.path, self.dst, None)


def _cut(
    src: Path, dst: Path, job: str, i: int, threads: int, segment_frames: int | None, *, overwrite: bool, options
) -> _Cut | None:
    """The segments of a video of a folder job, or None to run it as one task (short, not cuttable, or refused:
    the task then reports why)."""
    try:
        check_input(src)
        info = video.probe_video(src, max_pixels=options["max_pixels"])
        check_output(dst, inputs=[src], overwrite=overwrite)
        writer = {k: options[k] for k in ("codec", "crf", "preset", "pix_fmt")}
        dtype = pipeline.video_dtype(info, dst)
        plan = video.encoder_plan(dst, info, dtype, **writer)
    except (TileprocError, ValueError):
        return None
    target = segment_frames or max(
        math.ceil(info.frame_count / (2 * threads)), math.ceil(FOLDER_SEGMENT_SECONDS * info.fps)
    )
    if info.variable_rate or plan.muxer == "gif" or info.frame_count < 2 * target:
        return None
    keys = _keyframes(info)
    segments = _plan_segments(keys, info.frame_count, target) if keys else []
    if len(segments) < 2:
        return None
    folder = dst.parent / f".{dst.stem[:80]}.tileproc-segments-{job}-{i}"
    folder.mkdir()
    return _Cut(info, dst, plan, writer, segments, folder)


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
    storage_options: dict[str, Any] | None = None,
    **engine_options: Any,
) -> Path | str:
    """Filter one image (one task) or video (:func:`process_video`) on a Dask cluster.

    ``dst`` None means ``name.tileproc.ext`` beside it. Returns the output path.
    ``src`` and ``dst`` may be URLs (:mod:`tiler.staging`): the file is then one
    task, whose worker fetches the input and uploads the output.

    Examples
    --------
    >>> with connect("local") as client:                             # doctest: +SKIP
    ...     process_file(client, "photo.jpg", "out.jpg", "sharpen")
    PosixPath('out.jpg')
    """
    src = _location(src)
    dst = _location(dst) if dst is not None else None
    video_options: dict[str, Any] = dict(codec=codec, crf=crf, preset=preset, pix_fmt=pix_fmt)
    if staging.involved(src, dst):
        options: dict[str, Any] = dict(overwrite=overwrite, max_pixels=max_pixels, quality=quality, **video_options)
        options["storage_options"] = storage_options
        return _single_file(client, src, dst, chain, workers, options, engine_options, task_retries)
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
    options = dict(overwrite=overwrite, max_pixels=max_pixels, quality=quality, **video_options)
    return _single_file(client, src, dst, chain, workers, options, engine_options, task_retries)


def _single_file(
    client, src, dst, chain, workers, options: dict, engine_options: dict, task_retries: int
) -> Path | str:
    """One whole file as one task (an image, or a file given by URL: its worker fetches, filters and uploads)."""
    if dst is None:
        dst = staging.default_output(src) if isinstance(src, str) else output_name(src)
    chain = _checked_chain(chain)
    spec = _engine_spec(workers, engine_options)
    folder = dst.parent if isinstance(dst, Path) else None
    if folder is not None:
        sweep_stale_temps(folder)
    hosts = _hosts(client)
    _register(client)
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
            overwrite=options["overwrite"],
            key=f"tileproc-file-{secrets.token_hex(4)}-0",
            task_retries=task_retries,
        )
    finally:
        _sweep_workers(client)
        if folder is not None:
            sweep_stale_temps(folder)
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
    topic: str | None = None,
) -> None:
    """Run ``task`` for one whole file on some worker; raise its error unless a rerun
    (after a worker died) found the output its first attempt had already completed."""
    existed = set() if overwrite else staging.existing([dst], options.get("storage_options"))
    future = client.submit(
        task, str(src), str(dst), chain, spec, hosts, options, topic, key=key, retries=task_retries, pure=False
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
    on_frames: Callable[[int], None] | None = None,
    task_retries: int = 2,
    window: int | None = None,
    storage_options: dict[str, Any] | None = None,
    **engine_options: Any,
) -> Path | str:
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
    is one task. From a URL to a URL, workers fetch the source and upload
    their segments under a hidden prefix beside ``dst``, and one task joins
    them (nothing passes through this process); a video from a URL to a
    path, or from a path to a URL, is one task. Options are those of
    :func:`tiler.process_video`, and:

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
    on_frames : callable, optional
        Called here, from Dask's event thread, with the number of frames
        filtered since the last call, as the workers report them (about
        twice a second each).

    Examples
    --------
    >>> with connect("local:2") as client:                                  # doctest: +SKIP
    ...     process_video(client, "clip.mp4", "clip.blur.mp4", "blur", crf=20)
    PosixPath('clip.blur.mp4')
    """
    src = _location(src)
    dst = _location(dst) if dst is not None else None
    if staging.involved(src, dst):
        writer = dict(codec=codec, crf=crf, preset=preset, pix_fmt=pix_fmt)
        options = dict(overwrite=overwrite, max_pixels=max_pixels, storage_options=storage_options, **writer)
        if isinstance(src, str) and (dst is None or isinstance(dst, str)) and pipeline.is_video(Path(src)):
            return _remote_video(
                client,
                src,
                dst or staging.default_output(src),
                chain,
                workers,
                options,
                engine_options,
                segment_frames=segment_frames,
                on_segment=on_segment,
                on_frames=on_frames,
                task_retries=task_retries,
                window=window,
            )
        return _single_file(client, src, dst, chain, workers, options, engine_options, task_retries)
    dst = dst if dst is not None else output_name(src)
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
            with _frames_topic(client, job, on_frames) as topic:
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
                    topic=topic,
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
            on_frames=on_frames,
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
    on_frames,
    task_retries: int,
    window: int,
) -> Path:
    """Filter ``segments`` on the workers into a folder beside ``dst``, then join them."""
    folder = dst.parent / f".{dst.stem[:80]}.tileproc-segments-{job}"
    folder.mkdir()
    try:
        names = [f"segment-{i:05d}{dst.suffix}" for i in range(len(segments))]
        _run_segments(
            client,
            info,
            segments,
            [str(folder / n) for n in names],
            (chain, spec, hosts, writer),
            None,
            label=str(info.path),
            job=job,
            on_segment=on_segment,
            on_frames=on_frames,
            task_retries=task_retries,
            window=window,
        )
        _join(info, folder, names, segments, dst, plan, overwrite=overwrite)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return dst


def _run_segments(
    client,
    info: video.VideoInfo,
    segments: list,
    targets: list[str],
    work: tuple,
    source: tuple[str, Any, str] | None,
    *,
    label: str,
    job: str,
    on_segment,
    on_frames,
    task_retries: int,
    window: int,
) -> None:
    """Filter each segment into its target on the workers; raise the first failure once those in flight end."""
    chain, spec, hosts, writer = work
    with _frames_topic(client, job, on_frames) as topic:

        def submit(item):
            i, (first, count, seek) = item
            return client.submit(
                _segment_task,
                info,
                first,
                count,
                seek,
                targets[i],
                chain,
                spec,
                hosts,
                writer,
                topic,
                source,
                key=f"tileproc-segment-{job}-{i}",
                retries=task_retries,
                pure=False,
            )

        tasks = _Window(client, enumerate(segments), submit, window)
        try:
            for (_, (first, count, _)), future in tasks:
                error = _outcome(future, f"{label} frames {first}-{first + count - 1}")
                if error is not None:
                    tasks.settle()  # the segments in flight end before their folder goes
                    raise error
                if on_segment is not None:
                    on_segment(count)
        finally:
            tasks.cancel()


def _remote_video(
    client,
    src: str,
    dst: str,
    chain,
    workers,
    options: dict[str, Any],
    engine_options: dict[str, Any],
    *,
    segment_frames: int | None,
    on_segment,
    on_frames,
    task_retries: int,
    window: int | None,
) -> str:
    """A video from object storage to object storage, cut into segments like a local one.

    A worker fetches the source and plans the cut; each worker that filters a
    segment fetches the source once (kept for the job), and uploads its
    segment under a hidden prefix beside ``dst``; one more task joins them
    and uploads ``dst``. Nothing but the plan passes through this process.
    """
    chain = _checked_chain(chain)
    spec = _engine_spec(workers, engine_options)
    if segment_frames is not None and segment_frames < 1:
        raise ValueError(f"segment_frames must be >= 1, got {segment_frames}")
    storage = options["storage_options"]
    remote.check_output(dst, storage, overwrite=options["overwrite"])
    hosts = _hosts(client)
    _register(client)
    job = secrets.token_hex(4)
    source = (src, storage, job)
    name = Path(dst.rpartition("/")[2])
    prefix = f"{dst.rpartition('/')[0]}/.{name.stem[:80]}.tileproc-segments-{job}"
    try:
        planned = client.submit(_plan_task, source, options["max_pixels"], key=f"tileproc-plan-{job}", pure=False)
        info, keys = _outcome_or_raise(planned, src)
        writer = {k: options[k] for k in ("codec", "crf", "preset", "pix_fmt")}
        plan = video.encoder_plan(name, info, pipeline.video_dtype(info, name), **writer)
        threads = max(1, sum(hosts.values()))
        target = segment_frames or max(math.ceil(info.frame_count / (2 * threads)), math.ceil(2 * info.fps))
        use_keys = keys if not info.variable_rate and plan.muxer != "gif" else None
        segments = _plan_segments(use_keys, info.frame_count, target) if use_keys else [(0, info.frame_count, None)]
        if len(segments) == 1:
            _drop_sources(client, job)
            _single_file(client, src, dst, chain, workers, options, engine_options, task_retries)
            return dst  # what _single_file returns for a given dst
        names = [f"{prefix}/segment-{i:05d}{name.suffix}" for i in range(len(segments))]
        _run_segments(
            client,
            info,
            segments,
            names,
            (chain, spec, hosts, writer),
            source,
            label=src,
            job=job,
            on_segment=on_segment,
            on_frames=on_frames,
            task_retries=task_retries,
            window=_window(hosts, window),
        )
        joined = client.submit(
            _join_task, info, source, names, segments, dst, plan, options["overwrite"], key=f"tileproc-join-{job}"
        )
        _outcome_or_raise(joined, src)
    finally:
        _drop_sources(client, job)
        with contextlib.suppress(Exception):
            fs, path = remote.filesystem(prefix, storage)
            if fs.exists(path):
                fs.rm(path, recursive=True)
        _sweep_workers(client)
    return dst


def _outcome_or_raise(future, label: str) -> Any:
    """A task's value; its failure (or a tileproc error it returned) raised here."""
    value = _outcome(future, label)
    if isinstance(value, BaseException):
        raise value
    return value


def _drop_sources(client, job: str) -> None:
    with contextlib.suppress(Exception):
        client.run(_drop_staged_sources, job)


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


_REPORT_EVERY = 0.5
"""Seconds between two progress events of a task (frames done on a worker, sent to the driver)."""


@contextlib.contextmanager
def _reporting(engine: Engine, topic: str | None) -> Iterator[None]:
    """While a task runs: count the frames ``engine`` finishes, and send the count as a Dask event on ``topic``."""
    if topic is None:
        yield
        return
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not inside a Dask worker
        yield
        return
    pending = [0, time.monotonic()]

    def progress(event) -> None:
        if event.kind != "frame":
            return
        pending[0] += event.done
        if time.monotonic() - pending[1] >= _REPORT_EVERY:
            worker.log_event(topic, pending[0])
            pending[:] = [0, time.monotonic()]

    previous, engine.progress = engine.progress, progress
    try:
        yield
    finally:
        engine.progress = previous
        if pending[0]:
            worker.log_event(topic, pending[0])


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a plain tileproc error with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001
        return TileprocError(str(exc))
    return exc


def _file_task(
    src: str,
    dst: str,
    chain,
    spec: _EngineSpec,
    hosts: dict[str, int],
    options: dict[str, Any],
    topic: str | None = None,
) -> FileResult:
    """One file on this worker: read (fetched first if a URL), filter with the local engine, write atomically."""
    source = src if remote.is_url(src) else Path(src)
    try:
        with _engine(spec, hosts) as engine, _reporting(engine, topic):
            out = staging.run_file(engine, source, dst, chain, sweep=False, **options)
    except TileprocError as exc:
        return FileResult(source, None, _portable(exc))
    return FileResult(source, out, None)


def _video_task(
    src: str,
    dst: str,
    chain,
    spec: _EngineSpec,
    hosts: dict[str, int],
    options: dict[str, Any],
    topic: str | None = None,
) -> BaseException | None:
    """A whole video on this worker, as on one machine."""
    try:
        with _engine(spec, hosts) as engine, _reporting(engine, topic):
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
    topic: str | None = None,
    source: tuple[str, Any, str] | None = None,
) -> BaseException | None:
    """Frames ``first .. first+count-1`` of the source, filtered, into a video-only file ``dst``.

    With ``source`` (url, storage options, job) the source is this worker's staged copy of that URL and ``dst``
    a URL the segment is uploaded to.
    """
    part = dataclasses.replace(info, frame_count=count, duration=Fraction(count) / info.fps)
    seek_at = None if seek is None else _seek_point(seek, info.fps)
    try:
        with _engine(spec, hosts) as engine, _reporting(engine, topic):
            if source is None:
                _filter_range(engine, part, first, seek_at, Path(dst), chain, writer)
                return None
            part = dataclasses.replace(part, path=_staged_source(*source))
            with remote.workspace() as work:
                local = work / dst.rpartition("/")[2]
                _filter_range(engine, part, first, seek_at, local, chain, writer)
                remote.upload(local, dst, source[1], overwrite=True)
    except TileprocError as exc:
        return _portable(exc)
    return None


_sources_lock = threading.Lock()
_sources: dict[tuple[str, str], tuple[Path, Path]] = {}  # (url, job) -> (staged copy, its workspace)


def _staged_source(url: str, storage_options: Any, job: str) -> Path:
    """This process's local copy of ``url`` for ``job``: fetched by the first task that needs it, then kept."""
    with _sources_lock:
        if (url, job) not in _sources:
            remote.sweep_stale_workspaces()
            work = Path(tempfile.mkdtemp(prefix=remote.workspace_prefix()))
            try:
                _sources[(url, job)] = (remote.stage_input(url, work, storage_options), work)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
        return _sources[(url, job)][0]


def _drop_staged_sources(job: str, dask_worker=None) -> int:
    """Delete this process's staged copies for ``job`` (the job has ended)."""
    with _sources_lock:
        done = [k for k in _sources if k[1] == job]
        for key in done:
            shutil.rmtree(_sources.pop(key)[1], ignore_errors=True)
    return len(done)


def _plan_task(source: tuple[str, Any, str], max_pixels: int | None) -> Any:
    """On a worker: fetch the source (kept for the job's segments), probe it, find its keyframes."""
    try:
        info = video.probe_video(_staged_source(*source), max_pixels=max_pixels)
        return info, _keyframes(info)
    except TileprocError as exc:
        return _portable(_renamed(exc, source))


def _renamed(exc: TileprocError, source: tuple[str, Any, str]) -> TileprocError:
    """``exc`` naming the source URL rather than this worker's staged copy of it."""
    staged = _sources.get((source[0], source[2]))
    return staging.named(exc, None if staged is None else staged[0], source[0])


def _join_task(
    info: video.VideoInfo,
    source: tuple[str, Any, str],
    names: list[str],
    segments: list,
    dst: str,
    plan,
    overwrite: bool,
) -> BaseException | None:
    """On a worker: fetch the segments, join them with the source's audio, upload ``dst`` whole."""
    storage = source[1]
    out = None
    try:
        info = dataclasses.replace(info, path=_staged_source(*source))
        with remote.workspace() as work:
            folder = work / "segments"
            for name in names:
                remote.stage_input(name, folder, storage)
            out = work / dst.rpartition("/")[2]
            _join(info, folder, [n.rpartition("/")[2] for n in names], segments, out, plan, overwrite=True)
            remote.upload(out, dst, storage, overwrite=overwrite)
    except TileprocError as exc:
        return _portable(staging.named(_renamed(exc, source), out, dst))
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
