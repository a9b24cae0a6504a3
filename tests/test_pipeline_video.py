"""Video through the whole engine: faithful output, filtered frames, and clean failures."""

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from leaks import alive, cmdline, descendants, wait_until

import tiler
from filters.registry import resolve
from tiler.engine import Engine
from tiler.errors import FilterFailed, OutputExists, WorkerDied
from tiler.io.video import VideoReader, ffmpeg_exe, probe_video

TESTS = Path(__file__).resolve().parent
BEAR = TESTS / "data" / "bear_vp9_odd_161x121.webm"


def make_clip(path: Path, *, size="96x64", rate="24000/1001", seconds=1.0, audio=True, extra=()):
    cmd = [ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac", "-shortest"]
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", *extra, str(path)]
    subprocess.run(cmd, check=True)
    return path


def frames_of(path: Path) -> list[np.ndarray]:
    info = probe_video(path)
    with VideoReader(info) as reader:
        return [f.copy() for f in reader]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_filtered_video_keeps_timing_audio_and_matches_the_chain(tmp_path):
    src = make_clip(tmp_path / "in.mp4")
    dst = tmp_path / "out.mp4"
    chain = "blur:sigma=1.5,invert"
    assert tiler.process_video(src, dst, chain, workers=2) == dst
    a, b = probe_video(src), probe_video(dst)
    assert b.fps == Fraction(24000, 1001) and b.frame_count == a.frame_count
    assert (b.width, b.height) == (a.width, a.height)
    assert [s.codec for s in b.audio] == ["aac"]
    assert abs(float(b.duration) - float(a.duration)) < 0.05
    want = [resolve(chain).apply(f) for f in frames_of(src)]
    got = frames_of(dst)
    assert len(got) == len(want)
    # 96x64 saturated colour bars, chroma subsampled twice and x264 at CRF 18 between: about 35 dB
    assert min(psnr(g, w) for g, w in zip(got, want)) > 34


def test_odd_sized_webm_to_mp4_is_padded_not_stretched(tmp_path):
    dst = tmp_path / "bear.mp4"
    tiler.process_video(BEAR, dst, "edges", workers=2)
    info = probe_video(dst)
    assert (info.width, info.height) == (162, 122) and info.frame_count == 30
    src_frames, out_frames = frames_of(BEAR), frames_of(dst)
    want = resolve("edges").apply(src_frames[10])
    assert psnr(out_frames[10][:121, :161], want) > 30  # the picture sits where it was


def test_rotated_clip_comes_out_upright(tmp_path):
    # top half bright, bottom dark, stored rotated by 90 degrees with display metadata
    src = tmp_path / "rot.mp4"
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=white:size=64x48:rate=10:duration=0.5,drawbox=y=24:h=24:w=64:color=black:t=fill",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            str(tmp_path / "plain.mp4"),
        ],
        check=True,
    )
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-display_rotation",
            "90",
            "-i",
            str(tmp_path / "plain.mp4"),
            "-c",
            "copy",
            str(src),
        ],
        check=True,
    )
    assert probe_video(src).rotation in (90, 270)
    dst = tmp_path / "out.mp4"
    tiler.process_video(src, dst, "invert", workers=2)
    out = probe_video(dst)
    assert out.rotation == 0 and (out.width, out.height) == (probe_video(src).width, probe_video(src).height)
    shown = frames_of(src)[0]  # as displayed
    np.testing.assert_allclose(frames_of(dst)[0].mean(axis=2), 255 - shown.mean(axis=2), atol=12)


def test_existing_output_refused_and_kept(tmp_path):
    dst = tmp_path / "out.mp4"
    dst.write_bytes(b"old")
    with pytest.raises(OutputExists):
        tiler.process_video(BEAR, dst, "invert", workers=2)
    assert dst.read_bytes() == b"old"


def test_filter_error_mid_video_leaves_no_output(tmp_path):
    dst = tmp_path / "out.mp4"
    with pytest.raises(FilterFailed, match=r"bear_vp9_odd_161x121.webm frame \d+.*raises"):
        tiler.process_video(BEAR, dst, "faultfilters:raises", workers=2, inline_below=0, builtins_in_process=False)
    assert sorted(os.listdir(tmp_path)) == []


def test_killed_worker_mid_video_fails_cleanly(tmp_path):
    dst = tmp_path / "out.mp4"
    with Engine(workers=2, inline_below=0, builtins_in_process=False, retries=0) as engine:
        engine.process(np.zeros((8, 8), np.uint8), "invert")
        victim = engine.pool.pids[0]
        started = []

        def kill_soon(info):
            started.append(info)

        import threading

        timer = threading.Timer(0.5, os.kill, (victim, signal.SIGKILL))
        timer.start()
        try:
            with pytest.raises(WorkerDied, match="frame .*killed by SIGKILL"):
                engine.process_video(BEAR, dst, "faultfilters:slow:seconds=0.02", on_start=kill_soon)
        finally:
            timer.cancel()
    assert sorted(os.listdir(tmp_path)) == []


def test_ctrl_c_mid_video(tmp_path):
    dst = tmp_path / "out.mp4"
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tiler", str(BEAR), "-f", "faultfilters:slow:seconds=0.05", "-o", str(dst), "-w", "2"],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert wait_until(
            lambda: any(
                "ffmpeg" in cmdline(p)  # empty for a process that just exited
                for p in descendants(proc.pid)
            ),
            20,
        )
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == []


def test_killed_master_mid_video_leaves_no_process_and_next_run_sweeps(tmp_path):
    dst = tmp_path / "out.mp4"
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tiler",
            str(BEAR),
            "-f",
            "faultfilters:slow:seconds=0.05",
            "-o",
            str(dst),
            "-w",
            "2",
            "-q",
        ],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def encoder_running():  # the decoder may be done already: the clip's 30 small frames fit in its pipe
        return any("ffmpeg" in cmdline(p) and "pipe:0" in cmdline(p) for p in descendants(proc.pid))

    assert wait_until(encoder_running, 20), "the encoder never started"
    time.sleep(0.5)
    tree = descendants(proc.pid)
    proc.kill()
    proc.wait()
    assert wait_until(lambda: not alive(tree), 10), f"still running: {[cmdline(p) for p in alive(tree)]}"
    # The encoder may have flushed a temporary before it exited; the next run in that folder sweeps it.
    assert not dst.exists()
    assert tiler.process_video(BEAR, dst, "invert", workers=2) == dst
    assert sorted(os.listdir(tmp_path)) == ["out.mp4"]


def test_command_line_keeps_frame_times_converts_on_request_and_says_what_it_drops(tmp_path, capsys):
    from tiler.cli import main

    src = tmp_path / "gap.mkv"
    note = tmp_path / "note.txt"
    note.write_text("attached\n")
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=24:duration=3",
         "-vf", r"select=lt(t\,0.5)+gte(t\,2.5)", "-fps_mode", "passthrough", "-c:v", "libx264",
         "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-attach", str(note), "-metadata:s:t", "mimetype=text/plain",
         str(src)],
        check=True,
    )  # fmt: skip
    info = probe_video(src)
    assert info.variable_rate and info.frame_count == 24

    assert main([str(src), "-f", "invert", "-o", str(tmp_path / "kept.mp4"), "-w", "1", "--preset", "ultrafast"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"tileproc: {tmp_path / 'kept.mp4'}: stream 1 (attachment): only Matroska holds attachments"
    assert len(err) == 2 and err[1].startswith(f"tileproc: {src} -> {tmp_path / 'kept.mp4'} (")  # the output line
    kept = probe_video(tmp_path / "kept.mp4")
    assert kept.frame_count == 24 and kept.variable_rate
    assert [float((t - kept.timestamps[0]) * kept.time_base) for t in kept.timestamps][12] == 2.5

    cfr = tmp_path / "cfr.mkv"
    argv = [str(src), "-f", "invert", "-o", str(cfr), "-w", "1", "--preset", "ultrafast", "--fps", "12"]
    assert main(argv) == 0
    out = probe_video(cfr)
    assert (out.frame_count, out.fps, out.variable_rate) == (36, 12, False)  # 3 s at 12 fps
    assert main([str(src), "-f", "invert", "-o", str(tmp_path / "x.mp4"), "--fps", "0"]) == 2
    assert "--fps must be a positive number" in capsys.readouterr().err
