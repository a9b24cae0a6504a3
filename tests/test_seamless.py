"""Promise 1, for every registered filter: tiled output equals the whole-frame result, bit for bit.

One engine per worker count runs every filter (and some chains) over shapes
(1x1, 1xN, Nx1, odd, prime, smaller and larger than the tile), dtypes,
channel counts and tile sizes, with tiles really dispatched to the workers, and
again on the threads that run chains of built-ins in the caller's process.
Chains that change the frame's size (resize at several ratios and kernels, a
custom x2 filter) run over the same grid: tiles are then cut from the output.
"""

import itertools

import numpy as np
import pytest

from filters.registry import available, resolve
from tiler.engine import Engine

SHAPES = [(1, 1), (1, 17), (13, 1), (2, 3), (31, 29), (37, 64)]
DTYPES = [np.uint8, np.uint16, np.float32]
CHANNELS = [None, 1, 3, 4]
TILES = [1, 5, 16, 1000]
VARIANTS = [
    "median:size=7",
    "blur:sigma=2.5",
    "boxblur:radius=4",
    "sharpen:sigma=1.5,amount=2,threshold=0.1",
    "blur:sigma=1.5,median:size=5,sharpen",
    "edges,invert,gamma:gamma=2.2",
    "emboss,contrast:contrast=1.5",
]
RESHAPING = [
    "resize:scale=0.6667",  # about 1280/1920
    "resize:scale=0.3083,interp=lanczos",  # about 333/1080
    "resize:scale=2,interp=cubic",
    "resize:width=5,height=9,interp=linear",
    "resize:scale=0.7,interp=nearest",
    "blur:sigma=2,resize:scale=0.5,sharpen",
    "filterdefs:half_mean,filterdefs:double_box:radius=2",
]


def specs():
    return [info.name for info in available() if info.source == "built-in"] + VARIANTS + RESHAPING


def frame_of(rng, shape, dtype):
    if dtype == np.float32:
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def test_every_builtin_is_covered():
    names = {info.name for info in available() if info.source == "built-in"}
    assert {
        "blur",
        "boxblur",
        "sharpen",
        "edges",
        "emboss",
        "median",
        "grayscale",
        "invert",
        "contrast",
        "gamma",
        "threshold",
        "resize",
    } <= names


@pytest.mark.parametrize("on", ["workers", "threads"])
@pytest.mark.parametrize("workers", [1, 2])
def test_tiled_equals_whole_for_every_filter(workers, on):
    rng = np.random.default_rng(workers)
    failures = []
    with Engine(workers=workers, inline_below=0, builtins_in_process=on == "threads") as engine:
        for spec in specs():
            chain = resolve(spec)
            for shape, dtype, channels in itertools.product(SHAPES, DTYPES, CHANNELS):
                full = shape if channels is None else (*shape, channels)
                frame = frame_of(rng, full, dtype)
                want = chain.apply(frame)
                for tile in TILES:
                    if tile == 1 and shape[0] * shape[1] > 64:
                        continue  # one-pixel tiles on the small shapes only: same code, fewer tasks
                    engine.tile_shape = (tile, tile)
                    got = engine.process(frame, chain)
                    if got.shape != want.shape or got.dtype != want.dtype or not np.array_equal(got, want):
                        failures.append(f"{spec} {full} {np.dtype(dtype)} tile {tile}")
    assert not failures, f"{len(failures)} cases differ, e.g. " + "; ".join(failures[:10])
