"""Faults, hostile input and the file system: each case ends fast, clearly, and leaves nothing.

(The autouse fixture in conftest.py checks every test for leaked segments and processes.)
"""

import os
import resource
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import faultfilters as ff
import numpy as np
import pytest
from PIL import Image

import tiler
from filters import Chain, FilterError
from tiler.cli import main
from tiler.engine import Engine
from tiler.errors import TileprocError

TESTS = Path(__file__).resolve().parent
BEAR = TESTS / "data" / "bear_vp9_odd_161x121.webm"


def png(path, shape=(40, 60, 3), seed=0):
    a = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    Image.fromarray(a).save(path)
    return a


# -- processes --------------------------------------------------------------------


def test_a_frame_that_fits_neither_in_shared_memory_nor_on_disk_fails_at_once():
    import tempfile

    from tiler.sharedmem import FrameRing

    free = max(shutil.disk_usage(d).free for d in ("/dev/shm", tempfile.gettempdir()))
    ring = FrameRing(2)
    try:
        with pytest.warns(tiler.errors.TileprocWarning, match="files in"):
            with pytest.raises(TileprocError, match=r"needs \d+ MiB; /dev/shm has \d+ MiB free.*--shm-size="):
                ring.acquire(free)  # a slot holds two frames: twice what is free anywhere
    finally:
        ring.close()


def test_worker_threads_held_to_one_unless_asked():
    frame = np.zeros((300, 300), np.uint8)
    with Engine(workers=2, inline_below=0, builtins_in_process=False) as e:
        assert set(np.unique(e.process(frame, ff.report_threads))) == {1}
    with Engine(workers=1, threads=2, inline_below=0, builtins_in_process=False) as e:
        assert set(np.unique(e.process(frame, ff.report_threads))) == {2}


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_bytes_identical_for_any_workers_tiles_and_start_method(start_method):
    rng = np.random.default_rng(9)
    frame = rng.integers(0, 65535, (57, 83, 4), dtype=np.uint16)
    chain = [ff.jittery_boxmean(radius=2), "sharpen:sigma=1.2,amount=1.5", "median:size=3"]
    want = Chain([ff.jittery_boxmean(radius=2)] + list(tiler.engine.resolve_chain(chain[1:]).filters)).apply(frame)
    for workers, tile in [(1, 13), (2, 7), (2, (1, 83)), (2, None)]:
        with Engine(
            workers=workers, tile_size=tile, start_method=start_method, inline_below=0, builtins_in_process=False
        ) as e:
            assert e.process(frame, chain).tobytes() == want.tobytes()


def test_plain_function_and_unpicklable_params_refused_before_any_process_starts():
    frame = np.zeros((8, 8), np.uint8)
    with pytest.raises(FilterError, match="decorate it with @filters.filter"):
        tiler.process(frame, lambda t: t, workers=2)
    with Engine(workers=2) as e:
        with pytest.raises(FilterError, match="cannot be sent to worker processes: TypeError.*lock"):
            e.process(frame, ff.ApplyFunction(fn=threading.Lock()))
        assert e._pool is None  # refused before the pool started


# -- hostile and odd input ---------------------------------------------------------


def test_fifo_in_folder_does_not_block(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    png(src / "a.png")
    os.mkfifo(src / "pipe.png")
    assert main([str(src), "-f", "invert", "-o", str(tmp_path / "out"), "-q"]) == 1
    assert "pipe.png: not a regular file" in capsys.readouterr().err
    assert (tmp_path / "out" / "a.png").exists()
    assert main([str(src / "pipe.png"), "-f", "invert", "-q"]) == 1  # named directly: refused, not opened


def test_directory_named_like_an_image(tmp_path, capsys):
    (tmp_path / "x.png").mkdir()
    png(tmp_path / "y.png")
    assert main([str(tmp_path), "-f", "invert", "-q"]) == 0
    assert (tmp_path / "y.tileproc.png").exists()


def test_video_bigger_than_max_pixels_refused(tmp_path, capsys):
    assert main([str(BEAR), "-f", "invert", "-o", str(tmp_path / "o.mp4"), "--max-pixels", "10000"]) == 1
    err = capsys.readouterr().err
    assert "19481" in err and "10000" in err
    assert not list(tmp_path.iterdir())


def test_missing_codec_names_ffmpegs_reason_and_leaves_nothing(tmp_path, capsys):
    assert main([str(BEAR), "-f", "invert", "-o", str(tmp_path / "o.mp4"), "--codec", "nosuchcodec"]) == 1
    err = capsys.readouterr().err
    assert "nosuchcodec" in err
    assert len([line for line in err.splitlines() if line.startswith("tileproc: error:")]) == 1
    assert not list(tmp_path.iterdir())


# -- the file system ------------------------------------------------------------


def test_output_is_the_input_by_path_symlink_or_hard_link(tmp_path, capsys):
    src = tmp_path / "a.png"
    png(src)
    before = src.read_bytes()
    (tmp_path / "link.png").symlink_to(src)
    os.link(src, tmp_path / "hard.png")
    for out in [src, tmp_path / "link.png", tmp_path / "hard.png"]:
        assert main([str(src), "-f", "invert", "-o", str(out), "--overwrite"]) == 1
        assert src.read_bytes() == before
    assert "is the input" in capsys.readouterr().err


def run_limited(args, limit_bytes, cwd):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = dict(os.environ, PYTHONPATH=str(TESTS))
    return subprocess.run(
        [sys.executable, "-m", "tiler", *args],
        preexec_fn=limit,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_file_size_limit_below_a_frame_slot_is_refused_cleanly(tmp_path):
    src = tmp_path / "big.png"
    png(src, (300, 300, 3))
    # A custom filter: the frame goes to the workers through a slot, which the limit refuses.
    r = run_limited([str(src), "-f", "faultfilters:negate", "-o", str(tmp_path / "out.png")], 50_000, tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "ulimit -f" in r.stderr and "big.png" in r.stderr  # which file the slot was for
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]
    # Built-ins on one image run in this process without a slot: only the output meets the limit.
    r = run_limited([str(src), "-f", "invert", "-o", str(tmp_path / "out.png")], 50_000, tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "out.png" in r.stderr and "File too large" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]


def noisy_gif(path, frames=20, side=64):
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).quantize(64) for _ in range(frames)]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=100, loop=0)


def test_write_error_leaves_no_partial_output_and_keeps_old_content(tmp_path):
    # A file size limit above a frame slot (64x64 RGB, ~50 KB) but below the whole animation (~90 KB):
    # the encoder fails part way through writing, as on a full disk.
    src = tmp_path / "anim.gif"
    noisy_gif(src)
    assert src.stat().st_size > 80_000
    dst = tmp_path / "out.gif"
    r = run_limited([str(src), "-f", "invert", "-o", str(dst), "-w", "1"], 60_000, tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "File too large" in r.stderr
    assert not dst.exists()
    dst.write_bytes(b"old content")
    r = run_limited([str(src), "-f", "invert", "-o", str(dst), "-w", "1", "--overwrite"], 60_000, tmp_path)
    assert r.returncode == 1
    assert dst.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anim.gif", "out.gif"]


def test_video_write_error_leaves_nothing(tmp_path):
    dst = tmp_path / "out.mp4"  # lossless: far bigger than the limit, which is above a frame slot
    r = run_limited([str(BEAR), "-f", "invert", "-o", str(dst), "--crf", "0"], 300_000, tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name",
    ["-dash.png", "a:b.png", "new\nline.png", "émoji 🎞.png", os.fsdecode(b"bytes\xff\xfe.png"), "x" * 200 + ".png"],
)
def test_odd_names_in_a_folder(tmp_path, name, capsys):
    src = tmp_path / "in"
    src.mkdir()
    a = png(src / name)
    assert main([str(src), "-f", "invert", "-o", str(tmp_path / "out"), "-q"]) == 0
    out = tmp_path / "out" / name
    np.testing.assert_array_equal(np.asarray(Image.open(out)), 255 - a)
    assert [p.parent for p in (tmp_path / "out").rglob("*")] == [tmp_path / "out"]  # lands inside


def test_newline_in_a_failing_name_stays_on_one_line(tmp_path, capsys):
    bad = tmp_path / "bad\nname.png"
    bad.write_bytes(b"not a png")
    assert main([str(bad), "-f", "invert"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(errors) == 1 and "bad\\nname.png" in errors[0]


def test_name_too_long_for_its_output_fails_alone(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    png(src / ("y" * 250 + ".png"))
    png(src / "ok.png")
    assert main([str(src), "-f", "invert", "-q"]) == 1
    assert (src / "ok.tileproc.png").exists()
    assert "File name too long" in capsys.readouterr().err
    assert not [p for p in src.iterdir() if p.name.startswith(".")]


def test_dash_named_video_is_not_an_ffmpeg_option(tmp_path):
    src = tmp_path / "-i.webm"
    shutil.copy(BEAR, src)
    assert main(["-q", "-f", "invert", "--", str(src)]) == 0
    os.chdir(tmp_path)
    try:
        assert main(["-q", "-f", "invert", "--overwrite", "--", "-i.webm"]) == 0
    finally:
        os.chdir(TESTS)
    assert (tmp_path / "-i.tileproc.webm").exists()


def test_symlinks_to_files_are_followed_links_to_folders_listed(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    png(outside / "secret.png")
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    png(src / "sub" / "a.png")
    (src / "to_outside").symlink_to(outside)
    (src / "sub" / "loop").symlink_to(src)
    (src / "dangling.png").symlink_to(tmp_path / "nope.png")
    (src / "linked.png").symlink_to(outside / "secret.png")
    assert main([str(src), "-f", "invert", "-o", str(tmp_path / "out"), "-q"]) == 1  # the broken link fails
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()) == [
        "linked.png",
        "sub/a.png",
    ]
    err = capsys.readouterr().err
    assert f"{src / 'dangling.png'}: a broken symbolic link" in err
    assert f"{src / 'to_outside'}: a symbolic link to a folder; not followed" in err
    assert f"{src / 'sub' / 'loop'}: a symbolic link to a folder; not followed" in err
    assert (outside / "secret.png").exists() and not (outside / "secret.tileproc.png").exists()


def test_nothing_written_through_a_symlink_planted_in_the_output(tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    png(src / "sub" / "a.png")
    png(src / "b.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(elsewhere)  # a planted folder link
    (out / "b.png").symlink_to(elsewhere / "b.png")  # a planted file link
    assert main([str(src), "-f", "invert", "-o", str(out), "--overwrite"]) == 1
    assert list(elsewhere.iterdir()) == []
    assert "leads outside" in capsys.readouterr().err
    assert not (out / "b.png").is_symlink()  # the link itself was replaced, not written through


def test_output_name_collisions_detected_before_any_work(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    png(src / "a.png")
    Image.fromarray(png(tmp_path / "tmp.png")).save(src / "a.jpg")
    png(src / "c.png")
    assert main([str(src), "-f", "invert", "-o", str(tmp_path / "out"), "--format", "png", "-q"]) == 1
    err = capsys.readouterr().err
    assert "a.jpg" in err and "a.png" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c.png"]
    assert (
        main(
            [
                str(src / "a.png"),
                str(tmp_path / "tmp.png"),
                str(src / "c.png"),
                "-f",
                "invert",
                "-o",
                str(tmp_path / "o2") + "/",
            ]
        )
        == 0
    )
    (tmp_path / "o3").mkdir()
    assert (
        main(
            [
                str(src / "a.png"),
                str(tmp_path / "in" / ".." / "in" / "a.png"),
                "-f",
                "invert",
                "-o",
                str(tmp_path / "o3"),
            ]
        )
        == 2
    )


def test_output_folder_inside_input_folder_is_never_read_back(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    png(src / "a.png")
    out = src / "out"
    assert main([str(src), "-f", "invert", "-o", str(out), "-q"]) == 0
    assert main([str(src), "-f", "invert", "-o", str(out), "-q", "--overwrite"]) == 0
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()) == ["a.png", "out/a.png"]


def test_an_output_subfolder_that_cannot_be_made_fails_its_files_alone(tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    png(src / "sub" / "a.png")
    png(src / "b.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where the folder should go")
    assert main([str(src), "-f", "invert", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "cannot create the output folder" in err and "Traceback" not in err
    assert (out / "b.png").exists()
