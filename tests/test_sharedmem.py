"""tiler.sharedmem: frame slots that are reserved when made, and a ring that fits /dev/shm.

The small-/dev/shm cases run tileproc as a user would in Docker's default
container (64 MiB of /dev/shm): a private tmpfs mounted over /dev/shm in a user
and mount namespace of its own (``unshare -rm``), skipped where one cannot be made.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from imageio_ffmpeg import get_ffmpeg_exe

from tiler.errors import TileprocError, TileprocWarning
from tiler.sharedmem import SHM_DIR, FrameRing, FrameSlot, segment_owner

FFMPEG = get_ffmpeg_exe()


def _can_unshare() -> str | None:
    if not shutil.which("unshare"):
        return "unshare(1) is not installed"
    r = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
        capture_output=True,
        text=True,
    )
    return None if r.returncode == 0 else f"cannot make a private /dev/shm: {r.stderr.strip()}"


NO_UNSHARE = _can_unshare()
private_shm = pytest.mark.skipif(NO_UNSHARE is not None, reason=str(NO_UNSHARE))


def in_small_shm(size: str, script: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a shell ``script`` with a private tmpfs of ``size`` on /dev/shm."""
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs /dev/shm && {script}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def clip_4k_10bit(path: Path, frames: int = 2) -> Path:
    """A 3840x2160 10-bit clip (lossless FFV1): one frame slot holds ~100 MiB."""
    subprocess.run(
        [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=3840x2160:rate=10", "-frames:v", str(frames)]
        + ["-pix_fmt", "yuv420p10le", "-c:v", "ffv1", str(path)],
        check=True,
    )
    return path


def frame_hashes(path: Path) -> list[str]:
    r = subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(path), "-f", "framemd5", "-"], capture_output=True, text=True, check=True
    )
    return [line.rsplit(",", 1)[1].strip() for line in r.stdout.splitlines() if not line.startswith("#")]


CLI = f"{sys.executable} -m tiler"
ARGS = "-f invert -w 2 -q --codec ffv1 --pix-fmt yuv420p10le"


@pytest.fixture(scope="module")
def clip4k(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip4k")
    src = clip_4k_10bit(folder / "clip.mkv", frames=1)
    want = folder / "want.mkv"
    subprocess.run([*CLI.split(), str(src), "-o", str(want), *ARGS.split()], check=True, timeout=120)
    return src, frame_hashes(want)


# -- the ring ----------------------------------------------------------------------


def test_a_slot_reserves_its_pages_and_says_whose_it_is():
    slot = FrameSlot(1 << 20)
    try:
        st = os.stat(slot.name)
        assert st.st_blocks * 512 >= 2 * slot.capacity  # allocated now, not at the first write
        owner = segment_owner(slot.name)
        assert owner is not None and owner.pid == os.getpid()
    finally:
        slot.close()
    assert not os.path.exists(slot.name)


def test_ring_shrinks_to_what_shared_memory_holds(monkeypatch):
    from tiler import platform

    ring = FrameRing(4)
    monkeypatch.setattr(platform, "free_bytes", lambda folder: 5 << 20)  # room for two 2 MiB slots
    try:
        with pytest.warns(TileprocWarning, match=r"running with 2 frame\(s\) in flight instead of 4.*--shm-size="):
            ring.acquire(1 << 20)
        assert ring.size == 2
        ring.acquire(1 << 20)
        assert not ring.available
    finally:
        ring.close()


def test_ring_spills_to_disk_when_not_one_frame_fits(monkeypatch, tmp_path):
    from tiler import platform

    real = platform.free_bytes
    monkeypatch.setattr(platform, "free_bytes", lambda folder: 1 << 20 if folder == SHM_DIR else real(folder))
    ring = FrameRing(2, spill=str(tmp_path))
    try:
        with pytest.warns(TileprocWarning, match=f"files in {tmp_path}"):
            slot = ring.acquire(1 << 20)
        assert slot.on_disk and Path(slot.name).parent.parent == tmp_path
        src, dst = slot.bind((512, 512), np.uint8)
        src[...] = 7
        assert src.sum() == 7 * 512 * 512
    finally:
        ring.close()
    assert list(tmp_path.iterdir()) == []  # slots and their folder go with the ring


# -- Docker's /dev/shm -------------------------------------------------------------


@pytest.mark.slow
@private_shm
@pytest.mark.parametrize(
    "shm_size, said",
    [
        ("64m", "frame slots are files in"),  # Docker's default: not one 4K 10-bit slot (~95 MiB) fits
        ("240m", "running with 2 frame(s) in flight instead of 4"),
    ],
)
def test_4k_10bit_video_in_a_small_shm(tmp_path, clip4k, shm_size, said):
    src, want = clip4k
    r = in_small_shm(shm_size, f"{CLI} {src} -o out.mkv {ARGS}", tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tileproc: warning:") and said in lines[0], r.stderr
    assert frame_hashes(tmp_path / "out.mkv") == want  # (a spill folder left would fail the leak fixture)


def test_slot_over_the_file_size_limit_fails_fast_in_bounded_memory(tmp_path):
    """ulimit -f below one slot: one line, exit 1, within seconds, memory bounded (ulimit -v)."""
    src = tmp_path / "clip.mkv"
    subprocess.run(
        [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=10", "-frames:v", "3"]
        + ["-c:v", "ffv1", str(src)],
        check=True,
    )
    # 4 MiB files at most (a slot needs ~10.5 MiB), 4 GiB of address space.
    script = f"ulimit -f 4096 && ulimit -v 4194304 && exec {CLI} {src} -o out.mkv -f invert -w 2 -q"
    t = time.monotonic()
    r = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t < 50
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "file size limit (ulimit -f)" in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv"]


@pytest.mark.slow
@private_shm
def test_killed_run_leaves_no_semaphore_and_the_next_run_sweeps_its_segments(tmp_path):
    """SIGKILL mid-run in a private /dev/shm: afterwards no ``sem.*`` and, once a later run swept,
    no ``tileproc_*`` either."""
    src = tmp_path / "clip.mkv"
    subprocess.run(
        [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25", "-frames:v", "150"]
        + ["-c:v", "ffv1", str(src)],
        check=True,
    )
    tiny = tmp_path / "tiny.mkv"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x64", "-frames:v", "1", str(tiny)])
    script = textwrap.dedent(
        f"""
        {CLI} {src} -o out.mkv -f 'blur:sigma=8' -w 2 -q &
        pid=$!
        i=0; while [ -z "$(ls /dev/shm | grep tileproc_)" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
        sleep 0.3
        kill -{signal.SIGKILL.value} $pid; wait $pid
        sleep 1.5
        echo "after kill: $(ls /dev/shm | grep -c '^sem\\.')"
        {CLI} {tiny} -o out2.mkv -f invert -w 1 -q > /dev/null
        echo "after next run: $(ls /dev/shm | tr '\\n' ' ')"
        """
    )
    r = in_small_shm("512m", script, tmp_path)
    report = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)
    assert report.get("after kill") == " 0", r.stdout + r.stderr
    assert report.get("after next run", "?").strip() == "", r.stdout + r.stderr


def test_a_slot_that_cannot_be_made_fails_an_endless_source_at_once(monkeypatch):
    """A frame that gets no slot fails, and the source is not drained behind it (no spin)."""
    import itertools

    from tiler import platform
    from tiler.engine import Engine

    monkeypatch.setattr(platform, "file_size_limit", lambda: 1 << 16)  # below one 256x256x3 slot
    taken = []
    frames = (taken.append(i) or np.zeros((256, 256, 3), np.uint8) for i in itertools.count())
    with Engine(workers=0) as e:
        with pytest.raises(
            TileprocError, match=r"frame slot needs 0.4 MiB but the file size limit \(ulimit -f\) is 0.1 MiB"
        ):
            next(e.map_frames(frames, "invert", copy=False))  # results in slots (copies go straight to arrays)
    assert len(taken) <= e.frames_in_flight  # bounded look-ahead even when every frame fails


@private_shm
def test_every_slot_is_backed_before_it_is_used_so_a_full_shm_never_sigbuses(tmp_path):
    """In a 3 MiB /dev/shm two 2 MiB slots each pass a free-space check (their pages are not
    touched yet), and filling both would SIGBUS; reserved slots make the ring hold one instead."""
    code = textwrap.dedent(
        """
        import warnings
        import numpy as np
        from tiler.sharedmem import FrameRing
        ring = FrameRing(2, spill="/nonexistent")
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            slots = [ring.acquire(1 << 20)]
            if ring.available:
                slots.append(ring.acquire(1 << 20))
        for slot in slots:
            src, dst = slot.bind((1 << 20,), np.uint8)
            src[...] = 1
            dst[...] = 2
        print(len(slots), ring.size, len(said))
        ring.close()
        """
    )
    r = in_small_shm("3m", f"{sys.executable} -c '{code}'", tmp_path, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr[-1000:])  # -7 would be SIGBUS
    assert r.stdout.split() == ["1", "1", "1"], r.stdout + r.stderr
