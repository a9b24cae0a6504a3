"""Helpers every benchmark shares: synthetic frames, interleaved timing, other load, /proc counters."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np

__all__ = [
    "synth_frame",
    "stream_of",
    "OtherLoad",
    "interleaved",
    "med_ms",
    "say",
    "drain",
    "check_same",
    "proc_stats",
]


def synth_frame(height: int, width: int, seed: int = 2024) -> np.ndarray:
    """A photo-like RGB uint8 frame: smooth gradients, textures, hard edges, sensor noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    sky = 0.55 + 0.35 * np.cos(np.pi * y) * (0.8 + 0.2 * np.sin(3.0 * x + 1.0))
    hills = 0.5 + 0.25 * np.sin(9.0 * x + 4.0 * y) * np.cos(5.0 * y - 2.0 * x)
    glow = np.exp(-(((x - 0.7) / 0.25) ** 2 + ((y - 0.3) / 0.2) ** 2))
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 200.0 * sky + 40.0 * glow
    img[..., 1] = 170.0 * hills + 60.0 * (1.0 - y) * sky
    img[..., 2] = 230.0 * sky * (1.0 - 0.4 * y) + 20.0 * hills
    # hard edges: rectangles, discs and lines, some filled, some outlined
    scale = width / 3840.0
    for _ in range(60):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(20, 400) * scale) + 2
        thick = -1 if rng.random() < 0.5 else max(1, int(rng.integers(1, 12) * scale))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.rectangle(img, (cx, cy), (cx + size, cy + size // 2), colour, thick)
        elif kind == 1:
            cv2.circle(img, (cx, cy), size // 2, colour, thick, lineType=cv2.LINE_AA)
        else:
            cv2.line(
                img,
                (cx, cy),
                (int(rng.integers(0, width)), int(rng.integers(0, height))),
                colour,
                max(1, int(8 * scale)),
                lineType=cv2.LINE_AA,
            )
    # fine texture (foliage-like) and per-pixel noise
    texture = rng.normal(0.0, 1.0, (height // 4 + 1, width // 4 + 1)).astype(np.float32)
    texture = cv2.resize(texture, (width, height), interpolation=cv2.INTER_CUBIC)
    img += 10.0 * texture[..., None] * (y > 0.5)[..., None]
    img += rng.normal(0.0, 4.0, (height, width, 3)).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def stream_of(frame: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` distinct frames (the base frame shifted), like consecutive video frames."""
    return [np.ascontiguousarray(np.roll(frame, (7 * i, 13 * i), axis=(0, 1))) for i in range(n)]


class OtherLoad:
    """CPU time taken on this machine by processes outside this run, in cores, from /proc.

    Machine-wide busy time (including time the hypervisor gave to other guests)
    minus the CPU time of this process and its descendants (workers, pools). A
    shared machine skews wall-clock ratios; this says by how much it was shared.
    """

    _HZ = os.sysconf("SC_CLK_TCK")

    def __init__(self) -> None:
        self.start = self._sample()

    @classmethod
    def _sample(cls) -> tuple[float, int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        busy = sum(v) - v[3] - v[4]  # all but idle and iowait; steal counts as taken
        parents: dict[int, int] = {}
        ticks: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(name)] = int(rest[1])
            ticks[int(name)] = sum(int(x) for x in rest[11:15])  # utime stime cutime cstime
        ours, todo = 0, [os.getpid()]
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        while todo:
            pid = todo.pop()
            ours += ticks.get(pid, 0)
            todo += children.get(pid, [])
        return time.monotonic(), busy, ours

    def cores(self) -> float:
        t1, busy1, ours1 = self._sample()
        t0, busy0, ours0 = self.start
        return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / self._HZ / max(t1 - t0, 1e-9)


def interleaved(variants: dict[str, Callable[[], int]], repeats: int) -> dict[str, list[float]]:
    """Seconds per unit of each variant, ``repeats`` times, the variants taking turns.

    Each callable does its work and returns how many units (frames, files) it did.
    Taking turns spreads any slow spell of the machine over every variant.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            units = fn()
            times[name].append((time.perf_counter() - t0) / units)
    return times


def med_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values)


def say(text: str = "") -> None:
    print(text, flush=True)


def drain(iterator) -> int:
    n = 0
    for _ in iterator:
        n += 1
    return n


def check_same(label: str, got: np.ndarray, want: np.ndarray) -> None:
    if got.shape != want.shape or got.dtype != want.dtype or not np.array_equal(got, want):
        raise SystemExit(f"{label}: tileproc's result differs from the baseline's")


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU milliseconds, minor page faults) of a process so far, from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        rest = fh.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) * 1e3 / os.sysconf("SC_CLK_TCK"), int(rest[7])
