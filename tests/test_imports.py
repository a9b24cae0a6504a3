"""What tileproc imports: a still-image job loads only what it uses (checked on ``sys.modules``, never on time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

# Never needed by importing the command or by filtering a PNG in this process.
NEVER = (
    "av",
    "tifffile",
    "imagecodecs",
    "dask",
    "distributed",
    "fsspec",
    "tqdm",
    "cloudpickle",
    "onnxruntime",
    "multiprocessing",
    "concurrent.futures",
    "tiler.launcher",
    "tiler.cluster",
    "tiler.io.tiff",
    "filters.testing",
    "filters.onnx",
)

PROBE = """
import json, sys
{before}
print(json.dumps(sorted(sys.modules)))
"""


def loaded(code: str, tmp_path: Path) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``, from the working tree's tileproc."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=code)],
        cwd=tmp_path,  # not the repository: its folders must not shadow anything
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_import_tiler_loads_neither_numpy_nor_the_engine(tmp_path):
    mods = loaded("import tiler", tmp_path)
    assert "tiler.errors" in mods  # the probe saw tileproc
    assert not {"numpy", "cv2", "PIL", "filters", "tiler.engine", "tiler.pipeline"} & mods


def test_import_tiler_cli_loads_no_video_tiff_cluster_or_worker_launcher(tmp_path):
    mods = loaded("import tiler.cli", tmp_path)
    assert {"tiler.cli", "numpy", "filters.blur"} <= mods
    assert sorted(set(NEVER) & mods) == []


def test_import_tiler_cli_loads_no_video_module(tmp_path):
    assert "tiler.io.video" not in loaded("import tiler.cli", tmp_path)


def test_filtering_a_png_in_process_loads_only_what_it_uses(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(src)
    code = (
        "import tiler.cli\n"
        f"assert tiler.cli.main([{str(src)!r}, '-f', 'blur:sigma=2', '-o', {str(tmp_path / 'out.png')!r}, "
        "'-w', '0']) == 0"
    )
    mods = loaded(code, tmp_path)
    assert (tmp_path / "out.png").is_file()
    assert sorted(set(NEVER) & mods) == []


def test_the_public_api_is_unchanged_by_lazy_loading():
    import tiler
    from tiler.engine import Engine
    from tiler.pipeline import FileResult, Report

    assert (tiler.Engine, tiler.FileResult, tiler.Report) == (Engine, FileResult, Report)
    assert all(callable(getattr(tiler, name)) for name in tiler.__all__)
    assert set(tiler.__all__) <= set(dir(tiler))
    assert tiler.staging.__name__ == "tiler.staging"  # submodules, as before
    with pytest.raises(AttributeError, match="no_such_name"):
        tiler.no_such_name  # noqa: B018
    import filters

    assert filters.check_filter.__module__ == "filters.testing"
    with pytest.raises(AttributeError, match="no_such_name"):
        filters.no_such_name  # noqa: B018


def test_one_large_still_with_builtins_starts_no_worker_machinery(tmp_path):
    """The default command on a photo (built-ins, workers by default): filtered on threads here
    (a median: OpenCV does not spread it over threads of its own)."""
    src = tmp_path / "in.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # as a phone writes it: the EXIF block is checked without tifffile
    exif[0x010F] = "tileproc test camera"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(src, exif=exif)
    code = (
        "import tiler.cli\n"
        f"assert tiler.cli.main([{str(src)!r}, '-f', 'median:size=5', '-o', {str(tmp_path / 'out.jpg')!r}]) == 0"
    )
    mods = loaded(code, tmp_path)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (480, 640) and out.getexif()[0x010F] == "tileproc test camera"  # upright, EXIF kept
    assert "tiler.threads" in mods and "concurrent.futures" in mods  # the tiles ran on threads
    assert sorted(set(NEVER) & mods) == ["concurrent.futures"]


@pytest.mark.parametrize("preset", [None, "/opt/mine"])
def test_filtering_leaves_the_callers_library_path_alone(tmp_path, preset):
    """opencv-python's loader prepends its folder to LD_LIBRARY_PATH when first imported;
    tileproc's import of it puts the caller's value back (also when there was none)."""
    code = (
        "import os, numpy as np, tiler\n"
        "from filters.registry import resolve\n"
        "resolve('median:size=3')\n"
        "tiler.process(np.zeros((300, 300, 3), np.uint8), 'blur', workers=2)\n"
        "print('LD=' + repr(os.environ.get('LD_LIBRARY_PATH')))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    if preset is not None:
        env["LD_LIBRARY_PATH"] = preset
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"LD={preset!r}"
