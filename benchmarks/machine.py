"""What every benchmark records about the machine that made its numbers."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
from pathlib import Path

__all__ = ["cpu_model", "machine_info", "describe"]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info(packages: tuple[str, ...] = (), ffmpeg: bool = False) -> dict:
    """CPU, cores, memory, OS, date, load and the versions of ``packages`` (distribution names).

    ``ffmpeg``: also the version line of the ffmpeg that tileproc uses.
    """
    info = {
        "cpu": cpu_model(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cores_total": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "python": platform.python_version(),
        **{name: _version(name) for name in packages},
        "platform": platform.platform(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_start": round(os.getloadavg()[0], 2),
    }
    if ffmpeg:
        import subprocess

        from tiler.io.video import ffmpeg_exe

        out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, text=True).stdout
        info["ffmpeg"] = out.splitlines()[0].split(" Copyright")[0] if out else "unknown"
    return info


def describe(info: dict) -> list[str]:
    """The machine as a few printable lines."""
    skip = {"cpu", "cores_usable", "cores_total", "memory_gib", "platform", "date", "loadavg_start", "loadavg_end"}
    versions = ", ".join(f"{k} {v}" for k, v in info.items() if k not in skip)
    return [
        f"machine: {info['cpu']}, {info['cores_usable']} usable cores of {info['cores_total']}, "
        f"{info['memory_gib']} GiB; {info['platform']}",
        f"  {versions}",
        f"  {info['date']}, load average {info['loadavg_start']} at the start"
        + (f", {info['loadavg_end']} at the end" if "loadavg_end" in info else ""),
    ]
