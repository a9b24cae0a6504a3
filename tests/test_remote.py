"""Inputs and outputs on object storage: a real S3 API on loopback (moto's server, driven through s3fs) and memory://.

Outputs are compared with a run on local disk: identical bytes for images,
the very same frames for a lossless video. The moto server runs in this
process on 127.0.0.1 and is stopped after each test; Dask workers reach it
over HTTP like any S3 endpoint.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cluster import client, frames_of  # noqa: F401 - the LocalCluster fixture, shared
from test_cluster import make_clip as clip

import tiler
from tiler import cluster, staging
from tiler.cli import main
from tiler.errors import InputError, OutputError, OutputExists
from tiler.io import remote
from tiler.io.video import probe_video

TESTS = Path(__file__).resolve().parent
CHAIN = "blur:sigma=1.5,invert"
LOSSLESS = dict(crf=0, preset="ultrafast")

fsspec = pytest.importorskip("fsspec")


def png_bytes(seed: int, shape=(40, 56, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def local_tree(folder: Path, n: int) -> Path:
    """``n`` lossless images, some in a subfolder."""
    for i in range(n):
        path = folder / ("sub" if i % 2 else "") / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(i))
    return folder


def tree_bytes(fs, root: str) -> dict[str, bytes]:
    root = root.rstrip("/")
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in fs.find(root)}


def disk_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]
    yield fs
    fs.store.clear()


@pytest.fixture
def s3(monkeypatch):
    """An S3 API on 127.0.0.1 (moto), a bucket in it; credentials from the environment, as a user would set them."""
    s3fs = pytest.importorskip("s3fs")
    s3fs.S3FileSystem.clear_instance_cache()  # file systems made from the environment are cached per process
    server_mod = pytest.importorskip("moto.server")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "tileproc-test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")  # for Dask workers started after this
    options = {"endpoint_url": f"http://{host}:{port}", "skip_instance_cache": True}
    fs = fsspec.filesystem("s3", **options)
    fs.mkdir("bucket")
    try:
        yield fs, options
    finally:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")).close()
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()


def make_clip(path: Path) -> Path:
    return clip(path, seconds=1.0)


clip_of = clip


# -- memory:// (this process) -----------------------------------------------------


def test_a_prefix_is_a_folder_and_outputs_equal_a_local_disk_run(memfs, tmp_path):
    local_tree(tmp_path / "in", 4)
    (tmp_path / "in" / ".hidden.png").write_bytes(png_bytes(9))
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    memfs.put(str(tmp_path / "in"), "/bucket/in", recursive=True)
    tiler.process_folder(tmp_path / "in", tmp_path / "local", CHAIN, workers=1)
    seen = []
    report = tiler.process_folder("memory://bucket/in", "memory://bucket/out", CHAIN, workers=1, on_result=seen.append)
    assert report.ok and len(seen) == 4
    assert {r.dst for r in report.results} == {f"memory://bucket/out/{k}" for k in disk_bytes(tmp_path / "local")}
    assert tree_bytes(memfs, "/bucket/out") == disk_bytes(tmp_path / "local")
    # a local folder into a prefix, and a prefix into a local folder: the same bytes
    assert tiler.process_folder(tmp_path / "in", "memory://bucket/up", CHAIN, workers=1).ok
    assert tree_bytes(memfs, "/bucket/up") == disk_bytes(tmp_path / "local")
    assert tiler.process_folder("memory://bucket/in", tmp_path / "down", CHAIN, workers=1).ok
    assert disk_bytes(tmp_path / "down") == disk_bytes(tmp_path / "local")


def test_existing_outputs_are_kept_and_a_failed_file_leaves_nothing(memfs):
    memfs.pipe("/b/in/a.png", png_bytes(1))
    memfs.pipe("/b/in/broken.png", png_bytes(2)[:60])  # truncated
    memfs.pipe("/b/out/a.png", b"kept")
    report = tiler.process_folder("memory://b/in", "memory://b/out", "invert", workers=1)
    errors = {r.src: r.error for r in report.results}
    assert isinstance(errors["memory://b/in/a.png"], OutputExists)
    assert "memory://b/in/broken.png" in str(errors["memory://b/in/broken.png"])
    assert "/tmp" not in str(errors["memory://b/in/broken.png"])  # named by its URL, not the staged copy
    assert memfs.cat_file("/b/out/a.png") == b"kept"
    assert sorted(memfs.find("/b/out")) == ["/b/out/a.png"]
    # a rerun resumes: existing outputs are done, the rest is filtered
    memfs.rm("/b/in/broken.png")
    memfs.pipe("/b/in/new.png", png_bytes(4))
    report = tiler.process_folder("memory://b/in", "memory://b/out", "invert", workers=1, skip_existing=True)
    assert report.ok and len(report.results) == 2
    assert memfs.cat_file("/b/out/a.png") == b"kept" and memfs.cat_file("/b/out/new.png").startswith(b"\x89PNG")
    assert tiler.process_file("memory://b/in/a.png", "memory://b/out/a.png", "invert", workers=1, overwrite=True)
    assert memfs.cat_file("/b/out/a.png").startswith(b"\x89PNG")
    assert not remote.sweep_stale_workspaces()  # nothing of this process was left to sweep, and nothing stale


def test_a_remote_video_is_staged_filtered_and_uploaded_whole(memfs, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4")
    memfs.put_file(str(clip), "/v/clip.mp4")
    tiler.process_video(clip, tmp_path / "local.mp4", CHAIN, workers=1, **LOSSLESS)
    assert (
        tiler.process_video("memory://v/clip.mp4", None, CHAIN, workers=1, **LOSSLESS) == "memory://v/clip.tileproc.mp4"
    )
    memfs.get_file("/v/clip.tileproc.mp4", str(tmp_path / "back.mp4"))
    a, b = probe_video(tmp_path / "local.mp4"), probe_video(tmp_path / "back.mp4")
    assert (a.frame_count, a.fps, len(a.audio)) == (b.frame_count, b.fps, len(b.audio))
    assert all(
        np.array_equal(x, y) for x, y in zip(frames_of(tmp_path / "local.mp4"), frames_of(tmp_path / "back.mp4"))
    )


def test_one_clear_line_for_missing_inputs_and_unsupported_outputs(memfs, tmp_path, capsys):
    with pytest.raises(InputError, match=r"^memory://b/none\.png: no such file$"):
        tiler.process_file("memory://b/none.png", "memory://b/out.png", "invert", workers=1)
    memfs.pipe("/b/a.png", png_bytes(1))
    with pytest.raises(OutputError, match=r"^https://example\.invalid/a\.png: outputs go to a local path or to "):
        tiler.process_file("memory://b/a.png", "https://example.invalid/a.png", "invert", workers=1)
    with pytest.raises(InputError, match="nosuchscheme://b/a.png"):
        tiler.process_file("nosuchscheme://b/a.png", tmp_path / "a.png", "invert", workers=1)
    # the command line: one line per failure, nothing written
    assert main(["memory://b/none.png", "memory://b/a.png", "-f", "invert", "-o", "memory://b/cli/", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tileproc: error: memory://b/none.png: no such file"]
    assert memfs.find("/b/cli") == ["/b/cli/a.png"]


def test_the_command_line_takes_prefixes_and_objects(memfs, tmp_path):
    memfs.pipe("/c/in/a.png", png_bytes(1))
    memfs.pipe("/c/in/deep/b.png", png_bytes(2))
    assert main(["memory://c/in", "-f", "invert", "-o", "memory://c/out", "-q"]) == 0
    assert sorted(memfs.find("/c/out")) == ["/c/out/a.png", "/c/out/deep/b.png"]
    assert main(["memory://c/in/a.png", "-f", "invert", "-q", "--format", "jpg", "-o", "memory://c/x/"]) == 0
    assert memfs.find("/c/x") == ["/c/x/a.jpg"]
    assert main(["memory://c/in", "-f", "invert", "-o", "memory://c/out", "-q"]) == 1  # outputs exist: kept
    assert main(["memory://c/in/a.png", "-f", "invert", "-q"]) == 0  # beside it, name.tileproc.ext
    assert memfs.exists("/c/in/a.tileproc.png")


# -- S3 on loopback (moto) -------------------------------------------------------


def put_inputs(fs, tmp_path: Path) -> Path:
    src = local_tree(tmp_path / "in", 5)
    make_clip(src / "sub" / "clip.mp4")
    fs.put(str(src) + "/", "bucket/in/", recursive=True)
    return src


def check_outputs(fs, prefix: str, reference: Path, tmp_path: Path) -> None:
    got = tree_bytes(fs, prefix)
    want = disk_bytes(reference)
    assert sorted(got) == sorted(want)
    for key, data in want.items():
        if key.endswith(".png"):
            assert got[key] == data, key
    video = tmp_path / f"{prefix.replace('/', '_')}.mp4"
    video.write_bytes(got["sub/clip.mp4"])
    ref = frames_of(reference / "sub" / "clip.mp4")
    back = frames_of(video)
    assert len(ref) == len(back) and all(np.array_equal(x, y) for x, y in zip(ref, back))


def test_s3_folder_of_images_and_a_video_equals_a_local_disk_run(s3, tmp_path):
    fs, options = s3
    src = put_inputs(fs, tmp_path)
    tiler.process_folder(src, tmp_path / "local", CHAIN, workers=1, **LOSSLESS)
    report = tiler.process_folder(
        "s3://bucket/in", "s3://bucket/here", CHAIN, workers=1, storage_options=options, **LOSSLESS
    )
    assert report.ok, [str(r.error) for r in report.failed]
    check_outputs(fs, "bucket/here", tmp_path / "local", tmp_path)
    assert not [k for k in fs.find("bucket") if ".tileproc-" in k]


@pytest.mark.slow
def test_s3_folder_of_images_and_a_video_on_a_cluster(s3, client, tmp_path):  # noqa: F811
    fs, options = s3
    src = put_inputs(fs, tmp_path)
    tiler.process_folder(src, tmp_path / "local", CHAIN, workers=1, **LOSSLESS)
    report = cluster.process_folder(
        client, "s3://bucket/in", "s3://bucket/there", CHAIN, storage_options=options, **LOSSLESS
    )
    assert report.ok, [str(r.error) for r in report.failed]
    check_outputs(fs, "bucket/there", tmp_path / "local", tmp_path)
    # a single remote video on the cluster: one task, fetched and uploaded by its worker
    out = cluster.process_video(
        client, "s3://bucket/in/sub/clip.mp4", "s3://bucket/one.mp4", CHAIN, storage_options=options, **LOSSLESS
    )
    assert out == "s3://bucket/one.mp4" and fs.cat_file("bucket/one.mp4") == fs.cat_file("bucket/there/sub/clip.mp4")
    assert not [k for k in fs.find("bucket") if ".tileproc-" in k]
    fs.rm("bucket/there/img0.png")
    report = cluster.process_folder(
        client, "s3://bucket/in", "s3://bucket/there", CHAIN, storage_options=options, skip_existing=True, **LOSSLESS
    )
    assert report.ok and len(report.results) == 6
    check_outputs(fs, "bucket/there", tmp_path / "local", tmp_path)
    # the command line, on the same cluster, credentials and endpoint from the environment
    args = ["s3://bucket/in", "-f", CHAIN, "-o", "s3://bucket/cli", "--crf", "0", "--preset", "ultrafast", "-q"]
    assert main([*args, "--cluster", client.scheduler.address]) == 0
    check_outputs(fs, "bucket/cli", tmp_path / "local", tmp_path)


@pytest.mark.slow
def test_s3_worker_killed_mid_batch_leaves_nothing_partial_in_the_bucket(s3, client, tmp_path):  # noqa: F811
    fs, options = s3
    local_tree(tmp_path / "in", 8)
    fs.put(str(tmp_path / "in") + "/", "bucket/in/", recursive=True)
    slow = f"{TESTS / 'faultfilters.py'}:slow:seconds=0.2"
    tiler.process_folder(tmp_path / "in", tmp_path / "local", slow, workers=1)
    pids = list(client.run(os.getpid).values())
    killed = []

    def kill_one(result):
        if not killed:
            os.kill(pids[0], 9)
            killed.append(pids[0])

    report = cluster.process_folder(
        client, "s3://bucket/in", "s3://bucket/out", slow, storage_options=options, on_result=kill_one
    )
    assert killed and report.ok, [str(r.error) for r in report.failed]
    assert tree_bytes(fs, "bucket/out") == disk_bytes(tmp_path / "local")  # every object whole, nothing else


def test_s3_credentials_come_from_the_environment_and_never_reach_a_message(s3, tmp_path, monkeypatch, capsys):
    fs, options = s3
    fs.pipe("bucket/in/a.png", png_bytes(3))
    monkeypatch.setenv("AWS_ENDPOINT_URL", options["endpoint_url"])
    assert main(["s3://bucket/in", "-f", "invert", "-o", "s3://bucket/cli", "-q", "-w", "1"]) == 0
    assert fs.find("bucket/cli") == ["bucket/cli/a.png"]
    secret = "do-not-print-this-secret"
    given = dict(options, key="somebody", secret=secret)
    with pytest.raises(InputError) as caught:
        tiler.process_file("s3://nobucket/a.png", tmp_path / "a.png", "invert", workers=1, storage_options=given)
    assert secret not in str(caught.value) and str(caught.value).startswith("s3://nobucket/a.png: ")
    assert not (tmp_path / "a.png").exists()


def test_staging_workspaces_of_dead_processes_are_swept(tmp_path):
    from tiler import platform

    me = platform.me()
    stale = tmp_path / f"tileproc-stage-{platform.Owner(me.host, 999999999, 1).token}-abc"
    stale.mkdir()
    (stale / "clip.mp4").write_bytes(b"x")
    mine = tmp_path / f"tileproc-stage-{me.token}-abc"
    mine.mkdir()
    elsewhere = tmp_path / f"tileproc-stage-{platform.Owner('0' * 12, 999999999, 1).token}-abc"
    elsewhere.mkdir()  # another host or pid namespace: never provably dead here
    assert remote.sweep_stale_workspaces(tmp_path) == [stale]
    assert mine.exists() and elsewhere.exists()
    shutil.rmtree(mine)
    shutil.rmtree(elsewhere)


def test_default_outputs_of_urls():
    assert staging.default_output("s3://b/in/photo.jpg") == "s3://b/in/photo.tileproc.jpg"
    assert staging.default_output("s3://b/photo.jpg", ext=".png") == "s3://b/photo.tileproc.png"


# -- http(s):// inputs --------------------------------------------------------------


@pytest.fixture
def http_root(tmp_path):
    """A folder served over HTTP on 127.0.0.1 by the standard library's server, in a thread of this process."""
    pytest.importorskip("aiohttp")  # fsspec's http backend
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def send_head(self):  # files under private/ are refused, as a server without the user's grant does
            if self.path.startswith("/private/"):
                self.send_error(403)
                return None
            return super().send_head()

    handler = functools.partial(Handler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_inputs_are_staged_and_filtered(http_root, memfs, tmp_path):
    root, base = http_root
    (root / "a.png").write_bytes(png_bytes(5))
    local = tiler.process_file(root / "a.png", tmp_path / "local.png", CHAIN, workers=1)
    assert tiler.process_file(f"{base}/a.png", "memory://h/a.png", CHAIN, workers=1) == "memory://h/a.png"
    assert memfs.cat_file("/h/a.png") == local.read_bytes()
    with pytest.raises(InputError, match=rf"^{base}/missing\.png: "):
        tiler.process_file(f"{base}/missing.png", tmp_path / "m.png", CHAIN, workers=1)
    assert not (tmp_path / "m.png").exists()


def test_http_refusals_and_passwords_in_urls_are_said_plainly(http_root, tmp_path, capsys):
    root, base = http_root
    (root / "private").mkdir()
    (root / "private" / "a.png").write_bytes(png_bytes(6))
    (root / "a.png").write_bytes(png_bytes(5))
    with pytest.raises(InputError, match=rf"^{base}/private/a\.png: access denied \(HTTP 403\)$"):
        tiler.process_file(f"{base}/private/a.png", tmp_path / "p.png", CHAIN, workers=1)
    with pytest.raises(InputError, match=rf"^{base}/missing\.png: no such file$"):
        tiler.process_file(f"{base}/missing.png", tmp_path / "m.png", CHAIN, workers=1)
    # a user and password in a URL are used, and never printed: in errors and in the line of each output
    secret = base.replace("http://", "http://somebody:do-not-print-this@")
    assert (
        main([f"{secret}/missing.png", f"{secret}/a.png", "-f", "invert", "-o", str(tmp_path / "out"), "-w", "1"]) == 1
    )
    err = capsys.readouterr().err
    assert "do-not-print-this" not in err and "somebody" not in err, err
    masked = base.replace("http://", "http://***@")
    assert f"tileproc: error: {masked}/missing.png: no such file" in err, err
    assert f"tileproc: {masked}/a.png -> " in err, err
    assert (tmp_path / "out" / "a.png").is_file()
    assert remote.masked("s3://KEY:SECRET@bucket/a@b.png and gs://u@b/x") == "s3://***@bucket/a@b.png and gs://***@b/x"


def test_a_missing_bucket_or_prefix_is_said_as_such(s3, tmp_path, capsys):
    fs, _ = s3
    fs.pipe("bucket/in/a.png", png_bytes(3))
    for url, reason in [("s3://nobucket/in/", "no such bucket"), ("s3://bucket/nothere/", "no such file or folder")]:
        assert main([url, "-f", "invert", "-o", str(tmp_path / "out"), "-q"]) == 1
        assert capsys.readouterr().err.strip().splitlines() == [f"tileproc: error: {url}: {reason}"]
        with pytest.raises(InputError, match=f"^{url}: {reason}$"):
            staging.plan_folder(url, tmp_path / "out")
    # a library's reason that spans lines is kept whole, on one line, and a key in the URL is hidden in it too
    assert main(["s3://KEY:SECRET@bucket/in/a.png", "-f", "invert", "-o", str(tmp_path / "a.png"), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SECRET" not in err[0] and err[0].startswith("tileproc: error: s3://***@bucket/in/a.png: ")
    assert "Parameter validation failed: Invalid bucket name" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_s3_video_on_a_cluster_is_cut_into_segments_staged_once_per_worker(s3, client, tmp_path):  # noqa: F811
    fs, options = s3
    clip = clip_of(tmp_path / "clip.mp4", seconds=3.0, gop=10)
    fs.put_file(str(clip), "bucket/v/clip.mp4")
    tiler.process_video(clip, tmp_path / "local.mp4", CHAIN, workers=1, **LOSSLESS)
    done, frames = [], []
    out = cluster.process_video(
        client,
        "s3://bucket/v/clip.mp4",
        "s3://bucket/v/out.mp4",
        CHAIN,
        segment_frames=20,
        on_segment=done.append,
        on_frames=frames.append,
        storage_options=options,
        **LOSSLESS,
    )
    assert out == "s3://bucket/v/out.mp4" and len(done) == 4  # cut at the keyframes 20, 40, 60
    fs.get_file("bucket/v/out.mp4", str(tmp_path / "back.mp4"))
    a, b = probe_video(tmp_path / "local.mp4"), probe_video(tmp_path / "back.mp4")
    assert (a.frame_count, a.fps, [s.codec for s in a.audio]) == (b.frame_count, b.fps, [s.codec for s in b.audio])
    got, want = frames_of(tmp_path / "back.mp4"), frames_of(tmp_path / "local.mp4")
    assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))
    assert sorted(fs.find("bucket/v")) == ["bucket/v/clip.mp4", "bucket/v/out.mp4"]  # no segment left
    staged = client.run(
        lambda: sorted(p.name for p in Path(tempfile.gettempdir()).glob(f"tileproc-stage-*-{os.getpid()}-*"))
    )
    assert not any(staged.values()), staged  # each worker's copy of the source went with the job
    # a failing filter: nothing in the bucket, one error naming the URL
    with pytest.raises(tiler.FilterFailed, match="raises"):
        cluster.process_video(
            client,
            "s3://bucket/v/clip.mp4",
            "s3://bucket/v/bad.mp4",
            f"{TESTS / 'faultfilters.py'}:raises",
            segment_frames=20,
            storage_options=options,
            preset="ultrafast",
        )
    assert sorted(fs.find("bucket/v")) == ["bucket/v/clip.mp4", "bucket/v/out.mp4"]
