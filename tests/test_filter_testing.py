"""check_filter passes honest filters and fails, with a useful message, on each
way a filter can be unsafe to tile."""

from __future__ import annotations

import functools
import re
import sys
import threading
import types

import filterdefs
import numpy as np
import pytest

from filters import BoxBlur, Chain, FunctionFilter, filter, resolve
from filters.registry import BUILTINS
from filters.testing import check_filter


@pytest.mark.parametrize("name", list(BUILTINS))
def test_passes_every_builtin(name):
    check_filter(BUILTINS[name]())


@pytest.mark.parametrize(
    "spec",
    [
        "blur:sigma=2.5,truncate=3",
        "median:size=7",
        "sharpen:sigma=0.7,amount=2,threshold=0.1",
        "blur,sharpen,median:size=5,edges,grayscale,contrast:contrast=2",
    ],
)
def test_passes_settings_and_chains(spec):
    check_filter(spec)


def test_passes_function_filters_and_mixed_lists():
    check_filter(filterdefs.boxmean_np)  # unconfigured: its defaults
    check_filter(filterdefs.boxmean_np(radius=3))
    check_filter([filterdefs.boxmean_np(radius=2), "invert", filterdefs.Levels(gain=1.5)])
    check_filter(filterdefs.SOFTEN)


def test_fails_a_halo_that_is_too_small():
    with pytest.raises(AssertionError) as info:
        check_filter(filterdefs.ShortHalo(reach=3))
    message = str(info.value)
    assert message.startswith("check_filter: shorthalo:reach=3 is not seamless: on a uint8 frame")
    assert re.search(r"pixel \(row \d+, col \d+\) is \S.* tiled but \S.* on the whole frame", message)
    assert "further away than its halo of 2: it needs halo >= 3 here. Declare a larger halo." in message


def test_fails_a_halo_that_is_one_short_of_a_chain():
    # The chain's halo is the sum of its members': one short member is enough.
    with pytest.raises(AssertionError, match=r"halo of 5: it needs halo >= 6"):
        check_filter(["blur:sigma=1", filterdefs.ShortHalo(reach=2)])


def test_fails_a_global_statistic():
    with pytest.raises(
        AssertionError, match=r"is not seamless: .*depend on the whole frame \(a global mean, min or max\?\)"
    ):
        check_filter(filterdefs.global_mean)


def test_fails_writing_into_the_input():
    with pytest.raises(AssertionError, match=r"writes_input wrote into its input .*read-only views.*np\.array\(tile\)"):
        check_filter(filterdefs.writes_input)


def test_fails_nondeterminism():
    with pytest.raises(AssertionError, match=r"noisy gives different results from applying it twice"):
        check_filter(filterdefs.noisy)


def test_fails_the_wrong_dtype():
    with pytest.raises(
        AssertionError, match=r"wrong_dtype failed on a uint8 frame .*returned float64\[.*\], expected uint8"
    ):
        check_filter(filterdefs.wrong_dtype)


def test_dtypes_and_channels_can_be_narrowed():
    with pytest.raises(
        AssertionError, match=r"uint8_only failed on a uint16 frame .*pass dtypes=\.\.\. or channels=\.\.\."
    ):
        check_filter(filterdefs.uint8_only)
    check_filter(filterdefs.uint8_only, dtypes=[np.uint8])
    check_filter(BoxBlur(radius=2), dtypes=["float32"], channels=[3], shapes=[(40, 30)], seed=5)


def test_fails_pointwise_with_a_halo():
    with pytest.raises(AssertionError, match=r"false_pointwise says it is pointwise but declares halo 1"):
        check_filter(filterdefs.false_pointwise)
    with pytest.raises(AssertionError, match=r"false_pointwise says it is pointwise"):
        check_filter(["blur", filterdefs.false_pointwise])


def _shifted(tile, *, by=0):
    return tile + np.array(by, tile.dtype)


def test_passes_closures_lambdas_and_partials_which_travel_by_value():
    reach = 1

    @filter(halo=reach)
    def local(tile):
        return tile.copy()

    shift = filter(halo=0, name="shift")(functools.partial(_shifted, by=0))
    check_filter([local, shift(by=1), filter(halo=0)(lambda tile: tile.copy())], dtypes=["uint8"], channels=[3])


def test_fails_a_filter_a_new_process_cannot_import(monkeypatch):
    # A module that exists only in this process: it pickles by reference here,
    # and a worker cannot import it. check_filter loads it as a worker would.
    mod = types.ModuleType("tileproc_only_in_memory")
    exec(
        "import numpy as np\nfrom filters import filter\n@filter(halo=0)\ndef ghost(tile):\n    return tile.copy()",
        vars(mod),
    )
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    with pytest.raises(AssertionError, match=r"ghost.*could not load it: ModuleNotFoundError.*tileproc_only_in_memory"):
        check_filter(mod.ghost)


def test_fails_unpicklable_params():
    # A filter function whose param is a lock: the chain cannot be pickled.
    with pytest.raises(AssertionError, match=r"cannot be sent to worker processes: TypeError.*lock"):
        check_filter(FunctionFilter(filterdefs.boxmean_np, {"radius": 1, "extra": threading.Lock()}))


def test_fails_bad_specs_as_assertions():
    with pytest.raises(AssertionError, match=r"check_filter: unknown filter 'blurr'"):
        check_filter("blurr")


_SEEN: list[tuple[str, tuple[int, ...]]] = []


@filter(halo=0)
def spy(tile):
    _SEEN.append((tile.dtype.name, tile.shape[2:]))
    return tile.copy()


def test_checks_against_every_layout_in_its_default_cases():
    _SEEN.clear()
    check_filter(spy)
    assert {d for d, _ in _SEEN} == {"uint8", "uint16", "float32"}
    assert {c for _, c in _SEEN} == {(), (1,), (3,), (4,)}


def test_accepts_a_chain_object():
    check_filter(Chain([BoxBlur(radius=1), BUILTINS["invert"]()]))
    assert resolve("boxblur").halo == 1
