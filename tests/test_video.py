"""Video I/O: exact probing, faithful read -> write round trips, and clean failures.

Clips are generated with ffmpeg (lavfi) in a temporary folder, plus the real
odd-sized VP9 clip in tests/data and the sample in samples/. Every test also
runs under conftest's leak check: no ffmpeg process may outlive it.
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import subprocess
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from leaks import descendants

from tiler.errors import InputError, OutputError, OutputExists, VideoError
from tiler.io.video import (
    VIDEO_EXTENSIONS,
    VideoInfo,
    VideoReader,
    VideoWriter,
    ffmpeg_exe,
    is_video_path,
    output_name,
    probe_video,
    transcode_command,
)

DATA = Path(__file__).parent / "data"
SAMPLES = Path(__file__).resolve().parent.parent / "samples"
BEAR = DATA / "bear_vp9_odd_161x121.webm"


def ff(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    c = {
        name: d / name
        for name in ("ntsc24.mp4", "ntsc30.mkv", "upright.mp4", "rotated.mp4", "vfr.mp4", "tenbit.mp4", "fullrange.mp4")
    }
    x264 = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "12"]
    # 24000/1001 with two audio streams that run past the video
    ff(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=96x64:r=24000/1001:d=1,gblur=sigma=1.5",
        "-f",
        "lavfi",
        "-i",
        "sine=f=440:sample_rate=48000:d=1.6",
        "-f",
        "lavfi",
        "-i",
        "sine=f=880:sample_rate=44100:d=1.6",
        "-map",
        "0",
        "-map",
        "1",
        "-map",
        "2",
        *x264,
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        str(c["ntsc24.mp4"]),
    )
    # 30000/1001 in Matroska, whose timestamps are rounded to milliseconds
    ff(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=96x64:r=30000/1001:d=1,gblur=sigma=1.5",
        *x264,
        "-pix_fmt",
        "yuv420p",
        str(c["ntsc30.mkv"]),
    )
    # top half bright, bottom half dark; then rotated by metadata only
    ff(
        "-f",
        "lavfi",
        "-i",
        "color=c=white:s=64x48:r=25:d=0.4,drawbox=x=0:y=24:w=64:h=24:c=black:t=fill",
        *x264,
        "-pix_fmt",
        "yuv420p",
        str(c["upright.mp4"]),
    )
    ff("-display_rotation", "90", "-i", str(c["upright.mp4"]), "-c", "copy", str(c["rotated.mp4"]))
    # variable frame rate: one frame in four dropped, timestamps kept
    ff(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=64x48:r=30:d=2,gblur=sigma=1.5",
        "-f",
        "lavfi",
        "-i",
        "sine=d=2.5",
        "-vf",
        r"select=not(eq(mod(n\,4)\,1))",
        "-fps_mode",
        "vfr",
        *x264,
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        str(c["vfr.mp4"]),
    )
    ff(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=96x64:r=25:d=0.4,gblur=sigma=1.5",
        *x264,
        "-pix_fmt",
        "yuv420p10le",
        str(c["tenbit.mp4"]),
    )
    # full range, BT.709 tags: dark grey (16) left, light grey (235) right
    ff(
        "-f",
        "lavfi",
        "-i",
        "color=c=0x101010:s=64x48:r=25:d=0.4,drawbox=x=32:y=0:w=32:h=48:c=0xEBEBEB:t=fill",
        "-vf",
        # full range made explicitly: older ffmpeg only tags the stream from -color_range
        "setparams=color_primaries=bt709:color_trc=bt709,scale=out_range=pc:out_color_matrix=bt709,format=yuv420p",
        *x264,
        "-pix_fmt",
        "yuv420p",
        "-color_range",
        "pc",
        "-colorspace",
        "bt709",
        "-color_primaries",
        "bt709",
        "-color_trc",
        "bt709",
        str(c["fullrange.mp4"]),
    )
    return {k.split(".")[0]: v for k, v in c.items()} | {"bear": BEAR}


def read_all(info: VideoInfo, dtype=None) -> np.ndarray:
    with VideoReader(info, dtype=dtype) as r:
        return np.stack(list(r))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    peak = np.iinfo(a.dtype).max
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else float(10 * np.log10(peak**2 / mse))


def stream_seconds(path: Path, index: int) -> float:
    """Duration of one stream from its packets' timestamps (PyAV, independent of tileproc's probe)."""
    import av

    with av.open(str(path)) as c:
        packets = [(p.pts, p.duration or 0) for p in c.demux(c.streams[index]) if p.size and p.pts is not None]
        tb = c.streams[index].time_base
    start = min(p[0] for p in packets)
    end = max(p[0] + p[1] for p in packets)
    return float((end - start) * tb)


def ffmpeg_children() -> list[int]:
    out = []
    for pid in descendants():
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("ffmpeg"):
            out.append(pid)
    return out


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tileproc-" in p.name)


def write_all(dst: Path, info: VideoInfo, frames: np.ndarray, **kw) -> VideoWriter:
    kw.setdefault("preset", "ultrafast")
    with VideoWriter(dst, info, dtype=frames.dtype, **kw) as w:
        for f in frames:
            w.write(f)
    return w


# ---------------------------------------------------------------------------
# probe


def test_probe_ntsc_film_rate_and_two_audio_streams(clips):
    info = probe_video(clips["ntsc24"])
    assert info.fps == Fraction(24000, 1001)
    assert info.frame_count == 24 and info.duration == Fraction(24 * 1001, 24000)
    assert not info.variable_rate
    assert (info.width, info.height, info.rotation) == (96, 64, 0)
    assert info.frame_shape == (64, 96, 3) and info.dtype == np.uint8
    assert [(a.codec, a.sample_rate, a.channels) for a in info.audio] == [("aac", 48000, 1), ("aac", 44100, 1)]
    assert "mp4" in info.container and info.codec == "h264"


def test_probe_ntsc_rate_through_millisecond_timestamps(clips):
    info = probe_video(clips["ntsc30"])
    assert info.fps == Fraction(30000, 1001) and info.frame_count == 30
    assert "matroska" in info.container and not info.variable_rate


def test_probe_odd_size_vp9():
    info = probe_video(BEAR)
    assert (info.width, info.height) == (161, 121)
    assert info.codec == "vp9" and info.fps == Fraction(30000, 1001) and info.frame_count == 30
    assert info.audio == ()


def test_probe_sample_clip():
    info = probe_video(SAMPLES / "flower.mp4")
    assert (info.width, info.height, info.fps, info.frame_count) == (960, 540, Fraction(30000, 1001), 150)
    assert [(a.codec, a.channels, a.sample_rate) for a in info.audio] == [("aac", 2, 48000)]


def test_probe_rotation_gives_displayed_size(clips):
    info = probe_video(clips["rotated"])
    assert (info.coded_width, info.coded_height) == (64, 48)
    assert (info.width, info.height) == (48, 64)
    assert info.rotation == 270  # display matrix "rotation of 90 degrees" counter-clockwise


def test_probe_variable_rate(clips):
    info = probe_video(clips["vfr"])
    assert info.variable_rate
    assert info.frame_count == 45  # 60 frames in 2 s, one in four dropped
    assert info.fps == Fraction(45, 2) and info.duration == 2


def test_probe_ten_bit(clips):
    info = probe_video(clips["tenbit"])
    assert info.pix_fmt == "yuv420p10le" and info.bit_depth == 10 and info.dtype == np.uint16


def test_probe_full_range_and_colour_tags(clips):
    info = probe_video(clips["fullrange"])
    assert info.full_range
    assert (info.color_matrix, info.color_primaries, info.color_transfer) == ("bt709", "bt709", "bt709")
    assert not probe_video(clips["ntsc24"]).full_range


def test_info_is_a_small_frozen_picklable_value(clips):
    info = probe_video(clips["ntsc24"])
    assert pickle.loads(pickle.dumps(info)) == info
    with pytest.raises(AttributeError):
        info.fps = Fraction(25)  # type: ignore[misc]


def test_probe_refuses_what_is_not_a_video(tmp_path, clips):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("hello, this is not a video\n" * 50)
    ff("-f", "lavfi", "-i", "sine=d=0.5", str(tmp_path / "sound.m4a"))
    cases = {
        tmp_path / "missing.mp4": "no such file",
        tmp_path / "empty.mp4": "empty file",
        tmp_path / "text.mp4": "not a video",
        tmp_path / "sound.m4a": "no video stream",
        tmp_path: "is a folder",
    }
    for path, words in cases.items():
        with pytest.raises(InputError) as err:
            probe_video(path)
        message = str(err.value)
        assert message.startswith(str(path)) and words in message and "\n" not in message


def test_probe_max_pixels(clips):
    with pytest.raises(InputError, match=r"96x64 = 6144 pixels exceed the limit of 6000"):
        probe_video(clips["ntsc24"], max_pixels=6000)
    assert probe_video(clips["ntsc24"], max_pixels=6144).pixels == 6144


# ---------------------------------------------------------------------------
# reading


@pytest.mark.parametrize("name", ["ntsc24", "ntsc30", "rotated", "vfr", "tenbit", "fullrange", "bear"])
def test_reader_delivers_exactly_frame_count(clips, name):
    info = probe_video(clips[name])
    buf = np.zeros(info.frame_shape, info.dtype)
    with VideoReader(info) as r:
        n = 0
        while r.readinto(buf):
            n += 1
        assert r.readinto(buf) is False  # stays at the end
    assert n == info.frame_count == r.frames_read


def test_reader_applies_rotation(clips):
    upright = read_all(probe_video(clips["upright"]))
    frames = read_all(probe_video(clips["rotated"]))
    assert frames.shape[1:] == (64, 48, 3)
    # stored top (bright) is displayed on the left
    assert frames[:, :, :20].mean() > 200 and frames[:, :, -20:].mean() < 50
    np.testing.assert_array_equal(frames, np.rot90(upright, 1, axes=(1, 2)))


def test_reader_keeps_full_range(clips):
    frames = read_all(probe_video(clips["fullrange"]))
    assert abs(frames[:, :, :28].mean() - 16) < 3  # read as limited range it would be ~0
    assert abs(frames[:, :, 36:].mean() - 235) < 3  # ... and ~255


def test_reader_ten_bit_as_uint16_and_uint8(clips):
    info = probe_video(clips["tenbit"])
    deep = read_all(info)
    assert deep.dtype == np.uint16 and deep.max() > 255 * 256  # the full 16-bit scale
    shallow = read_all(info, dtype=np.uint8)
    assert shallow.dtype == np.uint8
    assert np.abs((deep >> 8).astype(int) - shallow).mean() < 1.0


def test_reader_rejects_a_wrong_buffer(clips):
    info = probe_video(clips["ntsc24"])
    with VideoReader(info) as r:
        for bad in (
            np.zeros((64, 96, 3), np.uint16),
            np.zeros((64, 96, 4), np.uint8),
            np.zeros((96, 64, 3), np.uint8).T,
        ):
            with pytest.raises(ValueError):
                r.readinto(bad)


def test_reader_stopped_early_leaves_no_process(clips):
    info = probe_video(SAMPLES / "flower.mp4")
    buf = np.empty(info.frame_shape, info.dtype)
    with VideoReader(info) as r:
        assert r.readinto(buf) and r.readinto(buf)
        assert ffmpeg_children()
    assert not ffmpeg_children()


def test_reader_closed_from_another_thread(clips):
    info = probe_video(SAMPLES / "flower.mp4")
    buf = np.empty(info.frame_shape, info.dtype)
    with VideoReader(info) as r:
        assert r.readinto(buf)
        t = threading.Thread(target=r.close)
        t.start()
        t.join()
        with pytest.raises(VideoError, match="flower.mp4"):
            while r.readinto(buf):
                pass
    assert not ffmpeg_children()


def test_reader_blocked_in_another_thread_is_released_by_close():
    info = probe_video(SAMPLES / "flower.mp4")
    buf = np.empty(info.frame_shape, info.dtype)
    errors: list[BaseException] = []
    with VideoReader(info) as r:
        assert r.readinto(buf)
        os.kill(r._proc.pid, signal.SIGSTOP)  # ffmpeg stalls: the reading thread blocks on an empty pipe

        def drain():
            try:
                while r.readinto(buf):
                    pass
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        t = threading.Thread(target=drain)
        t.start()
        t.join(0.3)
        assert t.is_alive()
        r.close()
        t.join(5)
        assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], VideoError) and "stopped" in str(errors[0])
    assert not ffmpeg_children()


def test_reader_ffmpeg_killed_mid_stream(clips):
    info = probe_video(SAMPLES / "flower.mp4")
    buf = np.empty(info.frame_shape, info.dtype)
    with VideoReader(info) as r:
        assert r.readinto(buf)
        os.kill(r._proc.pid, signal.SIGKILL)
        with pytest.raises(VideoError) as err:
            while r.readinto(buf):
                pass
    message = str(err.value)
    assert message.startswith(str(info.path)) and "SIGKILL" in message and "\n" not in message
    assert r.frames_read < info.frame_count
    assert not ffmpeg_children()


def test_reader_dropped_without_close_is_reaped(clips):
    import gc

    r = VideoReader(probe_video(SAMPLES / "flower.mp4")).open()
    assert r.read() is not None and ffmpeg_children()
    del r
    gc.collect()
    assert not ffmpeg_children()


def test_truncated_file_is_never_silently_short(tmp_path):
    whole = tmp_path / "whole.mp4"
    ff(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=320x240:r=25:d=2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-movflags",
        "+faststart",
        str(whole),
    )
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    try:
        info = probe_video(cut)
        assert info.frame_count < 50
        frames = read_all(info)
    except (InputError, VideoError) as err:
        assert str(err).startswith(str(cut))
    else:  # whatever is delivered is what probe promised
        assert len(frames) == info.frame_count


def test_file_cut_before_its_index_is_refused(tmp_path):
    whole = tmp_path / "whole.mp4"
    ff("-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=1", "-c:v", "libx264", "-preset", "ultrafast", str(whole))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:-400])  # the index (moov) is at the end
    with pytest.raises(InputError, match="cut.mp4"):
        probe_video(cut)


# ---------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize(
    "name, ext",
    [
        ("ntsc24", ".mp4"),
        ("vfr", ".webm"),
        ("ntsc30", ".mkv"),
        ("ntsc24", ".mov"),
        ("bear", ".mp4"),
        ("bear", ".webm"),
        ("rotated", ".mp4"),
        ("vfr", ".mp4"),
        ("tenbit", ".mp4"),
        ("tenbit", ".webm"),
        ("fullrange", ".mp4"),
    ],
)
def test_roundtrip_keeps_count_rate_size_and_pixels(clips, tmp_path, name, ext):
    info = probe_video(clips[name])
    frames = read_all(info)
    dst = tmp_path / f"out{ext}"
    w = write_all(dst, info, frames)
    out = probe_video(dst)
    assert leftovers(tmp_path) == []
    assert out.frame_count == info.frame_count == len(frames)
    assert out.fps == info.fps and out.duration == info.duration
    assert out.variable_rate == info.variable_rate and out.rotation == 0
    shown = [float((t - info.timestamps[0]) * info.time_base) for t in info.timestamps]
    again = [float((t - out.timestamps[0]) * out.time_base) for t in out.timestamps]
    assert np.allclose(shown, again, atol=0.0011)  # each frame at its own time (Matroska: milliseconds)
    assert (out.width, out.height) == w.size
    back = read_all(out, dtype=frames.dtype)[:, : info.height, : info.width]
    assert psnr(frames, back) >= 35
    if info.bit_depth > 8:
        assert out.bit_depth == info.bit_depth
    assert out.full_range == info.full_range
    if info.color_matrix:
        assert (out.color_matrix, out.color_primaries, out.color_transfer) == (
            info.color_matrix,
            info.color_primaries,
            info.color_transfer,
        )


def test_odd_size_padded_by_repeating_the_edge_for_h264(tmp_path):
    info = probe_video(BEAR)
    frames = read_all(info)
    w = write_all(tmp_path / "bear.mp4", info, frames)
    assert w.size == (162, 122)
    back = read_all(probe_video(tmp_path / "bear.mp4")).astype(int)
    assert np.abs(back[:, :121, 161] - back[:, :121, 160]).mean() < 4  # a copy, not black
    assert np.abs(back[:, 121, :161] - back[:, 120, :161]).mean() < 4
    assert write_all(tmp_path / "bear.webm", info, frames).size == (161, 121)  # VP9 keeps odd sizes


def test_rotated_clip_is_written_upright(clips, tmp_path):
    info = probe_video(clips["rotated"])
    write_all(tmp_path / "out.mp4", info, read_all(info))
    out = probe_video(tmp_path / "out.mp4")
    assert (out.width, out.height, out.rotation, out.coded_width) == (48, 64, 0, 48)
    back = read_all(out)
    assert back[:, :, :20].mean() > 200 and back[:, :, -20:].mean() < 50


@pytest.mark.parametrize("ext, codec", [(".mp4", "aac"), (".mkv", "aac"), (".webm", "opus")])
def test_audio_streams_kept_at_their_own_length(clips, tmp_path, ext, codec):
    info = probe_video(clips["ntsc24"])
    dst = tmp_path / f"out{ext}"
    write_all(dst, info, read_all(info))
    out = probe_video(dst)
    assert [(a.codec, a.channels) for a in out.audio] == [(codec, 1), (codec, 1)]
    assert out.frame_count == info.frame_count
    for a, b in zip(info.audio, out.audio):
        # the source's audio runs 0.6 s past the video, and still does
        assert abs(stream_seconds(dst, b.index) - stream_seconds(info.path, a.index)) < 0.03


def test_audio_from_another_file(clips, tmp_path):
    info = probe_video(BEAR)
    dst = tmp_path / "bear.mkv"
    write_all(dst, info, read_all(info), audio_from=clips["ntsc24"])
    out = probe_video(dst)
    assert [a.codec for a in out.audio] == ["aac", "aac"]
    assert out.frame_count == info.frame_count
    assert abs(stream_seconds(dst, out.audio[0].index) - stream_seconds(clips["ntsc24"], 1)) < 0.03


def test_variable_rate_audio_keeps_its_length(clips, tmp_path):
    info = probe_video(clips["vfr"])
    dst = tmp_path / "out.mp4"
    write_all(dst, info, read_all(info))
    out = probe_video(dst)
    assert out.duration == 2 and len(out.audio) == 1 and out.variable_rate
    assert abs(stream_seconds(dst, out.audio[0].index) - stream_seconds(info.path, 1)) < 0.03


def test_gif_keeps_frames_and_size(tmp_path):
    info = probe_video(BEAR)
    write_all(tmp_path / "bear.gif", info, read_all(info))
    out = probe_video(tmp_path / "bear.gif")
    assert (out.width, out.height, out.frame_count, out.audio) == (161, 121, 30, ())


def test_default_encoder_settings(clips, tmp_path):
    """The defaults without overrides: H.264 CRF 18, preset medium."""
    info = probe_video(clips["ntsc24"])
    frames = read_all(info)
    with VideoWriter(tmp_path / "out.mp4", info) as w:
        cmd = w.command()
        for f in frames:
            w.write(f)
    assert cmd[cmd.index("-c:v") + 1] == "libx264" and cmd[cmd.index("-crf") + 1] == "18"
    assert cmd[cmd.index("-preset") + 1] == "medium" and "+faststart" in cmd
    assert psnr(frames, read_all(probe_video(tmp_path / "out.mp4"))) >= 35


def test_transcode_command_matches_the_writer(clips, tmp_path):
    info = probe_video(clips["vfr"])
    dst = tmp_path / "bench.mp4"
    subprocess.run(transcode_command(info, dst, vf="hflip", preset="ultrafast"), check=True)
    out = probe_video(dst)
    assert (out.frame_count, out.fps, len(out.audio)) == (45, Fraction(45, 2), 1)


def test_names_that_look_like_options_or_protocols(clips, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = Path("-i:weird.mp4")
    src.write_bytes(clips["ntsc24"].read_bytes())
    info = probe_video(src)
    assert info.frame_count == 24
    write_all(Path("-y:out.mp4"), info, read_all(info))
    assert probe_video(Path("-y:out.mp4")).frame_count == 24
    assert sorted(os.listdir(tmp_path)) == ["-i:weird.mp4", "-y:out.mp4"]


# ---------------------------------------------------------------------------
# writer failures: nothing at the final path, no temporary, no process


def test_unknown_codec(clips, tmp_path):
    info = probe_video(clips["ntsc24"])
    frames = read_all(info)
    dst = tmp_path / "out.mp4"
    with pytest.raises(VideoError) as err:
        write_all(dst, info, frames, codec="no_such_codec")
    message = str(err.value)
    assert message.startswith(str(dst)) and "no_such_codec" in message and "\n" not in message
    assert not dst.exists() and leftovers(tmp_path) == [] and not ffmpeg_children()


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_exception_mid_write_leaves_nothing(clips, tmp_path, exc):
    info = probe_video(clips["ntsc24"])
    frames = read_all(info)
    dst = tmp_path / "out.mp4"
    with pytest.raises(exc):
        with VideoWriter(dst, info, preset="ultrafast") as w:
            for f in frames[:5]:
                w.write(f)
            raise exc("stop")
    assert not dst.exists() and leftovers(tmp_path) == [] and not ffmpeg_children()


def test_ffmpeg_killed_mid_write(clips, tmp_path):
    info = probe_video(clips["ntsc24"])
    frames = read_all(info)
    dst = tmp_path / "out.mp4"
    with pytest.raises(VideoError) as err:
        with VideoWriter(dst, info, preset="ultrafast") as w:
            w.write(frames[0])
            os.kill(w._proc.pid, signal.SIGKILL)
            for f in frames[1:]:
                w.write(f)
    assert str(err.value).startswith(str(dst)) and "SIGKILL" in str(err.value)
    assert not dst.exists() and leftovers(tmp_path) == [] and not ffmpeg_children()


def test_ffmpeg_failing_mid_stream_disk_full(clips, tmp_path):
    """The output file may not grow past 30 kB (as on a full disk): ffmpeg dies mid-stream."""
    info = probe_video(clips["ntsc24"])
    noise = np.random.default_rng(0).integers(0, 256, (400, *info.frame_shape), dtype=np.uint8)
    dst = tmp_path / "out.mp4"
    w = VideoWriter(dst, info, preset="ultrafast", audio_from=None)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, hard))
    try:
        w.open()  # the child inherits the limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    with pytest.raises(VideoError) as err:
        with w:
            for f in noise:
                w.write(f)
    assert str(err.value).startswith(str(dst)) and "SIGXFSZ" in str(err.value)
    assert 0 < w.frames_written < len(noise)  # it failed mid-stream (pipe and ffmpeg hold ~120 frames)
    assert not dst.exists() and leftovers(tmp_path) == [] and not ffmpeg_children()


def test_abort_from_another_thread(clips, tmp_path):
    info = probe_video(clips["ntsc24"])
    frames = read_all(info)
    dst = tmp_path / "out.mp4"
    with pytest.raises(VideoError, match="stopped"):
        with VideoWriter(dst, info, preset="ultrafast") as w:
            w.write(frames[0])
            t = threading.Thread(target=w.abort)
            t.start()
            t.join()
            w.write(frames[1])
    assert not dst.exists() and leftovers(tmp_path) == [] and not ffmpeg_children()


def test_close_after_a_failed_write_does_not_pretend(clips, tmp_path):
    info = probe_video(clips["ntsc24"])
    frames = read_all(info)
    dst = tmp_path / "out.mp4"
    w = VideoWriter(dst, info, codec="no_such_codec").open()
    with pytest.raises(VideoError):
        for f in frames:
            w.write(f)
        w.close()
    with pytest.raises(VideoError, match="nothing was written"):
        w.close()
    assert not dst.exists() and leftovers(tmp_path) == []


def test_write_blocked_in_another_thread_is_released_by_abort(clips, tmp_path):
    info = probe_video(clips["ntsc24"])
    frame = read_all(info)[0]
    dst = tmp_path / "out.mp4"
    errors: list[BaseException] = []
    w = VideoWriter(dst, info, preset="ultrafast").open()
    os.kill(w._proc.pid, signal.SIGSTOP)  # ffmpeg stalls: the pipe fills and write blocks

    def feed():
        try:
            while True:
                w.write(frame)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=feed)
    t.start()
    t.join(0.3)
    assert t.is_alive()
    w.abort()
    t.join(5)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], VideoError) and "stopped" in str(errors[0])
    with pytest.raises(VideoError, match="stopped"):
        w.close()
    assert not dst.exists() and leftovers(tmp_path) == [] and not ffmpeg_children()


def test_no_frames_written(clips, tmp_path):
    info = probe_video(clips["ntsc24"])
    dst = tmp_path / "out.mp4"
    with pytest.raises(VideoError, match="no frames"):
        with VideoWriter(dst, info):
            pass
    assert not dst.exists() and leftovers(tmp_path) == []


def test_existing_output_and_input_are_protected(clips, tmp_path):
    info = probe_video(clips["ntsc24"])
    frames = read_all(info)
    dst = tmp_path / "out.mp4"
    dst.write_bytes(b"keep me")
    with pytest.raises(OutputExists):
        write_all(dst, info, frames)
    assert dst.read_bytes() == b"keep me" and not ffmpeg_children()
    write_all(dst, info, frames, overwrite=True)
    assert probe_video(dst).frame_count == 24
    with pytest.raises(OutputError):
        write_all(clips["ntsc24"], info, frames, overwrite=True)
    assert probe_video(clips["ntsc24"]).frame_count == 24
    with pytest.raises(OutputError, match="container"):
        VideoWriter(tmp_path / "out.png", info)


def test_writer_rejects_a_wrong_frame(clips, tmp_path):
    info = probe_video(clips["ntsc24"])
    with pytest.raises(ValueError):
        with VideoWriter(tmp_path / "out.mp4", info) as w:
            w.write(np.zeros((64, 96, 3), np.uint16))
    assert leftovers(tmp_path) == [] and not (tmp_path / "out.mp4").exists()


# ---------------------------------------------------------------------------
# names


def test_names():
    assert output_name("v/clip.mp4") == Path("v/clip.tileproc.mp4")
    assert output_name("clip.mov", ext="webm", folder="out") == Path("out/clip.tileproc.webm")
    assert output_name("clip.tileproc.mp4") != Path("clip.tileproc.mp4")
    assert VIDEO_EXTENSIONS == {".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif", ".m4v"}
    assert is_video_path("A.MKV") and not is_video_path("a.png")


def test_source_and_sink_contract(clips, tmp_path):
    from tiler.io.base import Sink, Source
    from tiler.io.video import VideoSink, VideoSource

    assert issubclass(VideoSource, Source) and issubclass(VideoSink, Sink)
    assert VideoSource.runs == VideoSink.runs == "thread"
    info = probe_video(clips["ntsc24"])
    buf = np.empty(info.frame_shape, info.dtype)
    dst = tmp_path / "out.mkv"
    with VideoSource(VideoReader(info)) as src, VideoSink(VideoWriter(dst, info, preset="ultrafast")) as sink:
        assert src.probe() is info
        with pytest.raises(VideoError, match="in order: asked for 1, next is 0"):
            src.read_into(1, buf)
        i = 0
        while src.read_into(i, buf):
            sink.write(i, buf)
            i += 1
        assert not src.read_into(i + 3, buf)  # past the end: no frame, whatever the index
        with pytest.raises(VideoError, match="in order: got 0, next is 24"):
            sink.write(0, buf)
    assert probe_video(dst).frame_count == 24
    with pytest.raises(RuntimeError), VideoSink(VideoWriter(tmp_path / "gone.mkv", info)) as sink:
        sink.write(0, buf)
        raise RuntimeError("stop")
    assert leftovers(tmp_path) == [] and not (tmp_path / "gone.mkv").exists()
