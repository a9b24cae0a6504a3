"""Filter registry: spec parsing, names (built-in, module:attr, file.py:attr,
entry points), parameter typing, errors, and the listing."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import filterdefs
import numpy as np
import pytest

from filters import (
    BoxBlur,
    Chain,
    FilterError,
    GaussianBlur,
    Invert,
    Median,
    Sharpen,
    available,
    filter,
    resolve,
)
from filters.base import dumps
from filters.registry import BUILTINS, ENTRY_POINT_GROUP, lookup, parse
from tiler import Engine

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    "text, items",
    [
        ("blur", [("blur", {})]),
        ("blur:sigma=3", [("blur", {"sigma": "3"})]),
        ("blur:sigma=3,sharpen", [("blur", {"sigma": "3"}), ("sharpen", {})]),
        ("blur:sigma=3,truncate=2,invert", [("blur", {"sigma": "3", "truncate": "2"}), ("invert", {})]),
        (" blur : sigma = 3 , sharpen ", [("blur", {"sigma": "3"}), ("sharpen", {})]),
        ("blur,", [("blur", {})]),
        ("blur:", [("blur", {})]),
        ("mypkg.mod:boxmean:radius=4", [("mypkg.mod:boxmean", {"radius": "4"})]),
        ("mypkg.mod:boxmean", [("mypkg.mod:boxmean", {})]),
        ("./f.py:box:radius=2,k=3,/abs/g.py:h", [("./f.py:box", {"radius": "2", "k": "3"}), ("/abs/g.py:h", {})]),
        ("levels:mode=a:b", [("levels", {"mode": "a:b"})]),
    ],
)
def test_parse(text, items):
    assert parse(text) == items


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"^empty filter spec ''"),
        (" , ", r"^empty filter spec"),
        ("sigma=3,blur", r"parameter 'sigma=3' comes before any filter name; .* 'blur:sigma=3'"),
        ("blur:sigma=1,sigma=2", r"^blur: parameter sigma is given twice"),
        ("blur:2x=1", r"^blur: '2x' is not a parameter name"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(FilterError, match=message):
        parse(text)


# --------------------------------------------------------------------------
# Built-in names and parameter typing


def test_resolve_builtins_with_typed_params():
    chain = resolve("blur:sigma=3,truncate=2.5,boxblur:radius=2,median:size=5,sharpen,invert")
    assert isinstance(chain, Chain)
    assert chain.filters == (
        GaussianBlur(sigma=3.0, truncate=2.5),
        BoxBlur(radius=2),
        Median(size=5),
        Sharpen(),
        Invert(),
    )
    assert chain.halo == 8 + 2 + 2 + 4 + 0
    assert not chain.pointwise
    assert resolve("invert,gamma:gamma=2").pointwise


@pytest.mark.parametrize("name", list(BUILTINS))
def test_every_builtin_round_trips_through_its_description(name):
    f = BUILTINS[name]()
    assert resolve(f.describe()).filters == (f,)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("blurr", r"^unknown filter 'blurr'; did you mean blur or boxblur\? Known filters: blur, boxblur,"),
        ("zzzz", r"^unknown filter 'zzzz'\. Known filters: .*'package\.module:name' or 'path/to/file\.py:name'"),
        ("blur:sigmaa=2", r"^blur: unknown parameter 'sigmaa' \(did you mean sigma\?\); known: sigma, truncate$"),
        ("invert:level=2", r"^invert: unknown parameter 'level'.*known: none, it takes no parameters$"),
        ("blur:sigma=abc", r"^blur: sigma must be a number, got 'abc'$"),
        ("boxblur:radius=2.5", r"^boxblur: radius must be an integer, got '2\.5'$"),
        ("blur:sigma=-3", r"^blur: sigma must be > 0 and <= 100, got -3"),
        ("median:size=4", r"^median: size must be an odd integer in 1\.\.101, got 4$"),
    ],
)
def test_resolve_errors(spec, message):
    with pytest.raises(FilterError, match=message):
        resolve(spec)


def test_bool_int_float_str_params_parse_by_default_type():
    (f,) = resolve("filterdefs:Levels:gain=2,steps=4,clip=no,mode=square").filters
    assert f == filterdefs.Levels(gain=2.0, steps=4, clip=False, mode="square")
    assert isinstance(f.gain, float)
    for text, value in [
        ("true", True),
        ("Yes", True),
        ("1", True),
        ("on", True),
        ("FALSE", False),
        ("no", False),
        ("0", False),
        ("off", False),
    ]:
        assert resolve(f"filterdefs:Levels:clip={text}").filters[0].clip is value
    with pytest.raises(FilterError, match=r"^levels: clip must be true or false \(or yes/no, 1/0\), got 'maybe'$"):
        resolve("filterdefs:Levels:clip=maybe")
    with pytest.raises(FilterError, match=r"^levels: mode must be linear or square, got 'cubic'$"):
        resolve("filterdefs:Levels:mode=cubic")


# --------------------------------------------------------------------------
# Python objects and mixtures


def test_resolve_accepts_objects_and_mixtures():
    blur = GaussianBlur(sigma=2.0)
    chain = resolve([blur, "invert", filterdefs.boxmean_np, filterdefs.boxmean_np(radius=3), Median])
    assert chain.filters[0] is blur
    assert chain.filters[1] == Invert()
    assert chain.filters[2] == filterdefs.boxmean_np()
    assert chain.filters[3].halo == 3
    assert chain.filters[4] == Median()
    assert chain.halo == 8 + 0 + 1 + 3 + 1
    assert resolve(chain) is chain
    assert resolve((chain, "invert")).filters == chain.filters + (Invert(),)
    assert resolve(blur).filters == (blur,)


def test_resolve_rejects_plain_functions_and_empty_lists():
    with pytest.raises(FilterError, match=r"not_a_filter is a plain function; decorate it with @filters\.filter"):
        resolve(filterdefs.not_a_filter)
    with pytest.raises(FilterError, match=r"filter 'filterdefs:not_a_filter': not_a_filter is a plain function"):
        resolve("filterdefs:not_a_filter")
    with pytest.raises(FilterError, match=r"^empty filter chain"):
        resolve([])
    with pytest.raises(FilterError, match=r"not a filter: 3"):
        resolve(3)


# --------------------------------------------------------------------------
# module:attr


def test_module_attr_names():
    (f,) = resolve("filterdefs:boxmean_np:radius=4").filters
    assert f == filterdefs.boxmean_np(radius=4) and f.halo == 4
    (g,) = resolve("filterdefs:DEFAULT_LEVELS").filters
    assert g is filterdefs.DEFAULT_LEVELS
    (h,) = resolve("filterdefs:DEFAULT_LEVELS:steps=3").filters
    assert h == filterdefs.Levels(gain=0.5, steps=3)  # overrides a configured filter's params
    (k,) = resolve("filterdefs:SOFTEN_BOX:radius=1").filters
    assert k == filterdefs.boxmean_np(radius=1)
    assert resolve("filterdefs:SOFTEN,grayscale").filters == filterdefs.SOFTEN.filters + (BUILTINS["grayscale"](),)
    assert lookup("filterdefs:Levels") is filterdefs.Levels


def test_module_attr_errors():
    with pytest.raises(FilterError, match=r"cannot import module 'no_such_pkg\.mod' .*installed or on PYTHONPATH"):
        resolve("no_such_pkg.mod:thing")
    with pytest.raises(FilterError, match=r"filterdefs has no attribute 'boxmean_nq'; did you mean boxmean_np\?"):
        resolve("filterdefs:boxmean_nq")
    with pytest.raises(FilterError, match=r"SOFTEN is a chain .* takes no parameters; got radius"):
        resolve("filterdefs:SOFTEN:radius=1")
    with pytest.raises(
        FilterError, match=r"^boxmean_np: unknown parameter 'radiu' \(did you mean radius\?\); known: radius$"
    ):
        resolve("filterdefs:boxmean_np:radiu=2")


# --------------------------------------------------------------------------
# path/to/file.py:attr

PLUGIN_FILE = '''
import dataclasses
import numpy as np
from filters import Filter, filter

@filter(halo=lambda radius=1: radius)
def widen(tile, *, radius=1):
    """Grey dilation, reflect border."""
    pad = [(radius, radius), (radius, radius)] + [(0, 0)] * (tile.ndim - 2)
    p = np.pad(tile, pad, mode="reflect")
    out = tile.copy()
    for dr in range(2 * radius + 1):
        for dc in range(2 * radius + 1):
            np.maximum(out, p[dr:dr + tile.shape[0], dc:dc + tile.shape[1]], out=out)
    return out

@dataclasses.dataclass(frozen=True)
class Offset(Filter):
    """Adds a constant."""
    name = "offset"
    pointwise = True
    by: int = 1
    def apply(self, tile):
        return np.clip(tile.astype(np.int64) + self.by, 0, 255).astype(tile.dtype)
'''


@pytest.fixture
def plugin_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading a plugin file appends its folder
    path = tmp_path / "plugins" / "myfilters.py"
    path.parent.mkdir()
    path.write_text(PLUGIN_FILE)
    monkeypatch.chdir(tmp_path)
    return path


def test_file_attr_relative_and_absolute(plugin_file):
    (rel,) = resolve("plugins/myfilters.py:widen:radius=2").filters
    (ab,) = resolve(f"{plugin_file}:widen:radius=2").filters
    assert rel == ab and rel.halo == 2  # one module, however the path is written
    (off,) = resolve("./plugins/myfilters.py:Offset:by=5").filters
    assert off.params == {"by": 5} and off.pointwise
    frame = np.zeros((3, 3), np.uint8)
    frame[1, 1] = 9
    assert rel.apply(frame).min() == 9


def test_file_attr_filters_unpickle_in_a_fresh_process(plugin_file):
    chain = resolve("plugins/myfilters.py:widen:radius=2,plugins/myfilters.py:Offset:by=5")
    blob = chain.check_picklable()
    code = textwrap.dedent(
        """
        import pickle, sys
        import numpy as np
        filters = pickle.loads(sys.stdin.buffer.read())
        frame = np.zeros((4, 4), np.uint8)
        frame[0, 0] = 7
        out = frame
        for f in filters:
            out = f.apply(out)
        print(type(filters[1]).__name__, int(out.max()), int(out.min()))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=blob,
        capture_output=True,
        cwd="/",
        timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["Offset", "12", "5"]


def test_file_attr_errors(plugin_file):
    with pytest.raises(FilterError, match=r"no such file 'nope/x\.py' \(looked at .*nope/x\.py\)"):
        resolve("nope/x.py:widen")
    with pytest.raises(FilterError, match=r"has no attribute 'widn'; did you mean widen\?"):
        resolve("plugins/myfilters.py:widn")
    broken = plugin_file.parent / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(FilterError, match=r"loading plugins/broken\.py failed: RuntimeError: boom"):
        resolve("plugins/broken.py:x")


# --------------------------------------------------------------------------
# Entry points


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A distribution declaring three filters in the entry-point group, on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "tp_demo_plugin.py").write_text(
        textwrap.dedent(
            '''
            import numpy as np
            from filters import filter

            @filter(halo=lambda reach=2: reach)
            def spread(tile, *, reach=2):
                """Spreads things a little."""
                return tile.copy()
            '''
        )
    )
    dist = site / "tp_demo_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tp-demo-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "spread = tp_demo_plugin:spread\n"
        "broken = tp_demo_plugin:missing\n"
        "blur = tp_demo_plugin:spread\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield
    sys.modules.pop("tp_demo_plugin", None)


def test_entry_point_filters_resolve(installed_plugin):
    (f,) = resolve("spread:reach=5").filters
    assert f.name == "spread" and f.halo == 5
    assert resolve("blur").filters == (GaussianBlur(),)  # a built-in name wins
    with pytest.raises(FilterError, match=r"filter plugin 'broken' \(tp_demo_plugin:missing\) failed to load"):
        resolve("broken")
    with pytest.raises(FilterError, match=r"unknown filter 'spred'; did you mean spread\?"):
        resolve("spred")


def test_available_lists_plugins(installed_plugin):
    infos = {i.name: i for i in available() if "plugin" in i.source}
    assert infos["spread"].halo == 2
    assert infos["spread"].params == {"reach": 2}
    assert infos["spread"].summary == "Spreads things a little."
    assert infos["spread"].source == "plugin tp-demo-plugin (tp_demo_plugin:spread)"
    assert infos["spread"].error is None
    assert infos["broken"].error.startswith("failed to load: AttributeError")
    assert infos["blur"].error == "hidden by the built-in filter of the same name"


# --------------------------------------------------------------------------
# Listing


def test_available_builtins():
    infos = available()
    builtins = [i for i in infos if i.source == "built-in"]
    assert [i.name for i in builtins] == list(BUILTINS)
    by_name = {i.name: i for i in builtins}
    assert by_name["blur"].usage == "blur:sigma=1.0,truncate=4.0"
    assert by_name["blur"].halo == 4
    assert by_name["median"].params == {"size": 3} and by_name["median"].halo == 1
    assert by_name["sharpen"].halo == 4
    assert by_name["invert"].usage == "invert" and by_name["invert"].pointwise
    assert by_name["threshold"].halo == 0
    for info in builtins:
        assert info.summary and "\n" not in info.summary and "``" not in info.summary
        assert info.error is None
        assert resolve(info.usage).halo == info.halo


def test_chain_pickles_with_builtins_and_function_filters():
    chain = resolve("blur:sigma=2,filterdefs:boxmean_np:radius=2,invert")
    filters = pickle.loads(chain.check_picklable())
    assert filters == chain.filters


@pytest.mark.parametrize(
    "spec, meant",
    [
        ("blur sigma=3", "'blur:sigma=3'"),
        ("blur sigma=3 truncate=2", "'blur:sigma=3,truncate=2'"),
        ("blur:3", "'blur:sigma=3'"),
        ("blur:sigma=3:truncate=2", "'blur:sigma=3,truncate=2'"),
        ("sharpen:sigma=2:amount=0.5:threshold=1", "'sharpen:sigma=2,amount=0.5,threshold=1'"),
        ("blur:sigma", "'blur:sigma=1.0'"),
        ("invert:2", "'invert'"),
    ],
)
def test_slips_in_a_spec_name_the_spec_meant(spec, meant):
    with pytest.raises(FilterError, match=f"did you mean {re.escape(meant)}"):
        resolve(spec)
    assert resolve(meant.strip("'")).filters  # and what it suggests is right


# --------------------------------------------------------------------------
# The decorator form and the call form; what travels by reference or by value


def _spread(tile, *, radius=1):
    """Grey dilation by a (2*radius+1) square, reflect-101 border."""
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(tile, kernel, borderType=cv2.BORDER_REFLECT_101).reshape(tile.shape)


spread = filter(halo=lambda radius=1: radius)(_spread)
copied = filter(halo=0, pointwise=True)(np.copy)  # a function imported from elsewhere


def test_the_call_form_travels_by_reference_like_the_decorator_form():
    assert spread.where()[:2] == (__name__, "spread")
    assert copied.where()[:2] == (__name__, "copied")
    assert filterdefs.boxmean_np.where()[:2] == ("filterdefs", "boxmean_np")
    for f in (spread, copied, filterdefs.boxmean_np):
        assert pickle.loads(dumps(f)) is f  # by name: the very same object comes back
    assert resolve(f"{__name__}:spread:radius=2").filters == (spread(radius=2),)


def test_the_call_form_runs_on_workers():
    frame = np.random.default_rng(0).integers(0, 256, (300, 320, 3), dtype=np.uint8)
    with Engine(workers=2, inline_below=0, builtins_in_process=False, tile_size=40) as e:
        out = e.process(frame, [spread(radius=2), copied])
    np.testing.assert_array_equal(out, _spread(frame, radius=2))


def test_filters_nothing_can_import_travel_by_value():
    def make(offset):
        return filter(halo=0)(lambda tile: tile + np.uint8(offset))

    shift = make(3)
    assert shift.where() is None
    blob = dumps(shift)
    assert b"<lambda>" in blob  # its code travels in the blob
    (back,) = pickle.loads(Chain([shift]).check_picklable())
    assert back.apply(np.zeros((2, 2), np.uint8)).max() == 3


def test_an_edited_plugin_file_is_never_run_stale_by_long_lived_workers(tmp_path):
    """A warm engine's workers (like a Dask worker) loaded the file once: after an edit they run the new code."""
    from filters.base import FilterError, load_file_module
    from tiler.engine import Engine

    plugin = tmp_path / "myf.py"
    plugin.write_text("from filters import filter\n\n@filter(halo=0)\ndef f(tile):\n    return tile\n")
    frame = np.arange(300 * 400 * 3, dtype=np.uint32).reshape(300, 400, 3).astype(np.uint8)
    with Engine(workers=2, inline_below=0, builtins_in_process=False) as engine:
        np.testing.assert_array_equal(engine.process(frame, resolve(f"{plugin}:f")), frame)
        first = next(name for name in sys.modules if name.startswith("tileproc_plugin_myf_"))
        plugin.write_text("from filters import filter\n\n@filter(halo=0)\ndef f(tile):\n    return 255 - tile\n")
        np.testing.assert_array_equal(engine.process(frame, resolve(f"{plugin}:f")), 255 - frame)
    # a worker asked for the module as the parent loaded it, after the file changed: said, not run stale
    del sys.modules[first]
    with pytest.raises(FilterError, match="the file changed since this job loaded it"):
        load_file_module(str(plugin), first)
