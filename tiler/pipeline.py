"""The order of the stages, for each kind of input. The only module that knows it.

=========  ==========================  =====================  ==========================
input      read                        filter                 write
=========  ==========================  =====================  ==========================
array      copy into a slot (parent)   tiles on the workers   copy out (parent)
image      ImageSource on a worker     tiles on the workers   ImageSink on a worker, atomic
animation  ImageSource, each frame     tiles, frame by frame  ImageSink in the parent, each
           (parent)                                           frame compressed as it comes
video      ffmpeg -> slot (thread)     tiles on the workers   slot -> ffmpeg (thread), remux, atomic
folder     each file as above, several images in flight; one bad file fails alone
=========  ==========================  =====================  ==========================

Images follow the I/O contract of :mod:`tiler.io.base`: the source's ``runs``
says whether its frames are read on a worker (a still) or in the parent (an
animation), and the sink is written where it says.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tiler.engine import resolve_chain
from tiler.errors import InputError, OutputError, TileprocError
from tiler.io import images
from tiler.io.files import VIDEO_EXTENSIONS, check_input, inside, output_name, sweep_stale_temps
from tiler.scheduler import Frame, Inline, IOThread, OnPool, OnThread, Step

if TYPE_CHECKING:
    from tiler.io import video

__all__ = [
    "process_file",
    "process_folder",
    "process_video",
    "plan_folder",
    "prepare_folder",
    "filter_stream",
    "video_dtype",
    "resized_info",
    "resized_video_info",
    "FileResult",
    "Report",
    "is_video",
    "is_supported",
]


@dataclass(frozen=True)
class FileResult:
    """One input of a batch: where it went, or why it failed (a URL's places are strings)."""

    src: Path | str
    dst: Path | str | None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Report:
    """What a batch did, file by file."""

    results: list[FileResult] = field(default_factory=list)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failed


def is_supported(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in images.IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and path.suffix.lower() != ".gif"


# -- one image -------------------------------------------------------------------


def _read(src: np.ndarray, dst: np.ndarray, source: images.ImageSource) -> None:
    source.read_into(0, src)


def _write(src: np.ndarray, dst: np.ndarray, sink: images.ImageSink) -> None:
    sink.write(0, dst)
    sink.commit()


def resized_info(info: images.ImageInfo, shape: tuple[int, ...]) -> images.ImageInfo:
    """``info`` for an output of ``shape``: a resized image keeps its physical size, so its
    resolution (DPI) scales with its pixel count on each axis, and the EXIF pixel
    dimensions (PixelXDimension, PixelYDimension) say the new size."""
    if tuple(shape[:2]) == tuple(info.shape[:2]):
        return info
    dpi = info.dpi and (info.dpi[0] * shape[1] / info.shape[1], info.dpi[1] * shape[0] / info.shape[0])
    return dataclasses.replace(info, dpi=dpi or None, exif=_exif_resized(info.exif, shape[1], shape[0]))


def _exif_resized(exif: bytes | None, width: int, height: int) -> bytes | None:
    if not exif:
        return exif
    from PIL import Image

    try:
        tags = Image.Exif()
        tags.load(exif)
        sub = tags.get_ifd(0x8769)
        if 0xA002 not in sub and 0xA003 not in sub:
            return exif
        sub[0xA002], sub[0xA003] = width, height
        return tags.tobytes()
    except Exception:  # unreadable EXIF is written back as it came (the images module vetted it)
        return exif


def _image_frame(
    src: Path, dst: Path, chain: Any, *, overwrite: bool, max_pixels: int, quality: int | None, here: bool = False
) -> Frame:
    """A still image as a frame whose source and sink run on the workers (``here``: in this
    process); an animation is marked for later. The sink writes the size that ``chain``
    makes (:func:`resized_info`)."""
    source = images.ImageSource(src, max_pixels=max_pixels)
    try:
        info = source.probe()
        images.check_image_output(info, dst, overwrite=overwrite, inputs=[src])
        shape = chain.output_shape(info.shape)
        check_output_size(src, shape, max_pixels)
    except TileprocError as exc:
        return Frame(str(src), (1, 1), np.dtype(np.uint8), error=exc, meta=(src, dst))
    out = resized_info(info, shape)
    sink = images.ImageSink(dst, out, overwrite=overwrite, quality=quality)
    if source.runs == "parent":
        return Frame(str(src), info.shape, info.dtype, meta=(src, dst, source, sink))  # an animation: see below
    if here:
        load: Step = Inline(functools.partial(_read, source=source))
        store: Step = Inline(functools.partial(_write, sink=sink))
    else:
        load, store = OnPool(_read, (source,)), OnPool(_write, (sink,))
    return Frame(str(src), info.shape, info.dtype, load=load, store=store, meta=(src, dst))


def _animation(engine, source: images.ImageSource, sink: images.ImageSink, chain: Any) -> None:
    """source -> engine -> sink in the parent, frame by frame (bounded: the engine's frames in flight)."""
    info = source.probe()

    def frames() -> Iterator[np.ndarray]:
        for index in range(info.n_frames):
            frame = np.empty(info.shape, info.dtype)
            source.read_into(index, frame)
            yield frame

    try:
        for index, filtered in enumerate(engine.map_frames(frames(), chain)):
            sink.write(index, filtered)
        sink.commit()
    finally:
        sink.abort()  # after a commit there is nothing left to remove


def _run_images(
    engine,
    pairs: list[tuple[Path, Path]],
    chain: Any,
    *,
    overwrite: bool,
    max_pixels: int,
    quality: int | None,
    on_result: Callable[[FileResult], None],
    sweep: bool = True,
    here: bool = False,
) -> None:
    """Images through the engine, several in flight; animations one at a time after the stills.

    ``sweep``: afterwards, remove temporaries of writers that died meanwhile (an encode
    retried after its worker was killed) from the output folders. ``here``: decode and
    encode in this process (one image whose chain runs here: no worker to start)."""
    animations = []
    chain = resolve_chain(chain)

    def frames() -> Iterator[Frame]:
        for src, dst in pairs:
            frame = _image_frame(
                src, dst, chain, overwrite=overwrite, max_pixels=max_pixels, quality=quality, here=here
            )
            if frame.error is None and frame.load is None:
                animations.append(frame.meta)
                continue
            yield frame

    try:
        for frame in engine.run(frames(), chain):
            src, dst = frame.meta[:2]
            on_result(FileResult(src, dst if frame.error is None else None, frame.error))
    finally:
        if sweep:
            for folder in {d.parent for _, d in pairs}:
                sweep_stale_temps(folder)
    for src, dst, source, sink in animations:
        try:
            _animation(engine, source, sink, chain)
        except TileprocError as exc:
            on_result(FileResult(src, None, exc))
        else:
            on_result(FileResult(src, dst, None))


# -- video -----------------------------------------------------------------------


def process_video(
    engine,
    src,
    dst,
    chain: Any,
    *,
    overwrite: bool = False,
    codec: str | None = None,
    crf: float | None = None,
    preset: str = "medium",
    pix_fmt: str | None = None,
    max_pixels: int | None = images.DEFAULT_MAX_PIXELS,
    fps: Any = None,
    on_start: Callable[[video.VideoInfo], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    sweep: bool = True,
) -> Path:
    """Filter every frame of a video; decoding, filtering and encoding overlap.

    The output keeps every frame at its own time (a variable rate too; ``fps``
    converts to that constant rate instead), the displayed size and
    orientation and every stream the container holds; it is written under a
    temporary name and renamed when ffmpeg has succeeded. ``on_note`` gets one
    line for each thing the output cannot keep (a stream its container cannot
    hold...). See :mod:`tiler.io.video` for the format policies (odd sizes,
    10-bit, fields). ``sweep=False`` leaves the output folder's stale
    temporaries alone (on a cluster the driver sweeps, since another
    machine's process ids mean nothing here).
    """
    from tiler.io import video

    src = Path(src)
    dst = Path(dst) if dst is not None else output_name(src)
    if sweep:
        sweep_stale_temps(dst.parent)
    check_input(src)
    info, notes = video.output_timing(video.probe_video(src, max_pixels=max_pixels), dst, fps)
    if on_start is not None:
        on_start(info)
    dtype = video_dtype(info, dst)
    out = resized_video_info(info, chain)  # the writer's frame size: the chain's output
    check_output_size(src, (out.height, out.width), max_pixels)
    writer = video.VideoWriter(
        dst, out, dtype=dtype, codec=codec, crf=crf, preset=preset, pix_fmt=pix_fmt, overwrite=overwrite
    )
    if on_note is not None:
        for line in notes + writer.notes:
            on_note(line)
    filter_stream(engine, video.VideoReader(info, dtype=dtype), writer, chain)
    return dst


def check_output_size(src: Any, shape: tuple[int, ...], max_pixels: int | None) -> None:
    """Refuse, before anything is allocated, a frame the chain would make larger than ``max_pixels``."""
    height, width = shape[:2]
    if max_pixels is not None and height * width > max_pixels:
        raise OutputError(
            f"{src}: the filters make a {width}x{height} frame ({height * width:,} pixels), more than the limit "
            f"of {max_pixels:,} (--max-pixels / max_pixels=)"
        )


def resized_video_info(info: video.VideoInfo, chain: Any) -> video.VideoInfo:
    """``info`` as the writer sees it: the size the chain makes of each frame (a resize)."""

    height, width = resolve_chain(chain).output_shape(info.frame_shape)[:2]
    if (height, width) == (info.height, info.width):
        return info
    return dataclasses.replace(info, width=width, height=height)


def video_dtype(info: video.VideoInfo, dst: Path) -> np.dtype:
    """Frames at the source's depth (uint16 above 8 bits), except for GIF outputs (8-bit)."""

    if info.dtype == np.uint16 and dst.suffix.lower() == ".gif":
        return np.dtype(np.uint8)
    return info.dtype


def filter_stream(engine, reader: video.VideoReader, writer: video.VideoWriter, chain: Any, first: int = 0) -> None:
    """Decode -> filter -> encode: the reader fills frame slots on one thread, the workers
    filter, the writer drains slots in order on another. On success the writer's output is
    renamed into place; on any failure both ffmpeg processes are stopped and nothing is left.
    ``first`` numbers the frames in messages (for a stretch of a longer video)."""
    from tiler.io import video

    decode, encode = IOThread("decode"), IOThread("encode")
    source, sink = video.VideoSource(reader), video.VideoSink(writer)
    info = source.probe()

    def read(i: int) -> Callable[[np.ndarray, np.ndarray], bool]:
        return lambda slot_src, slot_dst: source.read_into(i, slot_src)

    def write(i: int) -> Callable[[np.ndarray, np.ndarray], None]:
        return lambda slot_src, slot_dst: sink.write(i, slot_dst)

    frames = (
        Frame(
            f"{info.path} frame {first + i}",
            info.frame_shape,
            reader.dtype,
            load=OnThread(decode, read(i)),
            store=OnThread(encode, write(i)),
        )
        for i in count()
    )
    ok = False
    try:
        writer.open()
        reader.open()
        for frame in engine.run(frames, chain):
            if frame.error is not None:
                raise frame.error
        ok = True
    finally:
        source.close()  # stops ffmpeg: a read blocked in the decode thread returns
        if not ok:
            sink.abort()  # likewise for a blocked write; nothing is left at dst
        decode.stop()
        encode.stop()
    sink.commit()  # waits for ffmpeg, sets frame times, adds the other streams, renames into place


# -- files and folders -----------------------------------------------------------


def process_file(
    engine,
    src,
    dst,
    chain: Any,
    *,
    overwrite: bool = False,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
    quality: int | None = None,
    sweep: bool = True,
    **video_options: Any,
) -> Path:
    """Filter one image or video file into ``dst`` (default: beside it, ``name.tileproc.ext``).

    ``sweep=False``: leave stale temporaries in the output folder alone (see :func:`process_video`).
    """
    src = Path(src)
    if is_video(src):
        return process_video(
            engine, src, dst, chain, overwrite=overwrite, max_pixels=max_pixels, sweep=sweep, **video_options
        )
    dst = Path(dst) if dst is not None else output_name(src)
    if sweep:
        sweep_stale_temps(dst.parent)
    results: list[FileResult] = []
    _run_images(
        engine,
        [(src, dst)],
        chain,
        overwrite=overwrite,
        max_pixels=max_pixels,
        quality=quality,
        on_result=results.append,
        sweep=sweep,
        here=engine.in_process(chain),  # one image: its decode and encode cannot overlap another's
    )
    (result,) = results
    if result.error is not None:
        raise result.error
    return dst


def plan_folder(
    src: Path, dst: Path | None, *, ext: str | None = None
) -> tuple[list[tuple[Path, Path]], list[FileResult]]:
    """Pair every supported file under ``src`` with its output; refuse collisions up front.

    Symbolic links to files are followed; links to folders are not (so loops
    end) and are reported, as are broken links; hidden files and folders are skipped; an output folder inside the
    input folder is never scanned; with no ``dst`` outputs go beside their
    inputs as ``name.tileproc.ext`` and existing ``*.tileproc.*`` files are not
    inputs. ``ext`` (".png") changes the outputs' format. A supported name that
    is not a regular file (a FIFO, a device) is reported, never opened. Two
    inputs with one output name are both refused before any work. Returns
    (pairs, problems).
    """
    src = Path(src)
    pairs: list[tuple[Path, Path]] = []
    problems: list[FileResult] = []
    out_root = Path(os.path.abspath(dst)) if dst is not None else None
    for root, dirs, files in os.walk(src, followlinks=False):
        rootp = Path(root)
        links = [d for d in dirs if (rootp / d).is_symlink()]  # os.walk lists links to folders as folders
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and not (out_root is not None and Path(os.path.abspath(rootp / d)) == out_root)
        )
        for name in sorted(links):
            if not name.startswith("."):
                path = rootp / name
                problems.append(
                    FileResult(path, None, InputError(f"{path}: a symbolic link to a folder; not followed"))
                )
        for name in sorted(files):
            path = rootp / name
            if name.startswith(".") or not is_supported(path):
                continue
            if dst is None and ".tileproc." in name:
                continue
            try:
                mode = os.stat(path).st_mode  # a link to a file is followed (never to a folder: no loops)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    why = "a symbolic link loop"
                else:
                    why = "a broken symbolic link" if path.is_symlink() else (exc.strerror or str(exc))
                problems.append(FileResult(path, None, InputError(f"{path}: {why}")))
                continue
            if not stat.S_ISREG(mode):
                problems.append(FileResult(path, None, InputError(f"{path}: not a regular file")))
                continue
            if out_root is not None:
                target = out_root / path.relative_to(src)
                if ext:
                    target = target.with_suffix(ext)
            else:
                target = output_name(path, ext=ext)
            pairs.append((path, target))
    by_output: dict[str, list[Path]] = {}
    for s, d in pairs:
        by_output.setdefault(os.path.normcase(os.path.abspath(d)), []).append(s)
    kept = []
    for s, d in pairs:
        clash = by_output[os.path.normcase(os.path.abspath(d))]
        if len(clash) > 1:
            other = next(c for c in clash if c != s)
            problems.append(
                FileResult(
                    s, None, OutputError(f"{s}: its output {d} would also be the output of {other}; rename one of them")
                )
            )
        else:
            kept.append((s, d))
    return kept, problems


def prepare_folder(
    src: Path,
    dst: Path | None,
    *,
    ext: str | None,
    record: Callable[[FileResult], None],
    on_plan: Callable[[int], None] | None = None,
) -> list[tuple[Path, Path]]:
    """Plan a folder job and make its output folders; returns the (input, output) pairs to run.

    Problems found up front (collisions, FIFOs, an output folder that a symbolic link leads
    out of ``dst``) are ``record``-ed as failed results; stale temporaries are swept from
    every output folder.
    """
    pairs, problems = plan_folder(src, dst, ext=ext)
    if on_plan is not None:
        on_plan(len(pairs) + len(problems))
    for problem in problems:
        record(problem)
    safe = []
    unusable: dict[Path, str] = {}
    for folder in sorted({d.parent for _, d in pairs}):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            unusable[folder] = exc.strerror or str(exc)
            continue
        sweep_stale_temps(folder)
    for s, d in pairs:
        if d.parent in unusable:
            record(
                FileResult(
                    s, None, OutputError(f"{d}: cannot create the output folder {d.parent} ({unusable[d.parent]})")
                )
            )
        elif dst is not None and not inside(d.parent, dst):
            record(
                FileResult(
                    s,
                    None,
                    OutputError(f"{d}: {d.parent} leads outside {dst} through a symbolic link; not writing there"),
                )
            )
        else:
            safe.append((s, d))
    return safe


def process_folder(
    engine,
    src,
    dst,
    chain: Any,
    *,
    overwrite: bool = False,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
    quality: int | None = None,
    on_result: Callable[[FileResult], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
    ext: str | None = None,
    **video_options: Any,
) -> Report:
    """Filter every image and video under ``src`` (recursively) into ``dst``, mirroring the tree.

    A file that fails (unreadable, corrupt, refused) is reported and the rest
    go on; the :class:`Report` lists every file's outcome.
    """
    src = Path(src)
    if not src.is_dir():
        raise InputError(f"{src}: not a folder")
    dst = Path(dst) if dst is not None else None
    report = Report()

    def record(result: FileResult) -> None:
        report.results.append(result)
        if on_result is not None:
            on_result(result)

    pairs = prepare_folder(src, dst, ext=ext, record=record, on_plan=on_plan)
    stills = [(s, d) for s, d in pairs if not is_video(s)]
    _run_images(engine, stills, chain, overwrite=overwrite, max_pixels=max_pixels, quality=quality, on_result=record)
    for s, d in pairs:
        if is_video(s):
            try:
                process_video(engine, s, d, chain, overwrite=overwrite, max_pixels=max_pixels, **video_options)
            except TileprocError as exc:
                record(FileResult(s, None, exc))
            else:
                record(FileResult(s, d, None))
    return report
