"""Video fidelity: nothing dropped, nothing moved.

Every clip is generated here with the bundled ffmpeg (lavfi sources), and
each output is compared with its input through PyAV: frames, per-frame
timestamps, streams (kinds, codecs, languages, starts and lengths) and flags.
"""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import tiler
from tiler.errors import InputError
from tiler.io.video import VideoReader, VideoWriter, ffmpeg_exe, probe_video


def ff(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


X264 = ("-c:v", "libx264", "-preset", "ultrafast", "-crf", "10", "-pix_fmt", "yuv420p")


def read_all(info) -> np.ndarray:
    with VideoReader(info) as r:
        return np.stack(list(r))


def copy_video(src: Path, dst: Path, *, info=None, **kw) -> VideoWriter:
    """Decode ``src`` and encode it again into ``dst`` (the identity chain without the engine)."""
    info = info or probe_video(src)
    frames = read_all(info)
    kw.setdefault("preset", "ultrafast")
    with VideoWriter(dst, info, **kw) as w:
        for f in frames:
            w.write(f)
    return w


def seconds(info) -> list[float]:
    """Each frame's presentation time, from the file's first frame."""
    return [float((t - info.timestamps[0]) * info.time_base) for t in info.timestamps]


def stream_span(path: Path, index: int) -> tuple[float, float]:
    """(start, end) in seconds of one stream, from its packets' timestamps."""
    with av.open(str(path)) as c:
        s = c.streams[index]
        spans = [
            (p.pts * p.time_base, (p.pts + (p.duration or 0)) * p.time_base)
            for p in c.demux(s)
            if p.size and p.pts is not None
        ]
    return float(min(a for a, _ in spans)), float(max(b for _, b in spans))


def subtitle_texts(path: Path) -> list[tuple[float, str]]:
    with av.open(str(path)) as c:
        s = c.streams.subtitles[0]
        out = []
        for p in c.demux(s):
            if p.size:
                for sub in p.decode():
                    text = sub.ass.decode().split(",", 8)[-1].strip()
                    out.append((round(float(p.pts * p.time_base), 2), text))
    return out


# ---------------------------------------------------------------------------
# audio shorter than the picture, starting late


@pytest.fixture(scope="module")
def short_audio(tmp_path_factory) -> Path:
    """2 s, 48 frames of picture; 0.5 s of AAC starting 0.25 s in."""
    path = tmp_path_factory.mktemp("short") / "short.mp4"
    ff(
        "-f", "lavfi", "-i", "testsrc2=s=64x48:r=24:d=2",
        "-itsoffset", "0.25", "-f", "lavfi", "-i", "sine=f=440:sample_rate=48000:d=0.5",
        "-map", "0", "-map", "1", *X264, "-c:a", "aac", str(path),
    )  # fmt: skip
    return path


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".mov", ".avi", ".webm"])
def test_short_audio_keeps_every_frame_and_its_own_length_and_start(short_audio, tmp_path, ext):
    info = probe_video(short_audio)
    assert info.frame_count == 48
    dst = tmp_path / f"out{ext}"
    w = copy_video(short_audio, dst)
    out = probe_video(dst)
    assert out.frame_count == 48 and out.fps == 24
    assert np.allclose(seconds(out), seconds(info), atol=0.0011)
    (a_in,), (a_out,) = info.audio, out.audio
    start_in, end_in = stream_span(short_audio, a_in.index)
    start_out, end_out = stream_span(dst, a_out.index)
    video_in, video_out = info.timestamps[0] * info.time_base, out.timestamps[0] * out.time_base
    # the audio starts as far after the first frame as in the source, and lasts as long
    if ext == ".avi":  # MP3 (re-encoded): whole 24 ms frames and the encoder's delay
        assert abs((end_out - start_out) - (end_in - start_in)) < 0.06
        # AVI has no start time per stream: all start together, and the writer says so
        assert len(w.notes) == 1 and "starts +0.2" in w.notes[0]
    else:
        assert abs((end_out - start_out) - (end_in - start_in)) < 0.03
        assert abs((start_out - float(video_out)) - (start_in - float(video_in))) < 0.03
        assert w.notes == []
    assert a_out.kind == "audio"


# ---------------------------------------------------------------------------
# variable frame rate with a gap


@pytest.fixture(scope="module")
def gap_clip(tmp_path_factory) -> Path:
    """24 frames in the first second, nothing for 5 s, 24 frames from 6 s."""
    path = tmp_path_factory.mktemp("gap") / "gap.mp4"
    ff(
        "-f", "lavfi", "-i", "testsrc2=s=64x48:r=24:d=7",
        "-vf", r"geq=lum='mod(3*N+X\,256)':cb=128:cr=128,select=lt(t\,1)+gte(t\,6)",  # each frame its own level
        "-fps_mode", "passthrough", *X264, str(path),
    )  # fmt: skip
    return path


def _matches(frames: np.ndarray, source: np.ndarray) -> list[int]:
    """For each frame, the index of the source frame it is closest to."""
    a = frames.reshape(len(frames), -1).astype(np.float32)
    b = source.reshape(len(source), -1).astype(np.float32)
    d = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]
    return [int(i) for i in d.argmin(1)]


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_variable_rate_gap_every_frame_once_at_its_own_time(gap_clip, tmp_path, ext):
    info = probe_video(gap_clip)
    assert info.frame_count == 48 and info.variable_rate
    source = read_all(info)
    dst = tmp_path / f"out{ext}"
    copy_video(gap_clip, dst)
    out = probe_video(dst)
    assert out.frame_count == 48 and out.variable_rate
    expected = [i / 24 for i in range(24)] + [6 + i / 24 for i in range(24)]
    assert np.allclose(seconds(out), expected, atol=0.0011)
    assert _matches(read_all(out), source) == list(range(48))  # each source frame once, in order


def _reordered(path: Path) -> bool:
    """Whether the video's packets come in another order than their frames are shown (B-frames)."""
    with av.open(str(path)) as c:
        pts = [p.pts for p in c.demux(c.streams.video[0]) if p.size]
    return pts != sorted(pts)


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".mov"])
def test_variable_rate_gap_with_b_frames_keeps_every_frame_time(gap_clip, tmp_path, ext):
    # x264's "veryfast" preset reorders frames (B-frames): the encoder delays its output by
    # two frames, and packets come in decode order; every frame must still keep its own time.
    info = probe_video(gap_clip)
    source = read_all(info)
    dst = tmp_path / f"out{ext}"
    copy_video(gap_clip, dst, preset="veryfast")
    assert _reordered(dst)
    out = probe_video(dst)
    assert out.frame_count == 48 and out.variable_rate
    assert np.allclose(seconds(out), seconds(info), atol=0.0011)
    assert _matches(read_all(out), source) == list(range(48))


def test_constant_rate_on_request(gap_clip, tmp_path):
    info = probe_video(gap_clip).at_rate(24)
    assert info.frame_count == 7 * 24 and not info.variable_rate  # from the first frame to the end of the last
    source = read_all(probe_video(gap_clip))
    dst = tmp_path / "cfr.mp4"
    copy_video(gap_clip, dst, info=info)
    out = probe_video(dst)
    assert (out.frame_count, out.fps, out.variable_rate) == (info.frame_count, 24, False)
    held = _matches(read_all(out), source)
    assert held[:24] == list(range(24)) and set(held[24:-24]) == {23} and held[-24:] == list(range(24, 48))


# ---------------------------------------------------------------------------
# every stream the container holds


@pytest.fixture(scope="module")
def many_streams(tmp_path_factory) -> Path:
    """Matroska: video (deu), two audio tracks (eng 1 s, fra 0.6 s from 0.2 s), SubRip subtitles (eng),
    an attachment."""
    d = tmp_path_factory.mktemp("streams")
    srt = d / "subs.srt"
    srt.write_text("1\n00:00:00,100 --> 00:00:00,500\nHello\n\n2\n00:00:00,600 --> 00:00:00,900\nWorld\n\n")
    note = d / "notes.txt"
    note.write_text("an attached file\n")
    path = d / "streams.mkv"
    ff(
        "-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=1",
        "-f", "lavfi", "-i", "sine=f=440:d=1",
        "-itsoffset", "0.2", "-f", "lavfi", "-i", "sine=f=660:d=0.6",
        "-i", str(srt),
        "-map", "0", "-map", "1", "-map", "2", "-map", "3", *X264, "-c:a", "aac", "-c:s", "srt",
        "-attach", str(note), "-metadata:s:t", "mimetype=text/plain",
        "-metadata:s:v", "language=deu", "-metadata:s:a:0", "language=eng", "-metadata:s:a:1", "language=fra",
        "-metadata:s:s", "language=eng", str(path),
    )  # fmt: skip
    return path


def test_mkv_keeps_every_stream(many_streams, tmp_path):
    info = probe_video(many_streams)
    kinds = [(s.kind, s.language) for s in info.streams]
    assert kinds == [("audio", "eng"), ("audio", "fra"), ("subtitle", "eng"), ("attachment", None)]
    codecs = [s.codec for s in info.streams]
    dst = tmp_path / "out.mkv"
    w = copy_video(many_streams, dst)
    assert w.notes == []
    out = probe_video(dst)
    assert [(s.kind, s.language) for s in out.streams] == kinds and [s.codec for s in out.streams] == codecs
    assert out.language == "deu" and out.frame_count == 25
    for a, b in zip(info.audio, out.audio):
        assert np.allclose(stream_span(dst, b.index), stream_span(many_streams, a.index), atol=0.03)
    assert subtitle_texts(dst) == subtitle_texts(many_streams) == [(0.1, "Hello"), (0.6, "World")]
    with av.open(str(dst)) as c:
        (attachment,) = c.streams.attachments
        assert attachment.data == b"an attached file\n"


def test_mp4_converts_subtitles_and_says_what_it_cannot_hold(many_streams, tmp_path):
    dst = tmp_path / "out.mp4"
    w = copy_video(many_streams, dst)
    assert len(w.notes) == 1 and "attachment" in w.notes[0] and str(dst) in w.notes[0]
    out = probe_video(dst)
    assert [(s.kind, s.codec, s.language) for s in out.streams] == [
        ("audio", "aac", "eng"),
        ("audio", "aac", "fra"),
        ("subtitle", "mov_text", "eng"),
    ]
    assert subtitle_texts(dst) == [(0.1, "Hello"), (0.6, "World")]


# ---------------------------------------------------------------------------
# flags: fields, aspect ratio, languages


@pytest.fixture(scope="module")
def interlaced(tmp_path_factory) -> Path:
    """Top field first; every line of the top field white, of the bottom field black."""
    path = tmp_path_factory.mktemp("fields") / "fields.mkv"
    ff(
        "-f", "lavfi", "-i", "color=c=white:s=64x24:r=50:d=0.4",
        "-f", "lavfi", "-i", "color=c=black:s=64x24:r=50:d=0.4",
        "-filter_complex", "[0][1]interleave,tinterlace=interleave_top,setfield=tff[v]",
        "-map", "[v]", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-pix_fmt", "yuv420p",
        "-flags", "+ildct+ilme", "-field_order", "tt", str(path),
    )  # fmt: skip
    return path


def test_interlaced_keeps_field_order_and_filters_woven_frames(interlaced, tmp_path):
    info = probe_video(interlaced)
    assert info.interlaced
    lines = read_all(info)[..., 0].astype(int).mean(axis=(0, 2))
    assert lines[0::2].min() > 200 and lines[1::2].max() < 55  # the fields, woven

    inverted = tmp_path / "invert.mkv"
    tiler.process_video(interlaced, inverted, "invert", workers=1, preset="ultrafast")
    out = probe_video(inverted)
    assert out.field_order == info.field_order and out.frame_count == info.frame_count
    lines = read_all(out)[..., 0].astype(int).mean(axis=(0, 2))
    assert lines[0::2].max() < 55 and lines[1::2].min() > 200  # each field stays itself

    blurred = tmp_path / "blur.mkv"
    tiler.process_video(interlaced, blurred, "blur:sigma=2", workers=1, preset="ultrafast")
    assert probe_video(blurred).field_order == info.field_order
    lines = read_all(probe_video(blurred))[..., 0].astype(int).mean(axis=(0, 2))
    assert np.all(np.abs(lines[2:-2] - 128) < 40)  # a spatial filter mixes the two fields


def test_interlaced_h264_keeps_top_field_first_in_matroska(tmp_path):
    # MPEG-TS keeps the bitstream's order (tt); FFmpeg tags its own interlaced H.264 encodes
    # tb ("top coded first, bottom displayed first"), which Matroska would store as "swapped"
    src = tmp_path / "tt.ts"
    ff(
        "-f", "lavfi", "-i", "color=c=white:s=64x24:r=50:d=0.2", "-f", "lavfi", "-i", "color=c=black:s=64x24:r=50:d=0.2",
        "-filter_complex", "[0][1]interleave,tinterlace=interleave_top,setfield=tff[v]",
        "-map", "[v]", *X264, "-flags", "+ildct+ilme", "-field_order", "tt", str(src),
    )  # fmt: skip
    info = probe_video(src)
    assert info.field_order == "tt"
    dst = tmp_path / "out.mkv"
    copy_video(src, dst)
    with av.open(str(dst)) as c:
        assert c.streams.video[0].codec_context.field_order == 2  # AV_FIELD_TT
    out = probe_video(dst)
    assert out.field_order == "tt" and out.frame_count == info.frame_count
    lines = read_all(out)[..., 0].astype(int).mean(axis=(0, 2))
    assert lines[0::2].min() > 200 and lines[1::2].max() < 55  # the fields, woven as they were


@pytest.mark.parametrize("sar", ["1/1", "4/3"])
def test_sample_aspect_ratio_and_languages_kept(tmp_path, sar):
    src = tmp_path / "sar.mp4"
    ff(
        "-f", "lavfi", "-i", f"testsrc2=s=64x48:r=25:d=0.4,setsar={sar}",
        "-f", "lavfi", "-i", "sine=d=0.4", *X264, "-c:a", "aac",
        "-metadata:s:v", "language=jpn", "-metadata:s:a", "language=spa", str(src),
    )  # fmt: skip
    info = probe_video(src)
    assert info.sample_aspect_tagged and info.sample_aspect == Fraction(sar)
    for ext in (".mp4", ".mkv"):
        dst = tmp_path / f"out{ext}"
        copy_video(src, dst)
        out = probe_video(dst)
        assert out.sample_aspect_tagged and out.sample_aspect == info.sample_aspect
        assert out.language == "jpn" and [a.language for a in out.audio] == ["spa"]


# ---------------------------------------------------------------------------
# names


def test_a_name_with_a_newline(short_audio, tmp_path):
    src = tmp_path / "two\nlines.mp4"
    src.write_bytes(short_audio.read_bytes())
    info = probe_video(src)
    assert info.frame_count == 48 and len(info.audio) == 1
    dst = tmp_path / "out\nput.mkv"
    copy_video(src, dst)
    assert probe_video(dst).frame_count == 48
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out\nput.mkv", "two\nlines.mp4"]


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_picture_starting_after_the_sound_keeps_its_offset(tmp_path, ext):
    src = tmp_path / "late.mkv"
    ff(
        "-itsoffset", "0.3", "-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=1",
        "-f", "lavfi", "-i", "sine=d=1.5", "-map", "0", "-map", "1", *X264, "-c:a", "aac", str(src),
    )  # fmt: skip
    info = probe_video(src)
    assert abs(info.offset - Fraction(3, 10)) < Fraction(3, 100)  # (less the AAC priming)
    dst = tmp_path / f"out{ext}"
    copy_video(src, dst)
    out = probe_video(dst)
    assert abs(out.offset - info.offset) < Fraction(1, 100) and out.frame_count == 25
    assert abs(np.subtract(*stream_span(dst, out.audio[0].index)) - np.subtract(*stream_span(src, 1))) < 0.03


def test_timecode_kept(tmp_path):
    src = tmp_path / "tc.mov"
    ff("-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=0.4", *X264, "-timecode", "01:02:03:04", str(src))
    info = probe_video(src)
    assert info.timecode == "01:02:03:04" and [s.kind for s in info.streams] == ["data"]
    for ext in (".mp4", ".mov", ".mkv"):
        dst = tmp_path / f"out{ext}"
        assert copy_video(src, dst).notes == []
        assert probe_video(dst).timecode == "01:02:03:04"


def test_one_rate_containers_take_the_average_rate_and_say_so(gap_clip, tmp_path):
    from tiler.io.video import output_timing

    info = probe_video(gap_clip)
    assert output_timing(info, tmp_path / "out.mp4") == (info, [])
    at, notes = output_timing(info, tmp_path / "out.avi")
    assert at.fps == info.fps and not at.variable_rate and at.frame_count == round(7 * info.fps)
    assert notes == [
        f"{tmp_path / 'out.avi'}: AVI holds one frame rate: the variable rate is written at its average {info.fps}"
    ]
    dst = tmp_path / "out.avi"
    copy_video(gap_clip, dst, info=at)
    out = probe_video(dst)
    assert (out.frame_count, out.fps, out.variable_rate) == (at.frame_count, at.fps, False)


@pytest.fixture(scope="module")
def tagged(tmp_path_factory) -> Path:
    """Matroska: 64x48 at sample aspect ratio 4:3 (85.33 pixels wide shown), a titled German video, German
    subtitles."""
    d = tmp_path_factory.mktemp("tagged")
    srt = d / "subs.srt"
    srt.write_text("1\n00:00:00,100 --> 00:00:00,300\nHallo\n\n")
    path = d / "tagged.mkv"
    ff(
        "-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=0.4,setsar=4/3", "-i", str(srt),
        "-map", "0", "-map", "1", *X264, "-c:s", "srt",
        "-metadata:s:v", "title=Main picture", "-metadata:s:v", "language=deu",
        "-metadata:s:s", "language=deu", "-metadata:s:s", "title=Deutsch", str(path),
    )  # fmt: skip
    return path


def _stream_tags(path: Path) -> list[dict[str, str]]:
    with av.open(str(path)) as c:
        return [{k.lower(): v for k, v in s.metadata.items()} for s in c.streams]


@pytest.mark.parametrize("ext", [".mkv", ".mp4", ".mov", ".webm"])
def test_video_title_and_languages_kept(tagged, tmp_path, ext):
    dst = tmp_path / f"out{ext}"
    copy_video(tagged, dst)
    video, subs = _stream_tags(dst)
    assert video.get("title", video.get("name")) == "Main picture" and probe_video(dst).title == "Main picture"
    assert subs.get("title", subs.get("name")) == "Deutsch"
    german = "ger" if ext == ".mov" else "deu"  # QuickTime knows the bibliographic code only
    assert video["language"] == subs["language"] == german


def test_sample_aspect_ratio_a_container_cannot_hold_is_said(tagged, tmp_path):
    mkv = tmp_path / "out.mkv"
    assert copy_video(tagged, mkv).notes == []
    assert probe_video(mkv).sample_aspect == Fraction(4, 3)
    webm = tmp_path / "out.webm"
    w = copy_video(tagged, webm)
    shown = probe_video(webm).sample_aspect
    assert w.notes == [
        f"{webm}: sample aspect ratio 4:3: WebM stores the displayed width in whole pixels: 85x48 "
        f"(sample aspect ratio {shown.numerator}:{shown.denominator})"
    ]
    gif = tmp_path / "out.gif"
    w = copy_video(tagged, gif)
    assert w.notes[0] == f"{gif}: sample aspect ratio 4:3: GIF has square pixels (written unstretched)"
    with av.open(str(gif)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (64, 48)


def test_mkv_keeps_image_attachments_as_attachments(tmp_path):
    """FFmpeg presents a Matroska PNG attachment as a picture (attached_pic): it stays an attachment."""
    d = tmp_path / "src"
    d.mkdir()
    png = d / "cover.png"
    ff("-f", "lavfi", "-i", "color=c=red:s=16x16:d=1", "-frames:v", "1", str(png))
    text = d / "notes.txt"
    text.write_text("an attached file\n")
    src = d / "attached.mkv"
    ff(
        "-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=0.4", *X264,
        "-attach", str(text), "-metadata:s:t:0", "mimetype=text/plain",
        "-attach", str(png), "-metadata:s:t:1", "mimetype=image/png", str(src),
    )  # fmt: skip
    info = probe_video(src)
    assert [(s.kind, s.attached_picture) for s in info.streams] == [("attachment", False), ("attachment", True)]
    dst = tmp_path / "out.mkv"
    assert copy_video(src, dst).notes == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mkv", "src"]  # the extracted file is gone
    with av.open(str(dst)) as c:
        assert len(c.streams.video) == 2 and [a.data for a in c.streams.attachments] == [b"an attached file\n"]
        (picture,) = [s for s in c.streams.video if s.disposition & av.stream.Disposition.attached_pic]
        assert (picture.metadata["filename"], picture.metadata["mimetype"]) == ("cover.png", "image/png")
        assert [bytes(p) for p in c.demux(picture) if p.size] == [png.read_bytes()]
    mp4 = tmp_path / "out.mp4"
    assert copy_video(src, mp4).notes == [
        f"{mp4}: stream 1 (attachment): only Matroska holds attachments",
        f"{mp4}: stream 2 (attachment png): only Matroska holds attachments",
    ]


def test_a_clip_cut_without_reencoding_keeps_exactly_its_shown_frames(tmp_path):
    """`ffmpeg -ss ... -c copy` into MP4 keeps the frames from the keyframe before the cut, marked to be
    dropped by an edit list: they are decoded but never shown, so they are not counted or delivered."""
    src, cut = tmp_path / "long.mp4", tmp_path / "cut.mp4"
    ff("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25:duration=4", "-f", "lavfi", "-i", "sine=duration=4",
       *X264, "-g", "25", "-c:a", "aac", str(src))  # fmt: skip
    ff("-ss", "1.35", "-i", str(src), "-c", "copy", "-t", "2", str(cut))
    with av.open(str(cut)) as c:
        shown = sum(1 for _ in c.decode(video=0))
    with av.open(str(cut)) as c:
        dropped = sum(1 for p in c.demux(c.streams.video[0]) if p.size and p.is_discard)
    assert dropped > 0  # the cut fell between keyframes
    info = probe_video(cut)
    assert info.frame_count == shown == len(read_all(info))
    out = tmp_path / "out.mp4"
    tiler.process_video(cut, out, "invert", workers=1)
    assert probe_video(out).frame_count == shown


@pytest.mark.parametrize(
    "name, args",
    [
        ("alpha.webm", ("-c:v", "libvpx-vp9", "-pix_fmt", "yuva420p")),  # alpha in Matroska side data
        ("argb.mov", ("-c:v", "qtrle", "-pix_fmt", "argb")),  # an alpha plane
        ("plain.mp4", X264),
    ],
)
def test_a_transparency_the_output_cannot_keep_is_said(tmp_path, name, args):
    src = tmp_path / name
    ff("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10,format=yuva420p", "-frames:v", "2", *args, str(src))
    info = probe_video(src)
    assert info.alpha == (name != "plain.mp4")
    notes = VideoWriter(tmp_path / "out.mp4", info).notes
    said = [n for n in notes if "transparency" in n]
    assert said == ([f"{tmp_path / 'out.mp4'}: the transparency (alpha) of {src} is not kept: video frames are RGB"]
                    if info.alpha else [])  # fmt: skip


@pytest.mark.parametrize("damage", ["cut in half", "3000 bytes overwritten"])
def test_a_matroska_file_shorter_than_it_states_is_refused_in_one_line(tmp_path, damage):
    """A cut-short or damaged MKV ends early without an error from the demuxer; its track length tag tells."""
    whole = tmp_path / "whole.mkv"
    ff("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=2", "-c:v", "libx264", "-preset", "ultrafast",
       str(whole))  # fmt: skip
    assert probe_video(whole).frame_count == 50
    data = bytearray(whole.read_bytes())
    if damage == "cut in half":
        data = data[: len(data) // 2]
    else:
        mid = len(data) // 2
        data[mid : mid + 3000] = np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(bytes(data))
    with pytest.raises(
        InputError, match=r"bad\.mkv: it states 2\.00 s of video but holds 0\.\d\d s \(truncated or damaged\?\)"
    ):
        probe_video(bad)
    out = tmp_path / "out.mp4"
    run = subprocess.run(
        [sys.executable, "-m", "tiler", str(bad), "-f", "invert", "-o", str(out)], capture_output=True, text=True
    )
    assert run.returncode == 1 and not out.exists()
    assert len(run.stderr.strip().splitlines()) == 1 and "truncated or damaged" in run.stderr


def test_a_matroska_file_cut_by_a_few_percent_is_refused_and_a_long_last_frame_is_not(tmp_path):
    whole, cut = tmp_path / "whole.mkv", tmp_path / "cut.mkv"
    ff("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=6", "-c:v", "libx264", "-preset", "ultrafast",
       "-g", "10", str(whole))  # fmt: skip
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 92 // 100])
    with pytest.raises(InputError, match=r"cut\.mkv: it states 6\.00 s of video but holds 5\.\d\d s"):
        probe_video(cut)
    # five frames 0.1 s apart, the last one shown for 5 s: its packet says so, and the DURATION tag agrees
    held = tmp_path / "held.mkv"
    with av.open(str(held), "w") as c:
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt, s.time_base = 64, 48, "yuv420p", Fraction(1, 1000)
        frames = [av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24") for i in range(5)]
        packets = []
        for i, f in enumerate(frames):
            f.pts, f.time_base = i * 100, Fraction(1, 1000)
            packets += s.encode(f.reformat(format="yuv420p"))
        packets += s.encode(None)
        for p in packets:
            p.duration = int((5 if p is packets[-1] else Fraction(1, 10)) / p.time_base)
            c.mux(p)
    with av.open(str(held)) as c:
        assert c.streams.video[0].metadata["DURATION"].startswith("00:00:05.4")
    assert probe_video(held).frame_count == 5
