"""WebP: scan the RIFF chunks, encode stills with Pillow (libwebp), assemble animations frame by frame.

The animation is assembled by hand: libwebp's animation encoder (behind
Pillow's ``save_all``) merges identical neighbouring frames and may blend or
crop frames, so the output would not keep the input's frame count and
delays. Each frame is still encoded by libwebp through Pillow; tileproc
writes the RIFF chunks around them. The scan reads the canvas before
libwebp's decoder allocates it.
"""

from __future__ import annotations

import dataclasses
import io
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tiler.io._image import DEFAULT_QUALITY, ContainerError, ImageInfo, as_hwc, check_durations, icc_for, to_uint8

__all__ = ["WebpScan", "scan_webp", "assemble_webp", "encode", "AnimationWriter"]


@dataclasses.dataclass(frozen=True)
class WebpScan:
    width: int
    height: int
    durations: tuple[int, ...]  # milliseconds per frame; (0,) for a still image
    loop: int | None  # 0 = forever; None for a still image
    lossless: bool  # the (first) frame is VP8L
    alpha: bool
    animated: bool
    problem: str = ""  # set when the file has a canvas but no usable image data

    @property
    def n_frames(self) -> int:
        return len(self.durations)


def _u24(b: bytes, at: int) -> int:
    return b[at] | (b[at + 1] << 8) | (b[at + 2] << 16)


def _p24(v: int) -> bytes:
    return bytes((v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF))


def riff_chunks(data: bytes, start: int = 12, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """Yield ``(fourcc, payload start, payload size)`` for each RIFF chunk."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        fourcc = data[pos : pos + 4]
        size = struct.unpack_from("<I", data, pos + 4)[0]
        if pos + 8 + size > end:
            raise ContainerError(f"truncated WebP chunk {fourcc.decode('latin-1')!r}")
        yield fourcc, pos + 8, size
        pos += 8 + size + (size & 1)
    if pos < end and data[pos:end].strip(b"\x00"):
        raise ContainerError("truncated WebP file")


def scan_webp(data: bytes) -> WebpScan:
    """Canvas size, frames, durations, loop and codec of a WebP; no decoding."""
    if len(data) < 20 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ContainerError("not a WebP file")
    riff_end = 8 + struct.unpack_from("<I", data, 4)[0]
    if riff_end > len(data):
        raise ContainerError("truncated WebP file")
    width = height = 0
    durations: list[int] = []
    loop: int | None = None
    lossless: bool | None = None
    alpha = False
    animated = False
    for fourcc, at, size in riff_chunks(data, 12, riff_end):
        if fourcc == b"VP8X" and size >= 10:
            flags = data[at]
            alpha = bool(flags & 0x10)
            animated = bool(flags & 0x02)
            width, height = 1 + _u24(data, at + 4), 1 + _u24(data, at + 7)
        elif fourcc == b"ANIM" and size >= 6:
            loop = struct.unpack_from("<H", data, at + 4)[0]
        elif fourcc == b"ANMF" and size >= 16:
            durations.append(_u24(data, at + 12))
            if lossless is None:
                for sub, _, _ in riff_chunks(data, at + 16, at + size):
                    if sub in (b"VP8 ", b"VP8L"):
                        lossless = sub == b"VP8L"
                        break
        elif fourcc == b"VP8 " and size >= 10:
            lossless = False
            if not width:
                w, h = struct.unpack_from("<HH", data, at + 6)
                width, height = w & 0x3FFF, h & 0x3FFF
        elif fourcc == b"VP8L" and size >= 5:
            lossless = True
            if not width:
                bits = struct.unpack_from("<I", data, at + 1)[0]
                width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
                alpha = bool((bits >> 28) & 1)
    if not width:
        raise ContainerError("WebP has no image data")
    problem = ""
    if lossless is None:
        problem = "WebP has no image data"
    if not animated:
        durations, loop = [0], None
    elif not durations:
        durations, problem = [0], "animated WebP has no frames"
    return WebpScan(width, height, tuple(durations), loop, bool(lossless), alpha, animated, problem)


def _riff_chunk(fourcc: bytes, payload: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) & 1 else b"")


def webp_frame_payload(still: bytes) -> bytes:
    """The ALPH/VP8/VP8L chunks of a still WebP, ready to sit inside an ANMF chunk."""
    parts = []
    for fourcc, at, size in riff_chunks(still):
        if fourcc in (b"ALPH", b"VP8 ", b"VP8L"):
            parts.append(_riff_chunk(fourcc, still[at : at + size]))
    if not parts:  # pragma: no cover - libwebp always writes one
        raise ContainerError("encoder wrote no WebP frame")
    return b"".join(parts)


def assemble_webp(
    payloads: Sequence[bytes],
    *,
    width: int,
    height: int,
    durations: Sequence[int],
    loop: int | None,
    alpha: bool,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    xmp: bytes | None = None,
) -> bytes:
    """An animated WebP from full-canvas frame payloads; no blending, no disposal."""
    flags = 0x02 | (0x10 if alpha else 0) | (0x20 if icc_profile else 0)
    flags |= (0x08 if exif else 0) | (0x04 if xmp else 0)
    body = [_riff_chunk(b"VP8X", bytes((flags, 0, 0, 0)) + _p24(width - 1) + _p24(height - 1))]
    if icc_profile:
        body.append(_riff_chunk(b"ICCP", icc_profile))
    body.append(_riff_chunk(b"ANIM", b"\x00\x00\x00\x00" + struct.pack("<H", 0 if loop is None else loop)))
    for payload, duration in zip(payloads, durations):
        head = _p24(0) + _p24(0) + _p24(width - 1) + _p24(height - 1)
        head += _p24(max(0, min(0xFFFFFF, int(duration)))) + b"\x02"  # do not blend, do not dispose
        body.append(_riff_chunk(b"ANMF", head + payload))
    if exif:
        body.append(_riff_chunk(b"EXIF", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    if xmp:
        body.append(_riff_chunk(b"XMP ", xmp))
    data = b"WEBP" + b"".join(body)
    return b"RIFF" + struct.pack("<I", len(data)) + data


def _webp_ready(a: np.ndarray) -> np.ndarray:
    a = as_hwc(to_uint8(a))
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 2:
        a = np.concatenate([np.repeat(a[:, :, :1], 3, axis=2), a[:, :, 1:]], axis=2)
    return np.ascontiguousarray(a)


def _webp_options(info: ImageInfo, quality: int | None) -> dict[str, Any]:
    if quality is None and info.lossless:
        return {"lossless": True, "exact": True}  # quality would mean effort here: keep libwebp's default
    return {"quality": quality or info.quality or DEFAULT_QUALITY}


def _webp_save(a: np.ndarray, tmp: Path, info: ImageInfo, quality: int | None) -> None:
    a = _webp_ready(a)
    kwargs = _webp_options(info, quality)
    icc = icc_for(info.icc_profile, 3)
    if icc:
        kwargs["icc_profile"] = icc
    if info.exif:
        kwargs["exif"] = info.exif
    if info.xmp:
        kwargs["xmp"] = info.xmp
    Image.fromarray(a).save(tmp, "WEBP", **kwargs)


def encode(a: np.ndarray, tmp: Path, info: ImageInfo, quality: int | None) -> None:
    _webp_save(a, tmp, info, quality)


class AnimationWriter:
    """An animated WebP, frame by frame (one libwebp still each): :meth:`add`, then :meth:`finish`."""

    def __init__(self, info: ImageInfo, quality: int | None):
        self.info = info
        self.options = _webp_options(info, quality)
        self.payloads: list[bytes] = []
        self.shape: tuple[int, ...] = ()

    def add(self, frame: np.ndarray) -> None:
        self.shape = as_hwc(frame).shape
        buf = io.BytesIO()
        Image.fromarray(_webp_ready(frame)).save(buf, "WEBP", **self.options)
        self.payloads.append(webp_frame_payload(buf.getvalue()))

    def finish(self, tmp: Path, durations: Sequence[int], loop: int | None) -> int:
        """Write the file; returns the frame count."""
        check_durations(tmp, durations, len(self.payloads))
        h, w, channels = self.shape
        info = self.info
        tmp.write_bytes(
            assemble_webp(
                self.payloads,
                width=w,
                height=h,
                durations=durations,
                loop=loop,
                alpha=channels in (2, 4),
                icc_profile=icc_for(info.icc_profile, 3),
                exif=info.exif,
                xmp=info.xmp,
            )
        )
        return len(self.payloads)
