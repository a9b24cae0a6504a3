"""BMP: Pillow's encoder; 1-bit and exact palettes kept, alpha composited over white."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tiler.io._image import ImageInfo, bilevel, dpi_for, flatten_alpha, palette_for, palette_image, to_uint8

__all__ = ["encode"]


def encode(a: np.ndarray, tmp: Path, info: ImageInfo, quality: int | None) -> None:
    """One frame as BMP: 8-bit gray or RGB (alpha over white), 1-bit or palette when the source was."""
    a = flatten_alpha(to_uint8(a))
    found = palette_for(a, info, alpha_in_palette=False)
    if bilevel(a, info):
        im = Image.fromarray(a).convert("1", dither=Image.Dither.NONE)
    elif found is not None:
        im = palette_image(*found)
    else:
        im = Image.fromarray(np.ascontiguousarray(a))
    kwargs = {"dpi": info.dpi} if dpi_for("BMP", info.dpi) else {}
    im.save(tmp, "BMP", **kwargs)
