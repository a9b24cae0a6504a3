"""tiler.platform: the Linux calls in one place, and names that say whose they are.

A sweep removes a segment or temporary only when its owner is provably dead
here: same host, boot and pid namespace, and its pid gone or reused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiler import platform
from tiler.io.files import sweep_stale_temps, temp_owner, temp_path_for
from tiler.sharedmem import PREFIX, SHM_DIR, sweep_stale_segments


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def owners() -> dict[str, platform.Owner]:
    me = platform.me()
    gone = dead_pid()
    return {
        "live": me,
        "dead": platform.Owner(me.host, gone, 12345),
        "reused": platform.Owner(me.host, me.pid, me.start + 1),  # this pid, but a later process
        "other host": platform.Owner("0123456789ab", gone, 12345),
        "other namespace, same pid": platform.Owner("ba9876543210", me.pid, me.start + 1),
    }


def test_only_provably_dead_local_owners_are_dead():
    o = owners()
    assert [k for k, v in o.items() if platform.owner_dead(v)] == ["dead", "reused"]


def test_segment_sweep_keeps_other_hosts_and_namespaces(tmp_path):
    names = {k: f"{PREFIX}{v.token}_{os.urandom(3).hex()}" for k, v in owners().items()}
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    removed = sweep_stale_segments((str(tmp_path),))
    assert sorted(Path(p).name for p in removed) == sorted([names["dead"], names["reused"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        names[k] for k in ("live", "other host", "other namespace, same pid")
    )


def test_temporary_sweep_keeps_other_hosts_and_namespaces(tmp_path):
    mine = temp_path_for(tmp_path / "a.mp4")
    assert temp_owner(mine.name) == platform.me()
    names = {k: mine.name.replace(platform.me().token, v.token) for k, v in owners().items()}
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    removed = sweep_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["reused"]])
    assert len(list(tmp_path.iterdir())) == 3


def test_a_segment_of_a_run_in_another_pid_namespace_is_not_swept(tmp_path):
    """A real process in its own pid namespace (unshare -p) names its segment; the sweep here keeps it."""
    code = f"from tiler.sharedmem import FrameSlot; print(FrameSlot(4096, folder={str(tmp_path)!r}).name)"
    r = subprocess.run(
        ["unshare", "-rpf", "--mount-proc", sys.executable, "-c", code],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot make a pid namespace: {r.stderr.strip()[-200:]}")
    name = r.stdout.strip()
    assert os.path.exists(name)  # left as a killed run would leave it
    owner = platform.Owner.parse(Path(name).name[len(PREFIX) :].rsplit("_", 1)[0])
    assert owner is not None and owner.host != platform.host_tag()
    assert sweep_stale_segments((str(tmp_path),)) == []
    os.unlink(name)


def test_names_carry_host_boot_and_namespace():
    assert len(platform.host_tag()) == 12
    assert platform.start_time(os.getpid()) == platform.me().start
    assert SHM_DIR == "/dev/shm"


def test_import_elsewhere_than_linux_is_one_clear_line():
    r = subprocess.run(
        [sys.executable, "-c", "import sys; sys.platform = 'darwin'; import tiler"], capture_output=True, text=True
    )
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == (
        "ImportError: tileproc runs on Linux only (it needs /dev/shm, fork and /proc); this system is 'darwin'"
    )


def test_a_package_that_really_shadows_filters_is_named_in_one_line(tmp_path):
    (tmp_path / "filters").mkdir()
    (tmp_path / "filters" / "__init__.py").write_text("")
    r = subprocess.run([sys.executable, "-c", "import tiler"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert f"{tmp_path / 'filters' / '__init__.py'} shadows tileproc's own 'filters' package" in last


def test_readme_and_classifiers_say_linux():
    root = Path(__file__).resolve().parent.parent
    assert "Operating System :: POSIX :: Linux" in (root / "pyproject.toml").read_text()
    assert "Linux only" in (root / "README.md").read_text()
