"""Every test is checked for what tileproc must never leave behind.

After each test: no new tileproc segment in /dev/shm or spill folder on disk, no
new semaphore (``sem.*``) in /dev/shm that no process maps any more (where
/dev/shm is private to the test run), nothing
registered with multiprocessing's resource tracker and not withdrawn (the
"leaked shared_memory objects" warnings), and no process started by the test
still alive (workers, ffmpeg), other than the long-lived helpers of the test
process itself (tileproc's zygote; a forkserver or resource tracker). Processes are found two ways: as
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

from leaks import (  # noqa: E402
    MARK,
    TrackerLog,
    cmdline,
    marked_processes,
    sem_entries,
    shm_entries,
    stray_processes,
    unmapped,
    wait_until,
)


@pytest.fixture(autouse=True)
def no_leaks(monkeypatch):
    shm_before = shm_entries()
    sem_before = sem_entries()
    tracker = TrackerLog()
    tracker.install(monkeypatch)
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
    # Semaphore names say nothing of their owner, and other programs on this machine share
    # /dev/shm: the check is exact only where it is private to this test run, which the caller
    # says with TILEPROC_PRIVATE_SHM=1 (e.g. `unshare -rm sh -c 'mount -t tmpfs tmpfs /dev/shm
    # && TILEPROC_PRIVATE_SHM=1 pytest'`). tests/test_sharedmem.py checks a killed run in one.
    if os.environ.get("TILEPROC_PRIVATE_SHM"):
        leaked_sem = unmapped(sem_entries() - sem_before)
        assert not leaked_sem, f"leaked semaphores in /dev/shm: {sorted(leaked_sem)}"
    assert not tracker.leaked(), f"the resource tracker would warn of leaked objects: {tracker.leaked()}"
    assert not leaked_procs, "leaked processes: " + "; ".join(
        f"{pid} {cmdline(pid)[:100]}" for pid in sorted(leaked_procs)
    )


SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture
def samples() -> Path:
    return SAMPLES
