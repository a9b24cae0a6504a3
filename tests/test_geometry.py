import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiler.geometry import Rect, TileGrid, default_tile_shape


@settings(max_examples=200, deadline=None)
@given(
    h=st.integers(1, 60),
    w=st.integers(1, 60),
    th=st.integers(1, 70),
    tw=st.integers(1, 70),
    halo=st.integers(0, 80),
)
def test_cores_cover_frame_exactly_once_and_windows_contain_them(h, w, th, tw, halo):
    grid = TileGrid(h, w, (th, tw), halo)
    cover = np.zeros((h, w), np.int32)
    for t in grid:
        cover[t.core.slices] += 1
        win, core = t.window, t.core
        assert win.r0 <= core.r0 < core.r1 <= win.r1 and win.c0 <= core.c0 < core.c1 <= win.c1
        # grown by the halo, clipped at the frame edge and nowhere else
        assert win.r0 == max(core.r0 - halo, 0) and win.r1 == min(core.r1 + halo, h)
        assert win.c0 == max(core.c0 - halo, 0) and win.c1 == min(core.c1 + halo, w)
        inner = t.core_in_window
        assert inner.shape == core.shape
    assert (cover == 1).all()


def test_tile_larger_than_frame_is_one_tile():
    grid = TileGrid(5, 3, (100, 100), 2)
    assert len(grid) == 1
    assert grid[0].core == Rect(0, 5, 0, 3) == grid[0].window


def test_one_pixel_tiles():
    grid = TileGrid(3, 4, (1, 1), 1)
    assert len(grid) == 12
    assert grid[5].core == Rect(1, 2, 1, 2)
    assert grid[5].window == Rect(0, 3, 0, 3)


def test_bad_tile_size_and_index():
    with pytest.raises(ValueError, match="tile size"):
        TileGrid(4, 4, (0, 3))
    with pytest.raises(IndexError):
        TileGrid(4, 4, (2, 2))[4]


def test_default_tiles_are_full_width_strips():
    th, tw = default_tile_shape(2160, 3840, workers=2, halo=5)
    assert tw == 3840 and 2160 / th >= 8
    assert default_tile_shape(10, 10, 16, 0) == (10, 10)
    assert default_tile_shape(2000, 50, 16, 40)[0] >= 80  # never thinner than twice the halo


def test_chain_tiles_cover_the_output_once_and_windows_compose():
    from filters.registry import resolve
    from tiler.geometry import chain_output_shape, chain_tiles, source_window

    chain = resolve("blur:sigma=1,resize:scale=0.5,boxblur:radius=2").filters
    assert chain_output_shape(chain, (41, 30, 3)) == (21, 15, 3)
    tiles = chain_tiles(chain, (41, 30), (4, 6))
    cover = np.zeros((21, 15), int)
    for t in tiles:
        cover[t.core.slices] += 1
        assert t.window == source_window(chain, t.core, (41, 30))
    assert (cover == 1).all()
    # Output rows 8:12, boxblur reach 2 -> resize rows 6:14 -> input rows 12:28 (area, 2:1)
    # -> blur reach 4 -> input rows 8:32.
    assert source_window(chain, Rect(8, 12, 0, 15), (40, 30)) == Rect(8, 32, 0, 30)
