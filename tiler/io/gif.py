"""GIF: scan the blocks, assemble frames, encode stills and animations.

Hand-written on purpose: Pillow's GIF writer merges identical neighbouring
frames (and their delays) and re-optimizes palettes across frames, so an
animation would not keep its frame count and timing. Pillow still encodes
each frame (LZW); tileproc only writes the blocks around them. The scan
reads sizes, frame count, delays and loop from the blocks before Pillow
opens the file, so a declared canvas is checked before anything allocates it.
"""

from __future__ import annotations

import dataclasses
import io
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tiler.io._image import ContainerError, ImageInfo, as_hwc, check_durations, exact_palette, to_uint8

__all__ = ["GifScan", "scan_gif", "assemble_gif", "encode", "AnimationWriter"]


@dataclasses.dataclass(frozen=True)
class GifScan:
    width: int  # canvas: the logical screen, grown to hold every frame as Pillow does
    height: int
    durations: tuple[int, ...]  # milliseconds, one per frame
    disposals: tuple[int, ...]
    transparent: bool  # the composed canvas can show transparent pixels (see scan_gif)
    loop: int | None  # NETSCAPE2.0 loop count (0 = forever); None: no loop extension

    @property
    def n_frames(self) -> int:
        return len(self.durations)


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    n = len(data)
    while True:
        if pos >= n:
            raise ContainerError("truncated GIF data")
        size = data[pos]
        pos += 1
        if size == 0:
            return pos
        pos += size
        if pos > n:
            raise ContainerError("truncated GIF data")


def scan_gif(data: bytes) -> GifScan:
    """Walk a GIF's blocks; no LZW decoding.

    ``transparent`` is True when the composed frames can have transparent
    pixels: the first frame has a transparent index, or a frame with one is
    disposed to the background (Pillow, like browsers, then clears to
    transparent). Transparent pixels of later frames that are not disposed
    only let the frame before show through.
    """
    if len(data) < 13 or data[:6] not in (b"GIF87a", b"GIF89a"):
        raise ContainerError("not a GIF file")
    width, height, packed = struct.unpack_from("<HHB", data, 6)
    pos = 13
    if packed & 0x80:
        pos += 3 << ((packed & 7) + 1)
    durations: list[int] = []
    disposals: list[int] = []
    transparent = False
    loop: int | None = None
    gce: tuple[int, int, bool] | None = None
    n = len(data)
    while pos < n:
        kind = data[pos]
        if kind == 0x3B:  # trailer
            break
        if kind == 0x21:  # extension
            if pos + 2 > n:
                raise ContainerError("truncated GIF extension")
            label = data[pos + 1]
            pos += 2
            if label == 0xF9 and pos < n and data[pos] >= 4 and pos + 5 <= n:
                flags, delay = struct.unpack_from("<BH", data, pos + 1)
                gce = (delay * 10, (flags >> 2) & 7, bool(flags & 1))
            elif label == 0xFF and pos + 12 <= n and data[pos] == 11:
                app = data[pos + 1 : pos + 12]
                sub = pos + 12
                if app in (b"NETSCAPE2.0", b"ANIMEXTS1.0") and sub + 4 <= n and data[sub] >= 3 and data[sub + 1] == 1:
                    loop = struct.unpack_from("<H", data, sub + 2)[0]
            pos = _skip_sub_blocks(data, pos)
        elif kind == 0x2C:  # image descriptor
            if pos + 10 > n:
                raise ContainerError("truncated GIF image descriptor")
            x, y, w, h, flags = struct.unpack_from("<HHHHB", data, pos + 1)
            width, height = max(width, x + w), max(height, y + h)
            pos += 10
            if flags & 0x80:
                pos += 3 << ((flags & 7) + 1)
            pos += 1  # LZW minimum code size
            pos = _skip_sub_blocks(data, pos)
            delay, disposal, trns = gce if gce is not None else (0, 0, False)
            durations.append(delay)
            disposals.append(disposal)
            transparent |= trns and (len(durations) == 1 or disposal == 2)
            gce = None
        else:
            if durations:  # junk after the last frame: decoders stop here too
                break
            raise ContainerError(f"unexpected GIF block 0x{kind:02x}")
    if not durations:
        raise ContainerError("GIF has no frames")
    return GifScan(width, height, tuple(durations), tuple(disposals), transparent, loop)


def _gif_frame_parts(single: bytes) -> tuple[bytes, int, bytes]:
    """(colour table, interlace flag, LZW code size + data sub-blocks) of a one-frame GIF."""
    packed = single[10]
    pos = 13
    table = b""
    if packed & 0x80:
        size = 3 << ((packed & 7) + 1)
        table = single[pos : pos + size]
        pos += size
    while True:
        kind = single[pos]
        if kind == 0x21:
            pos = _skip_sub_blocks(single, pos + 2)
        elif kind == 0x2C:
            flags = single[pos + 9]
            pos += 10
            if flags & 0x80:
                size = 3 << ((flags & 7) + 1)
                table = single[pos : pos + size]
                pos += size
            end = _skip_sub_blocks(single, pos + 1)
            return table, flags & 0x40, single[pos:end]
        else:  # pragma: no cover - Pillow always writes a frame
            raise ContainerError("encoder wrote no GIF frame")


def _table_bits(table: bytes) -> int:
    """GIF colour-table size field for a table of len(table) bytes (2**(k+1) entries)."""
    entries = max(2, len(table) // 3)
    return max(0, (entries - 1).bit_length() - 1)


def assemble_gif(
    frames: Sequence[tuple[np.ndarray, bytes, int | None, bool]],
    *,
    durations: Sequence[int],
    loop: int | None,
    holes: Sequence[bool],
) -> bytes:
    """A GIF from full-canvas frames ``(indices, rgb palette, free index or None, index used)``.

    Every frame covers the whole canvas. A frame is disposed to the background
    when the next one has transparent pixels (``holes``), else kept, so
    browsers and Pillow both compose exactly the given frames. The free index
    is declared transparent when the frame uses it or is disposed (so Pillow,
    too, clears to transparent). Each frame has its own colour table; delays
    are rounded to GIF's 10 ms unit.
    """
    from PIL import Image

    height, width = frames[0][0].shape
    out = io.BytesIO()
    # A two-colour global table only so that the background index names a colour
    # (some decoders warn without one); every frame brings its own table.
    out.write(b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF0, 0, 0) + b"\x00\x00\x00\xff\xff\xff")
    if loop is not None:
        out.write(b"!\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", loop) + b"\x00")
    for k, (indices, palette, free, used) in enumerate(frames):
        im = Image.frombuffer("P", (width, height), np.ascontiguousarray(indices, np.uint8).tobytes(), "raw", "P", 0, 1)
        im.putpalette(palette)
        buf = io.BytesIO()
        im.save(buf, "GIF", optimize=False, interlace=False)
        table, interlace, lzw = _gif_frame_parts(buf.getvalue())
        next_holes = k + 1 < len(frames) and holes[k + 1]
        disposal = 2 if next_holes else 1
        trns = free if free is not None and (used or next_holes) else None
        flags = (disposal << 2) | (1 if trns is not None else 0)
        delay = max(0, min(0xFFFF, int(round(durations[k] / 10))))
        out.write(b"!\xf9\x04" + struct.pack("<BHB", flags, delay, trns or 0) + b"\x00")
        bits = _table_bits(table)
        table = table.ljust(3 << (bits + 1), b"\x00")
        out.write(b"," + struct.pack("<HHHHB", 0, 0, width, height, 0x80 | interlace | bits) + table + lzw)
    out.write(b";")
    return out.getvalue()


_GRAY_RAMP = np.repeat(np.arange(256, dtype=np.uint8), 3).tobytes()


class _GifFrames:
    """Palette frames for :func:`assemble_gif`, made one at a time.

    Colours are exact when a frame has at most 255 of them (256 when no
    transparent index is needed), else median-cut quantized. Index 255 is
    kept transparent when possible: for holes (alpha < 128) and, from the
    second frame on, for pixels that look the same as in the frame before,
    which lets LZW shrink the file without changing what is shown.
    """

    def __init__(self, alpha: bool):
        self.alpha = alpha
        self.frames: list[tuple[np.ndarray, bytes, int | None, bool]] = []
        self.holes: list[bool] = []
        self._shown: np.ndarray | None = None

    def add(self, a: np.ndarray) -> None:
        a = as_hwc(to_uint8(a))
        if a.shape[2] == 1 and not self.alpha:
            # Gray stays gray: the identity ramp as palette, which readers take for mode L.
            indices = np.ascontiguousarray(a[:, :, 0])
            self._shown = np.concatenate([np.repeat(a, 3, axis=2), np.full_like(a, 255)], axis=2)
            self.frames.append((indices, _GRAY_RAMP, None, False))
            self.holes.append(False)
            return
        if a.shape[2] in (1, 2):
            a = np.concatenate([np.repeat(a[:, :, :1], 3, axis=2), a[:, :, 1:]], axis=2)
        rgb = np.ascontiguousarray(a[:, :, :3])
        mask = a[:, :, 3] < 128 if a.shape[2] == 4 else np.zeros(a.shape[:2], bool)
        holes = bool(mask.any())
        if holes:
            opaque = ~mask
            rgb = rgb.copy()
            rgb[mask] = rgb[opaque][0] if opaque.any() else 0
        found = exact_palette(rgb, 255)
        slot = True
        if found is None and not (self.alpha or holes):
            found = exact_palette(rgb, 256)
            slot = found is None
        if found is None:
            q = Image.fromarray(rgb).quantize(255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
            found = np.asarray(q).copy(), np.frombuffer(bytes(q.getpalette() or b""), np.uint8).reshape(-1, 3)[:255]
        indices, palette = found
        shown = np.concatenate([palette[indices], np.where(mask, 0, 255).astype(np.uint8)[:, :, None]], axis=2)
        free, used = None, holes or (self.alpha and not self.frames)  # RGBA in, RGBA out
        if slot:
            free = 255
            palette = np.concatenate([palette, np.zeros((256 - len(palette), 3), np.uint8)])
            indices[mask] = free
            if self._shown is not None and not holes:
                same = np.all(shown == self._shown, axis=2)
                indices[same] = free
                used = used or bool(same.any())
        self._shown = shown
        self.frames.append((indices, palette.tobytes(), free, used))
        self.holes.append(holes)

    def encode(self, durations: Sequence[int], loop: int | None) -> bytes:
        return assemble_gif(self.frames, durations=durations, loop=loop, holes=self.holes)


def encode(a: np.ndarray, tmp: Path, info: ImageInfo, quality: int | None) -> None:
    """One frame as a still GIF (``quality`` does not apply)."""
    gif = _GifFrames(alpha=as_hwc(a).shape[2] in (2, 4))
    gif.add(a)
    tmp.write_bytes(gif.encode([info.durations[0] if info.durations else 0], None))


class AnimationWriter:
    """An animated GIF, frame by frame: :meth:`add` each frame as it arrives, then :meth:`finish`."""

    def __init__(self, info: ImageInfo, quality: int | None):
        self.gif: _GifFrames | None = None

    def add(self, frame: np.ndarray) -> None:
        if self.gif is None:
            self.gif = _GifFrames(alpha=as_hwc(frame).shape[2] in (2, 4))
        self.gif.add(frame)

    def finish(self, tmp: Path, durations: Sequence[int], loop: int | None) -> int:
        """Write the file; returns the frame count."""
        assert self.gif is not None
        check_durations(tmp, durations, len(self.gif.frames))
        tmp.write_bytes(self.gif.encode(durations, loop))
        return len(self.gif.frames)
