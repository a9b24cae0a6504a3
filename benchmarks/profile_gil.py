"""Where the time goes for a GIL-bound filter: tileproc's workers against joblib/loky's, same strips.

    python benchmarks/profile_gil.py                    # 4K, 2 workers, 6 frames, 3 rounds
    python benchmarks/profile_gil.py --quick            # 1080p smoke run
    py-spy record --subprocesses -f raw -o stacks.txt -- python benchmarks/profile_gil.py --only tileproc
    python benchmarks/profile_gil.py --stacks stacks.txt   # summarize a py-spy profile by process and code

Both sides run ``benchfilters.logged_rowloop``: ``rowloop_boxmean`` (a Python
loop over rows) that also appends, per call, the worker's pid, the call's
start and end (``time.perf_counter``, the same clock in every process), its
CPU time and its row count to a log. Rounds take turns (tileproc, then joblib
with tileproc's strip height, then joblib with its own best height); for each,
per frame:

* wall time, and the CPU of this process and of all its descendants (from
  ``/proc``: the workers of whichever side is running; the other side's are idle);
* the filter's own calls: how many, rows filtered, CPU inside the filter;
* what is left: worker CPU outside the filter (task handling, result checks,
  copies into the output), and worker time idle (wall x workers - busy);
* minor page faults of the workers.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchfilters, importable by every worker
sys.path.insert(0, str(HERE.parent))

from bench_peers import Peers, chunk_heights, tune  # noqa: E402
from benchfilters import logged_rowloop  # noqa: E402
from benchkit import OtherLoad, check_same, drain, say, stream_of, synth_frame  # noqa: E402
from machine import describe, machine_info  # noqa: E402

from tiler import Engine  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_counters() -> tuple[float, float, int]:
    """(CPU s of this process, CPU s of its live descendants, their minor page faults)."""
    stats, parents = {}, collections.defaultdict(list)
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    rest = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(name)] = rest
            parents[int(rest[1])].append(int(name))
    me = os.getpid()
    own = (int(stats[me][11]) + int(stats[me][12])) / CLK_TCK
    cpu, faults, todo = 0.0, 0, list(parents[me])
    while todo:
        pid = todo.pop()
        cpu += (int(stats[pid][11]) + int(stats[pid][12])) / CLK_TCK
        faults += int(stats[pid][7])
        todo += parents[pid]
    return own, cpu, faults


def measure(run, frames: int, log: Path, workers: int) -> dict:
    """One round of ``run`` (which filters ``frames`` frames) and what it cost, per frame."""
    log.write_text("")
    own0, kids0, faults0 = tree_counters()
    t0 = time.perf_counter()
    run()
    wall = time.perf_counter() - t0
    own1, kids1, faults1 = tree_counters()
    calls = [line.split() for line in log.read_text().splitlines()]
    in_filter_cpu = sum(float(c[3]) for c in calls)
    busy = collections.defaultdict(float)
    for c in calls:
        busy[c[0]] += float(c[2]) - float(c[1])
    return {
        "wall_ms": 1e3 * wall / frames,
        "parent_cpu_ms": 1e3 * (own1 - own0) / frames,
        "worker_cpu_ms": 1e3 * (kids1 - kids0) / frames,
        "filter_calls": len(calls) / frames,
        "rows_filtered": sum(int(c[4]) for c in calls) / frames,
        "in_filter_cpu_ms": 1e3 * in_filter_cpu / frames,
        "in_filter_wall_ms": 1e3 * sum(busy.values()) / frames,
        "worker_idle_ms": 1e3 * max(0.0, workers * wall - sum(busy.values())) / frames,
        "worker_faults": (faults1 - faults0) / frames,
        "processes_seen": len(busy),
    }


def summarize_stacks(path: Path, top: int = 14) -> list[str]:
    """py-spy raw output (``--subprocesses``): samples by process role and by the innermost
    function of tileproc, the filter or the benchmark (line numbers folded). Samples outside
    the timed rounds (imports, pool start) are counted apart."""
    by_role: collections.Counter = collections.Counter()
    by_place: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        procs = [f for f in frames if f.startswith("process ")]
        cmd = procs[-1]
        if len(procs) == 1:
            role = "parent"
        elif "forkserver" in procs[-2] if len(procs) > 2 else False:
            role = "tileproc worker"
        elif "forkserver" in cmd:
            role = "forkserver"
        elif "loky" in cmd and "resource_tracker" not in cmd:
            role = "loky worker"
        else:
            role = "other (" + re.sub(r"^process \d+:\"\S*python\S* (-B -c )?", "", cmd)[:40] + ")"
        code = [f for f in frames if not f.startswith("process ")]
        if not any(f.startswith(("measure (", "worker_main (", "_worker (", "Thread._bootstrap")) for f in code):
            role = "start-up, imports, pools idle"
        by_role[role] += int(count)
        ours = [f for f in code if re.search(r"(tiler|filters)/|bench\w*\.py|profile_gil\.py", f)]
        place = re.sub(r":\d+\)", ")", (ours or code or ["(no Python frame)"])[-1])
        place = re.sub(r"\(/\S*?/(tiler|filters|benchmarks)/", r"(\1/", place)
        by_place[f"{role:16} {place[:80]}"] += int(count)
    total = sum(by_role.values()) or 1
    out = [f"{total} samples; by process:"]
    out += [f"  {100 * c / total:5.1f} %  {p}" for p, c in by_role.most_common(top)]
    out.append("by process and innermost function of tileproc, the filter or the benchmark:")
    out += [f"  {100 * c / total:5.1f} %  {p}" for p, c in by_place.most_common(top)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1080p, 2 frames, 1 round")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--only", choices=("tileproc", "joblib"), help="run one side (for py-spy)")
    ap.add_argument("--stacks", type=Path, help="summarize this py-spy raw profile and exit")
    args = ap.parse_args(argv)
    if args.stacks:
        for line in summarize_stacks(args.stacks):
            say(line)
        return 0
    n = args.workers
    height, width, n_frames, rounds = (1080, 1920, 2, 1) if args.quick else (2160, 3840, 6, 3)
    rounds = args.rounds or rounds
    for line in describe(machine_info(("numpy", "joblib"))):
        say(line)
    frames = stream_of(synth_frame(height, width), n_frames)
    with tempfile.TemporaryDirectory(prefix="tileproc-bench-profile-") as tmp:
        log = Path(tmp) / "calls.log"
        f = logged_rowloop(radius=2, log=str(log))
        results: dict[str, list[dict]] = collections.defaultdict(list)
        load = OtherLoad()
        with Engine(workers=n) as engine, Peers(n) if args.only != "tileproc" else contextlib.nullcontext() as peers:
            check_same("tileproc", engine.process(frames[0], f), f.apply(frames[0]))
            drain(engine.map_frames(frames, f))  # warm: chains unpickled, heaps grown
            strip = round(
                statistics.median(int(c.split()[4]) for c in log.read_text().splitlines()) - 2 * f.halo
            )  # tileproc's core strip height, read from its calls
            variants = {"tileproc": lambda: drain(engine.map_frames(frames, f))}
            if args.only != "tileproc":
                best = tune(peers, f, frames, chunk_heights(height, n, (1, 2, 4, 8)), 1, ("joblib loky",))
                own_rows = best["joblib loky"]["rows"]
                variants[f"joblib loky, {strip} rows (tileproc's)"] = lambda: [
                    peers.run("joblib loky", f, fr, strip) for fr in frames
                ]
                variants[f"joblib loky, {own_rows} rows (its best)"] = lambda: [
                    peers.run("joblib loky", f, fr, own_rows) for fr in frames
                ]
            if args.only == "joblib":
                del variants["tileproc"]
            for _ in range(rounds):
                for name, run in variants.items():
                    results[name].append(measure(run, n_frames, log, n))
        others = load.cores()
    say(f"\nrowloop box5, {height}x{width} RGB, {n} workers, {n_frames} frames x {rounds} rounds; medians per frame")
    keys = list(next(iter(results.values()))[0])
    say(f"{'per frame':20}" + "".join(f"{k:>36}" for k in results))
    for k in keys:
        say(f"{k:20}" + "".join(f"{statistics.median(r[k] for r in results[name]):36.1f}" for name in results))
    say(f"other processes used {others:.2f} of {len(os.sched_getaffinity(0))} cores meanwhile")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
