"""8-bit planar YUV <-> RGB frames for the video reader and writer, converted here with OpenCV.

The reader asks ffmpeg for the decoded planes as they are (``yuv420p``,
``yuv422p``, ``yuv444p`` and their full-range ``yuvj`` forms, 8 bits) and
converts them into the caller's RGB buffer itself (:class:`ToRGB`); the
writer converts RGB frames into the planes its encoder takes and sends those
(:class:`ToPlanes`)::

    planes (one buffer: Y, then U, then V)
      ToRGB:    U, V --cv2.resize, bicubic, x2 where subsampled--> full size
                Y, U, V --cv2.merge--> interleaved --cv2.transform, 3x4 matrix--> RGB
                (chroma in 16 bits: only the RGB result is clamped to 8)
      ToPlanes: RGB --cv2.transform, the inverse--> Y, U, V --cv2.mixChannels--> Y plane
                U, V --cv2.resize, box average over the luma they cover--> U, V planes
    (both by strips of rows: a cache-sized scratch, not a frame's)

Why not ffmpeg's own conversion: swscale converts faithfully only on its
exact path (``accurate_rnd+full_chroma_int``), which is its plain C code: 14.6
ms of CPU per 1080p frame to RGB and 3.3 back on the 2-core machine of
benchmarks/README.md, against 1.6 to 2.4 ms and about 2 here; its fast
paths put chroma at the nearest sample (1.3 levels off on average, up to 154
at colour edges). OpenCV's own ``cvtColor(COLOR_YUV2RGB_I420)`` and its
inverse have one matrix (BT.601, limited range) and nearest-sample chroma
too. The planes are also half the bytes of RGB through each pipe.

Faithful means the same conversion as the exact one in floating point, to
rounding: the source's matrix and range (as :func:`tiler.io.video._matrix`
picks them), chroma samples centred on the luma samples they cover,
upsampled bicubically (as swscale's default scaler does; bilinear chroma
lost 1.2 dB more in a decode-encode round trip of saturated colour bars),
edges repeated. Results are within 2 levels of the exact value (1.55 at
most, 0.21 on average on a noisy 1080p clip). Other formats (more than 8 bits, grey, alpha, packed or semi-planar
layouts, RGB sources, ``uint16`` frames, interlaced 4:2:0 whose chroma lines
each belong to one field, 4:2:2 turned sideways; and for the writer, odd
sizes that split a chroma block) keep ffmpeg's exact conversion. The two
agree within a level or two on smooth pictures; at sharp chroma edges their
bicubic kernels differ (Keys' a = -0.75 here, swscale's own there) by up to
about 11 levels, each faithful to its kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (Kr, Kb) of each matrix, by the scale filter's names (tiler.io.video._SCALE_MATRIX's values)
_KR_KB = {
    "bt709": (0.2126, 0.0722),
    "bt470": (0.299, 0.114),
    "bt601": (0.299, 0.114),
    "smpte170m": (0.299, 0.114),
    "smpte240m": (0.212, 0.087),
    "fcc": (0.30, 0.11),
    "bt2020": (0.2627, 0.0593),
}

_STRIP_BYTES = 1 << 18
_CHROMA_LIFT = 256  # added to chroma while it is upsampled in 16 bits (see ToRGB)

# pixel format -> (horizontal, vertical) chroma subsampling
_PLANAR = {
    "yuv420p": (2, 2),
    "yuvj420p": (2, 2),
    "yuv422p": (2, 1),
    "yuvj422p": (2, 1),
    "yuv444p": (1, 1),
    "yuvj444p": (1, 1),
}


def rgb_matrix(matrix: str, full_range: bool) -> np.ndarray:
    """The 3x4 matrix taking 8-bit ``(Y, U, V, 1)`` to ``(R, G, B)``.

    Examples
    --------
    >>> m = rgb_matrix("bt709", full_range=False)
    >>> [round(float(v)) for v in m @ [235, 128, 128, 1]]      # limited-range white
    [255, 255, 255]
    """
    kr, kb = _KR_KB[matrix]
    kg = 1 - kr - kb
    ys, cs, y0 = (1.0, 255 / 255, 0.0) if full_range else (255 / 219, 255 / 224, 16.0)
    m = np.array(
        [
            [ys, 0.0, 2 * (1 - kr) * cs],
            [ys, -2 * (1 - kb) * kb / kg * cs, -2 * (1 - kr) * kr / kg * cs],
            [ys, 2 * (1 - kb) * cs, 0.0],
        ]
    )
    return np.hstack([m, (-m @ np.array([y0, 128.0, 128.0]))[:, None]])


@dataclass(frozen=True)
class Planes:
    """How one frame's 8-bit planes lie in ffmpeg's raw output, and the matrix to RGB."""

    pix_fmt: str
    width: int
    height: int
    sub_x: int
    sub_y: int
    matrix: np.ndarray

    @property
    def chroma_shape(self) -> tuple[int, int]:
        return -(-self.height // self.sub_y), -(-self.width // self.sub_x)

    @property
    def whole_chroma(self) -> bool:
        """Every chroma sample covers a whole block of luma samples (even sizes, for 4:2:0)."""
        return self.width % self.sub_x == 0 and self.height % self.sub_y == 0

    @property
    def nbytes(self) -> int:
        ch, cw = self.chroma_shape
        return self.width * self.height + 2 * ch * cw

    def split(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The Y, U and V planes of one frame's bytes ``raw``, as 2-D views."""
        h, w = self.height, self.width
        ch, cw = self.chroma_shape
        luma, chroma = raw[: h * w], raw[h * w :]
        return luma.reshape(h, w), chroma[: ch * cw].reshape(ch, cw), chroma[ch * cw :].reshape(ch, cw)


def planes_for(pix_fmt: str, width: int, height: int, matrix: str, full_range: bool) -> Planes | None:
    """The planes to ask ffmpeg for, or None where its own conversion is kept.

    Examples
    --------
    >>> planes_for("yuv420p", 1920, 1080, "bt709", False).nbytes
    3110400
    >>> planes_for("yuv420p10le", 1920, 1080, "bt709", False) is None
    True
    """
    if pix_fmt not in _PLANAR or matrix not in _KR_KB:
        return None
    sx, sy = _PLANAR[pix_fmt]
    return Planes(pix_fmt, width, height, sx, sy, rgb_matrix(matrix, full_range or pix_fmt.startswith("yuvj")))


class ToRGB:
    """Converts frames of one :class:`Planes` layout, reusing its scratch buffers (one thread at a time).

    Chroma is upsampled in 16 bits: bicubic overshoots at sharp colour edges,
    and clamping it to 8 bits there would move those pixels by up to 20
    levels (a saturated full-range edge). Chroma is stored with 256 added
    (unsigned, room for the undershoot) and the matrix takes it off; only the
    RGB result is clamped to 0..255.
    """

    def __init__(self, planes: Planes) -> None:
        from filters._cv2 import cv2

        self._cv2 = cv2
        self.planes = planes
        h, w = planes.height, planes.width
        ch, cw = planes.chroma_shape
        self._matrix = planes.matrix.copy()
        self._matrix[:, 3] -= _CHROMA_LIFT * (planes.matrix[:, 1] + planes.matrix[:, 2])
        self._up = (cw * planes.sub_x, ch * planes.sub_y)  # (width, height) of the upsampled chroma
        self._chroma = np.empty((2, ch, cw), np.uint16)
        self._u = np.empty((self._up[1], self._up[0]), np.uint16)
        self._v = np.empty_like(self._u)
        # Y, U, V interleaved and converted a strip of rows at a time: cache-sized scratch
        self._rows = min(h, max(1, _STRIP_BYTES // (6 * w)))
        self._y = np.empty((self._rows, w), np.uint16)
        self._yuv = np.empty((self._rows, w, 3), np.uint16)
        self._rgb = np.empty_like(self._yuv)
        self.raw = np.empty(planes.nbytes, np.uint8)  # ffmpeg's bytes are read into this

    def __call__(self, out: np.ndarray) -> None:
        """Convert :attr:`raw` into ``out``, an ``(height, width, 3)`` uint8 array."""
        cv2, p = self._cv2, self.planes
        h, w = p.height, p.width
        y, u8, v8 = p.split(self.raw)
        u, v = self._chroma
        np.add(u8, _CHROMA_LIFT, out=u, dtype=np.uint16)
        np.add(v8, _CHROMA_LIFT, out=v, dtype=np.uint16)
        if (p.sub_x, p.sub_y) != (1, 1):
            cv2.resize(u, self._up, dst=self._u, interpolation=cv2.INTER_CUBIC)
            cv2.resize(v, self._up, dst=self._v, interpolation=cv2.INTER_CUBIC)
            u, v = self._u[:h, :w], self._v[:h, :w]  # an odd size: the last chroma sample covers one luma sample
        for top in range(0, h, self._rows):
            end = min(h, top + self._rows)
            n = end - top
            np.copyto(self._y[:n], y[top:end], casting="unsafe")
            cv2.merge([self._y[:n], u[top:end], v[top:end]], dst=self._yuv[:n])
            cv2.transform(self._yuv[:n], self._matrix, dst=self._rgb[:n])  # below 0: 0
            cv2.convertScaleAbs(self._rgb[:n], dst=out[top:end])  # above 255: 255


class ToPlanes:
    """Converts RGB frames into one :class:`Planes` layout (whole chroma blocks only), reusing its scratch.

    The inverse of :func:`rgb_matrix` at full resolution, then each chroma
    plane averaged over the luma samples it covers (``cv2.resize``,
    ``INTER_AREA``: a box filter, centred like the reader's chroma). A round
    trip through :class:`ToRGB` keeps as much as swscale's exact path did
    (59.2 against 58.8 dB and 57.7 against 58.0 on two real clips, 33.1
    against 31.0 on saturated colour bars) at a fraction of its CPU.
    """

    def __init__(self, planes: Planes) -> None:
        from filters._cv2 import cv2

        if not planes.whole_chroma:
            raise ValueError(f"{planes.width}x{planes.height} {planes.pix_fmt}: chroma blocks must be whole")
        self._cv2 = cv2
        self.planes = planes
        inverse = np.linalg.inv(planes.matrix[:, :3])
        self.matrix = np.hstack([inverse, (-inverse @ planes.matrix[:, 3])[:, None]])
        w = planes.width
        rows = max(planes.sub_y, _STRIP_BYTES // (3 * w) // planes.sub_y * planes.sub_y)
        self._rows = min(rows, planes.height)
        self._yuv = np.empty((self._rows, w, 3), np.uint8)
        self._u = np.empty((self._rows, w), np.uint8)
        self._v = np.empty_like(self._u)
        self.raw = np.empty(planes.nbytes, np.uint8)  # sent to ffmpeg

    def __call__(self, frame: np.ndarray) -> None:
        """Convert ``frame``, ``(height, width, 3)`` uint8 RGB, into :attr:`raw`."""
        cv2, p = self._cv2, self.planes
        h, cw = p.height, p.chroma_shape[1]
        y, u, v = p.split(self.raw)
        for top in range(0, h, self._rows):
            end = min(h, top + self._rows)
            n = end - top
            cv2.transform(frame[top:end], self.matrix, dst=self._yuv[:n])
            cv2.mixChannels([self._yuv[:n]], [y[top:end], self._u[:n], self._v[:n]], [0, 0, 1, 1, 2, 2])
            for full, plane in ((self._u[:n], u), (self._v[:n], v)):
                rows = plane[top // p.sub_y : end // p.sub_y]
                cv2.resize(full, (cw, n // p.sub_y), dst=rows, interpolation=cv2.INTER_AREA)
