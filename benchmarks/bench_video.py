"""tileproc on a 1080p H.264 clip against ffmpeg doing the same work in one process.

    python benchmarks/bench_video.py                  # full run: 1080p, 149 frames, 5 rounds; ~10 min on 2 cores
    python benchmarks/bench_video.py --quick          # smoke run: 640x360, 59 frames, 1 repeat; < 60 s
    python benchmarks/bench_video.py --json out.json  # also write every number as JSON

Cases, timed interleaved (one of each per round; the table shows medians):

* ``ffmpeg passthrough``: one ffmpeg decodes and encodes as tileproc's
  reader and writer do (``tiler.io.video.transcode_command``): H.264 ->
  RGB (rgb24, swscale's exact flags, the same colour matrix; tileproc's reader
  and writer do these conversions themselves for 8-bit planar YUV, within 2
  levels of the same, see tiler/io/yuv.py) -> YUV -> libx264 with
  tileproc's default CRF, preset and pix_fmt (read from ``tiler.io.video``, not
  restated here), audio copied, ``+faststart``.
* ``ffmpeg gblur``: the same with ``-vf gblur=sigma=S`` on the RGB frames,
  S = tileproc's ``blur`` default sigma (read from ``filters.blur``).
  ffmpeg's gblur is an IIR approximation of the Gaussian; tileproc's is the
  exact FIR cut at ``truncate`` sigmas (a 9-tap kernel for sigma 1): the
  same nominal filter, not the same arithmetic.
* ``tileproc blur`` / ``tileproc invert``: ``tiler.process_video(src, dst,
  chain, workers=N)`` in a fresh Python process; its time is the call's
  (probe, pool start, decode, filter, encode, rename), not the interpreter's
  start and imports, which the table shows separately.
* context only: ``ffmpeg yuv passthrough``, the plain ``ffmpeg -i clip -c:v
  libx264 ...`` a user would type, with no RGB round trip; and ``tileproc
  blur, 1 strip/worker``, tileproc blur with ``tile_size`` set to one
  full-width strip per worker instead of the engine's default (about four per
  worker): fewer, larger tasks per frame (see benchmarks/README.md, Video).

Every run is a child process watched every ~50 ms by a sampler that reads
``/proc`` for the whole process tree (the Python parent, forkserver, workers,
resource tracker, ffmpeg children): the peak of the summed ``VmRSS`` (which
counts shared pages once per process that maps them), the peak of summed
``RssAnon`` plus the allocated size of the run's ``/dev/shm`` segments (shared
memory counted once: the closest to what the run costs the machine), and CPU
seconds per process and per thread, which is where the time goes (the sampler
costs ~1.5 ms of CPU per sample, outside the tree). CPU used by *other*
processes during each run (other work on the machine) is shown too, since it
skews wall-clock ratios; so the ratios are also given from CPU seconds per
frame, which other work disturbs much less. The x264 settings each output
carries (its SEI) are compared, to show both sides ran the same encoder.

Memory: tileproc blur on the clip and on the same clip looped ten times (same
frame size, stream copy, constant rate) in separate child processes.

Media is generated with the bundled ffmpeg (testsrc2 + temporal noise, a sine
in AAC) into a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import inspect
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from machine import cpu_model

from filters.blur import GaussianBlur  # noqa: E402
from tiler.io import video  # noqa: E402
from tiler.sharedmem import owned_entries  # noqa: E402

FPS = "30000/1001"
LOOPS = 10  # the long clip is the short one this many times over
STRIPS = "tileproc blur, 1 strip/worker"  # tile_size: one full-width strip per worker instead of ~four
QUIET = 0.25  # a run is "quiet" when other processes used less than this many cores meanwhile
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 2**20


def _default(fn, name):
    return inspect.signature(fn).parameters[name].default


# tileproc's defaults, read from the code rather than restated
BLUR_SIGMA = GaussianBlur().sigma
X264_PRESET = _default(video.VideoWriter.__init__, "preset")


# -- the machine ---------------------------------------------------------------


def machine() -> dict:
    ff = subprocess.run([video.ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, text=True)
    import imageio_ffmpeg

    return {
        "cpu": cpu_model(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cores_total": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "ffmpeg": ff.stdout.splitlines()[0].split(" Copyright")[0] if ff.stdout else "unknown",
        "imageio_ffmpeg": imageio_ffmpeg.__version__,
        "platform": platform.platform(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_start": round(os.getloadavg()[0], 2),
    }


# -- media -----------------------------------------------------------------------


def _ffmpeg(*args: str) -> None:
    proc = subprocess.run(
        [video.ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {proc.stderr.strip()[-500:]}")


def make_clips(folder: Path, width: int, height: int, seconds: float) -> tuple[Path, Path]:
    """A noisy test pattern with AAC audio, and the same looped LOOPS times (stream copy).

    The long clip loops a video-only copy (so each loop starts exactly one
    video duration later: no gap, constant rate) and takes the audio from a
    separate loop of the short clip.
    """
    short, video_only, long = folder / "short.mp4", folder / "short_v.mp4", folder / "long.mp4"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={width}x{height}:rate={FPS}:duration={seconds},noise=alls=8:allf=t+u",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=440:sample_rate=48000:duration={seconds}",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "18",
        "-pix_fmt",
        "yuv420p",
        "-colorspace",
        "bt709",
        "-color_primaries",
        "bt709",
        "-color_trc",
        "bt709",
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-shortest",
        "-movflags",
        "+faststart",
        str(short),
    )
    _ffmpeg("-i", str(short), "-map", "0:v", "-c", "copy", str(video_only))
    _ffmpeg(
        "-stream_loop",
        str(LOOPS - 1),
        "-i",
        str(video_only),
        "-stream_loop",
        str(LOOPS - 1),
        "-i",
        str(short),
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c",
        "copy",
        "-shortest",
        "-movflags",
        "+faststart",
        str(long),
    )
    video_only.unlink()
    return short, long


# -- watching a process tree -----------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def _stat_fields(text: str) -> tuple[str, list[str]]:
    """(comm, fields after comm) of a /proc/.../stat line."""
    i, j = text.index("("), text.rindex(")")
    return text[i + 1 : j], text[j + 2 :].split()


def _ppids() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            text = _read(f"/proc/{name}/stat")
            if text:
                with contextlib.suppress(ValueError, IndexError):
                    out[int(name)] = int(_stat_fields(text)[1][1])
    return out


def _busy_ticks() -> int:
    """CPU ticks spent by the whole machine (all cores, all processes) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal


@dataclasses.dataclass
class _Proc:
    pid: int
    ppid: int
    cmd: str
    role: str = "?"
    threads: dict = dataclasses.field(default_factory=dict)  # tid -> [comm, ticks]
    max_threads: int = 0
    rss: int = 0  # latest sample
    peak_rss: int = 0


class TreeSampler:
    """Every ``interval`` seconds: the processes under ``root``, their memory and CPU."""

    def __init__(self, root: int, interval: float = 0.05):
        self.root, self.interval = root, interval
        self.procs: dict[int, _Proc] = {}
        self.peak_rss = self.peak_unique = self.peak_shm = self.peak_anon = 0
        self.peak_rss_by_pid: dict[int, int] = {}  # each process's share of the peak-RSS sample
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.sample()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[int]:
        ppids = _ppids()
        children: dict[int, list[int]] = {}
        for pid, ppid in ppids.items():
            children.setdefault(ppid, []).append(pid)
        out, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            if pid in ppids:
                out.append(pid)
                todo += children.get(pid, [])
                # read every time: a child is a copy of its parent until it execs
                cmd = (_read(f"/proc/{pid}/cmdline") or "").replace("\0", " ").strip()
                if pid not in self.procs:
                    self.procs[pid] = _Proc(pid, ppids[pid], cmd)
                elif cmd:
                    self.procs[pid].cmd = cmd
        return out

    def sample(self) -> None:
        rss = anon = 0
        pids = self._tree()
        for pid in pids:
            status = _read(f"/proc/{pid}/status") or ""
            m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            proc = self.procs[pid]
            proc.rss = int(m.group(1)) * 1024 if m else 0
            proc.peak_rss = max(proc.peak_rss, proc.rss)
            rss += proc.rss
            m = re.search(r"^RssAnon:\s+(\d+) kB", status, re.M)
            anon += int(m.group(1)) * 1024 if m else 0
            with contextlib.suppress(OSError):
                tids = os.listdir(f"/proc/{pid}/task")
                proc.max_threads = max(proc.max_threads, len(tids))
                for tid in tids:
                    text = _read(f"/proc/{pid}/task/{tid}/stat")
                    if text:
                        comm, f = _stat_fields(text)
                        proc.threads[int(tid)] = [comm, int(f[11]) + int(f[12])]
        shm = 0
        for path, owner in owned_entries(("/dev/shm",)):
            if owner.pid in pids:
                with contextlib.suppress(OSError):
                    shm += os.stat(path).st_blocks * 512
        self.samples += 1
        if rss > self.peak_rss:
            self.peak_rss_by_pid = {pid: self.procs[pid].rss for pid in pids}
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_anon = max(self.peak_anon, anon)
        self.peak_shm = max(self.peak_shm, shm)
        self.peak_unique = max(self.peak_unique, anon + shm)

    def classify(self, root_role: str) -> None:
        forkserver = {p.pid for p in self.procs.values() if "_zygote_main" in p.cmd and p.ppid == self.root}
        for p in self.procs.values():
            if p.pid == self.root:
                p.role = root_role
            elif "ffmpeg" in p.cmd and "pipe:1" in p.cmd:
                p.role = "ffmpeg decoder"
            elif "ffmpeg" in p.cmd and "pipe:0" in p.cmd:
                p.role = "ffmpeg encoder"
            elif "ffmpeg" in p.cmd and "framecrc" in p.cmd:
                p.role = "ffmpeg probe"
            elif p.pid in forkserver:
                p.role = "forkserver"
            elif p.ppid in forkserver:
                p.role = "workers"
            elif "resource_tracker" in p.cmd:
                p.role = "resource tracker"
            else:
                p.role = "other"

    def cpu_by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.procs.values():
            out[p.role] = out.get(p.role, 0.0) + sum(t[1] for t in p.threads.values()) / CLK_TCK
        return out

    def cpu_by_thread(self, names: dict[int, str]) -> dict[str, float]:
        """CPU seconds by (role, thread): Python threads by their names (``names``:
        native id -> name), ffmpeg's by their comm (x264's threads inherit their
        creator's)."""
        out: dict[str, float] = {}
        for p in self.procs.values():
            first_vf = min((tid for tid, (comm, _) in p.threads.items() if comm.startswith("vf#")), default=None)
            for tid, (comm, ticks) in p.threads.items():
                label = comm
                if p.pid == self.root and names:
                    label = names.get(tid, "native threads (OpenBLAS, OpenCV)")
                if p.role == "workers":
                    label = "all"
                elif comm.startswith("vf#"):
                    # ffmpeg's filter-graph thread opens the encoder: x264's threads and the
                    # filter graph's slice threads are created by it and inherit its name
                    label = (
                        "filter graph"
                        if tid == first_vf
                        else ("filter slice threads" if p.role == "ffmpeg decoder" else "x264 + filter slice threads")
                    )
                elif comm.startswith("av:h264:df"):
                    label = "h264 decode threads"
                key = f"{p.role}: {label}"
                out[key] = out.get(key, 0.0) + ticks / CLK_TCK
        return out

    def rss_at_peak_by_role(self) -> dict[str, int]:
        """Each role's VmRSS in the sample where the tree's sum peaked."""
        out: dict[str, int] = {}
        for pid, rss in self.peak_rss_by_pid.items():
            role = self.procs[pid].role
            out[role] = out.get(role, 0) + rss
        return out

    def threads_by_role(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.procs.values():
            out[p.role] = max(out.get(p.role, 0), p.max_threads)
        return out


# -- runs ------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    case: str
    frames: int
    wall: float  # the child process, start to exit
    seconds: float  # what the fps is computed from (tileproc: the process_video call)
    cpu: float  # CPU seconds of the whole tree
    other_cores: float  # cores' worth of CPU used by other processes meanwhile
    peak_rss: int
    peak_anon: int
    peak_shm: int
    peak_unique: int
    cpu_by_role: dict
    cpu_by_thread: dict
    threads_by_role: dict
    rss_at_peak_by_role: dict
    samples: int

    @property
    def fps(self) -> float:
        return self.frames / self.seconds


def watch(cmd: list[str], case: str, frames: int, root_role: str, result: Path | None = None) -> Run:
    busy0 = _busy_ticks()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = TreeSampler(proc.pid)
    try:
        _, stderr = proc.communicate()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        sampler.stop()
    wall = time.perf_counter() - t0
    busy = (_busy_ticks() - busy0) / CLK_TCK
    if proc.returncode != 0:
        raise RuntimeError(f"{case} failed ({proc.returncode}): {stderr.decode(errors='replace')[-800:]}")
    sampler.classify(root_role)
    names, seconds = {}, wall
    if result is not None:
        data = json.loads(result.read_text())
        result.unlink()
        names, seconds = {int(k): v for k, v in data["threads"].items()}, data["seconds"]
    by_role = sampler.cpu_by_role()
    cpu = sum(by_role.values())
    return Run(
        case,
        frames,
        wall,
        seconds,
        cpu,
        max(0.0, busy - cpu) / wall,
        sampler.peak_rss,
        sampler.peak_anon,
        sampler.peak_shm,
        sampler.peak_unique,
        by_role,
        sampler.cpu_by_thread(names),
        sampler.threads_by_role(),
        sampler.rss_at_peak_by_role(),
        sampler.samples,
    )


def ffmpeg_case(info: video.VideoInfo, dst: Path, vf: str | None, case: str) -> Run:
    return watch(video.transcode_command(info, dst, vf=vf), case, info.frame_count, "ffmpeg")


def encoder_args(info: video.VideoInfo, dst: Path) -> list[str]:
    """The video encoder arguments tileproc's writer uses by default (``-c:v`` to the audio options),
    read from its public command line."""
    cmd = video.VideoWriter(dst, info).command()  # never opened: nothing runs, nothing is written
    i = cmd.index("-c:v")
    j = min(k for k in range(i, len(cmd)) if cmd[k] in ("-map", "-an"))
    return cmd[i:j]


def ffmpeg_plain_case(info: video.VideoInfo, dst: Path, case: str) -> Run:
    """What a user would type: no RGB round trip, the same encoder arguments."""
    cmd = [
        video.ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-i",
        str(info.path),
        "-map",
        "0:v:0",
        "-map",
        "0:a?",
        *encoder_args(info, dst),
        "-c:a",
        "copy",
        "-movflags",
        "+faststart",
        "-y",
        str(dst),
    ]
    return watch(cmd, case, info.frame_count, "ffmpeg")


def tileproc_case(
    src: Path, dst: Path, chain: str, workers: int, frames: int, case: str, tmp: Path, tile_rows: int | None = None
) -> Run:
    result = tmp / f"result-{os.getpid()}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(src),
        str(dst),
        chain,
        str(workers),
        str(tile_rows or 0),
        str(result),
    ]
    return watch(cmd, case, frames, "python parent", result)


def child(src: str, dst: str, chain: str, workers: int, tile_rows: int, result: str) -> None:
    """Run in a fresh process: one ``tiler.process_video`` call, timed; thread names by native id.

    ``tile_rows`` > 0: full-width strips of that many rows instead of the engine's default."""
    import tiler

    names: dict[int, str] = {}
    done = threading.Event()

    def record() -> None:
        while not done.is_set():
            for t in threading.enumerate():
                if t.native_id is not None:
                    names[t.native_id] = t.name
            done.wait(0.05)

    watcher = threading.Thread(target=record, name="bench-thread-names", daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    options = {"tile_size": (tile_rows, 1 << 30)} if tile_rows > 0 else {}
    tiler.process_video(src, dst, chain, workers=workers, overwrite=True, **options)
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    names[threading.main_thread().native_id] = "main"
    Path(result).write_text(json.dumps({"seconds": seconds, "threads": names}))


# -- report -----------------------------------------------------------------------


def _med(runs: list[Run], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def x264_options(path: Path) -> str | None:
    """The settings x264 writes into the stream (an SEI near the start of the file)."""
    with open(path, "rb") as f:
        head = f.read(16 * MIB)
    m = re.search(rb"x264 - core \d+[^\x00]*?options: ([ -~]+)", head)
    return m.group(1).decode() if m else None


def _median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


def _breakdown(run: Run, top: int = 12) -> list[str]:
    lines = [
        f"  {run.case}: {run.seconds:.1f} s, {run.cpu:.1f} CPU s "
        f"({run.cpu / run.seconds:.2f} cores busy; other processes {run.other_cores:.2f} cores)"
    ]
    for key, sec in sorted(run.cpu_by_thread.items(), key=lambda kv: -kv[1])[:top]:
        if sec >= 0.05:
            lines.append(
                f"    {key:<44} {sec:7.2f} CPU s {100 * sec / run.cpu:5.1f} %  {1000 * sec / run.frames:6.1f} ms/frame"
            )
    threads = ", ".join(f"{k} {v}" for k, v in sorted(run.threads_by_role.items()))
    lines.append(f"    threads (max seen): {threads}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="640x360, 2 s, one repeat: a smoke run under a minute")
    ap.add_argument("--repeats", type=int, default=None, help="rounds of the timed cases (default 5, quick 1)")
    ap.add_argument("--workers", type=int, default=None, help="tileproc workers (default: usable CPUs)")
    ap.add_argument("--json", metavar="PATH", help="write the results here")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        src, dst, chain, workers, tile_rows, result = args.child
        child(src, dst, chain, int(workers), int(tile_rows), result)
        return 0

    width, height, seconds = (640, 360, 2) if args.quick else (1920, 1080, 5)
    repeats = args.repeats or (1 if args.quick else 5)
    workers = args.workers or len(os.sched_getaffinity(0))
    info_m = machine()
    print(
        f"machine: {info_m['cpu']}, {info_m['cores_usable']} usable cores of {info_m['cores_total']}, "
        f"{info_m['memory_gib']} GiB"
    )
    print(
        f"  Python {info_m['python']}, numpy {info_m['numpy']}, OpenCV {info_m['opencv']}, "
        f"{info_m['ffmpeg']} (imageio-ffmpeg {info_m['imageio_ffmpeg']})"
    )
    print(f"  {info_m['platform']}, {info_m['date']}, load average {info_m['loadavg_start']}")

    tmp = Path(tempfile.mkdtemp(prefix="tileproc-bench-video-"))
    try:
        t0 = time.perf_counter()
        short, long = make_clips(tmp, width, height, seconds)
        info, info_long = video.probe_video(short), video.probe_video(long)
        assert not info.variable_rate and not info_long.variable_rate
        assert info_long.frame_count == LOOPS * info.frame_count
        enc_args = encoder_args(info, tmp / "x.mp4")
        pix_fmt = enc_args[enc_args.index("-pix_fmt") + 1]
        enc = " ".join(enc_args[: enc_args.index("-pix_fmt")])
        print(
            f"clip: {info.width}x{info.height} H.264 {info.pix_fmt}, {info.fps} fps, {info.frame_count} frames, "
            f"AAC audio; long clip {info_long.frame_count} frames (made in {time.perf_counter() - t0:.1f} s)"
        )
        print(
            f"encoder (tileproc's default, both sides): {enc} -pix_fmt {pix_fmt}; "
            f"gblur sigma={BLUR_SIGMA:g} vs tileproc blur (sigma={BLUR_SIGMA:g}, truncate={GaussianBlur().truncate:g}, "
            f"halo {GaussianBlur().halo}); tileproc workers={workers}; {repeats} round(s)\n"
        )

        cases = {
            "ffmpeg passthrough": lambda: ffmpeg_case(info, tmp / "ff_pass.mp4", None, "ffmpeg passthrough"),
            "ffmpeg gblur": lambda: ffmpeg_case(
                info, tmp / "ff_gblur.mp4", f"gblur=sigma={BLUR_SIGMA:g}", "ffmpeg gblur"
            ),
            "tileproc invert": lambda: tileproc_case(
                short, tmp / "tp_invert.mp4", "invert", workers, info.frame_count, "tileproc invert", tmp
            ),
            "tileproc blur": lambda: tileproc_case(
                short, tmp / "tp_blur.mp4", "blur", workers, info.frame_count, "tileproc blur", tmp
            ),
            "ffmpeg yuv passthrough": lambda: ffmpeg_plain_case(info, tmp / "ff_plain.mp4", "ffmpeg yuv passthrough"),
            STRIPS: lambda: tileproc_case(
                short,
                tmp / "tp_blur_strips.mp4",
                "blur",
                workers,
                info.frame_count,
                STRIPS,
                tmp,
                tile_rows=math.ceil(info.height / workers),
            ),
        }
        runs: dict[str, list[Run]] = {k: [] for k in cases}
        for r in range(repeats):
            for name, fn in cases.items():
                run = fn()
                runs[name].append(run)
                print(
                    f"  round {r + 1}: {name:<24} {run.fps:6.2f} fps  ({run.seconds:.2f} s, "
                    f"other processes {run.other_cores:.2f} cores)",
                    flush=True,
                )
        # memory: the long clip in a child of its own; the short clip's runs are the timed ones above
        mem_long = tileproc_case(
            long, tmp / "tp_long.mp4", "blur", workers, info_long.frame_count, "tileproc blur (long clip)", tmp
        )
        print(f"  long clip: tileproc blur {mem_long.fps:6.2f} fps ({mem_long.seconds:.1f} s)\n", flush=True)

        print(f"{'case':<40}{'fps':>7}{'s':>7}{'CPU ms/frame':>13}{'peak RSS':>10}{'anon+shm':>10}{'others':>8}")
        rows = {}
        for name, rs in list(runs.items()) + [("tileproc blur (long clip)", [mem_long])]:
            fps = statistics.median(r.fps for r in rs)
            label = name + (" (context)" if name in ("ffmpeg yuv passthrough", STRIPS) else "")
            rows[name] = {
                "fps": fps,
                "seconds": _med(rs, "seconds"),
                "wall": _med(rs, "wall"),
                "cpu_ms_per_frame": 1000 * _med(rs, "cpu") / rs[0].frames,
                "peak_rss_mib": _med(rs, "peak_rss") / MIB,
                "peak_anon_shm_mib": _med(rs, "peak_unique") / MIB,
                "peak_shm_mib": _med(rs, "peak_shm") / MIB,
                "other_cores": _med(rs, "other_cores"),
                "frames": rs[0].frames,
                "fps_each": [round(r.fps, 3) for r in rs],
                "other_cores_each": [round(r.other_cores, 2) for r in rs],
            }
            row = rows[name]
            print(
                f"{label:<40}{fps:7.2f}{row['seconds']:7.2f}{row['cpu_ms_per_frame']:13.1f}"
                f"{row['peak_rss_mib']:9.0f}M{row['peak_anon_shm_mib']:9.0f}M{row['other_cores']:8.2f}"
            )
        tp = [r for n in ("tileproc blur", "tileproc invert") for r in runs[n]]
        start = statistics.median(r.wall - r.seconds for r in tp)
        print(
            f"(medians of {repeats} round(s). tileproc: fps from the process_video call; the child's interpreter "
            f"start and imports add {start:.2f} s.\n 'others': cores' worth of CPU used meanwhile by processes "
            "outside the run (other work on this machine); it slows whichever case it overlaps.)\n"
        )

        verdict = {True: "met", False: "MISSED"}
        ratios = {}
        for key, num, den, target in (
            ("blur_vs_gblur", "tileproc blur", "ffmpeg gblur", 0.8),
            ("invert_vs_passthrough", "tileproc invert", "ffmpeg passthrough", None),
            ("blur_strips_vs_gblur", STRIPS, "ffmpeg gblur", None),
        ):
            wall = rows[num]["fps"] / rows[den]["fps"]
            cpu = rows[den]["cpu_ms_per_frame"] / rows[num]["cpu_ms_per_frame"]
            quiet_num = [r.fps for r in runs[num] if r.other_cores < QUIET]
            quiet_den = [r.fps for r in runs[den] if r.other_cores < QUIET]
            quiet = statistics.median(quiet_num) / statistics.median(quiet_den) if quiet_num and quiet_den else None
            ratios[key] = {"fps": wall, "cpu": cpu, "quiet_fps": quiet}
            goal = f"  (target >= {target}: {verdict[wall >= target]})" if target else ""
            print(f"{num} / {den}:")
            print(f"  fps, medians of all rounds:          {wall:.2f}x{goal}")
            print(
                f"  fps, rounds with others < {QUIET} cores:  "
                + (f"{quiet:.2f}x ({len(quiet_num)} and {len(quiet_den)} runs)" if quiet else "no such runs")
            )
            print(
                f"  CPU per frame, {den} / {num}: {cpu:.2f}x (what the fps ratio tends to when both keep "
                "every core busy)"
            )
        mem_short = {k: _med(runs["tileproc blur"], k) for k in ("peak_rss", "peak_unique", "peak_shm")}
        short_roles = _median_run(runs["tileproc blur"]).rss_at_peak_by_role
        rss_ratio = mem_long.peak_rss / mem_short["peak_rss"]
        unique_ratio = mem_long.peak_unique / mem_short["peak_unique"]
        ratios["memory_long_vs_short_rss"], ratios["memory_long_vs_short_anon_shm"] = rss_ratio, unique_ratio
        print(
            f"peak memory of the tree, tileproc blur, {info.frame_count} vs {info_long.frame_count} frames "
            "(same frame size):"
        )
        print(
            f"  VmRSS sum:       {mem_short['peak_rss'] / MIB:5.0f} MiB vs {mem_long.peak_rss / MIB:5.0f} MiB "
            f"= {rss_ratio:.2f}x  (target <= 1.1: {verdict[rss_ratio <= 1.1]})"
        )
        print(
            f"  anon + /dev/shm: {mem_short['peak_unique'] / MIB:5.0f} MiB vs {mem_long.peak_unique / MIB:5.0f} MiB "
            f"= {unique_ratio:.2f}x  (/dev/shm: {mem_short['peak_shm'] / MIB:.0f} vs {mem_long.peak_shm / MIB:.0f} MiB)"
        )
        roles = sorted(
            set(short_roles) | set(mem_long.rss_at_peak_by_role), key=lambda k: -mem_long.rss_at_peak_by_role.get(k, 0)
        )
        print(
            "  VmRSS by process at the peak (short / long): "
            + ", ".join(
                f"{k} {short_roles.get(k, 0) / MIB:.0f}/{mem_long.rss_at_peak_by_role.get(k, 0) / MIB:.0f}"
                for k in roles
            )
        )

        x264 = {
            name: x264_options(tmp / f)
            for name, f in (("ffmpeg gblur", "ff_gblur.mp4"), ("tileproc blur", "tp_blur.mp4"))
        }
        same = x264["ffmpeg gblur"] == x264["tileproc blur"] and x264["ffmpeg gblur"] is not None
        threads = re.search(r"\bthreads=(\d+) lookahead_threads=(\d+)", x264["tileproc blur"] or "")
        print(
            f"\nx264 settings written in the two outputs (SEI): {'identical' if same else 'DIFFERENT'}"
            + (f"; threads={threads.group(1)} lookahead_threads={threads.group(2)} on both" if same and threads else "")
        )
        if not same:
            for name, opts in x264.items():
                print(f"  {name}: {opts}")
        print("\nwhere the CPU goes (median-time run of each; CPU s by process and thread):")
        for name in ("ffmpeg passthrough", "ffmpeg gblur", "tileproc invert", "tileproc blur", STRIPS):
            print("\n".join(_breakdown(_median_run(runs[name]))))
        info_m["loadavg_end"] = round(os.getloadavg()[0], 2)
        print(f"\nload average at the end: {info_m['loadavg_end']}")

        if args.json:
            out = {
                "machine": info_m,
                "clip": {
                    "width": info.width,
                    "height": info.height,
                    "fps": str(info.fps),
                    "frames": info.frame_count,
                    "long_frames": info_long.frame_count,
                },
                "encoder": " ".join(enc_args),
                "pix_fmt": pix_fmt,
                "gblur_sigma": BLUR_SIGMA,
                "workers": workers,
                "repeats": repeats,
                "rows": rows,
                "ratios": ratios,
                "x264_options": x264,
                "memory": {"short_median": mem_short, "long": dataclasses.asdict(mem_long)},
                "runs": {k: [dataclasses.asdict(r) for r in v] for k, v in runs.items()},
            }
            Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
