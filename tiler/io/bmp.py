"""BMP: Pillow's encoder; 1-bit and exact palettes kept, alpha composited over white."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tiler.io._image import ImageInfo, dpi_for, flatten_alpha, policy_image, to_uint8

__all__ = ["encode"]


def encode(a: np.ndarray, tmp: Path, info: ImageInfo, quality: int | None) -> None:
    """One frame as BMP: 8-bit gray or RGB (alpha over white), 1-bit or palette when the source was."""
    a = flatten_alpha(to_uint8(a))
    im = policy_image(a, info, alpha_in_palette=False)
    kwargs = {"dpi": info.dpi} if dpi_for("BMP", info.dpi) else {}
    im.save(tmp, "BMP", **kwargs)
