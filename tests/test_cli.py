"""The tileproc command on real files: outputs, exit codes, messages, interruption."""

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from leaks import alive, descendants, shm_entries, wait_until
from PIL import Image

from tiler.cli import main

TESTS = Path(__file__).resolve().parent
SLOW = f"{TESTS / 'faultfilters.py'}:slow:seconds=0.3"


@pytest.fixture
def photo(tmp_path, samples):
    path = tmp_path / "photo.jpg"
    shutil.copy(samples / "landscape_exif-orient6.jpg", path)
    return path


def png(path, shape=(60, 80, 3), seed=0):
    a = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    Image.fromarray(a).save(path)
    return a


def test_one_image_beside_input_upright(photo, capsys):
    before = photo.read_bytes()
    assert main([str(photo), "--filter", "blur:sigma=2", "-q"]) == 0
    out = photo.with_name("photo.tileproc.jpg")
    with Image.open(out) as im:
        assert im.size == (1800, 1200)  # EXIF orientation 6 applied, written upright
        assert im.getexif().get(0x0112, 1) == 1
    assert photo.read_bytes() == before


def test_output_file_and_chain_matches_python_api(tmp_path):
    src = tmp_path / "a.png"
    a = png(src)
    dst = tmp_path / "b.png"
    assert main([str(src), "-f", "blur:sigma=1.5", "-f", "invert", "-o", str(dst), "-q", "-w", "2"]) == 0
    from filters.registry import resolve

    np.testing.assert_array_equal(np.asarray(Image.open(dst)), resolve("blur:sigma=1.5,invert").apply(a))


def test_existing_output_refused_then_overwritten(tmp_path, capsys):
    src = tmp_path / "a.png"
    png(src)
    dst = tmp_path / "b.png"
    dst.write_bytes(b"keep me")
    assert main([str(src), "-f", "invert", "-o", str(dst)]) == 1
    assert dst.read_bytes() == b"keep me"
    assert "exists" in capsys.readouterr().err
    assert main([str(src), "-f", "invert", "-o", str(dst), "--overwrite", "-q"]) == 0
    assert Image.open(dst).size == (80, 60)


def test_output_equal_to_input_is_refused(tmp_path, capsys):
    src = tmp_path / "a.png"
    png(src)
    before = src.read_bytes()
    assert main([str(src), "-f", "invert", "-o", str(src), "--overwrite"]) == 1
    assert src.read_bytes() == before
    assert "input" in capsys.readouterr().err


def test_folder_goes_on_past_bad_files_and_exits_1(tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    png(src / "a.png")
    png(src / "sub" / "b.png", (33, 17))
    (src / "empty.png").write_bytes(b"")
    (src / "noise.jpg").write_bytes(os.urandom(3000))
    (src / "notes.txt").write_text("not an image, not picked up")
    code = main([str(src), "-f", "median:size=3", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "a.png",
        "sub/b.png",
    ]
    bad = [line for line in err if line.startswith("tileproc: error:")]
    assert len(bad) == 2 and any("empty.png" in line for line in bad) and any("noise.jpg" in line for line in bad)
    assert re.fullmatch(r"tileproc: .*in: 2 written, 0 skipped, 2 failed in \d+\.\d s", err[-1])


def test_usage_errors_exit_2(tmp_path, capsys):
    src = tmp_path / "a.png"
    png(src)
    assert main([str(src)]) == 2
    assert main([str(src), "-f", "blurr"]) == 2
    assert "blur" in capsys.readouterr().err  # suggests the close match
    assert main([str(src), "-f", "blur:sigma=-3"]) == 2
    assert "sigma" in capsys.readouterr().err
    assert main([str(src), "-f", "blur", "--tile-size", "0"]) == 2
    assert main([str(src), "-f", "blur", "--no-such-option"]) == 2


def test_missing_input_exits_1(tmp_path, capsys):
    assert main([str(tmp_path / "nope.png"), "-f", "invert"]) == 1
    assert "nope.png: no such file" in capsys.readouterr().err


def test_filters_listing(capsys):
    assert main(["filters"]) == 0
    out = capsys.readouterr().out
    for name in [
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
    ]:
        assert f"\n{name} " in "\n" + out


def test_custom_filter_from_file_and_module(tmp_path):
    src = tmp_path / "a.png"
    a = png(src, (40, 50))
    mine = tmp_path / "my_filters.py"
    mine.write_text(
        "import numpy as np\nfrom filters import filter\n\n"
        "@filter(halo=0, pointwise=True)\ndef halve(tile, *, by=2):\n    return (tile // by).astype(tile.dtype)\n"
    )
    assert main([str(src), "-f", f"{mine}:halve:by=4", "-o", str(tmp_path / "b.png"), "-q"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), a // 4)
    assert main([str(src), "-f", "faultfilters:negate", "-o", str(tmp_path / "c.png"), "-q"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.png")), 255 - a)


def test_python_dash_m_tiler(tmp_path):
    src = tmp_path / "a.png"
    png(src)
    r = subprocess.run(
        [sys.executable, "-m", "tiler", str(src), "-f", "invert", "-q"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a.tileproc.png").exists()


def start_cli(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    return subprocess.Popen(
        [sys.executable, "-m", "tiler", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def slow_folder(tmp_path, n=6):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(n):
        png(src / f"f{i}.png", (300, 200, 3), seed=i)
    return src


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_exits_promptly_and_leaves_nothing(tmp_path, sig, code):
    src = slow_folder(tmp_path)
    out = tmp_path / "out"
    proc = start_cli([str(src), "-f", SLOW, "-o", str(out), "-w", "2", "--tile-size", "50"], tmp_path)
    try:
        assert wait_until(lambda: len(descendants(proc.pid)) >= 3, 20), "workers never started"
        time.sleep(0.5)
        t = time.monotonic()
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # Ctrl-C reaches the whole process group
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=15)
        assert time.monotonic() - t < 10
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert not list(out.rglob("*.png")) if out.exists() else True
    assert not [p for p in out.rglob(".*")] if out.exists() else True


def test_killed_master_workers_exit_and_next_run_sweeps(tmp_path):
    src = slow_folder(tmp_path, n=3)
    out = tmp_path / "out"
    proc = start_cli([str(src), "-f", SLOW, "-o", str(out), "-w", "2", "--tile-size", "50"], tmp_path)
    assert wait_until(lambda: len(descendants(proc.pid)) >= 3, 20), "workers never started"
    time.sleep(0.5)
    children = descendants(proc.pid)
    proc.kill()
    proc.wait()
    assert wait_until(lambda: not alive(children), 10)
    # A later run removes what the killed one left (segments, temporaries) and completes.
    assert main([str(src), "-f", "invert", "-o", str(out), "-q", "--overwrite"]) == 0
    assert not [p for p in out.rglob(".*")]
    from tiler.sharedmem import segment_owner

    assert not [s for s in shm_entries() if segment_owner(s).pid == proc.pid]


# -- what the command says ---------------------------------------------------------


def test_a_run_says_what_it_wrote_unless_quiet(tmp_path, capsys):
    src = tmp_path / "a.png"
    png(src)
    assert main([str(src), "-f", "invert", "-o", str(tmp_path / "b.png")]) == 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(r"tileproc: .*a\.png -> .*b\.png \(\d+\.\d s\)", line)
    assert main([str(src), str(tmp_path / "b.png"), "-f", "invert", "-o", str(tmp_path / "out") + os.sep]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("tileproc: all inputs: 2 written, 0 skipped, 0 failed in ")
    assert main([str(src), "-f", "invert", "-o", str(tmp_path / "c.png"), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_verbose_shows_the_failing_filters_traceback(tmp_path, capsys):
    src = tmp_path / "a.png"
    png(src, (300, 300, 3))
    args = [str(src), "-f", "faultfilters:raises:message=kaboom", "-o", str(tmp_path / "b.png"), "-w", "2"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "kaboom" in err and "Traceback" not in err
    assert main([*args, "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'faultfilters.py", line' in err


def test_skip_existing_resumes_an_interrupted_batch_with_exit_0(tmp_path, capsys):
    src = slow_folder(tmp_path, n=4)
    out = tmp_path / "out"
    args = [str(src), "-f", "faultfilters:slow:seconds=0.05", "-o", str(out), "-w", "2", "--tile-size", "50"]

    def written() -> list[str]:  # complete outputs, not the hidden temporaries they are written under
        return sorted(p.name for p in out.glob("*.png") if not p.name.startswith("."))

    proc = start_cli(args, tmp_path)
    try:
        assert wait_until(lambda: len(written()) >= 1, 30), "nothing written"
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130
    first = written()
    assert 1 <= len(first) < 4
    resumed = subprocess.run(
        [sys.executable, "-m", "tiler", *args, "--skip-existing"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(TESTS)),
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{4 - len(first)} written, {len(first)} skipped, 0 failed" in resumed.stderr
    for i in range(4):
        np.testing.assert_array_equal(
            np.asarray(Image.open(out / f"f{i}.png")), np.asarray(Image.open(src / f"f{i}.png"))
        )
    assert main([str(src / "f0.png"), "-f", "invert", "-o", str(out / "f0.png"), "--skip-existing"]) == 0
    assert capsys.readouterr().err.strip() == f"tileproc: {out / 'f0.png'}: output exists, skipped"
    assert main([str(src), "-f", "invert", "-o", str(out), "--skip-existing", "--overwrite"]) == 2


def test_filters_alone_lists_with_options_it_is_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "filters").mkdir()
    png(tmp_path / "filters" / "a.png")
    assert main(["filters"]) == 0
    captured = capsys.readouterr()
    assert "\nblur " in "\n" + captured.out and "tileproc filters -f SPEC" in captured.err
    assert main(["filters", "-f", "invert", "-o", "out/", "-q"]) == 0
    assert (tmp_path / "out" / "a.png").exists()


def test_a_plugin_file_imports_its_sibling_modules_in_the_workers(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "helpers.py").write_text(
        "import numpy as np\n\ndef darker(tile, *, by=1):\n    return tile // np.uint8(by)\n"
    )
    (plugins / "myf.py").write_text(
        textwrap.dedent(
            """
            from filters import filter
            import helpers

            darker = filter(halo=0, pointwise=True)(helpers.darker)  # the call form, on an imported function
            """
        )
    )
    src = tmp_path / "a.png"
    a = png(src, (300, 300, 3))
    run = subprocess.run(
        [sys.executable, "-m", "tiler", str(src), "-f", "./plugins/myf.py:darker:by=3", "-o", "b.png", "-w", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), a // 3)


def test_a_slip_in_a_spec_names_the_spec_meant(tmp_path, capsys):
    src = tmp_path / "a.png"
    png(src)
    assert main([str(src), "-f", "blur sigma=3"]) == 2
    assert "did you mean 'blur:sigma=3'" in capsys.readouterr().err
