"""The same jobs on a real Dask cluster: a scheduler and two worker processes on loopback.

Each test that needs Dask starts its own LocalCluster (two worker processes,
one thread each) and shuts it down, so the leak check after every test sees
no worker, engine process or segment left. Outputs are compared with a run
of the local engine: identical bytes for lossless images; for video the same
frame count, frame rate, duration and audio (and identical frames when the
encoder is lossless).
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tiler
from tiler import cluster
from tiler.cli import main
from tiler.errors import InputError
from tiler.io.video import VideoReader, ffmpeg_exe, probe_video

TESTS = Path(__file__).resolve().parent
SLOW = f"{TESTS / 'faultfilters.py'}:slow:seconds=0.2"
CHAIN = "blur:sigma=1.5,invert"


@pytest.fixture
def client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local,
        distributed.Client(local) as c,
    ):
        yield c


def pngs(folder: Path, n: int, shape=(48, 64, 3)) -> list[Path]:
    """``n`` random lossless images, a third of them in a subfolder."""
    paths = []
    for i in range(n):
        path = folder / ("sub" if i % 3 == 2 else "") / f"img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        a = np.random.default_rng(i).integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(a).save(path)
        paths.append(path)
    return paths


def same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def make_clip(path: Path, *, seconds=3.0, rate="24000/1001", gop=10) -> Path:
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size=96x64:rate={rate}:duration={seconds}",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:duration={seconds}",
            "-c:a",
            "aac",
            "-shortest",
            "-c:v",
            "libx264",
            "-g",
            str(gop),
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
    )
    return path


def stream_seconds(path: Path, stream: str) -> float:
    """Seconds a stream spans, from its packets' timestamps."""
    out = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", stream, "-c", "copy", "-f", "framecrc", "-"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    tb = Fraction(next(line for line in out.splitlines() if line.startswith("#tb")).split()[-1])
    packets = [[int(v) for v in line.split(",")[1:4]] for line in out.splitlines() if not line.startswith("#")]
    return float((max(p[1] + p[2] for p in packets) - min(p[1] for p in packets)) * tb)


def frames_of(path: Path) -> list[np.ndarray]:
    with VideoReader(probe_video(path)) as reader:
        return [f.copy() for f in reader]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tileproc-" in p.name)


# -- folders ---------------------------------------------------------------------


def test_folder_on_the_cluster_equals_a_local_run(client, tmp_path):
    src = tmp_path / "in"
    pngs(src, 7)
    tiler.process_folder(src, tmp_path / "local", CHAIN, workers=1)
    planned, seen = [], []
    report = cluster.process_folder(
        client, f"file://{src}", tmp_path / "remote", CHAIN, on_plan=planned.append, on_result=seen.append
    )
    assert report.ok and planned == [7] and len(seen) == 7
    assert {r.src for r in report.results} == set(src.rglob("*.png"))
    same_tree(tmp_path / "local", tmp_path / "remote")
    assert not leftovers(tmp_path)


def test_api_dispatches_to_the_cluster_and_a_bad_file_fails_alone(client, tmp_path):
    src = tmp_path / "in"
    pngs(src, 3)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    report = tiler.process_folder(src, tmp_path / "out", "invert", client=client)
    (bad,) = report.failed
    assert bad.src == src / "broken.png" and isinstance(bad.error, InputError)
    assert str(src / "broken.png") in str(bad.error) and "\n" not in str(bad.error)
    assert len(list((tmp_path / "out").rglob("*.png"))) == 3
    again = cluster.process_folder(client, src, tmp_path / "out", "invert")  # outputs from before: kept
    assert sorted(type(r.error).__name__ for r in again.results) == ["InputError"] + ["OutputExists"] * 3
    assert [r.src for r in cluster.process_folder(client, src, tmp_path / "out", "invert", overwrite=True).failed] == [
        bad.src
    ]
    out = tiler.process_file(src / "img00.png", tmp_path / "one.png", "invert", client=client)
    assert out == tmp_path / "one.png"
    assert np.array_equal(np.asarray(Image.open(out)), 255 - np.asarray(Image.open(src / "img00.png")))


def test_each_worker_engine_gets_its_share_of_the_cores(client):
    hosts = cluster._hosts(client)
    assert sum(hosts.values()) == 2  # two workers, one thread each, both on this host
    spec = cluster._engine_spec(None, {})
    for address in client.scheduler_info()["workers"]:  # inside a task on each worker
        size = client.submit(cluster._engine_size, spec, hosts, workers=[address], pure=False).result()
        assert size == max(1, cluster._cores() // 2)
    assert client.submit(cluster._engine_size, cluster._engine_spec(3, {}), hosts).result() == 3


@pytest.mark.slow
def test_a_worker_killed_mid_batch_has_its_task_rerun(client, tmp_path):
    src = tmp_path / "in"
    pngs(src, 12)
    tiler.process_folder(src, tmp_path / "local", SLOW, workers=1)
    pids = list(client.run(os.getpid).values())
    killed = []

    def kill_one(result):
        if not killed:
            os.kill(pids[0], 9)
            killed.append(pids[0])

    report = cluster.process_folder(client, src, tmp_path / "remote", SLOW, on_result=kill_one)
    assert killed and report.ok, [str(r.error) for r in report.failed]
    assert pids[0] not in client.run(os.getpid).values()
    same_tree(tmp_path / "local", tmp_path / "remote")  # every output whole
    assert not leftovers(tmp_path)


# -- video -----------------------------------------------------------------------


def test_segments_decode_exactly_the_frames_of_a_whole_decode(tmp_path):
    src = make_clip(tmp_path / "in.mp4", seconds=2.0, gop=7)
    info = probe_video(src)
    keys = cluster._keyframes(info)
    assert [i for i, _ in keys][:3] == [0, 7, 14]
    segments = cluster._plan_segments(keys, info.frame_count, 1)
    assert sum(n for _, n, _ in segments) == info.frame_count and len(segments) > 3
    whole = frames_of(src)
    import dataclasses

    for first, count, seek in segments:
        part = dataclasses.replace(info, frame_count=count)
        with cluster._RangeReader(part, None if seek is None else cluster._seek_point(seek, info.fps)) as r:
            got = [f.copy() for f in r]
        assert len(got) == count
        assert all(np.array_equal(g, whole[first + i]) for i, g in enumerate(got)), first


def test_plan_segments_cuts_at_keyframes_and_never_leaves_a_crumb():
    keys = [(i, Fraction(i, 10)) for i in range(0, 100, 10)]
    assert cluster._plan_segments(keys, 100, 30) == [(0, 30, None), (30, 30, Fraction(3)), (60, 40, Fraction(6))]
    assert cluster._plan_segments(keys, 100, 95) == [(0, 100, None)]
    assert cluster._plan_segments([(0, Fraction(0))], 5, 1) == [(0, 5, None)]


def test_video_on_the_cluster_matches_a_local_run(client, tmp_path):
    src = make_clip(tmp_path / "in.mp4")
    local, remote = tmp_path / "local.mp4", tmp_path / "remote.mp4"
    lossless = dict(crf=0, preset="ultrafast")
    tiler.process_video(src, local, CHAIN, workers=2, **lossless)
    done, frames = [], []
    assert (
        cluster.process_video(
            client, src, remote, CHAIN, segment_frames=20, on_segment=done.append, on_frames=frames.append, **lossless
        )
        == remote
    )
    a, b = probe_video(local), probe_video(remote)
    assert len(done) >= 3 and sum(done) == a.frame_count == probe_video(src).frame_count
    deadline = time.monotonic() + 10
    while sum(frames) < a.frame_count and time.monotonic() < deadline:  # events may trail the last result
        time.sleep(0.05)
    assert sum(frames) == a.frame_count  # reported by the workers as they filter
    assert (b.frame_count, b.fps, b.duration) == (a.frame_count, a.fps, a.duration)
    assert b.fps == Fraction(24000, 1001)
    assert abs(stream_seconds(remote, "0:v") - stream_seconds(local, "0:v")) < 1 / b.fps
    assert (
        [(s.codec, s.sample_rate, s.channels) for s in b.audio]
        == [(s.codec, s.sample_rate, s.channels) for s in a.audio]
        == [("aac", 44100, 1)]
    )
    assert abs(stream_seconds(remote, "0:a") - stream_seconds(local, "0:a")) < 1 / b.fps
    got, want = frames_of(remote), frames_of(local)
    assert all(np.array_equal(g, w) for g, w in zip(got, want))  # lossless: the very same frames
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "local.mp4", "remote.mp4"]


@pytest.mark.slow
def test_webm_and_gif_on_the_cluster(client, tmp_path):
    src = make_clip(tmp_path / "in.mp4", seconds=2.0, rate="30000/1001")
    webm = cluster.process_video(client, src, tmp_path / "out.webm", "invert", segment_frames=20, preset="ultrafast")
    info = probe_video(webm)
    assert (info.frame_count, info.fps) == (probe_video(src).frame_count, Fraction(30000, 1001))
    assert [s.codec for s in info.audio] == ["opus"]
    gif = cluster.process_video(client, src, tmp_path / "out.gif", "invert", segment_frames=20)  # one task
    assert probe_video(gif).frame_count == info.frame_count
    assert not leftovers(tmp_path)


def test_a_failing_segment_fails_the_video_and_leaves_nothing(client, tmp_path):
    src = make_clip(tmp_path / "in.mp4", seconds=2.0)
    with pytest.raises(tiler.FilterFailed, match="raises"):
        cluster.process_video(
            client,
            src,
            tmp_path / "out.mp4",
            f"{TESTS / 'faultfilters.py'}:raises",
            segment_frames=10,
            preset="ultrafast",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


# -- connecting ------------------------------------------------------------------


def test_a_failed_task_keeps_its_whole_reason_on_one_line():
    pytest.importorskip("distributed")
    future = concurrent.futures.Future()
    future.set_exception(
        RuntimeError(
            "Error during deserialization of the task graph. This frequently\n"
            "occurs if the Scheduler and Client have different environments.\n   For more information, see the docs"
        )
    )
    assert str(cluster._outcome(future, "a.png")) == (
        "a.png: RuntimeError: Error during deserialization of the task graph. This frequently occurs if the "
        "Scheduler and Client have different environments. For more information, see the docs"
    )
    future = concurrent.futures.Future()
    future.set_exception(ValueError("word " * 1000))
    text = str(cluster._outcome(future, "a.png"))
    assert text.startswith("a.png: ValueError: word word") and text.endswith(" ...") and len(text) < 500
    assert "\n" not in text


def test_unreachable_scheduler_fails_within_seconds_naming_it():
    pytest.importorskip("distributed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    address = f"tcp://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(cluster.ClusterError, match=address):
        cluster.connect(address, timeout=2)
    assert time.monotonic() - start < 10


def test_a_scheduler_without_workers_is_an_error_not_a_hang(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 1.0)
    pngs(tmp_path / "in", 1)
    with (
        distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=None) as local,
        distributed.Client(local) as client,
    ):
        with pytest.raises(cluster.ClusterError, match="no workers.*dask worker tcp://"):
            cluster.process_folder(client, tmp_path / "in", tmp_path / "out", "invert")


@pytest.mark.parametrize("address", ["local:0", "local:x", "tcp://host:port", "tcp://"])
def test_malformed_addresses(address):
    with pytest.raises(ValueError, match="address"):
        cluster.connect(address)


def test_locations_keep_storage_urls_and_turn_file_urls_into_paths(tmp_path):
    assert cluster._location("s3://bucket/photos") == "s3://bucket/photos"
    assert cluster._location(f"file://{tmp_path}/a%20b.png") == tmp_path / "a b.png"


def test_without_dask_the_message_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(cluster.ClusterError, match=r"pip install 'tileproc\[dask\]'"):
        cluster.connect("tcp://127.0.0.1:8786")
    pngs(tmp_path / "in", 1)
    assert main([str(tmp_path / "in"), "-f", "invert", "-o", str(tmp_path / "out"), "--cluster", "local", "-q"]) == 2
    assert "pip install 'tileproc[dask]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_local_cluster_leaves_nothing_in_the_temporary_folder(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # the worker processes'
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # this process's
    pngs(tmp_path / "in", 1)
    with cluster.connect("local:1") as client:
        assert cluster.process_folder(client, tmp_path / "in", tmp_path / "out", "invert").ok
        scratch = client.run(lambda dask_worker: dask_worker.local_directory)
        assert all(Path(folder).is_relative_to(temp) for folder in scratch.values()), scratch
    assert os.listdir(temp) == []


def test_cli_runs_a_folder_and_a_video_on_a_local_cluster(tmp_path):
    pytest.importorskip("distributed")
    src = tmp_path / "in"
    pngs(src, 4)
    make_clip(src / "clip.mp4", seconds=1.0)
    assert (
        main(
            [
                str(src),
                "-f",
                "invert",
                "-o",
                str(tmp_path / "remote"),
                "--cluster",
                "local:2",
                "-q",
                "--preset",
                "ultrafast",
            ]
        )
        == 0
    )
    assert (
        main([str(src), "-f", "invert", "-o", str(tmp_path / "local"), "-w", "1", "-q", "--preset", "ultrafast"]) == 0
    )
    for png in (tmp_path / "local").rglob("*.png"):
        assert png.read_bytes() == (tmp_path / "remote" / png.relative_to(tmp_path / "local")).read_bytes()
    a, b = probe_video(tmp_path / "local" / "clip.mp4"), probe_video(tmp_path / "remote" / "clip.mp4")
    assert (a.frame_count, a.fps, len(a.audio)) == (b.frame_count, b.fps, len(b.audio))


# -- TLS -------------------------------------------------------------------------


@pytest.fixture
def tls_cluster():
    """A scheduler and one worker that speak TLS only, with throwaway certificates."""
    distributed = pytest.importorskip("distributed")
    security = distributed.Security.temporary()
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, protocol="tls", security=security
    ) as local:
        yield local, security


def test_a_tls_scheduler_runs_a_job_for_a_client_with_its_certificates(tls_cluster, tmp_path, capsys):
    local, security = tls_cluster
    assert local.scheduler_address.startswith("tls://")
    pngs(tmp_path / "in", 2)
    with cluster.connect(local.scheduler_address, security=security) as client:
        assert cluster.process_folder(client, tmp_path / "in", tmp_path / "out", "invert").ok
    assert len(list((tmp_path / "out").rglob("*.png"))) == 2
    # the command line, with the same certificates as PEM files
    pem = {}
    for name in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
        pem[name] = tmp_path / f"{name}.pem"
        pem[name].write_text(getattr(security, name))
    args = ["--tls-ca-file", str(pem["tls_ca_file"]), "--tls-cert", str(pem["tls_client_cert"])]
    args += ["--tls-key", str(pem["tls_client_key"])]
    host_port = local.scheduler_address.removeprefix("tls://")  # no scheme: tls, as certificates are given
    assert main([str(tmp_path / "in"), "-f", "invert", "-o", str(tmp_path / "cli"), "--cluster", host_port, *args]) == 0
    assert len(list((tmp_path / "cli").rglob("*.png"))) == 2


def test_a_tls_scheduler_refuses_a_client_without_its_certificates(tls_cluster, tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    local, _ = tls_cluster
    address = local.scheduler_address
    with pytest.raises(cluster.ClusterError, match="speaks TLS and no certificates"):
        cluster.connect(address, timeout=5)
    with pytest.raises(cluster.ClusterError, match="refused the TLS certificates"):
        cluster.connect(address, timeout=5, security=distributed.Security.temporary())  # another authority
    plain = address.replace("tls://", "tcp://")
    with pytest.raises(cluster.ClusterError, match="closed the connection.*tls://"):
        cluster.connect(plain, timeout=5)
    pngs(tmp_path / "in", 1)
    capsys.readouterr()
    assert main([str(tmp_path / "in"), "-f", "invert", "-o", str(tmp_path / "out"), "--cluster", address]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and address in err[0] and "--tls-ca-file" in err[0], err
    assert not (tmp_path / "out").exists()


def test_tls_options_are_checked_before_connecting(tmp_path, capsys):
    pngs(tmp_path / "in", 1)
    base = [str(tmp_path / "in"), "-f", "invert", "-o", str(tmp_path / "out")]
    assert main([*base, "--tls-ca-file", str(tmp_path / "ca.pem")]) == 2
    assert "go with --cluster" in capsys.readouterr().err
    pytest.importorskip("distributed")
    assert main([*base, "--cluster", "tls://127.0.0.1:1", "--tls-ca-file", str(tmp_path / "ca.pem")]) == 2
    assert f"--tls-ca-file {tmp_path / 'ca.pem'}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_incomplete_or_wrong_tls_options_are_one_line_each(tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    pngs(tmp_path / "in", 1)
    base = [str(tmp_path / "in"), "-f", "invert", "-o", str(tmp_path / "out"), "--cluster", "tls://127.0.0.1:1"]
    pem = {}
    for n, security in enumerate([distributed.Security.temporary(), distributed.Security.temporary()]):
        for name in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
            pem[name, n] = tmp_path / f"{name}{n}.pem"
            pem[name, n].write_text(getattr(security, name))
    (tmp_path / "notes.pem").write_text("not a certificate\n")
    ca, cert, key = (str(pem[name, 0]) for name in ("tls_ca_file", "tls_client_cert", "tls_client_key"))
    cases = [
        (["--tls-cert", cert, "--tls-key", key], "TLS needs --tls-ca-file too"),
        (["--tls-ca-file", ca], "TLS needs --tls-cert too"),
        (["--tls-ca-file", ca, "--tls-cert", cert], f"--tls-cert {cert}: holds no private key for its certificate"),
        (["--tls-ca-file", str(tmp_path / "notes.pem"), "--tls-cert", cert, "--tls-key", key], "not a PEM certificate"),
        (["--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", str(pem["tls_client_key", 1])], "not the private key"),
    ]
    for options, expected in cases:
        assert main([*base, *options]) == 2, options
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (options, err)
    tcp = [*base[:-1], "tcp://127.0.0.1:1", "--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key]
    assert main(tcp) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TLS options need a tls:// address" in err[0], err
    assert not (tmp_path / "out").exists()


# -- folders of video --------------------------------------------------------------


def test_a_long_video_in_a_folder_is_cut_into_segments_and_frames_are_counted(client, tmp_path, monkeypatch):
    src = tmp_path / "in"
    pngs(src, 2)
    make_clip(src / "long.mp4", seconds=3.0, gop=10)  # 72 frames, a keyframe every 10
    make_clip(src / "short.mp4", seconds=0.5)  # 12 frames: one task
    lossless = dict(crf=0, preset="ultrafast")
    tiler.process_folder(src, tmp_path / "local", CHAIN, workers=1, **lossless)
    cuts = []

    def spy(*args, **kwargs):
        cut = real(*args, **kwargs)
        cuts.append(None if cut is None else len(cut.segments))
        return cut

    real = cluster._cut
    monkeypatch.setattr(cluster, "_cut", spy)
    frames = []
    report = cluster.process_folder(
        client, src, tmp_path / "remote", CHAIN, segment_frames=20, on_frames=frames.append, **lossless
    )
    assert report.ok, [str(r.error) for r in report.failed]
    assert sorted(c for c in cuts if c) == [4] and cuts.count(None) == 1  # long.mp4 cut at 20, 40, 60; short whole
    for name in ("long.mp4", "short.mp4"):
        got, want = frames_of(tmp_path / "remote" / name), frames_of(tmp_path / "local" / name)
        assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want)), name
        a, b = probe_video(tmp_path / "local" / name), probe_video(tmp_path / "remote" / name)
        assert (a.fps, [s.codec for s in a.audio]) == (b.fps, [s.codec for s in b.audio])
    for png in (tmp_path / "local").rglob("*.png"):
        assert png.read_bytes() == (tmp_path / "remote" / png.relative_to(tmp_path / "local")).read_bytes()
    expected = probe_video(src / "long.mp4").frame_count + probe_video(src / "short.mp4").frame_count + 2
    deadline = time.monotonic() + 10
    while sum(frames) < expected and time.monotonic() < deadline:  # events may trail the last result a little
        time.sleep(0.05)
    assert sum(frames) == expected  # every frame of both videos, one per image, reported by the workers
    assert not leftovers(tmp_path)
