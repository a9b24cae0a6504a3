"""Every test is checked for what tileproc must never leave behind.

After each test: no new tileproc segment in /dev/shm and no process started by
it still alive (workers, ffmpeg), other than the long-lived forkserver and
resource tracker of the test process itself. Processes are found two ways: as
descendants of this process, and by a per-test marker in their environment
(which also finds processes re-parented after their parent was killed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import os  # noqa: E402
import uuid  # noqa: E402

from leaks import MARK, cmdline, marked_processes, shm_entries, stray_processes, wait_until  # noqa: E402


@pytest.fixture(autouse=True)
def no_leaks():
    shm_before = shm_entries()
    procs_before = stray_processes()
    mark = uuid.uuid4().hex
    os.environ[MARK] = mark

    def strays():
        return (stray_processes() - procs_before) | marked_processes(mark)

    yield
    if "tiler" in sys.modules:
        sys.modules["tiler"].shutdown()  # the default engine stays warm between calls, not between tests
    os.environ.pop(MARK, None)
    wait_until(lambda: not strays() and not (shm_entries() - shm_before), 5.0)
    leaked_shm = shm_entries() - shm_before
    leaked_procs = strays()
    assert not leaked_shm, f"leaked shared memory segments: {sorted(leaked_shm)}"
    assert not leaked_procs, "leaked processes: " + "; ".join(
        f"{pid} {cmdline(pid)[:100]}" for pid in sorted(leaked_procs)
    )


SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture
def samples() -> Path:
    return SAMPLES
