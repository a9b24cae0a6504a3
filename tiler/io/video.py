"""Video in and out: PyAV describes, the bundled ffmpeg streams the pixels.

Data flow::

    probe_video(path) ──> VideoInfo     PyAV (FFmpeg's API): streams, every packet's time, keyframes;
                                        small, frozen, picklable; no decoding beyond the first frame
    VideoReader(info):   ffmpeg -i path ... -f rawvideo pipe:1 ──readinto──> (H, W, 3) buffer
        8-bit planar YUV:  ... pipe:1 (the decoder's planes) ──readinto──> scratch ──yuv.ToRGB──> buffer
    VideoWriter(dst, info):  buffer ──write──> pipe:0 ffmpeg ... .dst.tileproc-PID-X.ext ──rename──> dst
        variable rate:   ... ffmpeg -> .nut ──PyAV: each packet gets its frame's time──> .nut
                         ──ffmpeg -c copy, with the source's other streams──> .dst.tileproc-... ──rename──> dst

Frames are RGB, (H, W, 3), ``uint8`` or ``uint16`` (rgb48, full 16-bit
scale), written by ffmpeg straight into the caller's buffer and encoded
straight from it: no copy on the Python side. The one exception is the
common case, 8-bit planar YUV read as ``uint8``: ffmpeg hands over the
decoded planes and :mod:`tiler.io.yuv` converts them into the buffer with
OpenCV, as faithfully as swscale's exact path and at a fraction of its CPU
(its module notes say how; the writer does the same the other way). Pixels
go through ffmpeg's pipes rather than PyAV's in-process decode and encode:
with swscale's exact conversion on both sides and the same x264 settings,
the two measured within about 10% of each other either way
(``benchmarks/bench_video_io.py``),
and the pipes keep the codec work in another process, which runs beside
Python's threads and where a crash or a hang cannot take the caller with it.
Nothing reads ffmpeg's log for facts: it is only quoted in error messages.

Policies (each one a promise of ``DESIGN.md``):

* **Orientation.** Frames come out as displayed: ffmpeg applies the stream's
  rotation (display matrix) while decoding; ``VideoInfo.width``/``height`` are
  the displayed size. Outputs carry no rotation: their pixels are upright.
* **Frame times.** Every frame is delivered once and written at its own time:
  a variable-rate source stays variable (gaps included), each frame at its
  source timestamp in the source's time base (Matroska stores milliseconds).
  ``VideoInfo.fps`` is the exact rate (24000/1001, never 23.98) of a
  constant-rate stream, or the average rate of a variable one.
  ``info.at_rate(fps)`` (``fps=``, ``--fps``) converts to a constant rate
  instead: each output instant shows the frame on screen then (ffmpeg's
  ``fps`` filter), frames are repeated or dropped, the duration is kept. GIF
  and AVI hold one rate: a variable source goes to them at its average rate,
  with a line saying so (:func:`output_timing`).
* **Streams.** Every stream the output container can hold is kept, each at
  its own start and length (nothing is cut to the video's length): audio
  copied when the container takes its codec (else AAC; Opus for WebM; MP3
  for AVI), subtitles copied or converted to the container's text format
  (``mov_text`` in MP4/MOV, WebVTT in WebM), attachments (Matroska; image
  attachments too, which FFmpeg presents as pictures), data
  tracks MP4/MOV can write (GoPro metadata), the timecode (a timecode track in
  MP4/MOV, a tag in Matroska), chapters and metadata.
  What cannot be kept (attachments outside Matroska, picture subtitles in
  MP4, anything in GIF, an audio start offset in AVI, which starts all
  streams together) is said in one line per stream (``VideoWriter.notes``).
* **Flags.** Language tags (video and every stream; MOV takes the
  bibliographic ISO 639-2 code: ``deu`` is written ``ger``), stream titles,
  the sample aspect ratio (also when it is tagged 1:1) and the colour tags are
  kept. GIF has square pixels and WebM stores the displayed width in whole
  pixels: a sample aspect ratio they cannot hold is said in a note.
* **Fields.** Interlaced input is never deinterlaced: each frame is filtered
  as stored, both fields woven together, and encoded as interlaced pictures
  with the source's field order (H.264: ``+ildct+ilme``, ``setfield``; in
  Matroska the order is set again by a stream copy, since ffmpeg tags its
  own interlaced encodes "coded first, displayed second"). A
  pointwise filter (``invert``, ``gamma``...) treats each field exactly as it
  would alone; a spatial filter (``blur``, ``median``...) reaches across
  lines, so it mixes the two fields, which are 1/50 or 1/60 s apart:
  deinterlace first (ffmpeg's ``bwdif``) when that matters. Codecs that
  encode progressive frames only (VP9) say so in a note.
* **Bit depth.** More than 8 bits (10-bit VP9/HEVC/H.264) reads as ``uint16``
  by default and is written back with 10 bits where the codec can
  (H.264 High 10 ``yuv420p10le``, VP9 profile 2); ``pix_fmt="yuv420p"``
  asks for 8 bits (H.264 High 10 does not play in most browsers).
* **Colour.** The YUV <-> RGB conversions use the source's matrix and range
  explicitly (untagged sources: BT.709 from 720 lines up, BT.601 below, as
  players guess), so a round trip is faithful. Full range stays full range and
  the output is tagged with the same matrix, primaries and transfer. A matrix
  that is not a plain 3x3 one of those (YCgCo, ICtCp, BT.2020 constant
  luminance, G/B/R stored as YUV) is refused. Interlaced 4:2:0 chroma is
  converted field by field.
* **Odd sizes.** Codecs that store 4:2:0 chroma in 2x2 blocks (H.264, HEVC)
  cannot hold an odd width or height: the writer pads by one column on the
  right and/or one row at the bottom, repeating the edge pixels (never
  stretching). VP9 and GIF keep odd sizes. ``VideoWriter.size`` says what is
  written.
* **Damage.** A reader that gets fewer frames than ``info.frame_count``
  (a truncated or corrupt file) raises :class:`VideoError` rather than end
  early: a stream is never silently short.

Every ffmpeg process runs in its own session (so Ctrl-C reaches tileproc,
which stops ffmpeg itself), reads file names as ``file:/absolute/path`` (a
name starting with ``-``, holding ``:`` or a newline is never an option or a
protocol; PyAV opens the same form), and is reaped on every way out: success,
error, an exception in the caller, KeyboardInterrupt, garbage collection.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import functools
import io
import math
import os
import re
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from tiler.errors import InputError, OutputError, VideoError
from tiler.io import yuv
from tiler.io.base import Sink, Source
from tiler.io.files import VIDEO_EXTENSIONS, atomic_output, output_name, temp_path_for

__all__ = [
    "VIDEO_EXTENSIONS",
    "AudioStream",
    "PacketScan",
    "StreamInfo",
    "keyframe_times",
    "output_timing",
    "probe_streams",
    "scan_packets",
    "stream_plan",
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "VideoSink",
    "VideoSource",
    "ffmpeg_exe",
    "is_video_path",
    "output_name",
    "probe_video",
    "transcode_command",
    # shared with the cluster backend, which cuts and joins segments with the same arguments
    "encoder_plan",
    "encode_args",
    "ffmpeg_path",
    "last_lines",
]

_STDERR_LINES = 5  # how many of ffmpeg's last lines an error message carries
_REAP_TIMEOUT = 3.0  # seconds between SIGTERM and SIGKILL


# ----------------------------------------------------------------------------
# names


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary tileproc drives (imageio-ffmpeg's bundled one).

    ``IMAGEIO_FFMPEG_EXE`` in the environment overrides it.

    Examples
    --------
    >>> Path(ffmpeg_exe()).name.startswith("ffmpeg")
    True
    """
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def is_video_path(path: str | os.PathLike[str]) -> bool:
    """True when ``path``'s extension is one of :data:`VIDEO_EXTENSIONS`.

    Examples
    --------
    >>> is_video_path("clip.MP4"), is_video_path("photo.jpg")
    (True, False)
    """
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def ffmpeg_path(path: str | os.PathLike[str]) -> str:
    """A file name ffmpeg reads as a plain local file, whatever its characters."""
    return "file:" + os.path.abspath(os.fspath(path))


# ----------------------------------------------------------------------------
# probing (PyAV: FFmpeg's own demuxers, no log parsing)


@dataclasses.dataclass(frozen=True)
class StreamInfo:
    """One stream of a video file besides the picture: audio, subtitles, data, attachments.

    Attributes
    ----------
    index : int
        Stream index in the file (``ffmpeg -map 0:INDEX``).
    kind : str
        ``"audio"``, ``"subtitle"``, ``"data"``, ``"attachment"`` or ``"video"``
        (a second picture stream, such as cover art).
    codec : str
        FFmpeg's codec name (``"aac"``, ``"subrip"``...).
    sample_rate : int
        Samples per second for audio (0 otherwise).
    channels : int
        Channel count for audio (0 otherwise).
    layout : str
        FFmpeg's channel layout name (``"stereo"``, ``"5.1(side)"``).
    language : str or None
        ISO 639 language tag when the file has one (never ``"und"``).
    start : Fraction
        Seconds from the start of the file to the stream's first packet.
    tag : str
        The codec tag (fourcc) as stored, ``""`` when none.
    timecode : str or None
        The start timecode of a timecode track (``"01:00:00:00"``).
    filename, mimetype : str
        An attachment's file name and media type (``""`` for other streams).
    attached_picture : bool
        An image attachment of a Matroska file, which FFmpeg presents as a
        picture: it is written back as an attachment, not as a picture stream.
    """

    index: int
    codec: str
    sample_rate: int = 0
    channels: int = 0
    layout: str = ""
    language: str | None = None
    kind: str = "audio"
    start: Fraction = Fraction(0)
    tag: str = ""
    timecode: str | None = None
    filename: str = ""
    mimetype: str = ""
    attached_picture: bool = False


AudioStream = StreamInfo  # the name earlier releases used for audio streams


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What tileproc knows about a video before decoding it (see :func:`probe_video`).

    Attributes
    ----------
    path : Path
        The file.
    container : str
        FFmpeg's demuxer name (``"mov,mp4,m4a,3gp,3g2,mj2"``, ``"matroska,webm"``).
    codec : str
        Video codec (``"h264"``, ``"vp9"``...).
    stream_index : int
        Index of the video stream read (the first that is not cover art).
    width, height : int
        Size as displayed, after rotation: the shape of every decoded frame is
        ``(height, width, 3)``.
    coded_width, coded_height : int
        Size as stored in the stream, before rotation.
    rotation : int
        Clockwise degrees (0, 90, 180, 270) the stored picture is turned to display it.
    fps : Fraction
        Exact frame rate (``Fraction(24000, 1001)``); for a variable rate, the
        average rate (frames / seconds shown).
    frame_count : int
        Number of frames the reader delivers.
    duration : Fraction
        Seconds of video: ``frame_count / fps``.
    variable_rate : bool
        The frames are unevenly spaced; ``timestamps`` says when each is shown.
    pix_fmt : str
        FFmpeg's pixel format of the stream (``"yuv420p10le"``).
    bit_depth : int
        Bits per sample of the stream: 8, 10, 12 or 16.
    full_range : bool
        Samples use the full range (0-255 for 8 bits) rather than the
        limited "TV" range (16-235).
    color_matrix, color_primaries, color_transfer : str or None
        FFmpeg's names of the colour tags (``"bt709"``), None when untagged.
    sample_aspect : Fraction
        Pixel aspect ratio of the displayed frame (1 for square pixels).
    audio : tuple of StreamInfo
        The audio streams, in file order.
    time_base : Fraction
        Seconds per tick of ``timestamps``.
    timestamps : tuple of int
        Presentation time of each frame, in ``time_base`` ticks, in order.
    end : int
        Tick at which the last frame stops being shown.
    keyframes : tuple of int
        Indices (in presentation order) of the frames a decoder can start at.
    offset : Fraction
        Seconds from the start of the file (its earliest stream) to the first frame.
    field_order : str
        ``"progressive"``, ``"tt"``, ``"bb"``, ``"tb"``, ``"bt"`` (interlaced, as
        FFmpeg names them) or ``"unknown"``.
    sample_aspect_tagged : bool
        The stream states its pixel aspect ratio (even 1:1).
    language : str or None
        Language tag of the video stream.
    streams : tuple of StreamInfo
        Every other stream (audio, subtitles, data, attachments, cover art), in file order.
    resampled : bool
        Frames are delivered at the constant rate ``fps`` (see :meth:`at_rate`), not
        at the source's own instants.
    timecode : str or None
        The start timecode (``"01:00:00:00"``) of the video or its timecode track.
    title : str or None
        The video stream's title tag (Matroska's track name), when it has one.
    alpha : bool
        The stream carries transparency (an alpha plane, or VP9's alpha in
        Matroska/WebM side data), which the RGB frames do not hold.

    Examples
    --------
    >>> info = probe_video("samples/flower.mp4")        # doctest: +SKIP
    >>> info.fps, info.frame_count, info.frame_shape     # doctest: +SKIP
    (Fraction(30000, 1001), 150, (540, 960, 3))
    """

    path: Path
    container: str
    codec: str
    stream_index: int
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int
    fps: Fraction
    frame_count: int
    duration: Fraction
    variable_rate: bool
    pix_fmt: str
    bit_depth: int
    full_range: bool
    color_matrix: str | None = None
    color_primaries: str | None = None
    color_transfer: str | None = None
    sample_aspect: Fraction = Fraction(1)
    audio: tuple[StreamInfo, ...] = ()
    time_base: Fraction = Fraction(1, 1000)
    timestamps: tuple[int, ...] = ()
    end: int = 0
    keyframes: tuple[int, ...] = ()
    offset: Fraction = Fraction(0)
    field_order: str = "unknown"
    sample_aspect_tagged: bool = False
    language: str | None = None
    streams: tuple[StreamInfo, ...] = ()
    resampled: bool = False
    timecode: str | None = None
    title: str | None = None
    alpha: bool = False

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """``(height, width, 3)``: the shape of a decoded frame."""
        return (self.height, self.width, 3)

    @property
    def dtype(self) -> np.dtype:
        """The natural frame dtype: ``uint16`` for more than 8 bits, else ``uint8``."""
        return np.dtype(np.uint16 if self.bit_depth > 8 else np.uint8)

    @property
    def pixels(self) -> int:
        """Pixels in one frame."""
        return self.width * self.height

    @property
    def interlaced(self) -> bool:
        """The stream is tagged interlaced (any field order but progressive or unknown)."""
        return self.field_order in _FIELD_ORDERS[2:]

    def at_rate(self, fps: Fraction | int | str) -> VideoInfo:
        """This video converted to the constant rate ``fps``: what the reader delivers then.

        Each output instant shows the source frame on screen at that instant
        (FFmpeg's ``fps`` filter); frames are repeated or dropped, the duration
        (from the first frame to the end of the last) is kept.

        Examples
        --------
        >>> probe_video("vfr.mp4").at_rate(25).fps          # doctest: +SKIP
        Fraction(25, 1)
        """
        rate = Fraction(fps)
        if rate <= 0:
            raise ValueError(f"{self.path}: fps must be > 0, got {fps}")
        shown = (self.end - self.timestamps[0]) * self.time_base if self.timestamps else self.duration
        n = max(1, round(shown * rate))
        tb = 1 / rate
        return dataclasses.replace(
            self,
            fps=rate,
            frame_count=n,
            duration=n / rate,
            variable_rate=False,
            time_base=tb,
            timestamps=tuple(range(n)),
            end=n,
            keyframes=(),
            resampled=True,
        )


_FIELD_ORDERS = ("unknown", "progressive", "tt", "bb", "tb", "bt")  # FFmpeg's enum AVFieldOrder, in order
# FFmpeg's names of its colour enums (av_color_*_name); PyAV gives the numbers only.
_MATRIX_NAMES = {
    0: "gbr",
    1: "bt709",
    4: "fcc",
    5: "bt470bg",
    6: "smpte170m",
    7: "smpte240m",
    8: "ycgco",
    9: "bt2020nc",
    10: "bt2020c",
    11: "smpte2085",
    12: "chroma-derived-nc",
    13: "chroma-derived-c",
    14: "ictcp",
}
_PRIMARY_NAMES = {
    1: "bt709",
    4: "bt470m",
    5: "bt470bg",
    6: "smpte170m",
    7: "smpte240m",
    8: "film",
    9: "bt2020",
    10: "smpte428",
    11: "smpte431",
    12: "smpte432",
    22: "ebu3213",
}
_TRANSFER_NAMES = {
    1: "bt709",
    4: "gamma22",
    5: "gamma28",
    6: "smpte170m",
    7: "smpte240m",
    8: "linear",
    9: "log100",
    10: "log316",
    11: "iec61966-2-4",
    12: "bt1361e",
    13: "iec61966-2-1",
    14: "bt2020-10",
    15: "bt2020-12",
    16: "smpte2084",
    17: "smpte428",
    18: "arib-std-b67",
}
_ADDRESS = re.compile(r" @ 0x[0-9a-f]+")  # "[h264 @ 0x55ef81d4f240]" -> "[h264]"


def last_lines(text: str, n: int = 1) -> str:
    """The last ``n`` non-empty lines of ffmpeg's stderr, joined by " | " (for one-line error messages)."""
    lines = [_ADDRESS.sub("", line).strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-n:])


def _av_reason(exc: BaseException) -> str:
    """FFmpeg's reason for a PyAV error, without the file name it appends."""
    return str(getattr(exc, "strerror", None) or exc).strip() or type(exc).__name__


@contextlib.contextmanager
def _open_input(path: Path) -> Iterator[Any]:
    """Open ``path`` with PyAV (as a plain local file, whatever its characters); InputError on failure."""
    import av

    try:
        container = av.open(ffmpeg_path(path), metadata_errors="replace")
    except av.FFmpegError as exc:
        raise InputError(f"{path}: not a video ({_av_reason(exc)})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        yield container
    finally:
        container.close()


def _timecode(metadata: Any) -> str | None:
    """The ``timecode`` tag of a stream or file, whatever its case (Matroska stores ``TIMECODE``)."""
    return next((v for k, v in (metadata or {}).items() if k.lower() == "timecode" and v), None)


def _language(stream: Any) -> str | None:
    lang = (stream.metadata or {}).get("language")
    return None if lang in (None, "", "und") else lang


def _title(stream: Any) -> str | None:
    """A stream's title: Matroska's track name, or the ``name`` of an MP4/MOV track's user data."""
    metadata = stream.metadata or {}
    return metadata.get("title") or metadata.get("name") or None


def _seconds(ticks: int | None, time_base: Any) -> Fraction:
    if ticks is None or time_base is None:
        return Fraction(0)
    return ticks * Fraction(time_base)


def _streams(container: Any, skip: int | None = None) -> tuple[StreamInfo, ...]:
    """Every stream but ``skip``, described from FFmpeg's codec parameters."""
    import av

    out = []
    start = _seconds(container.start_time, Fraction(1, 1_000_000)) if container.start_time is not None else 0
    for s in container.streams:
        if s.index == skip:
            continue
        cc = s.codec_context
        name = getattr(cc, "name", None) or "none"
        audio = s.type == "audio"
        tags = {k.lower(): v for k, v in (s.metadata or {}).items()}
        # Matroska's image attachments come as pictures marked attached_pic, with the attachment's tags
        picture = s.type == "video" and bool(s.disposition & av.stream.Disposition.attached_pic) and "mimetype" in tags
        tag = ""
        with contextlib.suppress(Exception):
            tag = str(cc.codec_tag or "").strip("\x00 ")
        out.append(
            StreamInfo(
                index=s.index,
                codec=name,
                sample_rate=int(cc.sample_rate or 0) if audio else 0,
                channels=int(cc.channels or 0) if audio else 0,
                layout=(cc.layout.name if audio and cc.layout is not None else ""),
                language=_language(s),
                kind="attachment" if picture else s.type,
                start=max(Fraction(0), _seconds(s.start_time, s.time_base) - start)
                if s.start_time is not None
                else Fraction(0),
                tag=tag,
                timecode=_timecode(s.metadata),
                filename=tags.get("filename", ""),
                mimetype=tags.get("mimetype", ""),
                attached_picture=picture,
            )
        )
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class PacketScan:
    """The packets of one video stream, demuxed without decoding (see :func:`scan_packets`).

    Attributes
    ----------
    time_base : Fraction
        Seconds per tick.
    timestamps : tuple of int
        Presentation time of each frame, sorted.
    durations : tuple of int
        Ticks each frame is shown, as stored (0 when unknown), in the same order.
    keyframes : tuple of int
        Indices (into ``timestamps``) of the keyframes.
    """

    time_base: Fraction
    timestamps: tuple[int, ...]
    durations: tuple[int, ...]
    keyframes: tuple[int, ...]


def _scan(path: Path, container: Any, stream: Any, first: list[Any] | None = None) -> PacketScan:
    """Demux ``stream``; with ``first`` (a list), also decode packets until one frame comes out into it."""
    import av

    tb = Fraction(stream.time_base)
    bsf = None
    if stream.codec_context.name == "vp9":  # hidden (alt-ref) frames travel inside superframes, as decoders count
        with contextlib.suppress(Exception):
            bsf = av.BitStreamFilterContext("vp9_superframe", stream)
    packets: list[tuple[int, int, bool]] = []

    def take(packet: Any) -> None:
        if packet.size == 0 or packet.is_discard:  # a discarded packet: before an edit list's start (MP4, MOV)
            return
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is None:
            raise InputError(f"{path}: a video packet has no timestamp")
        packets.append((pts, packet.duration or 0, bool(packet.is_keyframe)))

    try:
        for packet in container.demux(stream):
            if first is not None and not first and packet.size:
                with contextlib.suppress(av.FFmpegError):
                    first.extend(stream.codec_context.decode(packet)[:1])
            for p in bsf.filter(packet) if bsf is not None else (packet,):
                take(p)
        if bsf is not None:
            for p in bsf.filter(None):
                take(p)
    except av.FFmpegError as exc:
        if not packets:
            raise InputError(f"{path}: cannot read the video stream ({_av_reason(exc)})") from None
        # a damaged tail: the reader then finds fewer frames than counted and says so
    packets.sort()
    return PacketScan(
        tb,
        tuple(p[0] for p in packets),
        tuple(p[1] for p in packets),
        tuple(i for i, p in enumerate(packets) if p[2]),
    )


def scan_packets(path: str | os.PathLike[str], stream_index: int) -> PacketScan:
    """Timestamps and keyframes of every packet of one video stream, in presentation order.

    One demux pass through FFmpeg's API (PyAV), no decoding.

    Examples
    --------
    >>> scan = scan_packets("clip.mp4", 0)                 # doctest: +SKIP
    >>> scan.keyframes[:3], scan.time_base                 # doctest: +SKIP
    ((0, 250, 500), Fraction(1, 15360))
    """
    path = Path(path)
    with _open_input(path) as container:
        return _scan(path, container, container.streams[stream_index])


def keyframe_times(info: VideoInfo) -> list[tuple[int, Fraction]]:
    """(frame index, seconds on the file's clock) of each keyframe, in presentation order."""
    return [(i, info.timestamps[i] * info.time_base) for i in info.keyframes if i < len(info.timestamps)]


def _simplest_between(lo: Fraction, hi: Fraction) -> Fraction:
    """The fraction with the smallest denominator in ``[lo, hi]`` (0 < lo <= hi)."""
    c = math.ceil(lo)
    if c <= hi:
        return Fraction(c)
    f = math.floor(lo)
    return f + 1 / _simplest_between(1 / (hi - f), 1 / (lo - f))


def _pick_rate(measured: Fraction, lo: Fraction, hi: Fraction) -> Fraction:
    """A standard rate (integer or NTSC k*1000/1001) in ``[lo, hi]``, closest to
    ``measured``; else the simplest fraction in ``[lo, hi]``."""
    candidates = set()
    for k in {math.floor(measured), math.ceil(measured)}:
        if k > 0:
            candidates.add(Fraction(k))
    for k in {math.floor(measured * Fraction(1001, 1000)), math.ceil(measured * Fraction(1001, 1000))}:
        if k > 0:
            candidates.add(Fraction(k * 1000, 1001))
    inside = [c for c in candidates if lo <= c <= hi]
    if inside:
        return min(inside, key=lambda c: (abs(c - measured), c.denominator))
    return _simplest_between(lo, hi)


def _int_or(value: Any, default: int) -> int:
    return default if value is None else int(value)


def _check_whole(path: Path, stream: Any, held: Fraction, fps: Fraction) -> None:
    """Refuse a Matroska/WebM file whose video stops before the length it states for it.

    Its muxers write each track's length as a ``DURATION`` tag when they
    finish. A copy cut short, or damaged so that the demuxer loses its place,
    keeps the tag but ends early without an error: its packets alone would
    make a shorter video, silently. ``held`` is when the last frame read ends;
    two frames (or a quarter second) of slack allow for muxers' rounding.
    """
    tag = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", str(stream.metadata.get("DURATION", "")))
    if tag is None:
        return
    stated = int(tag[1]) * 3600 + int(tag[2]) * 60 + Fraction(tag[3])
    if stated - held > max(Fraction(1, 4), 2 / fps):
        raise InputError(
            f"{path}: it states {float(stated):.2f} s of video but holds {float(held):.2f} s (truncated or damaged?)"
        )


def _timing(path: Path, scan: PacketScan, nominal: Fraction | None) -> tuple[Fraction, bool, int]:
    """Exact rate, variability and end tick from the packet timestamps."""
    pts, tb, n = scan.timestamps, scan.time_base, len(scan.timestamps)
    if n == 0:
        raise InputError(f"{path}: the video stream has no frames")
    if n == 1:
        dur = scan.durations[0]
        measured = 1 / (dur * tb) if dur > 0 else (nominal or Fraction(25))
        rate = _pick_rate(measured, measured * Fraction(999, 1000), measured * Fraction(1001, 1000))
        return rate, False, pts[0] + (dur if dur > 0 else max(1, round(1 / (rate * tb))))
    span = pts[-1] - pts[0]
    if span <= 0 or len(set(pts)) != n:
        raise InputError(f"{path}: the video stream's timestamps do not advance")
    deltas = [b - a for a, b in zip(pts, pts[1:])]
    mean = Fraction(span, n - 1)
    variable = any(abs(d - mean) > max(Fraction(1), mean / 500) for d in deltas)
    if not variable and len(set(deltas)) == 1:
        # Every frame the same number of ticks: the rate is exact, whatever the time base
        # (AVI's is the frame duration itself, where one tick of doubt would be a whole frame).
        rate = 1 / (deltas[0] * tb)
        return rate, False, pts[0] + n * deltas[0]
    if not variable:
        # Timestamps are rounded to the time base: the span is exact to one tick.
        measured = (n - 1) / (span * tb)
        lo, hi = (n - 1) / ((span + 1) * tb), (n - 1) / (max(Fraction(span - 1), Fraction(1, 2)) * tb)
        rate = _pick_rate(measured, lo, hi)
        return rate, False, pts[0] + round(n / (rate * tb))
    last = scan.durations[-1] if scan.durations[-1] > 0 else round(mean)
    total = (span + last) * tb  # seconds the source shows its frames
    measured = n / total
    half = total / (2 * n)  # the average rate keeps the duration within half a frame
    return _pick_rate(measured, n / (total + half), n / (total - half)), True, pts[-1] + last


def probe_video(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> VideoInfo:
    """Describe a video: streams, exact timing, colour, rotation, fields, languages.

    PyAV (FFmpeg's own demuxers and decoders) reads the header, decodes the
    first frame (for its pixel format and rotation) and demuxes every packet
    of the video stream without decoding it, for their exact timestamps and
    keyframes. The cost is one read of the file's bytes: milliseconds for a
    clip, seconds for a feature film.

    Parameters
    ----------
    path : path-like
        The video file.
    max_pixels : int, optional
        Refuse frames with more pixels than this (before anything is allocated).

    Returns
    -------
    VideoInfo

    Raises
    ------
    InputError
        The file is missing, empty, not a video, has no video stream or no
        frames, or its frames exceed ``max_pixels``. One line naming the file.

    Examples
    --------
    >>> info = probe_video("samples/flower.mp4")          # doctest: +SKIP
    >>> info.fps, info.frame_count, (info.width, info.height)   # doctest: +SKIP
    (Fraction(30000, 1001), 150, (960, 540))
    """
    import av

    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a video")
    if st.st_size == 0:
        raise InputError(f"{path}: empty file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    with _open_input(path) as container:
        pictures = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not pictures:
            if not container.streams:
                raise InputError(f"{path}: no streams found (truncated, or not a video?)")
            raise InputError(f"{path}: no video stream (container {container.format.name})")
        stream = pictures[0]
        cc = stream.codec_context
        coded_w, coded_h = int(cc.width or 0), int(cc.height or 0)
        if not coded_w or not coded_h:
            raise InputError(f"{path}: video stream has no size")
        pixels = coded_w * coded_h
        if max_pixels is not None and pixels > max_pixels:
            raise InputError(
                f"{path}: frames of {coded_w}x{coded_h} = {pixels} pixels exceed the limit of {max_pixels}"
            )
        decoded: list[Any] = []
        scan = _scan(path, container, stream, decoded)
        if not decoded:  # a decoder that holds frames back: flush it
            with contextlib.suppress(av.FFmpegError):
                decoded.extend(stream.codec_context.decode(None)[:1])
        first = decoded[0] if decoded else None
        pix_fmt = first.format.name if first is not None else (cc.pix_fmt or "unknown")
        try:
            bit_depth = max(c.bits for c in av.VideoFormat(pix_fmt).components)
        except (ValueError, TypeError):
            bit_depth = 8
        angle = float(getattr(first, "rotation", 0) or 0)  # counter-clockwise, from the display matrix
        rotation = int(-90 * round(angle / 90)) % 360 if abs(angle - 90 * round(angle / 90)) < 1 else 0
        src = first if first is not None else cc
        range_ = int(getattr(src, "color_range", 0) or cc.color_range or 0)
        sar_raw = stream.sample_aspect_ratio or cc.sample_aspect_ratio
        sar = Fraction(sar_raw) if sar_raw else Fraction(1)
        width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
        if rotation in (90, 270):
            sar = 1 / sar
        nominal = Fraction(stream.average_rate) if stream.average_rate else None
        fps, variable, end = _timing(path, scan, nominal)
        last = scan.timestamps[-1] + scan.durations[-1]  # a long last frame: as long as its packet says
        _check_whole(path, stream, max(end, last) * scan.time_base, fps)
        start = Fraction(container.start_time, 1_000_000) if container.start_time is not None else Fraction(0)
        others = _streams(container, skip=stream.index)
        info = VideoInfo(
            path=path,
            container=container.format.name,
            codec=cc.name,
            stream_index=stream.index,
            width=width,
            height=height,
            coded_width=coded_w,
            coded_height=coded_h,
            rotation=rotation,
            fps=fps,
            frame_count=len(scan.timestamps),
            duration=len(scan.timestamps) / fps,
            variable_rate=variable,
            pix_fmt=pix_fmt,
            bit_depth=bit_depth,
            full_range=pix_fmt.startswith("yuvj") or range_ == 2,
            color_matrix=_MATRIX_NAMES.get(_int_or(getattr(src, "colorspace", None), 2)),  # 0 is gbr, not unset
            color_primaries=_PRIMARY_NAMES.get(int(getattr(src, "color_primaries", 2) or 2)),
            color_transfer=_TRANSFER_NAMES.get(int(getattr(src, "color_trc", 2) or 2)),
            sample_aspect=sar,
            audio=tuple(s for s in others if s.kind == "audio"),
            time_base=scan.time_base,
            timestamps=scan.timestamps,
            end=end,
            keyframes=scan.keyframes,
            offset=max(Fraction(0), scan.timestamps[0] * scan.time_base - start),
            field_order=_FIELD_ORDERS[cc.field_order] if 0 <= int(cc.field_order or 0) < 6 else "unknown",
            sample_aspect_tagged=bool(sar_raw),
            language=_language(stream),
            streams=others,
            timecode=_timecode(stream.metadata)
            or next((s.timecode for s in others if s.timecode), None)
            or _timecode(container.metadata),
            title=_title(stream),
            alpha=_ALPHA.match(pix_fmt) is not None or stream.metadata.get("alpha_mode") == "1",
        )
    return info


def output_timing(info: VideoInfo, dst: str | os.PathLike[str], fps: Any = None) -> tuple[VideoInfo, list[str]]:
    """The frames to deliver for ``dst``: the source's own (every frame at its time), or ``fps`` constant.

    GIF and AVI hold one frame rate: a variable-rate source goes to them at
    its average rate, and the returned line says so. Returns ``(info, notes)``.

    Examples
    --------
    >>> output_timing(probe_video("vfr.mp4"), "out.mp4", "24000/1001")[0].fps   # doctest: +SKIP
    Fraction(24000, 1001)
    """
    if fps is not None:
        try:
            rate = Fraction(str(fps))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"fps must be a positive number or fraction such as 24000/1001, got {fps!r}") from None
        return info.at_rate(rate), []
    ext = Path(dst).suffix.lower()
    if info.variable_rate and ext in _ONE_RATE:
        note = f"{dst}: {ext[1:].upper()} holds one frame rate: the variable rate is written at its average {info.fps}"
        return info.at_rate(info.fps), [note]
    return info, []


_ONE_RATE = {".gif", ".avi"}  # containers whose frames sit on one fixed rate


def probe_streams(path: str | os.PathLike[str]) -> tuple[StreamInfo, ...]:
    """Every stream of a file (audio, subtitles, data...), for keeping them in another video's output."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with _open_input(path) as container:
        return _streams(container)


# ----------------------------------------------------------------------------
# shared process plumbing

_ALPHA = re.compile(r"^(yuva|rgba|bgra|argb|abgr|ya\d|gbrap|rgba64|bgra64)")  # pixel formats with an alpha plane

# ffmpeg's colour matrix names -> the scale filter's names
_SCALE_MATRIX = {
    "bt709": "bt709",
    "bt470bg": "bt470",
    "smpte170m": "smpte170m",
    "bt601": "bt601",
    "smpte240m": "smpte240m",
    "fcc": "fcc",
    "bt2020nc": "bt2020",
    "bt2020": "bt2020",
}


def _matrix(info: VideoInfo) -> tuple[str, str]:
    """(scale filter matrix, ffmpeg colorspace tag) used both ways for ``info``."""
    if info.color_matrix in _SCALE_MATRIX:
        return _SCALE_MATRIX[info.color_matrix], info.color_matrix
    if max(info.coded_height, info.coded_width) >= 1280 or min(info.coded_height, info.coded_width) >= 720:
        return "bt709", "bt709"
    return "smpte170m", "smpte170m"


def _is_yuv(pix_fmt: str) -> bool:
    return bool(re.match(r"^(yuv|yuvj|yuva|nv|p0|p2|p4|y2|uyv|yuyv|yvyu|xv|vuy|ayuv)", pix_fmt))


_SWS_FLAGS = "accurate_rnd+full_chroma_int+full_chroma_inp"


def _rgb_pix_fmt(dtype: np.dtype) -> str:
    if dtype == np.uint8:
        return "rgb24"
    return "rgb48le" if sys.byteorder == "little" else "rgb48be"


def _check_dtype(dtype: Any, info: VideoInfo) -> np.dtype:
    dtype = info.dtype if dtype is None else np.dtype(dtype)
    if dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise ValueError(f"{info.path}: video frames are uint8 or uint16, got {dtype}")
    return dtype


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    """Run ffmpeg to completion in its own session (killed on any exception)."""
    return subprocess.run(
        list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


class _StderrTail:
    """Drain a pipe in a thread, keeping its last lines (so ffmpeg never blocks on it)."""

    def __init__(self, pipe: Any) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._thread = threading.Thread(target=self._drain, args=(pipe,), name="ffmpeg-stderr", daemon=True)
        self._thread.start()

    def _drain(self, pipe: Any) -> None:
        with contextlib.suppress(Exception):
            for raw in iter(pipe.readline, b""):
                line = _ADDRESS.sub("", raw.decode("utf-8", "replace")).strip()
                if line:
                    self.lines.append(line)
        with contextlib.suppress(Exception):
            pipe.close()

    def text(self, timeout: float = 5.0) -> str:
        self._thread.join(timeout)
        return " | ".join(self.lines)


def _reap(proc: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    """Stop ``proc`` (SIGTERM, then SIGKILL after a timeout) and wait for it."""
    try:
        if proc.poll() is None:
            if kill:
                proc.kill()
            else:
                proc.terminate()
                try:
                    proc.wait(_REAP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:  # interrupted while waiting
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()


def _spawn(cmd: list[str], *, stdin: int, stdout: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        cmd,
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        bufsize=0,
        start_new_session=True,
        close_fds=True,
    )
    for pipe in (proc.stdout, proc.stdin):
        if pipe is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
            with contextlib.suppress(OSError):  # bigger pipe, fewer context switches per frame
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    return proc


def _exit_reason(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"ffmpeg was killed by {signal.Signals(-rc).name}"
        return f"ffmpeg was killed by signal {-rc}"
    return f"ffmpeg exited with status {rc}"


def _said(tail: str) -> str:
    return f": {tail}" if tail else ""


# ----------------------------------------------------------------------------
# reading


def _check_matrix(info: VideoInfo) -> None:
    """Refuse YUV whose colour matrix neither ffmpeg's scale filter nor :mod:`tiler.io.yuv` converts (YCgCo...)."""
    if info.color_matrix is not None and info.color_matrix not in _SCALE_MATRIX and _is_yuv(info.pix_fmt):
        known = ", ".join(sorted(set(_SCALE_MATRIX) - {"bt2020"}))
        raise InputError(
            f"{info.path}: its colour matrix {info.color_matrix} is not supported (tileproc converts {known})"
        )


def _own_planes(info: VideoInfo, pix_fmt: str, width: int, height: int) -> yuv.Planes | None:
    """The 8-bit ``pix_fmt`` planes tileproc converts itself in ``info``'s colours (see :mod:`tiler.io.yuv`),
    or None where ffmpeg's scale filter converts: other formats, and interlaced 4:2:0, whose chroma lines
    each belong to one field (scale's ``interl=1`` keeps them apart)."""
    planes = yuv.planes_for(pix_fmt, width, height, _matrix(info)[0], info.full_range)
    if planes is not None and info.interlaced and planes.sub_y > 1:
        return None
    return planes


def _planes(info: VideoInfo, dtype: np.dtype) -> yuv.Planes | None:
    """The 8-bit planes the reader converts to RGB itself, or None."""
    if dtype != np.uint8:
        return None
    planes = _own_planes(info, info.pix_fmt, info.width, info.height)
    if planes is not None and info.rotation in (90, 270) and planes.sub_x != planes.sub_y:
        return None  # 4:2:2 turned sideways is no planar format: ffmpeg converts it, once
    return planes


def _decode_filters(info: VideoInfo, dtype: np.dtype, planes: yuv.Planes | None = None) -> str:
    """The filter chain from the decoded (already rotated) stream to the frames read: RGB, or ``planes``."""
    vf = []
    if info.resampled:
        vf.append(f"fps=fps={info.fps}")
    if planes is not None:
        vf.append(f"format={planes.pix_fmt}")  # the decoder's own format: nothing converts
        return ",".join(vf)
    scale = [f"flags={_SWS_FLAGS}"]
    if _is_yuv(info.pix_fmt) or info.pix_fmt.startswith("gray"):
        scale.append(f"in_range={'pc' if info.full_range else 'tv'}")
    if _is_yuv(info.pix_fmt):
        scale.append(f"in_color_matrix={_matrix(info)[0]}")
    if info.interlaced:
        scale.append("interl=1")  # each field's chroma from its own lines
    vf.append("scale=" + ":".join(scale))
    vf.append(f"format={_rgb_pix_fmt(dtype)}")
    return ",".join(vf)


class VideoReader:
    """Stream a video's frames, decoded by ffmpeg straight into caller buffers.

    Frames are RGB ``(info.height, info.width, 3)`` as displayed (rotation
    applied), exactly ``info.frame_count`` of them at ``info.fps``; a variable
    frame rate is delivered at its constant average rate (see the module notes).

    Parameters
    ----------
    info : VideoInfo
        From :func:`probe_video`.
    dtype : numpy dtype, optional
        ``uint8`` (rgb24) or ``uint16`` (rgb48, 0-65535, for more than 8 bits).
        Default: ``info.dtype``, the source's depth.

    Notes
    -----
    Use from one thread. :meth:`close` may be called from any thread: it
    stops ffmpeg, and a :meth:`readinto` blocked in another thread then raises
    :class:`VideoError`. Leaving the ``with`` block early (before the end of
    the stream) is the way to stop reading; it never leaves a process behind.

    Examples
    --------
    >>> info = probe_video("clip.mp4")                     # doctest: +SKIP
    >>> buf = np.empty(info.frame_shape, info.dtype)       # doctest: +SKIP
    >>> with VideoReader(info) as reader:                  # doctest: +SKIP
    ...     while reader.readinto(buf):
    ...         use(buf)
    """

    def __init__(self, info: VideoInfo, *, dtype: Any = None) -> None:
        self.info = info
        self.dtype = _check_dtype(dtype, info)
        self.shape = info.frame_shape
        self.frames_read = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: _StderrTail | None = None
        self._io_lock = threading.Lock()
        self._closed = False
        self._eof = False
        _check_matrix(info)
        self.planes = _planes(info, self.dtype)
        self._to_rgb: yuv.ToRGB | None = None

    def command(self) -> list[str]:
        """The ffmpeg command line this reader runs."""
        info = self.info
        out_fmt = self.planes.pix_fmt if self.planes else _rgb_pix_fmt(self.dtype)
        return [
            ffmpeg_exe(),
            "-hide_banner",
            "-nostdin",
            "-nostats",
            "-loglevel",
            "error",
            "-i",
            ffmpeg_path(info.path),
            "-map",
            f"0:{info.stream_index}",
            "-an",
            "-sn",
            "-dn",
            "-sws_flags",  # for the conversions ffmpeg inserts itself (a rotated 4:2:2 stream, a format change)
            f"bicubic+{_SWS_FLAGS}",
            "-vf",
            _decode_filters(info, self.dtype, self.planes),
            "-fps_mode",
            "passthrough",
            "-frames:v",
            str(info.frame_count),
            "-f",
            "rawvideo",
            "-pix_fmt",
            out_fmt,
            "pipe:1",
        ]

    def open(self) -> VideoReader:
        """Start ffmpeg (done by ``with``)."""
        if self._closed:
            raise VideoError(f"{self.info.path}: the reader is closed")
        if self._proc is None:
            try:
                self._proc = _spawn(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            except OSError as exc:
                raise VideoError(f"{self.info.path}: cannot start ffmpeg ({exc})") from None
            self._stderr = _StderrTail(self._proc.stderr)
            self._finalizer = weakref.finalize(self, _reap, self._proc, kill=True)
        return self

    def __enter__(self) -> VideoReader:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, message: str) -> VideoError:
        tail = self._stderr.text() if self._stderr else ""
        tail = tail.replace(ffmpeg_path(self.info.path), str(self.info.path))
        return VideoError(f"{self.info.path}: {message}{_said(tail)}")

    def readinto(self, buf: np.ndarray) -> bool:
        """Fill ``buf`` with the next frame; False at the clean end of the stream.

        Parameters
        ----------
        buf : numpy.ndarray
            C-contiguous, writable, shape ``reader.shape``, dtype ``reader.dtype``
            (a view of shared memory is fine: ffmpeg's bytes, or the conversion
            of its 8-bit YUV planes, land in it directly).

        Returns
        -------
        bool
            True when a frame was read, False after the last one.

        Raises
        ------
        VideoError
            ffmpeg failed or was stopped, the stream ended inside a frame, or
            it ended before ``info.frame_count`` frames; the message names the
            file and ends with ffmpeg's last lines.
        """
        if buf.shape != self.shape or buf.dtype != self.dtype:
            raise ValueError(
                f"{self.info.path}: frame buffer must be {self.shape} {self.dtype}, got {buf.shape} {buf.dtype}"
            )
        if not buf.flags.c_contiguous or not buf.flags.writeable:
            raise ValueError(f"{self.info.path}: frame buffer must be C-contiguous and writable")
        with self._io_lock:
            if self._closed:
                raise VideoError(f"{self.info.path}: the reader is closed")
            if self._eof:
                return False
            self.open()
            assert self._proc is not None and isinstance(self._proc.stdout, io.RawIOBase)  # bufsize=0: a FileIO
            if self.planes is not None and self._to_rgb is None:
                self._to_rgb = yuv.ToRGB(self.planes)
            view = (buf if self._to_rgb is None else self._to_rgb.raw).data.cast("B")
            total, got = view.nbytes, 0
            while got < total:
                try:
                    n = self._proc.stdout.readinto(view[got:])
                except InterruptedError:  # pragma: no cover - PEP 475 retries
                    continue
                if not n:
                    break
                got += n
            if got == total:
                if self._to_rgb is not None:
                    self._to_rgb(buf)
                self.frames_read += 1
                return True
            self._eof = True
            rc = self._proc.wait()
            if self._closed:
                raise VideoError(f"{self.info.path}: reading was stopped after {self.frames_read} frames")
            if rc != 0:
                raise self._fail(f"{_exit_reason(rc)} after {self.frames_read} frames")
            if got:
                raise self._fail(f"the stream ended inside frame {self.frames_read + 1} ({got} of {total} bytes)")
            if self.frames_read < self.info.frame_count:
                raise self._fail(
                    f"ffmpeg decoded {self.frames_read} of {self.info.frame_count} frames (truncated or corrupt?)"
                )
            return False

    def read(self) -> np.ndarray | None:
        """The next frame in a new array, or None at the end (allocates; prefer :meth:`readinto`)."""
        buf = np.empty(self.shape, self.dtype)
        return buf if self.readinto(buf) else None

    def __iter__(self) -> Iterator[np.ndarray]:
        """Each frame in a new array (allocates; prefer :meth:`readinto`)."""
        while (frame := self.read()) is not None:
            yield frame

    def close(self) -> None:
        """Stop ffmpeg if still running, reap it, release the pipes. Idempotent, any thread."""
        self._closed = True
        proc = self._proc
        if proc is None:
            return
        _reap(proc, kill=True)  # its output is a pipe: nothing to finish
        with self._io_lock:
            for pipe in (proc.stdout,):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        if self._stderr is not None:
            self._stderr.text(timeout=_REAP_TIMEOUT)
        self._finalizer.detach()


# ----------------------------------------------------------------------------
# writing

_MUXERS = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
    ".gif": "gif",
}
_DEFAULT_CODEC = {
    ".mp4": "libx264",
    ".m4v": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".avi": "libx264",
    ".webm": "libvpx-vp9",
    ".gif": "gif",
}
_DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libvpx-vp9": 28, "libaom-av1": 30, "libsvtav1": 30}
_TEN_BIT = {"libx264", "libx265", "libvpx-vp9", "libaom-av1", "libsvtav1"}
_ODD_OK = {"libvpx-vp9", "libvpx", "libaom-av1", "gif", "png", "apng", "ffv1", "rawvideo", "utvideo", "qtrle"}
# audio codecs each container takes as they are
_AUDIO_COPY = {
    "mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"},
    "mov": {"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s24le", "pcm_s16be", "pcm_s24be"},
    "matroska": {
        "aac",
        "mp3",
        "ac3",
        "eac3",
        "dts",
        "truehd",
        "opus",
        "vorbis",
        "flac",
        "alac",
        "pcm_s16le",
        "pcm_s24le",
        "pcm_s32le",
        "pcm_f32le",
        "mp2",
    },
    "webm": {"opus", "vorbis"},
    "avi": {"mp3", "ac3", "mp2", "pcm_s16le", "pcm_u8"},
}
_AUDIO_ENCODER = {"mp4": "aac", "mov": "aac", "matroska": "aac", "webm": "libopus", "avi": "libmp3lame"}
_VP9_SPEED = {
    "ultrafast": 8,
    "superfast": 7,
    "veryfast": 6,
    "faster": 5,
    "fast": 4,
    "medium": 3,
    "slow": 2,
    "slower": 1,
    "veryslow": 0,
    "placebo": 0,
}
_PRESETS = tuple(_VP9_SPEED)
_FROM_INFO = object()
# colour tags ffmpeg's setparams filter and encoders take by name
_MATRICES = {"bt709", "fcc", "bt470bg", "smpte170m", "smpte240m", "ycgco", "bt2020nc", "bt2020c"}
_PRIMARIES = {
    "bt709",
    "bt470m",
    "bt470bg",
    "smpte170m",
    "smpte240m",
    "film",
    "bt2020",
    "smpte428",
    "smpte431",
    "smpte432",
    "jedec-p22",
    "ebu3213",
}
_TRANSFERS = {
    "bt709",
    "gamma22",
    "gamma28",
    "smpte170m",
    "smpte240m",
    "linear",
    "log100",
    "log316",
    "iec61966-2-4",
    "bt1361e",
    "iec61966-2-1",
    "bt2020-10",
    "bt2020-12",
    "smpte2084",
    "smpte428",
    "arib-std-b67",
}


@dataclasses.dataclass(frozen=True)
class _Plan:
    muxer: str
    codec: str
    filters: str
    out_size: tuple[int, int]  # (width, height) written
    video_args: list[str]
    pix_fmt: str | None
    video_tags: tuple[str, ...] = ()  # stream tags of the video kept by a copy too (language)
    notes: tuple[str, ...] = ()  # what of the video's own properties cannot be kept
    planes: yuv.Planes | None = None  # the writer sends these planes (converted here) instead of RGB ...
    planes_filters: str = ""  # ... through these filters: ``filters`` without the RGB -> YUV conversion


def encoder_plan(
    dst: Path, info: VideoInfo, dtype: np.dtype, codec: str | None, crf: float | None, preset: str, pix_fmt: str | None
) -> _Plan:
    """Codec, size, pixel format and arguments for writing ``dst``; refuses bad options before ffmpeg runs."""
    ext = dst.suffix.lower()
    if ext not in _MUXERS:
        raise OutputError(f"{dst}: unknown video container '{dst.suffix}' (use one of {', '.join(sorted(_MUXERS))})")
    muxer = _MUXERS[ext]
    codec = codec or _DEFAULT_CODEC[ext]
    if preset not in _PRESETS:
        raise ValueError(f"{dst}: preset must be one of {', '.join(_PRESETS)}, got {preset!r}")
    deep = info.bit_depth > 8 and dtype == np.uint16 and codec in _TEN_BIT
    if pix_fmt is None and codec not in _TEN_BIT and codec != "gif":
        pass  # an encoder tileproc does not know: ffmpeg picks its pixel format
    elif pix_fmt is None and codec != "gif":
        pix_fmt = "yuv420p10le" if deep else "yuv420p"
    w, h = info.width, info.height
    pw, ph = w, h
    if codec not in _ODD_OK and pix_fmt is not None and re.search(r"420|422|411|nv1|nv2|p0", pix_fmt):
        pw = w + (w % 2)
        if "422" not in pix_fmt and "nv16" not in pix_fmt:
            ph = h + (h % 2)
    vf = []
    if (pw, ph) != (w, h):
        vf.append(f"pad={pw}:{ph}:0:0,fillborders=right={pw - w}:bottom={ph - h}:mode=smear")
    args: list[str] = []
    if codec == "gif":
        if crf is not None:
            raise ValueError(f"{dst}: crf does not apply to GIF")
        # One palette per frame: streams in bounded memory (a global palette would hold
        # every frame until the end); ordered dithering flickers less from frame to frame.
        vf.append("split[a][b];[a]palettegen=stats_mode=single[p];[b][p]paletteuse=new=1:dither=bayer")
        args += ["-c:v", "gif", "-loop", "0"]
        square = () if info.sample_aspect == 1 else (f"{_sar_text(info)}: GIF has square pixels (written unstretched)",)
        return _Plan(muxer, codec, ",".join(vf), (pw, ph), args, None, notes=square)
    notes: list[str] = []
    if info.interlaced:
        # Frames are filtered woven (both fields together) and encoded as interlaced
        # pictures with the source's field order where the codec can (see the module notes).
        if codec == "libx264":
            vf.append("setfield=" + ("tff" if info.field_order in ("tt", "tb") else "bff"))
            args += ["-flags", "+ildct+ilme", "-field_order", info.field_order]
        else:
            notes.append(f"interlacing ({info.field_order}): {codec} encodes progressive frames")
    yuv_out = pix_fmt is not None and _is_yuv(pix_fmt)
    range_tag = "pc" if info.full_range else "tv"
    scale_matrix, matrix_tag = _matrix(info)
    planes = None
    if yuv_out and pix_fmt is not None and not pix_fmt.startswith("yuvj") and dtype == np.uint8:
        planes = _own_planes(info, pix_fmt, w, h)
        planes = planes if planes is not None and planes.whole_chroma and (pw, ph) == (w, h) else None
    rgb_in = len(vf)  # where the RGB -> YUV conversion goes
    if yuv_out:
        interl = ":interl=1" if info.interlaced else ""
        vf.append(f"scale=out_color_matrix={scale_matrix}:out_range={range_tag}:flags={_SWS_FLAGS}{interl}")
    if pix_fmt is not None:
        vf.append(f"format={pix_fmt}")
    args += ["-c:v", codec]
    if crf is None:
        crf = _DEFAULT_CRF.get(codec)
    if crf is not None:
        args += ["-crf", f"{crf:g}"]
    if codec in ("libx264", "libx265"):
        args += ["-preset", preset]
        if codec == "libx265":
            args += ["-x265-params", "log-level=error"]
            if muxer in ("mp4", "mov"):
                args += ["-tag:v", "hvc1"]
    elif codec in ("libvpx-vp9", "libaom-av1"):
        args += ["-b:v", "0"]
        if codec == "libvpx-vp9":
            args += ["-deadline", "good", "-cpu-used", str(min(_VP9_SPEED[preset], 5)), "-row-mt", "1"]
        else:
            args += ["-cpu-used", str(min(_VP9_SPEED[preset] + 2, 8)), "-row-mt", "1"]
    if pix_fmt is not None:
        args += ["-pix_fmt", pix_fmt]
    if yuv_out:
        # Tag the frames (setparams) and the encoder: recent ffmpeg takes the frames' word.
        tags = {"range": range_tag}
        if matrix_tag in _MATRICES:
            tags["colorspace"] = matrix_tag
        if info.color_primaries in _PRIMARIES:
            tags["color_primaries"] = info.color_primaries
        if info.color_transfer in _TRANSFERS:
            tags["color_trc"] = info.color_transfer
        vf.append("setparams=" + ":".join(f"{k}={v}" for k, v in tags.items()))
        for k, v in tags.items():
            args += ["-color_range" if k == "range" else f"-{k}", v]
    if info.sample_aspect != 1 or info.sample_aspect_tagged:
        vf.append(f"setsar={info.sample_aspect.numerator}/{info.sample_aspect.denominator}")
        shown = pw * info.sample_aspect
        if muxer == "webm" and shown.denominator != 1:
            # WebM (unlike Matroska) stores the display size in whole pixels: ffmpeg's muxer rounds it
            notes.append(
                f"{_sar_text(info)}: WebM stores the displayed width in whole pixels: "
                f"{round(shown)}x{ph} (sample aspect ratio {_ratio(Fraction(round(shown), pw))})"
            )
    video_tags: tuple[str, ...] = ()
    if info.language:
        video_tags += ("-metadata:s:v:0", f"language={_container_language(muxer, info.language)}")
    if info.title:
        video_tags += ("-metadata:s:v:0", f"title={info.title}")
    if info.timecode:  # MP4/MOV get a timecode track from it, Matroska a tag
        video_tags += ("-timecode", info.timecode)
    planes_vf = ",".join(vf[:rgb_in] + vf[rgb_in + 1 :]) if planes is not None else ""
    return _Plan(muxer, codec, ",".join(vf), (pw, ph), args, pix_fmt, video_tags, tuple(notes), planes, planes_vf)


def _ratio(r: Fraction) -> str:
    return f"{r.numerator}:{r.denominator}"


def _sar_text(info: VideoInfo) -> str:
    return f"sample aspect ratio {_ratio(info.sample_aspect)}"


# ISO 639-2 has twenty languages with two codes: terminology (T, which Matroska and MP4 take) and
# bibliographic (B). QuickTime's language table knows only the B codes: the mov muxer writes "und"
# for a T code. The pairs are fixed by the standard; no library in tileproc's dependencies lists them.
_ISO639_T_TO_B = {
    "bod": "tib",
    "ces": "cze",
    "cym": "wel",
    "deu": "ger",
    "ell": "gre",
    "eus": "baq",
    "fas": "per",
    "fra": "fre",
    "hye": "arm",
    "isl": "ice",
    "kat": "geo",
    "mkd": "mac",
    "mri": "mao",
    "msa": "may",
    "mya": "bur",
    "nld": "dut",
    "ron": "rum",
    "slk": "slo",
    "sqi": "alb",
    "zho": "chi",
}


def _container_language(muxer: str, language: str) -> str:
    """The language code as ``muxer`` stores it (QuickTime: the bibliographic ISO 639-2 code)."""
    return _ISO639_T_TO_B.get(language, language) if muxer == "mov" else language


_TEXT_SUBTITLES = {"subrip", "srt", "ass", "ssa", "webvtt", "mov_text", "text"}
# subtitle codec each container writes text subtitles in, when it cannot take them as they are
_SUBTITLE_TEXT = {"mp4": "mov_text", "mov": "mov_text", "matroska": "srt", "webm": "webvtt"}
_SUBTITLE_COPY = {
    "mp4": {"mov_text", "dvd_subtitle"},
    "mov": {"mov_text"},
    "matroska": {"subrip", "srt", "ass", "ssa", "webvtt", "dvd_subtitle", "hdmv_pgs_subtitle", "dvb_subtitle"},
    "webm": {"webvtt"},
}
_DATA_TAGS = {"mp4": {"tmcd", "gpmd"}, "mov": {"tmcd", "gpmd"}}  # data tracks the MP4/MOV muxer writes


def stream_plan(
    muxer: str, streams: Sequence[StreamInfo], source: int, files: Mapping[int, Any] | None = None
) -> tuple[list[str], list[str]]:
    """FFmpeg arguments that keep ``streams`` of input ``source`` in a ``muxer`` file, and what cannot be kept.

    Audio is copied when the container takes its codec, else re-encoded
    (AAC; Opus for WebM; MP3 for AVI). Text subtitles are copied or converted
    to the container's text format; picture subtitles, attachments and data
    tracks are copied where the container holds them. Each stream keeps its
    own start and length, its language and disposition. An image attachment
    (:attr:`StreamInfo.attached_picture`) is attached from its file in
    ``files`` (stream index -> path, written by :class:`VideoWriter`).
    Returns ``(arguments, dropped)``: ``dropped`` names each stream left out
    and why.
    """
    args: list[str] = []
    dropped: list[str] = []
    out = {"audio": 0, "subtitle": 0, "data": 0, "attachment": 0}
    attached: list[tuple[StreamInfo, Any]] = []  # attachments ffmpeg adds after every mapped stream

    def keep(s: StreamInfo, *codec_args: str) -> None:
        k = out[s.kind]
        letter = {"audio": "a", "subtitle": "s", "data": "d", "attachment": "t"}[s.kind]
        args.extend(["-map", f"{source}:{s.index}"])
        args.extend(a.replace("#", f"{letter}:{k}") for a in codec_args)
        if s.language and _container_language(muxer, s.language) != s.language:
            args.extend([f"-metadata:s:{letter}:{k}", f"language={_container_language(muxer, s.language)}"])
        out[s.kind] += 1

    for s in streams:
        detail = " ".join(x for x in (s.kind, "" if s.codec == "none" else s.codec) if x)
        what = f"stream {s.index} ({detail}{', ' + s.language if s.language else ''})"
        if muxer == "gif":
            dropped.append(f"{what}: GIF holds only pictures")
        elif s.kind == "audio":
            if s.codec in _AUDIO_COPY.get(muxer, ()):
                keep(s, "-c:#", "copy")
            else:
                encoder = _AUDIO_ENCODER[muxer]
                per_channel = 64 if encoder == "libopus" else 96
                keep(s, "-c:#", encoder, "-b:#", f"{min(512, per_channel * max(1, s.channels or 2))}k")
        elif s.kind == "subtitle":
            if s.codec in _SUBTITLE_COPY.get(muxer, ()):
                keep(s, "-c:#", "copy")
            elif s.codec in _TEXT_SUBTITLES and muxer in _SUBTITLE_TEXT:
                keep(s, "-c:#", _SUBTITLE_TEXT[muxer])
            else:
                dropped.append(f"{what}: {muxer.upper()} cannot hold these subtitles")
        elif s.kind == "attachment":
            if muxer == "matroska" and s.attached_picture:
                if files is None or s.index not in files:
                    dropped.append(f"{what}: the attachment's file was not extracted")
                else:
                    attached.append((s, files[s.index]))
            elif muxer == "matroska":
                keep(s, "-c:#", "copy")
            else:
                dropped.append(f"{what}: only Matroska holds attachments")
        elif s.kind == "data":
            if s.timecode:
                continue  # written again from the video's timecode (encoder_plan)
            if s.tag in _DATA_TAGS.get(muxer, ()):
                keep(s, "-c:#", "copy")
            else:
                dropped.append(f"{what}: {muxer.upper()} cannot hold this data track")
        else:
            dropped.append(f"{what}: a second picture stream (cover art) is not kept")
    for k, (s, path) in enumerate(attached, start=out["attachment"]):
        args += ["-attach", ffmpeg_path(path)]
        args += [f"-metadata:s:t:{k}", f"mimetype={s.mimetype}", f"-metadata:s:t:{k}", f"filename={s.filename}"]
    return args, dropped


def _extract_attachments(src: str | os.PathLike[str], files: Mapping[int, Path]) -> None:
    """Write the image attachments of ``src`` (stream index -> path in ``files``), each into its own file.

    FFmpeg presents a Matroska image attachment as a one-packet picture
    stream, which ``ffmpeg -attach`` cannot copy from another file: its bytes
    are that packet's. Those packets come first (FFmpeg queues them when the
    file opens), so the rest of the file is not read.
    """
    import av

    got: dict[int, bytes] = {}
    try:
        with av.open(ffmpeg_path(src)) as c:
            for packet in c.demux(*(c.streams[i] for i in files)):
                if packet.size:
                    got.setdefault(packet.stream.index, bytes(packet))
                if len(got) == len(files):
                    break
    except Exception as exc:  # noqa: BLE001 - PyAV raises its own errors; one line for the user
        raise VideoError(f"{src}: cannot read the attachments ({_av_reason(exc)})") from None
    for index, path in files.items():
        if index not in got:
            raise VideoError(f"{src}: stream {index} (attachment) has no data")
        try:
            with open(path, "xb") as f:
                f.write(got[index])
        except OSError as exc:
            raise VideoError(f"{path}: cannot write the attachment ({exc.strerror or exc})") from None


def encode_args(
    plan: _Plan,
    dst_ff: str,
    streams: Sequence[StreamInfo],
    source: int | None,
    extra: Sequence[str] = (),
    files: Mapping[int, Any] | None = None,
) -> list[str]:
    """Output side of the ffmpeg command: maps, filters, codecs, the other streams, muxer, name.

    ``streams`` of input ``source`` are kept as :func:`stream_plan` says, with
    the file's metadata and chapters, image attachments from ``files``. No
    stream is cut to another's length.
    """
    args = ["-map", "0:v:0"]
    if plan.filters:
        args += ["-vf", plan.filters]
    args += plan.video_args
    args += plan.video_tags
    if source is not None and streams and plan.muxer != "gif":
        args += stream_plan(plan.muxer, streams, source, files)[0]
        args += ["-map_metadata", str(source), "-map_chapters", str(source)]
    else:
        args += ["-map_chapters", "-1"]
    if plan.muxer in ("mp4", "mov"):
        args += ["-movflags", "+faststart"]
    elif plan.muxer == "avi":
        args += ["-avoid_negative_ts", "disabled"]  # a shift for the audio's priming would drop a frame slot
    args += [*extra, "-f", plan.muxer, "-y", dst_ff]
    return args


class VideoWriter:
    """Encode frames into a video file, atomically, with the source's audio.

    ffmpeg reads raw RGB frames from a pipe at exactly ``info.fps`` and
    writes a temporary file beside ``dst``; a clean exit from the ``with``
    block (or :meth:`close`) waits for ffmpeg, checks its exit status and
    renames the temporary into place. On an exception, a failure of ffmpeg or
    :meth:`abort`, ffmpeg is killed and nothing is left: no ``dst``, no
    temporary.

    Defaults by ``dst``'s extension: ``.mp4 .m4v .mov .mkv .avi`` -> H.264
    (libx264, CRF 18, ``preset``, yuv420p, or yuv420p10le "High 10" for a
    source of more than 8 bits written from uint16 frames; ``+faststart`` in
    MP4/MOV); ``.webm`` -> VP9 (CRF 28, constant quality) with Opus audio;
    ``.gif`` -> GIF with a palette per frame (no audio). See the module notes
    for odd sizes, colour and audio.

    Parameters
    ----------
    dst : path-like
        Output file; its extension picks the container.
    info : VideoInfo
        Size, rate, depth and colour of the frames to come (usually the
        source's, from :func:`probe_video`).
    dtype : numpy dtype, optional
        Dtype of the frames written: ``uint8`` or ``uint16``; default ``info.dtype``.
    codec : str, optional
        An ffmpeg encoder name, instead of the container's default.
    crf : float, optional
        Constant quality (lower is better), instead of the codec's default.
    preset : str
        x264 preset name (``"medium"``); mapped to ``-cpu-used`` for VP9/AV1.
    pix_fmt : str, optional
        Encoder pixel format, instead of yuv420p / yuv420p10le.
    overwrite : bool
        Replace an existing ``dst`` (else :class:`OutputExists` before anything runs).
    audio_from : path-like or None
        File whose audio streams are kept; default ``info.path``; None for none.

    Attributes
    ----------
    size : tuple of int
        ``(width, height)`` written (odd sizes padded for H.264).
    frames_written : int

    Notes
    -----
    Use from one thread. :meth:`abort` may be called from any thread: a
    :meth:`write` blocked in another thread then raises :class:`VideoError`.

    Examples
    --------
    >>> info = probe_video("clip.mp4")                             # doctest: +SKIP
    >>> with VideoReader(info) as r, VideoWriter("out.mp4", info) as w:  # doctest: +SKIP
    ...     buf = np.empty(info.frame_shape, info.dtype)
    ...     while r.readinto(buf):
    ...         w.write(buf)
    """

    def __init__(
        self,
        dst: str | os.PathLike[str],
        info: VideoInfo,
        *,
        dtype: Any = None,
        codec: str | None = None,
        crf: float | None = None,
        preset: str = "medium",
        pix_fmt: str | None = None,
        overwrite: bool = False,
        audio_from: Any = _FROM_INFO,
    ) -> None:
        self.dst = Path(dst)
        self.info = info
        self.dtype = _check_dtype(dtype, info)
        self.shape = info.frame_shape
        self.overwrite = overwrite
        self.audio_from: Path | None = (
            Path(info.path) if audio_from is _FROM_INFO else (None if audio_from is None else Path(audio_from))
        )
        self.encoder_plan = encoder_plan(self.dst, info, self.dtype, codec, crf, preset, pix_fmt)
        self.codec = self.encoder_plan.codec
        self.size = self.encoder_plan.out_size
        self.frames_written = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: _StderrTail | None = None
        self._atomic: contextlib.AbstractContextManager[Path] | None = None
        self._tmp: Path | None = None
        self._lock = threading.Lock()
        self._aborted = False
        self._done = False  # the output was committed or discarded
        self._committed = False
        self._pipe_lock = threading.Lock()  # held while writing; the pipe is closed only outside a write
        self._streams: tuple[StreamInfo, ...] | None = None
        self._video_tmp: Path | None = None  # the encoded video before its frames get their times
        self._scratch: list[Path] = []  # temporaries removed whatever happens
        self._attachments: dict[int, Path] | None = None
        self._to_planes: yuv.ToPlanes | None = None  # 8-bit YUV out: converted here (tiler/io/yuv.py)

    def kept_streams(self) -> tuple[StreamInfo, ...]:
        """The streams of ``audio_from`` offered to the output (the container may refuse some: :attr:`notes`)."""
        if self.audio_from is None:
            return ()
        if self._streams is None:
            if Path(self.audio_from) == Path(self.info.path):
                self._streams = self.info.streams or self.info.audio
            else:
                self._streams = probe_streams(self.audio_from)
        return self._streams

    def attachment_files(self) -> dict[int, Path]:
        """Where the image attachments kept are extracted to (stream index -> temporary beside ``dst``)."""
        if self._attachments is None:
            pictures = [s for s in self.kept_streams() if s.attached_picture]
            keep = self.encoder_plan.muxer == "matroska"
            self._attachments = {
                s.index: temp_path_for(self.dst.with_name(f"{self.dst.stem}.attachment{s.index}"))
                for s in (pictures if keep else ())
            }
        return self._attachments

    @property
    def notes(self) -> list[str]:
        """One line per property or stream of the source the output cannot keep (empty: everything kept)."""
        lines = [f"{self.dst}: {n}" for n in self.encoder_plan.notes]
        if self.info.alpha:
            lines.append(f"{self.dst}: the transparency (alpha) of {self.info.path} is not kept: video frames are RGB")
        streams = self.kept_streams()
        plan = stream_plan(self.encoder_plan.muxer, streams, 1, self.attachment_files())
        lines += [f"{self.dst}: {d}" for d in plan[1]]
        if self.encoder_plan.muxer == "avi":
            late = [s for s in streams if s.kind == "audio" and abs(s.start - self.info.offset) > Fraction(1, 1000)]
            lines += [
                f"{self.dst}: stream {s.index} (audio) starts {float(s.start - self.info.offset):+.3f} s from the "
                "picture; AVI starts every stream together"
                for s in late
            ]
        return lines

    @property
    def retimed(self) -> bool:
        """Frames are written at their own instants (variable rate), by a remux after encoding."""
        info = self.info
        return (
            info.variable_rate
            and not info.resampled
            and self.encoder_plan.muxer not in ("gif", "avi")
            and len(info.timestamps) >= info.frame_count
        )

    @property
    def _field_order_args(self) -> list[str]:
        """The source's field order for a Matroska remux of interlaced H.264.

        FFmpeg's command line tags each interlaced H.264 encode "top (or bottom)
        coded first, displayed second" (tb/bt) whatever ``-field_order`` says,
        and the Matroska muxer stores that tag; a stream copy takes the option.
        """
        info, plan = self.info, self.encoder_plan
        if (
            info.interlaced
            and info.field_order in ("tt", "bb")
            and plan.codec == "libx264"
            and plan.muxer == "matroska"
        ):
            return ["-field_order", info.field_order]
        return []

    @property
    def _remuxed(self) -> bool:
        """The video is encoded alone into a NUT file, then copied into the output with the other streams."""
        return self.retimed or bool(self._field_order_args)

    def _offset_args(self, streams: Sequence[StreamInfo]) -> list[str]:
        """Where the video starts on the file's clock, when other streams share it."""
        same = self.audio_from is not None and Path(self.audio_from) == Path(self.info.path)
        if streams and same and self.info.offset:
            return ["-itsoffset", f"{float(self.info.offset):.6f}"]
        return []

    def command(self, tmp: str | os.PathLike[str] | None = None) -> list[str]:
        """The ffmpeg command line this writer runs (to ``tmp``, default ``dst``).

        For a variable-rate video (:attr:`retimed`), or interlaced H.264 in
        Matroska, it encodes the video alone into ``tmp`` (NUT); :meth:`close`
        then sets each frame's time (or the field order) and adds the other
        streams.
        """
        info = self.info
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error"]
        streams = () if self._remuxed else self.kept_streams()
        cmd += self._offset_args(streams)
        plan = self.encoder_plan
        cmd += [
            "-f",
            "rawvideo",
            "-pix_fmt",
            plan.planes.pix_fmt if plan.planes else _rgb_pix_fmt(self.dtype),
            "-video_size",
            f"{info.width}x{info.height}",
            "-framerate",
            str(info.fps),
            "-i",
            "pipe:0",
        ]
        if plan.planes:
            plan = dataclasses.replace(plan, filters=plan.planes_filters)
        if self._remuxed:
            plan = dataclasses.replace(plan, muxer="nut", video_tags=())
        source = None
        if streams and plan.muxer != "gif":
            cmd += ["-i", ffmpeg_path(self.audio_from)]  # type: ignore[arg-type]
            source = 1
        files = self.attachment_files()
        return cmd + encode_args(plan, ffmpeg_path(tmp or self.dst), streams, source, files=files)

    def _mux_timed(self, tmp: Path) -> None:
        """Variable rate: the encoded video (frame i at i/fps) gets each frame's own time, then the other
        streams join it in ``tmp``. FFmpeg's command line cannot give raw frames their times; PyAV
        rewrites the packets' timestamps without decoding. Interlaced H.264 gets its field order here."""
        assert self._video_tmp is not None  # a variable rate video is encoded to it first
        timed = self._video_tmp
        if self.retimed:
            timed = self._video_tmp.with_name(self._video_tmp.name.replace(".nut", ".timed.nut"))
            self._scratch.append(timed)
            try:
                _retime(self._video_tmp, timed, self.info, self.frames_written)
            except Exception as exc:  # noqa: BLE001 - PyAV raises its own errors; one line for the user
                raise VideoError(f"{self.dst}: cannot set the frames' times ({_av_reason(exc)})") from None
        streams = self.kept_streams()
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error"]
        cmd += self._offset_args(streams) + ["-i", ffmpeg_path(timed)]
        if streams:
            cmd += ["-i", ffmpeg_path(self.audio_from)]  # type: ignore[arg-type]
        copy = dataclasses.replace(self.encoder_plan, filters="", video_args=["-c:v", "copy", *self._field_order_args])
        cmd += encode_args(copy, ffmpeg_path(tmp), streams, 1 if streams else None, files=self.attachment_files())
        proc = _run(cmd)
        if proc.returncode != 0:
            said = last_lines(proc.stderr.decode("utf-8", "replace")) or _exit_reason(proc.returncode)
            raise VideoError(f"{self.dst}: cannot write the streams ({said})")

    def open(self) -> VideoWriter:
        """Check the output, start ffmpeg on a temporary name (done by ``with``)."""
        with self._lock:
            if self._done:
                raise VideoError(f"{self.dst}: the writer is closed")
            if self._proc is not None:
                return self
            inputs = [p for p in (self.info.path, self.audio_from) if p is not None]
            atomic = atomic_output(self.dst, inputs=inputs, overwrite=self.overwrite)
            tmp = atomic.__enter__()
            try:
                if self._remuxed:
                    self._video_tmp = temp_path_for(self.dst.with_suffix(".nut"))
                    self._scratch.append(self._video_tmp)
                files = self.attachment_files()
                if files and self.audio_from is not None:
                    self._scratch.extend(files.values())
                    _extract_attachments(self.audio_from, files)
                cmd = self.command(self._video_tmp or tmp)
                self._proc = _spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            except BaseException as exc:
                atomic.__exit__(type(exc), exc, exc.__traceback__)
                self._drop_scratch()
                self._done = True
                if isinstance(exc, OSError):
                    raise VideoError(f"{self.dst}: cannot start ffmpeg ({exc})") from None
                raise
            self._atomic, self._tmp = atomic, tmp
            self._stderr = _StderrTail(self._proc.stderr)
            self._finalizer = weakref.finalize(self, _discard, self._proc, tmp, self._scratch)
        return self

    def __enter__(self) -> VideoWriter:
        return self.open()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frame: np.ndarray) -> None:
        """Send one frame to the encoder (blocks while the encoder is behind).

        Parameters
        ----------
        frame : numpy.ndarray
            Shape ``writer.shape`` = ``(info.height, info.width, 3)``, dtype
            ``writer.dtype``, C-contiguous; its bytes go to the pipe as they are.

        Raises
        ------
        VideoError
            ffmpeg stopped (a bad codec or option, a full disk...); the message
            ends with its last lines. The output is then discarded.
        """
        if frame.shape != self.shape or frame.dtype != self.dtype:
            raise ValueError(f"{self.dst}: frames must be {self.shape} {self.dtype}, got {frame.shape} {frame.dtype}")
        if not frame.flags.c_contiguous:
            raise ValueError(f"{self.dst}: frames must be C-contiguous")
        if self._proc is None:
            self.open()
        if self._aborted:
            raise VideoError(f"{self.dst}: writing was stopped after {self.frames_written} frames")
        if self._done:
            raise VideoError(f"{self.dst}: the writer is closed")
        assert self._proc is not None and self._proc.stdin is not None
        if self.encoder_plan.planes is not None:
            if self._to_planes is None:
                self._to_planes = yuv.ToPlanes(self.encoder_plan.planes)
            self._to_planes(frame)
            frame = self._to_planes.raw
        view = frame.data.cast("B")
        total, sent = view.nbytes, 0
        with self._pipe_lock:
            try:
                while sent < total:
                    sent += self._proc.stdin.write(view[sent:]) or 0
            except (BrokenPipeError, ValueError, OSError):  # ValueError: the pipe was closed
                sent = -1
        if sent < 0:
            raise self._failed(f"ffmpeg stopped reading at frame {self.frames_written + 1}") from None
        self.frames_written += 1

    def _failed(self, what: str, *, wait: bool = True) -> VideoError:
        """Discard the output (ffmpeg killed, temporary removed) and build the error."""
        proc = self._proc
        rc = None
        if proc is not None and wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                rc = proc.wait(_REAP_TIMEOUT)  # it is exiting: let it say why
        self._discard()
        if self._aborted:
            return VideoError(f"{self.dst}: writing was stopped after {self.frames_written} frames")
        tail = self._stderr.text() if self._stderr else ""
        if self._tmp is not None:  # speak of the file the user asked for
            tail = tail.replace(ffmpeg_path(self._tmp), str(self.dst)).replace(str(self._tmp), str(self.dst))
        reason = _exit_reason(rc) if rc not in (None, 0) else what
        return VideoError(f"{self.dst}: {reason}{_said(tail)}")

    def _discard(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            proc = self._proc
            if proc is not None:
                _reap(proc, kill=True)  # a write blocked in another thread now fails and lets go of the pipe
                self._close_stdin()
                self._finalizer.detach()
            if self._atomic is not None:
                err = VideoError(f"{self.dst}: discarded")
                self._atomic.__exit__(VideoError, err, None)
            self._drop_scratch()
            if self._stderr is not None:
                self._stderr.text(timeout=_REAP_TIMEOUT)

    def _drop_scratch(self) -> None:
        for path in self._scratch:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _close_stdin(self) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            with self._pipe_lock, contextlib.suppress(OSError):
                self._proc.stdin.close()

    def close(self) -> None:
        """Finish: end the stream, wait for ffmpeg, check it, move the file into place.

        Raises
        ------
        VideoError
            ffmpeg failed or no frame was written (nothing is left behind).
        OutputExists
            ``dst`` appeared meanwhile and ``overwrite`` is False.
        """
        if self._committed:
            return
        if self._aborted:
            raise self._failed("stopped")
        if self._done:
            raise VideoError(f"{self.dst}: nothing was written (an earlier error discarded the output)")
        if self._proc is None:
            self.open()
        assert self._proc is not None
        try:
            if self.frames_written == 0:
                raise self._failed("no frames were written", wait=False)
            self._close_stdin()  # end of stream
            rc = self._proc.wait()
        except BaseException:
            self._discard()
            raise
        if rc != 0 or self._aborted:
            raise self._failed("ffmpeg failed")
        if self._video_tmp is not None:
            assert self._tmp is not None
            try:
                self._mux_timed(self._tmp)
            except BaseException:
                self._discard()
                raise
        with self._lock:
            if self._done:
                raise self._failed("stopped")
            self._done = True
            self._finalizer.detach()
            if self._stderr is not None:
                self._stderr.text(timeout=_REAP_TIMEOUT)
            assert self._atomic is not None
            self._drop_scratch()
            self._atomic.__exit__(None, None, None)  # rename into place (may raise OutputExists)
            self._committed = True

    def abort(self) -> None:
        """Kill ffmpeg and discard the output. Idempotent, any thread."""
        if self._done:
            return
        self._aborted = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
        self._discard()


def _discard(proc: subprocess.Popen[bytes], tmp: Path, scratch: Sequence[Path] = ()) -> None:
    """Finalizer of a writer dropped without close/abort."""
    _reap(proc, kill=True)
    for path in (tmp, *scratch):
        with contextlib.suppress(OSError):
            os.unlink(path)


def _retime(src: Path, dst: Path, info: VideoInfo, count: int) -> None:
    """Copy the video packets of ``src`` (frame i at i/fps) into ``dst`` (NUT), frame i at
    ``info.timestamps[i]`` (relative to the first), in ``info.time_base``; no decoding.

    A packet's frame is its presentation time's rank on the ``1/fps`` grid,
    counted from the earliest presentation time in ``src``: an encoder that
    reorders frames (H.264 B-frames) may shift the whole stream by its delay,
    and packets come in decode order, not presentation order. Decode times
    before the first frame (the reordering delay) are spaced by the smallest
    gap between frames, so every packet keeps dts <= pts.
    """
    import av

    times = info.timestamps[:count]
    rel = [t - times[0] for t in times]
    step = min((b - a for a, b in zip(rel, rel[1:])), default=1)

    def at(k: int) -> int:
        if k < 0:
            return k * step
        if k >= len(rel):
            return rel[-1] + (k - len(rel) + 1) * step
        return rel[k]

    def index(ticks: int, time_base: Any) -> int:
        return round(ticks * Fraction(time_base) * info.fps)  # ticks -> frame index on the 1/fps grid

    def shown(packet: Any) -> int | None:
        return packet.pts if packet.pts is not None else packet.dts

    with av.open(ffmpeg_path(src)) as inp:
        ist = inp.streams.video[0]
        first = min(
            (index(t, p.time_base) for p in inp.demux(ist) if p.size and (t := shown(p)) is not None), default=0
        )
    with av.open(ffmpeg_path(src)) as inp, av.open(ffmpeg_path(dst), "w", format="nut") as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist)
        ost.time_base = info.time_base
        for packet in inp.demux(ist):
            if packet.size == 0:
                continue
            tb, pts, dts = packet.time_base, shown(packet), packet.dts
            packet.pts = at(index(pts, tb) - first) if pts is not None else None
            packet.dts = at(index(dts, tb) - first) if dts is not None else None
            packet.duration = 0
            packet.time_base = info.time_base
            packet.stream = ost
            out.mux(packet)


# ----------------------------------------------------------------------------
# the I/O contract


class VideoSource(Source):
    """A video as a :class:`~tiler.io.base.Source`: frames in order from a :class:`VideoReader`.

    ``read_into`` runs on the pipeline's decode thread; the reader's ffmpeg
    writes each frame straight into the slot.

    Examples
    --------
    >>> with VideoSource(VideoReader(probe_video("clip.mp4"))) as src:     # doctest: +SKIP
    ...     buf = np.empty(src.probe().frame_shape, np.uint8)
    ...     while src.read_into(src.next_index, buf):
    ...         pass
    """

    runs = "thread"

    def __init__(self, reader: VideoReader) -> None:
        self.reader = reader
        self.next_index = 0
        self.ended = False

    def probe(self) -> VideoInfo:
        return self.reader.info

    def read_into(self, index: int, out: np.ndarray) -> bool:
        if self.ended and index >= self.next_index:
            return False
        if index != self.next_index:
            raise VideoError(
                f"{self.reader.info.path}: frames are read in order: asked for {index}, next is {self.next_index}"
            )
        if not self.reader.readinto(out):
            self.ended = True
            return False
        self.next_index += 1
        return True

    def close(self) -> None:
        self.reader.close()


class VideoSink(Sink):
    """A video output as a :class:`~tiler.io.base.Sink`: frames in order into a :class:`VideoWriter`.

    ``write`` runs on the pipeline's encode thread; ``commit`` (the parent)
    waits for ffmpeg, sets each frame's time for a variable rate, joins the
    other streams and renames the file into place; ``abort`` (any thread)
    kills ffmpeg and removes every temporary.
    """

    runs = "thread"

    def __init__(self, writer: VideoWriter) -> None:
        self.writer = writer

    def write(self, index: int, frame: np.ndarray) -> None:
        if index != self.writer.frames_written:
            raise VideoError(
                f"{self.writer.dst}: frames are written in order: got {index}, next is {self.writer.frames_written}"
            )
        self.writer.write(frame)

    def commit(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


# ----------------------------------------------------------------------------
# one-process equivalent, for benchmarks


def transcode_command(
    info: VideoInfo,
    dst: str | os.PathLike[str],
    *,
    vf: str | None = None,
    dtype: Any = None,
    codec: str | None = None,
    crf: float | None = None,
    preset: str = "medium",
    pix_fmt: str | None = None,
    audio_from: Any = _FROM_INFO,
) -> list[str]:
    """One ffmpeg command that decodes like :class:`VideoReader` and encodes like
    :class:`VideoWriter`, with an optional ffmpeg filter applied to the RGB frames.

    Its RGB conversions are always swscale's exact ones, which the reader and
    writer keep for the formats :mod:`tiler.io.yuv` leaves to ffmpeg (the two
    agree within a level or two; tileproc's own cost a fraction of the CPU).

    Meant for benchmarks (tileproc against plain ffmpeg on the same work). It
    writes ``dst`` directly (``-y``), without the atomic rename, and frames at
    the constant rate ``info.fps`` (a variable-rate source at its average rate).

    Examples
    --------
    >>> cmd = transcode_command(info, "out.mp4", vf="gblur=sigma=2")   # doctest: +SKIP
    >>> subprocess.run(cmd, check=True)                               # doctest: +SKIP
    """
    dst = Path(dst)
    dtype = _check_dtype(dtype, info)
    plan = encoder_plan(dst, info, dtype, codec, crf, preset, pix_fmt)
    # frames numbered at exactly info.fps, as the writer's raw input is
    decode = _decode_filters(info, dtype) + f",settb={info.fps.denominator}/{info.fps.numerator},setpts=N"
    if vf:
        decode += "," + vf
    plan = dataclasses.replace(plan, filters=",".join(x for x in (decode, plan.filters) if x))
    src = audio_from if audio_from is not _FROM_INFO else info.path
    audio = info.audio if src is not None and Path(src) == Path(info.path) else ()
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", ffmpeg_path(info.path)]
    args = encode_args(
        plan,
        ffmpeg_path(dst),
        audio,
        0 if audio else None,
        extra=["-fps_mode", "passthrough", "-frames:v", str(info.frame_count)],
    )
    args[1] = f"0:{info.stream_index}"
    return cmd + args
